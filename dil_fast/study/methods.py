"""The generalization study's tasks, presets and methods; training one method with the trainer's
API and evaluating a model at a degradation level (the study's reading of budgets: the package
docstring of :mod:`dil_fast.study`)."""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import numpy as np

from ..errors import FlagError, InputError


@dataclass(frozen=True)
class Task:
    name: str
    confounders: str  # the trainer's --confounders
    seen: tuple[float, ...]
    unseen: tuple[float, ...]
    axis: str  # x-axis label of the plot


TASKS = {
    "denoise": Task("denoise", "noise:5,10,15,20", (5, 10, 15, 20), (25, 30, 40, 50, 70), "noise sigma (0..255)"),
    "deblur": Task("deblur", "blur:1,2,3,4", (1, 2, 3, 4), (4.2, 4.4, 4.6, 4.8, 5.0), "Gaussian blur sigma (pixels)"),
}


@dataclass(frozen=True)
class Preset:
    nf: int
    nb: int
    gc: int
    patch_size: int
    batch_size: int  # per confounder and meta-iteration
    budget: int  # meta-iterations per method
    lr: float
    meta_lr: float
    crop: int  # built-in training images are cut into crop x crop patches ...
    stride: int  # ... on this grid
    test_max_side: int  # test images are centre-cropped to at most this side
    variants: str
    note: str


PRESETS = {
    # the CI size: seconds, not science
    "tiny": Preset(nf=8, nb=1, gc=4, patch_size=24, batch_size=4, budget=3, lr=5e-4, meta_lr=5e-4, crop=64,
                   stride=64, test_max_side=48, variants="erm,sf", note="CI smoke size; the numbers mean nothing"),
    # <= 15 minutes on 2 CPU cores (measured, see docs/RESULTS-generalization.md)
    "cpu": Preset(nf=16, nb=1, gc=8, patch_size=48, batch_size=4, budget=600, lr=5e-4, meta_lr=5e-4, crop=64,
                  stride=32, test_max_side=256, variants="erm,erm-steps,sf",
                  note="reduced RRDB on the built-in sample images, a few minutes per method on 2 CPU cores"),
    # assumption (not run here): RRDB nf64/gc32 with 8 blocks (a stated reduction from 23, ~1/3 the cost);
    # batch 8 x 4 confounders at 64x64 is ~4.6 TFLOP per meta-iteration (docs/released-trainer.md, "Cost model", scaled by
    # the parameter ratio 5.8M/16.6M); at >= 60 TFLOP/s effective on one H100 (TF32), 3000 meta-iterations
    # take <= 4 min per method, so erm, erm-steps and sf plus evaluation fit in 20 minutes.
    "gpu": Preset(nf=64, nb=8, gc=32, patch_size=64, batch_size=8, budget=3000, lr=1e-4, meta_lr=1e-4, crop=256,
                  stride=256, test_max_side=0, variants="erm,erm-steps,sf",
                  note="RRDB-8 (nf 64, gc 32) on a real training set (--trainset), <= 20 min on one H100 (assumed)"),
}

EXTRA_METHODS = ("erm-steps",)


def available_methods() -> tuple[str, ...]:
    from ..meta import VARIANTS

    return tuple(VARIANTS) + EXTRA_METHODS


def parse_methods(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    known = available_methods()
    bad = [v for v in names if v not in known]
    if not names or bad:
        raise FlagError(f"--variants: unknown method(s) {', '.join(bad) or '(none given)'}; "
                        f"choose from {', '.join(known)}")
    if len(set(names)) != len(names):
        raise FlagError(f"--variants {text}: a method is listed twice")
    return names


@dataclass
class MethodRun:
    method: str
    meta_iterations: int
    trainer_iterations: int
    batch_per_confounder: int
    optimizer_steps: int  # weight updates of the evaluated network's optimizer(s), inner + outer
    images_seen: int
    seconds: float


def _steps_per_meta_iteration(method: str, k: int) -> int:
    return {"erm": 1, "erm-steps": k, "sf": k + 1, "pf": 3}.get(method, 1)


# ---------------------------------------------------------------------------------------------- data
def prepare_trainset(out: str, preset: Preset, trainset: str | None, progress: bool) -> str:
    """A packed store to train from: ``--trainset`` (a store, or a folder packed once into ``out``),
    else patches cut from the built-in training photographs."""
    from ..data.pack import pack_folder
    from ..data.store import is_store

    if trainset and is_store(trainset):
        return trainset
    if trainset:  # one store per source folder, so a reused --out never trains on another folder's patches
        import hashlib

        key = hashlib.sha256(os.path.abspath(trainset).encode()).hexdigest()[:10]
        store = os.path.join(out, "data", f"store_{os.path.basename(os.path.normpath(trainset))}_{key}")
    else:
        store = os.path.join(out, "data", f"store_builtin_{preset.crop}s{preset.stride}")
    if is_store(store):
        return store
    if trainset:
        source = trainset
    else:
        from ..data.builtin import builtin_train_patches

        source = builtin_train_patches(os.path.join(out, "data", f"builtin_{preset.crop}s{preset.stride}"),
                                       size=preset.crop, stride=preset.stride)
    pack_folder(source, store, progress=progress)
    return store


def load_test_images(testset: str | None, max_side: int) -> list[tuple[str, np.ndarray]]:
    from ..data.builtin import center_crop
    from ..eval import load_test_images as _load

    images = _load(testset or "default")
    if max_side:
        images = [(n, center_crop(img, max_side)) for n, img in images]
    return images


# ---------------------------------------------------------------------------------------------- train
def train_method(method: str, task: Task, preset: Preset, store: str, trainer_test: str, out: str, *, seed: int,
                 device: str | None, budget: int):
    """Train one method for ``budget`` meta-iterations; returns (meta model, :class:`MethodRun`)."""
    import torch

    from ..data.store import PatchStore
    from ..train import TrainConfig, Trainer

    k = len(task.seen)
    batch, iterations, variant = preset.batch_size, budget, method
    if method == "erm-steps":
        if preset.batch_size % k:
            raise FlagError(f"erm-steps needs --batch_size divisible by the {k} confounders, got {preset.batch_size}")
        batch, iterations, variant = preset.batch_size // k, budget * k, "erm"
    count = PatchStore(store, "cpu", verify=False).count
    per_epoch = count // batch
    if per_epoch < 1:
        raise InputError(f"{store}: {count} patches, fewer than one batch of {batch}")
    epochs = math.ceil(iterations / per_epoch)
    cfg = TrainConfig(
        ckpt_save=os.path.join(out, "runs", task.name, method), trainset=store, testset=trainer_test, variant=variant,
        levels=tuple(float(s) for s in task.seen) if task.name == "denoise" else (5.0,), confounders=task.confounders,
        loader="store", patch_size=preset.patch_size, batch_size=batch, total_epoch=epochs, save_every=epochs + 1,
        test_every=epochs + 1, print_every=max(1, iterations // 5), num_workers=0, seed=seed, device=device,
        nf=preset.nf, nb=preset.nb, gc=preset.gc, lr=preset.lr, meta_lr=preset.meta_lr, lr_step=10 ** 9,
        stop_after=iterations, progress=False,
    )
    t0 = time.time()
    trainer = Trainer(cfg)
    rc = trainer.run()
    if rc:
        raise InputError(f"training {method} stopped with status {rc}")
    seconds = time.time() - t0
    model = trainer.meta_model.eval()
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    run = MethodRun(method, budget, iterations, batch, _steps_per_meta_iteration(method, k) * budget,
                    budget * k * preset.batch_size, seconds)
    return model, run


# ---------------------------------------------------------------------------------------------- evaluate
def _blurred(img: np.ndarray, level: float):
    import torch

    from ..degrade import GaussianBlur, counterfactual

    clean = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
    return counterfactual(clean, [GaussianBlur(float(level))], seed=0, step=0, mode="shared", backend="torch")[0]


def degrade_input(task: Task, images, level: float, seed: int) -> list[np.ndarray]:
    """The degraded inputs (float32 ``[1, 3, H, W]`` tensors) the models see at ``level``."""
    import torch

    from ..eval import add_noise, noise_rng

    if task.name == "denoise":
        noisy = [add_noise(img, level, noise_rng(seed, i)) for i, (_, img) in enumerate(images)]
        return [torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None] for x in noisy]
    return [_blurred(img, level) for _, img in images]


def evaluate_level(model, task: Task, images, level: float, seed: int, device) -> tuple[float, float]:
    """Mean (PSNR, SSIM) of ``model`` (None: the degraded input itself) over ``images`` at ``level``."""
    import torch

    from ..data.images import tensor_to_uint8
    from ..metrics import calculate_psnr, calculate_ssim

    if model is not None and task.name == "denoise":
        from ..eval import evaluate_model

        res = evaluate_model(model, images, level=level, seed=seed, device=device)
        return float(np.mean([r[1] for r in res])), float(np.mean([r[2] for r in res]))
    psnrs, ssims = [], []
    for (name, clean), x in zip(images, degrade_input(task, images, level, seed)):
        if model is not None:
            with torch.no_grad():
                x = model(x.to(device)).float().cpu()
        out = tensor_to_uint8(x)
        psnrs.append(calculate_psnr(clean, out, 0))
        ssims.append(calculate_ssim(clean, out, 0))
    return float(np.mean(psnrs)), float(np.mean(ssims))
