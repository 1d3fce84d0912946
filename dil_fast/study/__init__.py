"""``dil-fast study generalization``: ERM against DIL at seen and unseen degradation levels.

Trains every requested method with the same model, seed, data and budget, evaluates each on a test
folder at the training levels and at unseen levels, and writes into ``--out``:

* ``results.csv``: one row per (method, level): ``task, method, confounder, level, seen, psnr, ssim``
  (means over the test images, in the task's metric convention);
* ``results.md``: the task and its seen and unseen levels, the PSNR table (methods x levels,
  seen/unseen means, DIL - ERM gaps), the budget table and the run's conditions;
* ``generalization_<task>.png``: PSNR against level, one line per method, the training levels shaded
  (drawn with OpenCV; no plotting library is needed). Numeric levels (noise, blur, JPEG) are drawn
  against their values, named ones (hybrid, rain, isp, realsr) against their position, the x-axis
  label naming each.

**Tasks.** ``--task`` is any row of :data:`dil_fast.tasks.TASKS`; each trains from clean patches
with its synthetic confounders (derain: synthetic rain standing in for the paper's three rain
datasets; realnoise: the camera-pipeline family ``isp``; realsr: Real-ESRGAN's degradations, order 1
or ``--order 2``, with the x4 model). The seen levels are the row's training confounders, the unseen
ones its ``eval_levels`` and periodic ``test`` less those (``--test_confounders`` replaces them);
a task with none unseen says so in the log and the report. The model, scale and metric (Y, crop
border) are the row's. Paired folders (``GT/`` + ``LQ/``: the real rain datasets, real SR or
real-noise pairs) are refused with the command that reads them (``dil-fast train``, ``dil-fast eval``).

**Budget matching.** One *meta-iteration* hands every method the same K batches of B patches (one
per confounder: K = 4, 3 for hybrid and derain), so every method sees ``K * B`` distorted patches
per meta-iteration and ``--budget`` meta-iterations in all. What each method does with them:

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

Evaluation: every level through :func:`dil_fast.eval.evaluate` (plain Gaussian noise on the
released numpy path, every other level by :func:`dil_fast.degrade.counterfactual`; image ``i``
seeded by ``(--seed, i)``, identical for every method). The ``input`` row is the do-nothing
baseline scored the same way: the degraded input itself (quantised to 8 bits), bicubically
upsampled for x4 super-resolution.
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from dataclasses import replace

import numpy as np

from ..errors import FlagError
from .methods import (
    PRESETS,
    TASK_NAMES,
    MethodRun,
    StudyTask,
    check_methods,
    check_synthetic_data,
    evaluate_level,
    load_test_images,
    parse_methods,
    prepare_trainset,
    study_task,
    train_method,
)
from .report import describe_levels, markdown_tables, plot_study, write_csv

__all__ = [
    "PRESETS",
    "TASK_NAMES",
    "StudyTask",
    "add_study_parser",
    "main",
    "run_generalization",
    "run_study",
    "study_task",
]


def command_line(args) -> str:
    """The command that reproduces this run (the flags that were given, as parsed)."""
    parts = ["dil-fast study generalization", "--scale", "tiny" if args.tiny else args.scale, "--task", args.task]
    if args.order != 1:
        parts += ["--order", str(args.order)]
    if args.test_confounders is not None:
        parts += ["--test_confounders", shlex.quote(args.test_confounders)]
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

    from ..devices import resolve_device

    task = study_task(args.task, args.order, args.test_confounders)
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
    check_methods(methods, task, preset.batch_size)
    check_synthetic_data(task, args.trainset, args.testset)
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
    with open(os.path.join(out, "study.log"), "a", encoding="utf-8") as logf:
        def log(msg: str) -> None:
            line = f"[study {time.strftime('%H:%M:%S')}] {msg}"
            print(line, flush=True)
            logf.write(line + "\n")
            logf.flush()

        return _study(args, task, preset, methods, device, out, log)


def _study(args, task: StudyTask, preset, methods: list[str], device, out: str, log) -> int:
    """Train, evaluate and report (the flags already checked; ``log`` prints and appends to study.log)."""
    import torch

    from .. import __version__

    t_start = time.time()
    scale_name = "tiny" if args.tiny else args.scale
    model_name = f"{task.row.arch} nf={preset.nf} nb={preset.nb} gc={preset.gc}"
    log(f"generalization study: task {task.name}, scale {scale_name}, methods {', '.join(methods)}, "
        f"{model_name}, patch {preset.patch_size}, batch {preset.batch_size} x {len(task.seen)} confounders, "
        f"{preset.budget} meta-iterations each, device {device}, {torch.get_num_threads()} threads")
    log(f"task {task.name}: {describe_levels(task)}")
    store = prepare_trainset(out, preset, args.trainset, progress=False)
    images = load_test_images(args.testset, preset.test_max_side)
    # the trainer's own periodic test (the task's test degradation) runs on one small crop, not the study's test set
    from ..data.builtin import center_crop
    from ..data.images import write_image_rgb

    trainer_test = os.path.join(out, "data", "trainer_test")
    os.makedirs(trainer_test, exist_ok=True)
    write_image_rgb(os.path.join(trainer_test, "probe.png"), center_crop(images[0][1], 32))
    from ..data.store import PatchStore

    n_patches = PatchStore(store, "cpu", verify=False).count
    log(f"training store {store}: {n_patches} patches; test set: {len(images)} images "
        f"({', '.join(f'{n} {im.shape[1]}x{im.shape[0]}' for n, im in images)})")

    rows: list[dict] = []
    runs: list[MethodRun] = []

    def evaluate_all(method: str, model) -> None:
        for level in task.levels:
            p, s = evaluate_level(model, task, images, level, args.seed, device)
            rows.append({"method": method, "level": level, "psnr": p, "ssim": s})

    evaluate_all("input", None)
    for i, method in enumerate(methods):
        log(f"[{i + 1}/{len(methods)}] training {method} ...")
        model, run = train_method(method, task, preset, store, trainer_test, out, seed=args.seed, device=str(device),
                                  budget=preset.budget)
        runs.append(run)
        log(f"[{i + 1}/{len(methods)}] {method}: {run.trainer_iterations} iterations, {run.optimizer_steps} "
            f"optimizer steps, {run.images_seen} images in {run.seconds:.0f} s; evaluating at {len(task.levels)} levels")
        evaluate_all(method, model)
        log("    " + "  ".join(f"{r['level'].name}:{r['psnr']:.2f}" for r in rows if r["method"] == method))
        del model

    total = time.time() - t_start
    baseline = "the degraded input itself" if task.row.scale == 1 else \
        f"the degraded input upsampled x{task.row.scale} (bicubic)"
    conditions = {
        "command": command_line(args),
        "task": f"{task.name}: {task.row.paper}; {task.row.note}",
        "confounders": describe_levels(task),
        "model": f"{model_name}, x{task.row.scale}",
        "data": f"{n_patches} training patches ({args.trainset or 'built-in sample images'}), patch "
                f"{preset.patch_size}, batch {preset.batch_size} per confounder",
        "optimizer": f"lr {preset.lr:g}, meta_lr {preset.meta_lr:g}, L1 loss, seed {args.seed}, no LR decay",
        "test": f"{len(images)} images ({args.testset or 'built-in'}), degraded by dil_fast.eval.evaluate with seed "
                f"{args.seed} (image i: seed, step i), metric {task.metric}; the input row is {baseline}",
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
    plot = os.path.join(out, f"generalization_{task.name}.png")
    plot_study(plot, task, rows, f"{task.name}: PSNR ({task.metric}) vs level, {task.row.arch} nf{preset.nf} "
                                 f"nb{preset.nb}, {preset.budget} meta-iterations")
    log(f"done in {total:.0f} s: {os.path.join(out, 'results.csv')}, results.md, {os.path.basename(plot)}")
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
                   help="preset: tiny (CI, seconds), cpu (denoise: about 15 min on 2 CPU cores; the blur, JPEG, hybrid "
                        "and rain tasks take 3-6x longer per meta-iteration there), gpu (<= 20 min on an H100, assumed)")
    g.add_argument("--tiny", action="store_true", help="same as --scale tiny")
    g.add_argument("--task", choices=TASK_NAMES, default="denoise",
                   help="a row of dil_fast.tasks: its training confounders are the seen levels, its eval levels "
                        "and periodic test beyond them the unseen ones; its model, scale and metric")
    g.add_argument("--order", type=int, default=1, choices=(1, 2),
                   help="--task realsr: Real-ESRGAN's first- or second-order degradation")
    g.add_argument("--test_confounders", default=None,
                   help="the held-out levels, a confounder list such as noise:25,30,40,50,70 (default: the task's "
                        "eval levels and periodic test that it does not train on)")
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
    from ..cli import main as cli_main

    argv = list(sys.argv[1:] if argv is None else argv)
    return cli_main(["study", "generalization", *argv])
