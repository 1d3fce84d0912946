"""``dil-fast study generalization``: ERM against DIL at seen and unseen degradation levels.

Trains every requested method with the same model, seed, data and budget, evaluates each on a test
folder at the training levels and at unseen levels, and writes into ``--out``:

* ``results.csv``: one row per (method, level): PSNR and SSIM (RGB, crop border 0, mean over images);
* ``results.md``: the PSNR table (methods x levels, seen/unseen means, DIL - ERM gaps), the budget
  table and the run's conditions;
* ``generalization_<task>.png``: PSNR against level, one line per method, the training range shaded
  (drawn with OpenCV; no plotting library is needed).

**Budget matching.** One *meta-iteration* hands every method the same K batches of B patches (one
per confounder, K = 4), so every method sees ``K * B`` distorted patches per meta-iteration and
``--budget`` meta-iterations in all. What each method does with them:

========== =================================================== ===================== ================
method     per meta-iteration                                  optimizer steps       images seen
========== =================================================== ===================== ================
erm        one Adam step on the union of the K batches (K*B)   1                     K*B
erm-steps  ERM at B/K per confounder, K x the meta-iterations  K (of K*B/K = B each) K*B
sf         K task-Adam steps (one per confounder) + 1 meta     K inner + 1 meta      K*B
pf         2 task-Adam steps (union, mixture query) + 1 meta   2 inner + 1 meta      K*B (+ B reused)
ss, ss-fo  K virtual steps from theta, query at each, 1 meta   1 meta                K*B (+ B reused)
ps         1 virtual step on the union, query, 1 meta          1 meta                K*B (+ B reused)
========== =================================================== ===================== ================

``erm`` and ``sf`` therefore match in images seen and in patches through forward/backward, but not
in optimizer steps (1 against K + 1); ``erm-steps`` is the control that also matches ``sf``'s number
of weight updates. Learning rates are the same for every method (``lr`` = ERM's and the task
learning rate, ``meta_lr`` = the meta learning rate); the released meta-LR halving every 20 epochs
is switched off so a short run has one schedule for everyone.

Evaluation: Gaussian noise through :func:`dil_fast.train.evaluate.evaluate_model` (noise seeded per
image, identical for every method); blur through :class:`dil_fast.degrade.GaussianBlur` (21 taps,
deterministic), the blurred input kept in float as in training. The ``input`` row is the PSNR of the
degraded input itself (quantised to 8 bits), the do-nothing baseline.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, replace

import numpy as np

from .errors import FlagError, InputError

PLOT_SIZE = (960, 600)  # width, height of the PNG


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
    # batch 8 x 4 confounders at 64x64 is ~4.6 TFLOP per meta-iteration (REFERENCE.md section 4 scaled by
    # the parameter ratio 5.8M/16.6M); at >= 60 TFLOP/s effective on one H100 (TF32), 3000 meta-iterations
    # take <= 4 min per method, so erm, erm-steps and sf plus evaluation fit in 20 minutes.
    "gpu": Preset(nf=64, nb=8, gc=32, patch_size=64, batch_size=8, budget=3000, lr=1e-4, meta_lr=1e-4, crop=256,
                  stride=256, test_max_side=0, variants="erm,erm-steps,sf",
                  note="RRDB-8 (nf 64, gc 32) on a real training set (--trainset), <= 20 min on one H100 (assumed)"),
}

EXTRA_METHODS = ("erm-steps",)


def available_methods() -> tuple[str, ...]:
    from .meta import VARIANTS

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
    from .data.pack import pack_folder
    from .data.store import is_store

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
        from .data.builtin import builtin_train_patches

        source = builtin_train_patches(os.path.join(out, "data", f"builtin_{preset.crop}s{preset.stride}"),
                                       size=preset.crop, stride=preset.stride)
    pack_folder(source, store, progress=progress)
    return store


def load_test_images(testset: str | None, max_side: int) -> list[tuple[str, np.ndarray]]:
    from .data.builtin import center_crop
    from .train.evaluate import load_test_images as _load

    images = _load(testset or "default")
    if max_side:
        images = [(n, center_crop(img, max_side)) for n, img in images]
    return images


# ---------------------------------------------------------------------------------------------- train
def train_method(method: str, task: Task, preset: Preset, store: str, trainer_test: str, out: str, *, seed: int,
                 device: str | None, budget: int):
    """Train one method for ``budget`` meta-iterations; returns (meta model, :class:`MethodRun`)."""
    import torch

    from .data.store import PatchStore
    from .train import checkpoint as ckpt_io
    from .train.trainer import Trainer, TrainConfig

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
    state = ckpt_io.load_file(os.path.join(cfg.ckpt_save, "last.pt"))
    from .models import build_rrdb

    model = build_rrdb(state["model_config"])
    model.load_state_dict(state["models"]["model_meta"])
    model.to(trainer.device).eval()
    del state
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    run = MethodRun(method, budget, iterations, batch, _steps_per_meta_iteration(method, k) * budget,
                    budget * k * preset.batch_size, seconds)
    return model, run


# ---------------------------------------------------------------------------------------------- evaluate
def _blurred(img: np.ndarray, level: float):
    import torch

    from .degrade import GaussianBlur, counterfactual

    clean = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
    return counterfactual(clean, [GaussianBlur(float(level))], seed=0, step=0, mode="shared", backend="torch")[0]


def degrade_input(task: Task, images, level: float, seed: int) -> list[np.ndarray]:
    """The degraded inputs (float32 ``[1, 3, H, W]`` tensors) the models see at ``level``."""
    import torch

    from .train.evaluate import add_noise, noise_rng

    if task.name == "denoise":
        noisy = [add_noise(img, level, noise_rng(seed, i)) for i, (_, img) in enumerate(images)]
        return [torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None] for x in noisy]
    return [_blurred(img, level) for _, img in images]


def evaluate_level(model, task: Task, images, level: float, seed: int, device) -> tuple[float, float]:
    """Mean (PSNR, SSIM) of ``model`` (None: the degraded input itself) over ``images`` at ``level``."""
    import torch

    from .data.images import tensor_to_uint8
    from .metrics import calculate_psnr, calculate_ssim

    if model is not None and task.name == "denoise":
        from .train.evaluate import evaluate_model

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


# ---------------------------------------------------------------------------------------------- outputs
def write_csv(path: str, task: Task, rows: list[dict]) -> None:
    fields = ["task", "method", "level", "seen", "psnr", "ssim"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({"task": task.name, **{k: r[k] for k in fields[1:]}})


def _fmt_level(v: float) -> str:
    return f"{v:g}"


def markdown_tables(task: Task, rows: list[dict], runs: list[MethodRun], conditions: dict) -> str:
    levels = list(task.seen) + list(task.unseen)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    psnr = {(r["method"], r["level"]): r["psnr"] for r in rows}
    head = ["method"] + [f"{_fmt_level(v)}" for v in task.seen] + [f"**{_fmt_level(v)}**" for v in task.unseen] \
        + ["mean seen", "mean unseen"]
    lines = [f"PSNR (dB, RGB) on the test images; {task.axis}; training levels "
             f"{', '.join(map(_fmt_level, task.seen))}, **bold** = unseen.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def mean(m, lv):
        return float(np.mean([psnr[(m, v)] for v in lv]))

    for m in methods:
        cells = [m] + [f"{psnr[(m, v)]:.2f}" for v in levels] + \
            [f"{mean(m, task.seen):.2f}", f"{mean(m, task.unseen):.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    dil = [m for m in methods if m not in ("input", "erm", "erm-steps")]
    for base in ("erm", "erm-steps"):
        if base not in methods:
            continue
        for m in dil:
            cells = [f"{m} - {base}"] + [f"{psnr[(m, v)] - psnr[(base, v)]:+.2f}" for v in levels] + \
                [f"{mean(m, task.seen) - mean(base, task.seen):+.2f}",
                 f"{mean(m, task.unseen) - mean(base, task.unseen):+.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Budget (identical data, model, seed; one meta-iteration = one batch per confounder):", "",
              "| method | meta-iterations | trainer iterations | batch per confounder | optimizer steps | "
              "images seen | train time (s) |", "|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r.method} | {r.meta_iterations} | {r.trainer_iterations} | {r.batch_per_confounder} | "
                     f"{r.optimizer_steps} | {r.images_seen} | {r.seconds:.0f} |")
    lines += ["", "Conditions:", ""] + [f"- {k}: {v}" for k, v in conditions.items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- plot
_COLORS = [(200, 110, 30), (40, 40, 220), (40, 160, 40), (160, 60, 160), (20, 140, 220), (120, 120, 0),
           (80, 80, 80)]  # BGR


def _nice_step(span: float, target: int = 6) -> float:
    raw = span / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    for m in (1, 2, 2.5, 5, 10):
        if m * mag >= raw:
            return m * mag
    return 10 * mag


def _dashed(img, p0, p1, color, thickness, dash=10):
    import cv2

    (x0, y0), (x1, y1) = p0, p1
    n = max(1, int(math.hypot(x1 - x0, y1 - y0) // dash))
    for i in range(0, n, 2):
        a, b = i / n, min(i + 1, n) / n
        cv2.line(img, (round(x0 + (x1 - x0) * a), round(y0 + (y1 - y0) * a)),
                 (round(x0 + (x1 - x0) * b), round(y0 + (y1 - y0) * b)), color, thickness, cv2.LINE_AA)


def plot_generalization(path: str, series: dict[str, list[tuple[float, float]]], train_range: tuple[float, float],
                        title: str, xlabel: str, ylabel: str = "PSNR (dB)", size: tuple[int, int] = PLOT_SIZE,
                        dashed: tuple[str, ...] = ("input",)) -> np.ndarray:
    """Draw ``series`` (name -> [(x, y)]) as lines with markers, shade ``train_range`` on x, write a PNG.

    Pure OpenCV. Non-finite points are skipped. Returns the ``H x W x 3`` BGR image written.
    """
    import cv2

    W, H = size
    img = np.full((H, W, 3), 255, np.uint8)
    left, right, top, bottom = 80, 30, 50, 70
    pts = [(x, y) for s in series.values() for x, y in s if math.isfinite(x) and math.isfinite(y)]
    xs = [p[0] for p in pts] + list(train_range)
    ys = [p[1] for p in pts] or [0.0, 1.0]
    x0, x1 = min(xs), max(xs)
    xpad = (x1 - x0) * 0.04 or 1.0
    x0, x1 = x0 - xpad, x1 + xpad
    ystep = _nice_step(max(max(ys) - min(ys), 1e-6))
    y0 = math.floor(min(ys) / ystep) * ystep
    y1 = math.ceil(max(ys) / ystep) * ystep
    if y1 <= y0:
        y1 = y0 + ystep

    def px(x, y):
        return (round(left + (x - x0) / (x1 - x0) * (W - left - right)),
                round(H - bottom - (y - y0) / (y1 - y0) * (H - top - bottom)))

    font = cv2.FONT_HERSHEY_SIMPLEX
    # training range
    a, _ = px(train_range[0], y1)
    b, _ = px(train_range[1], y1)
    cv2.rectangle(img, (a, top), (b, H - bottom), (225, 225, 225), -1)
    cv2.putText(img, "training range", (a + 4, top + 16), font, 0.45, (110, 110, 110), 1, cv2.LINE_AA)
    # grid and y ticks
    y = y0
    while y <= y1 + ystep * 1e-6:
        _, yy = px(x0, y)
        cv2.line(img, (left, yy), (W - right, yy), (235, 235, 235) if not a <= left <= b else (210, 210, 210), 1)
        label = f"{y:g}"
        (tw, th), _ = cv2.getTextSize(label, font, 0.45, 1)
        cv2.line(img, (left - 5, yy), (left, yy), (0, 0, 0), 1)
        cv2.putText(img, label, (left - 8 - tw, yy + th // 2), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        y += ystep
    # x ticks at the evaluated levels, skipping labels that would overlap
    last_right = -10 ** 9
    for x in sorted({p[0] for p in pts}):
        xx, _ = px(x, y0)
        cv2.line(img, (xx, H - bottom), (xx, H - bottom + 5), (0, 0, 0), 1)
        label = f"{x:g}"
        (tw, th), _ = cv2.getTextSize(label, font, 0.45, 1)
        if xx - tw // 2 > last_right + 4:
            cv2.putText(img, label, (xx - tw // 2, H - bottom + 10 + th), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
            last_right = xx + tw // 2
    # axes
    cv2.rectangle(img, (left, top), (W - right, H - bottom), (0, 0, 0), 1)
    (tw, th), _ = cv2.getTextSize(xlabel, font, 0.55, 1)
    cv2.putText(img, xlabel, ((left + W - right - tw) // 2, H - 18), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    (tw, th), _ = cv2.getTextSize(ylabel, font, 0.55, 1)
    label_img = np.full((th + 8, tw + 4, 3), 255, np.uint8)
    cv2.putText(label_img, ylabel, (2, th + 2), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    label_img = cv2.rotate(label_img, cv2.ROTATE_90_COUNTERCLOCKWISE)
    ly = max(0, (top + H - bottom - label_img.shape[0]) // 2)
    img[ly:ly + label_img.shape[0], 8:8 + label_img.shape[1]] = label_img[: H - ly]
    (tw, th), _ = cv2.getTextSize(title, font, 0.6, 1)
    cv2.putText(img, title, (max(5, (W - tw) // 2), 30), font, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    # lines
    for i, (name, s) in enumerate(series.items()):
        color = (120, 120, 120) if name in dashed else _COLORS[i % len(_COLORS)]
        good = [px(x, y) for x, y in sorted(s) if math.isfinite(x) and math.isfinite(y)]
        for p, q in zip(good, good[1:]):
            if name in dashed:
                _dashed(img, p, q, color, 2)
            else:
                cv2.line(img, p, q, color, 2, cv2.LINE_AA)
        for p in good:
            cv2.circle(img, p, 4, color, -1, cv2.LINE_AA)
    # legend (top right)
    names = list(series)
    if names:
        widths = [cv2.getTextSize(n, font, 0.5, 1)[0][0] for n in names]
        lw, lh = max(widths) + 56, 22 * len(names) + 10
        lx, ly = W - right - lw - 10, top + 10
        cv2.rectangle(img, (lx, ly), (lx + lw, ly + lh), (255, 255, 255), -1)
        cv2.rectangle(img, (lx, ly), (lx + lw, ly + lh), (0, 0, 0), 1)
        for i, name in enumerate(names):
            color = (120, 120, 120) if name in dashed else _COLORS[i % len(_COLORS)]
            yy = ly + 18 + 22 * i
            if name in dashed:
                _dashed(img, (lx + 8, yy - 4), (lx + 40, yy - 4), color, 2, dash=6)
            else:
                cv2.line(img, (lx + 8, yy - 4), (lx + 40, yy - 4), color, 2, cv2.LINE_AA)
            cv2.circle(img, (lx + 24, yy - 4), 4, color, -1, cv2.LINE_AA)
            cv2.putText(img, name, (lx + 48, yy), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    if not cv2.imwrite(path, img):
        raise InputError(f"{path}: cannot write the plot")
    return img


# ---------------------------------------------------------------------------------------------- driver
def command_line(args) -> str:
    """The command that reproduces this run (the flags that were given, as parsed)."""
    parts = ["dil-fast study generalization", "--scale", "tiny" if args.tiny else args.scale, "--task", args.task]
    for name in ("variants", "trainset", "testset", "device", "threads", "budget", "nf", "nb", "gc", "patch_size",
                 "batch_size", "lr", "meta_lr"):
        value = getattr(args, name)
        if value is not None:
            parts += [f"--{name}", str(value)]
    if args.seed != 1:
        parts += ["--seed", str(args.seed)]
    return " ".join(parts + ["--out", args.out])


def run_generalization(args) -> int:
    import torch

    from . import __version__
    from .train.evaluate import resolve_device

    task = TASKS[args.task]
    preset = PRESETS[args.scale]
    overrides = {k: getattr(args, k) for k in ("nf", "nb", "gc", "patch_size", "batch_size", "lr", "meta_lr")
                 if getattr(args, k) is not None}
    if args.budget is not None:
        if args.budget < 1:
            raise FlagError(f"--budget must be a positive number of meta-iterations, got {args.budget}")
        overrides["budget"] = args.budget
    if args.tiny:
        preset = replace(PRESETS["tiny"], **overrides)
    else:
        preset = replace(preset, **overrides)
    methods = parse_methods(args.variants or preset.variants)
    if args.scale == "gpu" and not args.trainset and not args.tiny:
        raise FlagError("--scale gpu needs --trainset (a folder of training patches, e.g. DF2K cut 256/256, "
                        "or a packed store)")
    device = resolve_device(args.device)
    if args.threads is not None:
        if args.threads < 1:
            raise FlagError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    log_path = os.path.join(out, "study.log")
    logf = open(log_path, "a", encoding="utf-8")

    def log(msg: str) -> None:
        line = f"[study {time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    t_start = time.time()
    scale_name = "tiny" if args.tiny else args.scale
    log(f"generalization study: task {task.name}, scale {scale_name}, methods {', '.join(methods)}, "
        f"RRDB nf={preset.nf} nb={preset.nb} gc={preset.gc}, patch {preset.patch_size}, batch "
        f"{preset.batch_size} x {len(task.seen)} confounders, {preset.budget} meta-iterations each, device {device}, "
        f"{torch.get_num_threads()} threads")
    store = prepare_trainset(out, preset, args.trainset, progress=False)
    images = load_test_images(args.testset, preset.test_max_side)
    # the trainer's own periodic test (sigma 50 at epoch 0) runs on one small crop, not the study's test set
    from .data.builtin import center_crop
    from .data.images import write_image_rgb

    trainer_test = os.path.join(out, "data", "trainer_test")
    os.makedirs(trainer_test, exist_ok=True)
    write_image_rgb(os.path.join(trainer_test, "probe.png"), center_crop(images[0][1], 32))
    from .data.store import PatchStore

    n_patches = PatchStore(store, "cpu", verify=False).count
    log(f"training store {store}: {n_patches} patches; test set: {len(images)} images "
        f"({', '.join(f'{n} {im.shape[1]}x{im.shape[0]}' for n, im in images)})")

    levels = list(task.seen) + list(task.unseen)
    rows: list[dict] = []
    runs: list[MethodRun] = []
    for level in levels:
        p, s = evaluate_level(None, task, images, level, args.seed, device)
        rows.append({"method": "input", "level": level, "seen": level in task.seen, "psnr": p, "ssim": s})
    for i, method in enumerate(methods):
        log(f"[{i + 1}/{len(methods)}] training {method} ...")
        model, run = train_method(method, task, preset, store, trainer_test, out, seed=args.seed, device=str(device),
                                  budget=preset.budget)
        runs.append(run)
        log(f"[{i + 1}/{len(methods)}] {method}: {run.trainer_iterations} iterations, {run.optimizer_steps} "
            f"optimizer steps, {run.images_seen} images in {run.seconds:.0f} s; evaluating at {len(levels)} levels")
        for level in levels:
            p, s = evaluate_level(model, task, images, level, args.seed, device)
            rows.append({"method": method, "level": level, "seen": level in task.seen, "psnr": p, "ssim": s})
        log("    " + "  ".join(f"{_fmt_level(r['level'])}:{r['psnr']:.2f}" for r in rows if r["method"] == method))
        del model

    total = time.time() - t_start
    conditions = {
        "command": command_line(args),
        "task": f"{task.name}, training confounders {task.confounders}",
        "model": f"RRDBNet nf={preset.nf} nb={preset.nb} gc={preset.gc}",
        "data": f"{n_patches} training patches ({args.trainset or 'built-in sample images'}), patch "
                f"{preset.patch_size}, batch {preset.batch_size} per confounder",
        "optimizer": f"lr {preset.lr:g}, meta_lr {preset.meta_lr:g}, L1 loss, seed {args.seed}, no LR decay",
        "test": f"{len(images)} images ({args.testset or 'built-in'}), noise seed {args.seed}",
        "machine": f"{device} ({platform.processor() or platform.machine()}), {torch.get_num_threads()} torch threads"
                   + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""),
        "versions": f"dil_fast {__version__}, torch {torch.__version__}, numpy {np.__version__}, "
                    f"python {platform.python_version()}",
        "total time": f"{total:.0f} s",
    }
    write_csv(os.path.join(out, "results.csv"), task, rows)
    with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
        f.write(f"# Generalization study: {task.name}, scale {scale_name}\n\n")
        f.write(markdown_tables(task, rows, runs, conditions))
    series = {}
    for r in rows:
        series.setdefault(r["method"], []).append((float(r["level"]), r["psnr"]))
    plot = os.path.join(out, f"generalization_{task.name}.png")
    plot_generalization(plot, series, (min(task.seen), max(task.seen)),
                        f"{task.name}: PSNR vs level, RRDB nf{preset.nf} nb{preset.nb}, "
                        f"{preset.budget} meta-iterations",
                        task.axis)
    log(f"done in {total:.0f} s: {os.path.join(out, 'results.csv')}, results.md, {os.path.basename(plot)}")
    logf.close()
    return 0


def add_study_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("study", help="studies of the method's effect (generalization: ERM vs DIL)",
                              description="Reproducible studies; see docs/RESULTS-generalization.md.")
    sub = p.add_subparsers(dest="study", metavar="STUDY")
    sub.required = True
    g = sub.add_parser("generalization", help="train ERM and DIL variants with equal budgets, PSNR at seen and "
                                              "unseen levels, CSV + markdown + PNG plot",
                       description="Train ERM and DIL variants with the same model, seed, data and number of "
                       "images seen; evaluate each at the training levels and at unseen levels; write results.csv, "
                       "results.md and generalization_<task>.png into --out. How budgets are matched: "
                       "docs/RESULTS-generalization.md and the dil_fast.study docstring.")
    g.add_argument("--scale", choices=("tiny", "cpu", "gpu"), default="cpu",
                   help="preset: tiny (CI, seconds), cpu (about 15 min on 2 CPU cores), gpu (<= 20 min on an H100, assumed)")
    g.add_argument("--tiny", action="store_true", help="same as --scale tiny")
    g.add_argument("--task", choices=tuple(TASKS), default="denoise")
    g.add_argument("--variants", default=None,
                   help="comma-separated methods (default: the preset's); any of the trainer's variants "
                        "(erm, sf, pf, ss, ps, ss-fo) and erm-steps")
    g.add_argument("--out", default=os.path.join("runs", "study"), help="output folder")
    g.add_argument("--trainset", default=None,
                   help="training patches (folder of equal-size PNGs or a packed store); default: the built-in images")
    g.add_argument("--testset", default=None, help="folder of clean test images; default: the built-in test images")
    g.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    g.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice); 1 is much faster on a CPU shared with "
                        "other busy processes")
    g.add_argument("--budget", type=int, default=None, help="meta-iterations per method (overrides the preset)")
    g.add_argument("--seed", type=int, default=1, help="training and test-noise seed")
    for name, typ in (("nf", int), ("nb", int), ("gc", int), ("patch_size", int), ("batch_size", int),
                      ("lr", float), ("meta_lr", float)):
        g.add_argument(f"--{name}", type=typ, default=None, help="override the preset")
    return p


def run_study(args) -> int:
    if args.study == "generalization":
        return run_generalization(args)
    raise FlagError(f"unknown study {args.study!r}")


def main(argv=None) -> int:
    """``python bench/study_generalization.py ARGS`` = ``dil-fast study generalization ARGS``."""
    from .cli import main as cli_main

    argv = list(sys.argv[1:] if argv is None else argv)
    return cli_main(["study", "generalization", *argv])
