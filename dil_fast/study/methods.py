"""The generalization study's tasks, presets and methods; training one method with the trainer's
API and evaluating a model at a degradation level (the study's reading of budgets: the package
docstring of :mod:`dil_fast.study`)."""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import FlagError, InputError
from ..eval import EvalLevel, evaluate, parse_levels
from ..eval.levels import NUMERIC_FAMILIES
from ..tasks import TASKS as TASK_TABLE
from ..tasks import Task as TaskRow

# ---------------------------------------------------------------------------------------------- tasks
TASK_NAMES = tuple(TASK_TABLE)  # every row of dil_fast.tasks: each trains from clean images with synthetic confounders


@dataclass(frozen=True)
class StudyTask:
    """One row of :data:`dil_fast.tasks.TASKS` as the study runs it.

    ``confounders`` is the trainer's ``--confounders`` (the row's, at ``order`` for realsr);
    ``seen`` its levels, one per training confounder (:func:`dil_fast.eval.parse_levels`);
    ``unseen`` the held-out levels: the row's ``eval_levels`` and periodic ``test`` (or the
    study's ``--test_confounders``) less the seen ones, in that order. ``unseen`` may be empty.
    """

    row: TaskRow
    order: int
    confounders: str
    seen: tuple[EvalLevel, ...]
    unseen: tuple[EvalLevel, ...]

    @property
    def name(self) -> str:
        return self.row.name

    @property
    def levels(self) -> tuple[EvalLevel, ...]:
        return self.seen + self.unseen

    @property
    def numeric(self) -> bool:
        """True when every level is a number of one family (plotted against that number)."""
        return len({lv.family for lv in self.levels}) == 1 and all(lv.value is not None for lv in self.levels)

    @property
    def axis(self) -> str:
        """The plot's x-axis label: the family's axis, or the level names by position."""
        if self.numeric:
            return NUMERIC_FAMILIES[self.levels[0].family]
        names = [level_label(self, lv) for lv in self.levels]
        k = len(self.seen)
        trained = ", ".join(f"{i + 1} {n}" for i, n in enumerate(names[:k]))
        held = ", ".join(f"{k + i + 1} {n}" for i, n in enumerate(names[k:])) or "none"
        return f"level: trained {trained}; unseen {held}"

    @property
    def metric(self) -> str:
        """The metric convention of the row (what the tables say PSNR is computed on)."""
        return ("Y" if self.row.y else "RGB") + (f", crop border {self.row.crop_border}" if self.row.crop_border else "")


def level_label(task: StudyTask, level: EvalLevel) -> str:
    """A level's column / axis name: the value alone when every level is of one family, else
    ``family:level`` (a level that already starts with its family, ``realsr1-sinc-x4``, alone)."""
    if len({lv.family for lv in task.levels}) == 1 or level.level.startswith(level.family):
        return level.level
    return level.name


def training_confounders(row: TaskRow, order: int) -> str:
    """The row's training confounders at Real-ESRGAN ``order`` (the trainer's rule for realsr)."""
    return row.confounders.replace("realsr:1", f"realsr:{order}")


def study_task(name: str, order: int = 1, test_confounders: str | None = None) -> StudyTask:
    """The :class:`StudyTask` of ``--task name`` (``--order``, ``--test_confounders``);
    :class:`FlagError` naming the flag for an unknown task, an order other than realsr's, or
    held-out levels that do not parse."""
    if name not in TASK_TABLE:
        raise FlagError(f"--task must be one of {', '.join(TASK_NAMES)}, got {name!r}")
    if order not in (1, 2):
        raise FlagError(f"--order must be 1 or 2, got {order}")
    if order == 2 and name != "realsr":
        raise FlagError(f"--order 2 selects Real-ESRGAN's second-order degradation of --task realsr, not --task {name}")
    row = TASK_TABLE[name]
    confounders = training_confounders(row, order)
    seen = tuple(parse_levels(confounders, flag=f"--task {name}"))
    if test_confounders is None:
        candidates = parse_levels(row.eval_levels, flag=f"--task {name}") + parse_levels(row.test, flag=f"--task {name}")
    else:
        candidates = parse_levels(test_confounders, flag="--test_confounders")
    trained = {lv.name for lv in seen}
    unseen = tuple({lv.name: lv for lv in candidates if lv.name not in trained}.values())
    return StudyTask(row, order, confounders, seen, unseen)


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
    os.makedirs(os.path.dirname(store), exist_ok=True)
    pack_folder(source, store, progress=progress)
    return store


def load_test_images(testset: str | None, max_side: int) -> list[tuple[str, np.ndarray]]:
    from ..data.builtin import center_crop
    from ..eval import load_test_images as _load

    images = _load(testset or "default")
    if max_side:
        images = [(n, center_crop(img, max_side)) for n, img in images]
    return images


# ---------------------------------------------------------------------------------------------- checks
def check_methods(methods: list[str], task: StudyTask, batch_size: int) -> None:
    """Refuse, before anything trains, a method the budget cannot be matched for."""
    k = len(task.seen)
    if "erm-steps" in methods and batch_size % k:
        raise FlagError(f"--variants erm-steps needs --batch_size divisible by the {k} confounders of --task "
                        f"{task.name}, got {batch_size} (e.g. --batch_size {k * max(1, batch_size // k)})")


def check_synthetic_data(task: StudyTask, trainset: str | None, testset: str | None) -> None:
    """Refuse paired folders (``GT/`` + ``LQ/``): the study trains every task from clean patches with
    its synthetic confounders and scores clean test images it degrades itself."""
    from ..data.folders import is_paired_folder

    if trainset and is_paired_folder(trainset):
        raise InputError(f"--trainset {trainset}: a paired folder (GT/ and LQ/); the study trains --task {task.name} "
                         f"on clean patches with its synthetic confounders ({task.confounders}) and reads no pairs: "
                         f"train on paired data with dil-fast train --task {task.name} --trainset FOLDER [FOLDER ...]")
    if testset and testset != "default" and is_paired_folder(testset):
        raise InputError(f"--testset {testset}: a paired folder (GT/ and LQ/); the study degrades clean test images "
                         f"at the levels of --task {task.name} and reads no pairs: score real pairs with "
                         f"dil-fast eval --task {task.name} --testset {testset} --ckpt CKPT")


# ---------------------------------------------------------------------------------------------- train
def train_method(method: str, task: StudyTask, preset: Preset, store: str, trainer_test: str, out: str, *, seed: int,
                 device: str | None, budget: int):
    """Train one method for ``budget`` meta-iterations on ``task``'s confounders with its model,
    scale and periodic test; returns (meta model, :class:`MethodRun`)."""
    from ..data.store import PatchStore
    from ..train import TrainConfig, Trainer

    k = len(task.seen)
    batch, iterations, variant = preset.batch_size, budget, method
    if method == "erm-steps":
        check_methods([method], task, preset.batch_size)
        batch, iterations, variant = preset.batch_size // k, budget * k, "erm"
    count = PatchStore(store, "cpu", verify=False).count
    per_epoch = count // batch
    if per_epoch < 1:
        raise InputError(f"{store}: {count} patches, fewer than one batch of {batch}")
    epochs = math.ceil(iterations / per_epoch)
    cfg = TrainConfig(
        ckpt_save=os.path.join(out, "runs", task.name, method), trainset=store, testset=trainer_test, variant=variant,
        task=task.name, order=task.order, confounders=task.confounders,
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
class DegradedInput(torch.nn.Module):
    """The do-nothing baseline as a network: the degraded input itself, ``[1, 3, h, w]`` ->
    ``[1, 3, h, w]``, or for x``s`` super-resolution its bicubic upsampling, ``[1, 3, h, w]`` ->
    ``[1, 3, s h, s w]`` (no clamp here: the scoring quantises to 8 bits with a clip)."""

    def __init__(self, upscale: int = 1):
        super().__init__()
        self.upscale = int(upscale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upscale == 1:
            return x
        return torch.nn.functional.interpolate(x, scale_factor=self.upscale, mode="bicubic", align_corners=False)


def evaluate_level(model, task: StudyTask, images, level: EvalLevel, seed: int, device) -> tuple[float, float]:
    """Mean (PSNR, SSIM) over ``images`` of ``model`` (None: :class:`DegradedInput`) at ``level``:
    :func:`dil_fast.eval.evaluate` with the task's scale and metric convention (Y, crop border)."""
    if model is None:
        model = DegradedInput(task.row.scale)
    res = evaluate(model, images, level, seed=seed, device=device, y=task.row.y, crop_border=task.row.crop_border,
                   scale=task.row.scale)
    return float(np.mean([r[1] for r in res])), float(np.mean([r[2] for r in res]))
