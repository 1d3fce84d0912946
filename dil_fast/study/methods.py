"""The generalization study's tasks, presets, methods and data; evaluating a model at one level with
:func:`dil_fast.eval.evaluate` (training a run is :mod:`dil_fast.study.runner`; the study's reading of
budgets: the package docstring of :mod:`dil_fast.study`)."""

from __future__ import annotations

import os
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
        return ("Y" if self.row.y else "RGB") + (
            f", crop border {self.row.crop_border}" if self.row.crop_border else ""
        )


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
        candidates = parse_levels(row.eval_levels, flag=f"--task {name}") + parse_levels(
            row.test, flag=f"--task {name}"
        )
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
    lr: float  # ERM's learning rate and the task (inner) learning rate of sf/pf
    meta_lr: float
    crop: int  # the training images are cut into crop x crop patches ...
    stride: int  # ... on this grid
    test_max_side: int  # test images are centre-cropped to at most this side (0: whole)
    variants: str
    note: str
    eval_every: int = 0  # meta-iterations between curve points (0: only at the end)
    last_evals: int = 1  # the table reports the mean of each curve's last this many points
    seeds: str = "1"
    decay_from: float = 1.0  # all learning rates follow a half cosine from this fraction of the budget ...
    lr_floor: float = 1.0  # ... down to this fraction of their value (1: constant)


PRESETS = {
    # the CI size: seconds, not science
    "tiny": Preset(
        nf=8,
        nb=1,
        gc=4,
        patch_size=24,
        batch_size=4,
        budget=3,
        lr=5e-4,
        meta_lr=5e-4,
        crop=64,
        stride=64,
        test_max_side=48,
        variants="erm,sf",
        note="CI smoke size; the numbers mean nothing",
        eval_every=1,
        last_evals=2,
        decay_from=0.5,
        lr_floor=0.1,
    ),
    # every method x 3 seeds in about 90 minutes on 2 shared CPU cores, one process per seed at one torch
    # thread (measured: docs/RESULTS-generalization.md); ERM beats the noisy input at every seen level there
    "cpu": Preset(
        nf=16,
        nb=1,
        gc=8,
        patch_size=24,
        batch_size=4,
        budget=4000,
        lr=1e-3,
        meta_lr=1e-3,
        crop=64,
        stride=32,
        test_max_side=128,
        variants="erm,erm-steps,erm-bf,sf,pf,ss-fo",
        note="reduced RRDB on the built-in images, 2 to 9 minutes per run on one CPU thread",
        eval_every=250,
        last_evals=3,
        seeds="1,2,3",
        decay_from=0.5,
        lr_floor=0.05,
    ),
    # one H200 within one prepared device call (bench/gpu_study.sh): RRDB nf 64 / gc 32 with 2 blocks
    # (1.5 M parameters, 34 convolutions: a capacity at which biased denoisers over-fit their noise
    # levels, Mohan et al. 2020), batch 32 per confounder of 64 x 64 patches; the cost model
    # (dil_fast.study.cost) puts ERM at 4.8 TFLOP per meta-iteration, 24 ms at 25 % of 790 TFLOP/s; sf runs
    # first: its inner steps are the smallest kernels, so the budget fitted to --time_limit on it fits the others
    "gpu": Preset(
        nf=64,
        nb=2,
        gc=32,
        patch_size=64,
        batch_size=32,
        budget=1200,
        lr=5e-4,
        meta_lr=5e-4,
        crop=96,
        stride=32,
        test_max_side=0,
        variants="sf,erm,erm-bf",
        note="RRDB-2 (nf 64, gc 32) on the built-in images, one device call on an H200",
        eval_every=100,
        last_evals=3,
        seeds="1",
        decay_from=0.5,
        lr_floor=0.05,
    ),
}

EXTRA_METHODS = ("erm-steps",)
BIAS_FREE = "-bf"  # a method name ending in it trains the bias-free network (RRDB with bias=False)


def available_methods() -> tuple[str, ...]:
    from ..meta import VARIANTS

    return tuple(VARIANTS) + EXTRA_METHODS


def base_method(method: str) -> str:
    """The training method of a study method: ``erm-bf`` -> ``erm``."""
    return method[: -len(BIAS_FREE)] if method.endswith(BIAS_FREE) else method


def is_bias_free(method: str) -> bool:
    return method.endswith(BIAS_FREE)


def parse_methods(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    known = available_methods()
    bad = [v for v in names if base_method(v) not in known]
    if not names or bad:
        raise FlagError(
            f"--variants: unknown method(s) {', '.join(bad) or '(none given)'}; "
            f"choose from {', '.join(known)}, each also as NAME{BIAS_FREE} (the bias-free network)"
        )
    if len(set(names)) != len(names):
        raise FlagError(f"--variants {text}: a method is listed twice")
    return names


def parse_seeds(text: str) -> list[int]:
    """``--seeds 1,2,3`` -> [1, 2, 3]; :class:`FlagError` for anything else."""
    try:
        seeds = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise FlagError(f"--seeds: expected comma-separated whole numbers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise FlagError(f"--seeds: expected distinct non-negative whole numbers, got {text!r}")
    return seeds


@dataclass
class MethodRun:
    method: str
    meta_iterations: int
    trainer_iterations: int
    batch_per_confounder: int
    optimizer_steps: int  # weight updates of the evaluated network's optimizer(s), inner + outer
    images_seen: int
    seconds: float  # training wall time (evaluations excluded)
    seed: int = 1
    stopped: str = ""  # why the run ended before its budget ("" when it did not)


def steps_per_meta_iteration(method: str, k: int) -> int:
    return {"erm": 1, "erm-steps": k, "sf": k + 1, "pf": 3}.get(base_method(method), 1)


# ---------------------------------------------------------------------------------------------- data
def prepare_trainset(
    out: str,
    preset: Preset,
    trainset: str | None,
    progress: bool,
    *,
    crop: int | None = None,
    stride: int | None = None,
    workers: int = 1,
) -> str:
    """A packed store to train from: ``--trainset`` (a store as it is; a folder packed once into
    ``out``: cut into ``crop`` x ``crop`` patches on a ``stride`` grid when ``crop`` is given,
    else taken as ready patches), or the built-in training photographs cut at the preset's (or
    the given) crop and stride."""
    import shutil

    from ..data.pack import pack_folder
    from ..data.store import is_store

    if trainset and is_store(trainset):
        if crop is not None:
            raise FlagError(
                f"--crop: --trainset {trainset} is a packed store, already cut (pack the source "
                "folder with dil-fast pack --size/--stride, or give the folder here)"
            )
        return trainset
    if stride is not None and crop is None and trainset:
        raise FlagError("--stride needs --crop for a --trainset folder (without --crop its files are ready patches)")
    if not trainset:
        crop = preset.crop if crop is None else crop
        stride = preset.stride if stride is None else stride
    elif crop is not None and stride is None:
        stride = crop
    for flag, value in (("--crop", crop), ("--stride", stride)):
        if value is not None and value < 1:
            raise FlagError(f"{flag} must be a positive number of pixels, got {value}")
    cut = f"_{crop}s{stride}" if crop is not None else ""
    if trainset:  # one store per source folder and cut, so a reused --out never trains on another folder's patches
        import hashlib

        key = hashlib.sha256(os.path.abspath(trainset).encode()).hexdigest()[:10]
        store = os.path.join(out, "data", f"store_{os.path.basename(os.path.normpath(trainset))}_{key}{cut}")
    else:
        store = os.path.join(out, "data", f"store_builtin{cut}")
    if is_store(store):
        return store
    os.makedirs(os.path.dirname(store), exist_ok=True)
    source = trainset or write_builtin_train_images(os.path.join(out, "data", "builtin_train"))
    try:
        pack_folder(source, store, size=crop, stride=stride, workers=workers, progress=progress)
    finally:
        if not trainset:
            shutil.rmtree(source, ignore_errors=True)
    return store


def write_builtin_train_images(folder: str) -> str:
    """The built-in training photographs, whole, as PNGs in ``folder`` (for packing with a cut)."""
    from ..data.builtin import TRAIN_IMAGES, builtin_image
    from ..data.images import write_image_rgb

    os.makedirs(folder, exist_ok=True)
    for i, name in enumerate(TRAIN_IMAGES):
        write_image_rgb(os.path.join(folder, f"{i + 1:02d}_{name.rsplit('.', 1)[0]}.png"), builtin_image(name))
    return folder


# ---------------------------------------------------------------------------------------------- checks
def check_methods(methods: list[str], task: StudyTask, batch_size: int) -> None:
    """Refuse, before anything trains, a method the budget cannot be matched for, and a bias-free
    method for a network that is not an RRDB."""
    k = len(task.seen)
    if any(base_method(m) == "erm-steps" for m in methods) and batch_size % k:
        raise FlagError(
            f"--variants erm-steps needs --batch_size divisible by the {k} confounders of --task "
            f"{task.name}, got {batch_size} (e.g. --batch_size {k * max(1, batch_size // k)})"
        )
    bias_free = [m for m in methods if is_bias_free(m)]
    if bias_free and not task.row.arch.startswith("rrdb"):
        raise FlagError(
            f"--variants {','.join(bias_free)}: the bias-free network is an RRDB option; --task "
            f"{task.name} trains {task.row.arch}"
        )


def check_synthetic_data(task: StudyTask, trainset: str | None, testsets: list[str]) -> None:
    """Refuse paired folders (``GT/`` + ``LQ/``): the study trains every task from clean patches with
    its synthetic confounders and scores clean test images it degrades itself."""
    from ..data.folders import is_paired_folder

    if trainset and is_paired_folder(trainset):
        raise InputError(
            f"--trainset {trainset}: a paired folder (GT/ and LQ/); the study trains --task {task.name} "
            f"on clean patches with its synthetic confounders ({task.confounders}) and reads no pairs: "
            f"train on paired data with dil-fast train --task {task.name} --trainset FOLDER [FOLDER ...]"
        )
    for testset in testsets:
        if testset and testset != "default" and is_paired_folder(testset):
            raise InputError(
                f"--testset {testset}: a paired folder (GT/ and LQ/); the study degrades clean test "
                f"images at the levels of --task {task.name} and reads no pairs: score real pairs with "
                f"dil-fast eval --task {task.name} --testset {testset} --ckpt CKPT"
            )


# ---------------------------------------------------------------------------------------------- evaluate
class DegradedInput(torch.nn.Module):
    """The do-nothing baseline as a network: the degraded input itself, ``[N, 3, h, w]`` ->
    ``[N, 3, h, w]``, or for x``s`` super-resolution its bicubic upsampling, ``[N, 3, h, w]`` ->
    ``[N, 3, s h, s w]`` (no clamp here: the scoring quantises to 8 bits with a clip)."""

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
    res = evaluate(
        model,
        images,
        level,
        seed=seed,
        device=device,
        y=task.row.y,
        crop_border=task.row.crop_border,
        scale=task.row.scale,
    )
    return float(np.mean([r[1] for r in res])), float(np.mean([r[2] for r in res]))
