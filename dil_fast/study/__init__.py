"""``dil-fast study generalization``: does DIL generalise better than ERM? Curves, seeds, intervals.

Trains every requested method at every seed with the same model, data and budget (in images
seen), through the trainer's fast path (:mod:`dil_fast.study.runner`); scores each run at the
task's seen and unseen levels on one or more test sets every ``--eval_every`` meta-iterations
(:mod:`dil_fast.study.evaluator`: batched on the device, the numbers of :func:`dil_fast.eval.evaluate`);
reports each run by the mean of its last ``--last_evals`` points, methods by mean +- std over
seeds, and every DIL method against ERM by the paired difference over (seed, test image) with a
95 % interval and a verdict (:mod:`dil_fast.study.stats`). Writes into ``--out``:

* ``results.md``: the verdict lines, the summary across test sets, per test set the PSNR table,
  the paired differences and SSIM, the budget / wall-time table, the plan and the conditions;
* ``results.csv``: the same numbers (``score`` and ``difference`` rows);
* ``curves.csv``: every evaluation of every run, per test set, level and image;
* ``generalization_<task>.png``: the curves per level (seen solid, unseen dashed), unseen against
  seen PSNR along training, and the differences to ERM with their intervals (matplotlib; without
  it, the OpenCV plot of PSNR against level);
* ``study.log``: what was printed; ``runs/<task>/<method>/seed<N>/last.pt``: each run's final
  training state (``dil-fast eval --ckpt`` reads it); ``data/``: the packed training store.

**Methods** (``--variants``): the trainer's variants (``erm``, ``sf``, ``pf``, ``ss``, ``ps``,
``ss-fo``), ``erm-steps`` (ERM at ``B/K`` per confounder for ``K`` steps per meta-iteration: the
images *and* the weight updates of ``sf``), and any of them with ``-bf``: the same on the bias-free
RRDB (``--arch_kwargs '{"bias": false}'``, Mohan et al. 2020).

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

Wall time is reported beside it (train time per run, evaluations excluded). Learning rates are
the same for every method (``lr`` = ERM's and the task learning rate, ``meta_lr`` = the meta
learning rate), all following one schedule (:func:`dil_fast.study.runner.lr_factor`).

**Presets** (``--scale``): ``tiny`` (CI, seconds), ``cpu`` (every method x 3 seeds in about 90
minutes on 2 CPU cores at one thread), ``gpu`` (ERM, DIL_sf and the bias-free ERM in one device
call on an H200: ``bench/gpu_study.sh``). ``--dry-run`` prints the plan with the cost model's
estimate (:mod:`dil_fast.study.cost`) and trains nothing. ``--time_limit S`` bounds the training
and evaluation: at each run's second curve point, the budget of that run and of the runs after it
is cut to what fits as it measured; a run whose next interval would end past its time still stops at a curve
point, and the methods are then compared at the last point every run reached.

Evaluation: every level through :func:`dil_fast.eval.synthesis.degrade_image` (plain Gaussian
noise on the released numpy path, every other level by :func:`dil_fast.degrade.counterfactual`;
image ``i`` of a test set seeded by ``(--test_seed, i)``, identical for every method and seed). The
``input`` row is the do-nothing baseline scored the same way: the degraded input itself (quantised
to 8 bits), bicubically upsampled for x4 super-resolution.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import time
from dataclasses import replace

import numpy as np

from ..errors import FlagError
from .methods import (
    PRESETS,
    TASK_NAMES,
    DegradedInput,
    StudyTask,
    check_methods,
    check_synthetic_data,
    parse_methods,
    parse_seeds,
    prepare_trainset,
    study_task,
)

__all__ = ["PRESETS", "TASK_NAMES", "StudyTask", "add_study_parser", "run_generalization", "run_study", "study_task"]

_OVERRIDES = (
    "nf",
    "nb",
    "gc",
    "patch_size",
    "batch_size",
    "lr",
    "meta_lr",
    "budget",
    "eval_every",
    "last_evals",
    "test_max_side",
    "decay_from",
    "lr_floor",
)
REPORT_RESERVE_S = 8.0  # of --time_limit: the final evaluation's SSIM, the report and the plot


def command_line(args) -> str:
    """The command that reproduces this run (the flags that were given, as parsed)."""
    parts = ["dil-fast study generalization", "--scale", "tiny" if args.tiny else args.scale, "--task", args.task]
    if args.order != 1:
        parts += ["--order", str(args.order)]
    if args.test_confounders is not None:
        parts += ["--test_confounders", shlex.quote(args.test_confounders)]
    for name in (
        "variants",
        "trainset",
        "device",
        "threads",
        "seeds",
        "crop",
        "stride",
        "test_seed",
        "time_limit",
    ) + _OVERRIDES:
        value = getattr(args, name)
        if value is not None:
            parts += [f"--{name}", shlex.quote(str(value))]
    if args.testset:
        parts += ["--testset"] + [shlex.quote(t) for t in args.testset]
    if getattr(args, "from_curves", None):
        parts += ["--from_curves"] + [shlex.quote(c) for c in args.from_curves]
    return " ".join(parts + ["--out", shlex.quote(args.out)])


def _preset(args):
    preset = PRESETS["tiny" if args.tiny else args.scale]
    overrides = {k: getattr(args, k) for k in _OVERRIDES if getattr(args, k) is not None}
    for name in ("budget", "eval_every", "last_evals", "nf", "nb", "gc", "patch_size", "batch_size"):
        if name in overrides and overrides[name] < (0 if name == "eval_every" else 1):
            raise FlagError(f"--{name} must be a positive whole number, got {overrides[name]}")
    for name in ("decay_from", "lr_floor"):
        if name in overrides and not 0 <= overrides[name] <= 1:
            raise FlagError(f"--{name} must be between 0 and 1, got {overrides[name]}")
    if args.seed is not None and args.seeds is not None:
        raise FlagError("--seed and --seeds: give one (--seed N is --seeds N)")
    seeds = parse_seeds(
        args.seeds if args.seeds is not None else (str(args.seed) if args.seed is not None else preset.seeds)
    )
    return replace(preset, **overrides), seeds


def run_generalization(args) -> int:
    import torch

    from ..devices import resolve_device

    task = study_task(args.task, args.order, args.test_confounders)
    preset, seeds = _preset(args)
    methods = parse_methods(args.variants or preset.variants)
    check_methods(methods, task, preset.batch_size)
    testsets = args.testset or ["default"]
    check_synthetic_data(task, args.trainset, testsets)
    if args.time_limit is not None and args.time_limit <= 0:
        raise FlagError(f"--time_limit must be a positive number of seconds, got {args.time_limit}")
    if args.threads is not None:
        if args.threads < 1:
            raise FlagError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.dry_run:  # a plan for a device this machine may not have
        import torch as _torch

        from .evaluator import load_testsets

        try:
            device = _torch.device(args.device or ("cuda" if _torch.cuda.is_available() else "cpu"))
        except (RuntimeError, ValueError):
            raise FlagError(f"--device {args.device}: not a device name (use cpu, cuda or cuda:N)") from None
        sets = load_testsets(testsets, preset.test_max_side, missing_ok=True)
        for line in plan_lines(task, preset, methods, seeds, sets, device, args):
            print(line)
        return 0
    if args.from_curves:
        return _report_from_curves(args, task, preset, methods, testsets)
    device = resolve_device(args.device)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "study.log"), "a", encoding="utf-8") as logf:

        def log(msg: str) -> None:
            line = f"[study {time.strftime('%H:%M:%S')}] {msg}"
            print(line, flush=True)
            logf.write(line + "\n")
            logf.flush()

        return _study(args, task, preset, methods, seeds, testsets, device, out, log)


def plan_lines(task: StudyTask, preset, methods: list[str], seeds: list[int], sets, device, args) -> list[str]:
    """The plan: runs, model, data, and the cost model's FLOPs and time per run (``--dry-run``)."""
    import torch

    from .cost import rates_for, rrdb_macs_per_pixel, run_cost

    k, scale = len(task.seen), task.row.scale
    macs = rrdb_macs_per_pixel(preset.nf, preset.nb, preset.gc, scale=scale)
    rates = rates_for(device.type, torch.get_num_threads())
    evals = (preset.budget // preset.eval_every if preset.eval_every else 0) + (
        0 if preset.eval_every and preset.budget % preset.eval_every == 0 else 1
    )
    eval_pixels = sum((img.shape[0] // scale) * (img.shape[1] // scale) for s in sets for _, img in s.images) * len(
        task.levels
    )
    lines = [
        f"plan: task {task.name}, {len(methods)} method(s) x {len(seeds)} seed(s) = {len(methods) * len(seeds)} "
        f"runs ({', '.join(methods)}; seeds {', '.join(map(str, seeds))}) on {device}",
        f"  model {task.row.arch} nf {preset.nf} nb {preset.nb} gc {preset.gc}: {macs:,} multiply-adds per "
        f"input pixel; patch {preset.patch_size}, batch {preset.batch_size} x {k} confounders; "
        f"{preset.budget} meta-iterations, a curve point every {preset.eval_every or preset.budget} "
        f"({evals} points), score = mean of the last {preset.last_evals}",
        f"  lr {preset.lr:g}, meta_lr {preset.meta_lr:g}, cosine from {preset.decay_from:g} of the budget to "
        f"x{preset.lr_floor:g}; test sets {', '.join(f'{s.label} ({len(s.images)} images)' for s in sets)} x "
        f"{len(task.levels)} levels = {eval_pixels / 1e6:.2f} M input pixels per point",
        f"  cost model (dil_fast.study.cost): {rates.note}",
        f"  {'method':<10} {'GFLOP/meta-it':>13} {'train TFLOP':>11} {'train s':>8} {'eval s':>7} "
        f"{'setup s':>7} {'run s':>7}",
    ]
    total = 0.0
    for m in methods:
        c = run_cost(
            m,
            macs_per_pixel=macs,
            k=k,
            batch=preset.batch_size,
            patch=preset.patch_size,
            budget=preset.budget,
            evals=evals,
            eval_pixels=eval_pixels,
            rates=rates,
        )
        total += c.total_s * len(seeds)
        lines.append(
            f"  {m:<10} {c.flops_per_meta_iteration / 1e9:>13.1f} {c.train_flops / 1e12:>11.1f} "
            f"{c.train_s:>8.1f} {c.eval_s:>7.1f} {c.setup_s:>7.1f} {c.total_s:>7.1f}"
        )
    limit = f"; --time_limit {args.time_limit:g} s" if args.time_limit else ""
    lines.append(
        f"  estimated total: {total:.0f} s ({total / 60:.1f} min) for {len(methods) * len(seeds)} runs, "
        f"data preparation and start-up not included{limit}"
    )
    return lines


def _study(
    args, task: StudyTask, preset, methods: list[str], seeds: list[int], testsets: list[str], device, out: str, log
) -> int:
    """Train, evaluate and report (the flags already checked; ``log`` prints and appends to study.log)."""
    import torch

    from .. import __version__
    from ..data.store import PatchStore
    from .cost import patches_per_meta_iteration
    from .evaluator import BatchedEvaluator, load_testsets
    from .results import StudyResults
    from .runner import train_run

    t_start = time.monotonic()
    deadline = None if args.time_limit is None else t_start + args.time_limit - REPORT_RESERVE_S
    load0 = _load()
    scale_name = "tiny" if args.tiny else args.scale
    log(
        f"generalization study: task {task.name}, scale {scale_name}, methods {', '.join(methods)}, seeds "
        f"{', '.join(map(str, seeds))}, {task.row.arch} nf={preset.nf} nb={preset.nb} gc={preset.gc}, patch "
        f"{preset.patch_size}, batch {preset.batch_size} x {len(task.seen)} confounders, {preset.budget} "
        f"meta-iterations each, device {device}, {torch.get_num_threads()} threads, load average {load0}"
    )
    from .report import describe_levels

    log(f"task {task.name}: {describe_levels(task)}")
    store = prepare_trainset(
        out, preset, args.trainset, progress=False, crop=args.crop, stride=args.stride, workers=args.workers
    )
    sets = load_testsets(testsets, preset.test_max_side, log=log)
    n_patches = PatchStore(store, "cpu", verify=False).count
    plan = plan_lines(task, preset, methods, seeds, sets, device, args)
    for line in plan:
        log(line)
    log(
        f"training store {store}: {n_patches} patches; test sets: "
        + "; ".join(f"{s.label}: {', '.join(f'{n} {im.shape[1]}x{im.shape[0]}' for n, im in s.images)}" for s in sets)
    )
    evaluator = BatchedEvaluator(
        sets,
        task.levels,
        seed=args.test_seed,
        device=device,
        scale=task.row.scale,
        y=task.row.y,
        crop_border=task.row.crop_border,
        channels_last=device.type == "cuda",
    )
    input_psnr, input_ssim = evaluator(DegradedInput(task.row.scale), ssim=True)
    log("input: " + " | ".join(_summary(task, s.label, p) for s, p in zip(sets, input_psnr)))
    eval_every = preset.eval_every or preset.budget
    runs = []
    order = [(seed, m) for seed in seeds for m in methods]
    weights = [patches_per_meta_iteration(m, len(task.seen), preset.batch_size) for _, m in order]
    title = (
        f"{task.name}: {task.row.arch} nf{preset.nf} nb{preset.nb}, {preset.budget} meta-iterations, "
        f"seeds {','.join(map(str, seeds))}"
    )

    def results():
        return StudyResults(task, sets, runs, input_psnr, input_ssim, preset.last_evals)

    fitted = {"budget": preset.budget, "notes": [], "timing": None, "weight": None}

    def budget_hook(i: int):
        """At run ``i``'s second curve point: the budget that run and every run after it can have
        within --time_limit, from what run ``i`` measured (never more than the budget it has)."""
        asked = {"done": False}

        def hook(done, budget, timing):
            if deadline is None or asked["done"]:
                return None
            asked["done"] = True
            if fitted["timing"] is not None:  # the first run's set-up holds the one-time compilations: keep the largest
                timing = replace(timing, setup_s=max(timing.setup_s, fitted["timing"].setup_s))
            fitted["timing"], fitted["weight"] = timing, weights[i]
            per = timing.seconds_per_meta_iteration
            per_b = per + timing.eval_s / eval_every  # seconds per meta-iteration of budget, this run ...
            fixed = -done * per_b
            for w in weights[i + 1 :]:  # ... and every run after it
                per_b += per * w / weights[i] + timing.eval_s / eval_every
                fixed += timing.setup_s + timing.eval_s
            fit = int(0.95 * (deadline - time.monotonic() - fixed) / per_b) // eval_every * eval_every
            what = (
                f"measured {1000 * per:.1f} ms per meta-iteration of {order[i][1]}, {timing.eval_s:.2f} s per "
                f"curve point, {timing.setup_s:.1f} s of set-up per run"
            )
            if fit >= budget:
                log(f"    time check: {what}: the budget of {budget} meta-iterations fits --time_limit")
                return None
            fit = max(fit, done + eval_every, 2 * eval_every)
            fitted["budget"] = fit
            fitted["notes"].append(
                f"budget cut from {budget} to {fit} meta-iterations for {order[i][1]} and the runs "
                f"after it to fit --time_limit ({what})"
            )
            log(f"    time check: {fitted['notes'][-1]}")
            return fit

        return hook

    def end_by(i: int, t_open: float):
        """When run ``i`` must end: the deadline less what the runs after it need (as the last
        measurement predicts; before the first one, their share of the time left)."""

        def limit():
            if deadline is None:
                return None
            timing = fitted["timing"]
            if timing is None:
                return t_open + (deadline - t_open) * weights[i] / sum(weights[i:])
            evals = fitted["budget"] // eval_every + 1
            need = sum(
                fitted["budget"] * timing.seconds_per_meta_iteration * w / fitted["weight"]
                + timing.setup_s
                + evals * timing.eval_s
                for w in weights[i + 1 :]
            )
            return deadline - need

        return limit

    for i, (seed, method) in enumerate(order):
        log(f"[{i + 1}/{len(order)}] training {method}, seed {seed} (load average {_load()}) ...")

        def on_point(p, method=method, seed=seed):
            log(
                f"    {method} s{seed} @{p.meta_iteration}: loss {p.loss:.4f}, {p.seconds:.0f} s; "
                + " | ".join(_summary(task, s.label, x) for s, x in zip(sets, p.psnr))
            )

        r = train_run(
            method,
            task,
            preset,
            store,
            out,
            evaluator,
            seed=seed,
            device=str(device),
            budget=fitted["budget"],
            eval_every=eval_every,
            end_by=end_by(i, time.monotonic()),
            log=log,
            on_point=on_point,
            budget_hook=budget_hook(i),
        )
        runs.append(r)
        log(
            f"[{i + 1}/{len(order)}] {method} seed {seed}: {r.run.meta_iterations} meta-iterations, "
            f"{r.run.trainer_iterations} trainer iterations, {r.run.optimizer_steps} optimizer steps, "
            f"{r.run.images_seen} images in {r.run.seconds:.0f} s of training (load average {_load()}); "
            + _cost_check(r, method, task, preset, device)
        )
        last_of_seed = i + 1 == len(order) or order[i + 1][0] != seed
        _write_outputs(
            out,
            task,
            results(),
            args,
            preset,
            device,
            plan + fitted["notes"],
            t_start,
            load0,
            __version__,
            n_patches,
            scale_name,
            title,
            plot=last_of_seed,
            log=log,
        )
    log(
        f"done in {time.monotonic() - t_start:.0f} s (load average {_load()}): {os.path.join(out, 'results.md')}, "
        f"results.csv, curves.csv, generalization_{task.name}.png"
    )
    return 0


def _report_from_curves(args, task: StudyTask, preset, methods: list[str], testsets: list[str]) -> int:
    """``--from_curves``: the report, CSVs and figure of runs already made (their ``curves.csv``),
    e.g. one process per seed; nothing trains."""
    import torch

    from .. import __version__
    from .evaluator import load_testsets
    from .results import StudyResults, read_curves

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    t_start = time.monotonic()
    sets = load_testsets(testsets, preset.test_max_side)
    runs, input_psnr, input_ssim = read_curves(args.from_curves, task, sets, batch_size=preset.batch_size)
    rank = {m: i for i, m in enumerate(methods)}
    runs.sort(key=lambda r: (rank.get(r.run.method, len(rank)), r.run.seed))
    res = StudyResults(task, sets, runs, input_psnr, input_ssim, preset.last_evals)
    seeds = res.seeds
    device = torch.device("cpu")
    plan = plan_lines(task, preset, res.methods, seeds, sets, device, args)
    title = (
        f"{task.name}: {task.row.arch} nf{preset.nf} nb{preset.nb}, {res.horizon} meta-iterations, "
        f"seeds {','.join(map(str, seeds))}"
    )
    print(f"report of {len(runs)} runs from {', '.join(args.from_curves)} into {out}")
    _write_outputs(
        out,
        task,
        res,
        args,
        preset,
        device,
        plan,
        t_start,
        _load(),
        __version__,
        0,
        "tiny" if args.tiny else args.scale,
        title,
        plot=True,
        log=print,
    )
    return 0


def _write_outputs(
    out,
    task,
    res,
    args,
    preset,
    device,
    plan,
    t_start,
    load0,
    version,
    n_patches,
    scale_name,
    title,
    *,
    plot: bool,
    log,
) -> None:
    import torch

    from .plots import plot_figure
    from .report import markdown_report, plot_study, write_curves, write_results_csv

    total = time.monotonic() - t_start
    baseline = (
        "the degraded input itself"
        if task.row.scale == 1
        else f"the degraded input upsampled x{task.row.scale} (bicubic)"
    )
    conditions = {
        "command": command_line(args),
        "task": f"{task.name}: {task.row.paper}; {task.row.note}",
        "model": f"{task.row.arch} nf {preset.nf}, nb {preset.nb}, gc {preset.gc}, x{task.row.scale}; "
        "`-bf`: the same without any bias",
        "data": ("the runs' (--from_curves " + " ".join(args.from_curves) + ")")
        if args.from_curves
        else f"{n_patches} training patches ({args.trainset or 'the built-in training images'}, cut "
        f"{args.crop or preset.crop}/{args.stride or preset.stride}), patch {preset.patch_size}, batch "
        f"{preset.batch_size} per confounder",
        "optimizer": f"lr {preset.lr:g}, meta_lr {preset.meta_lr:g} (every optimizer x the same factor: 1, then a "
        f"half cosine from {preset.decay_from:g} of the budget to x{preset.lr_floor:g}), L1 loss",
        "test": f"test noise seeded per image (--test_seed {args.test_seed}, image i), metric {task.metric}; the "
        f"input row is {baseline}",
        "machine": ("this report's process (the runs': their study.log): " if args.from_curves else "")
        + f"{device} ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs), "
        f"{torch.get_num_threads()} torch threads"
        + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "")
        + f"; load average at the start {load0}, now {_load()}",
        "versions": f"dil_fast {version}, torch {torch.__version__}, numpy {np.__version__}, python "
        f"{platform.python_version()}",
        "time": f"{total:.0f} s from the start of the study to this report",
    }
    write_curves(os.path.join(out, "curves.csv"), res)
    write_results_csv(os.path.join(out, "results.csv"), res)
    from ..fileio import atomic_write_bytes

    md = markdown_report(res, f"Generalization study: {task.name}, scale {scale_name}", conditions, plan)
    atomic_write_bytes(md.encode("utf-8"), os.path.join(out, "results.md"))
    if plot:
        path = os.path.join(out, f"generalization_{task.name}.png")
        if not plot_figure(path, res, title):
            rows = [
                {"method": m, "level": lv, "psnr": res.cell(m, 0, [i])[0]}
                for m in ["input"] + res.methods
                for i, lv in enumerate(task.levels)
            ]
            plot_study(path, task, rows, title + f" ({res.testsets[0].label}; no matplotlib: no curves)")
            log("matplotlib is not installed: the plot shows PSNR against level only (pip install matplotlib)")


def _cost_check(r, method: str, task: StudyTask, preset, device) -> str:
    """The cost model against the run: its FLOPs per meta-iteration over the measured time per
    meta-iteration after the first curve point (the first interval holds the set-up)."""
    import torch

    from .cost import patches_per_meta_iteration, rates_for, rrdb_macs_per_pixel

    pts = r.points
    if len(pts) < 2 or pts[-1].meta_iteration == pts[0].meta_iteration:
        return "too few curve points to time an interval"
    per = (pts[-1].seconds - pts[0].seconds) / (pts[-1].meta_iteration - pts[0].meta_iteration)
    macs = rrdb_macs_per_pixel(preset.nf, preset.nb, preset.gc, scale=task.row.scale)
    flops = patches_per_meta_iteration(method, len(task.seen), preset.batch_size) * preset.patch_size**2 * macs * 6
    assumed = rates_for(device.type, torch.get_num_threads()).train
    return (
        f"cost model: {flops / 1e9:.1f} GFLOP per meta-iteration in {1000 * per:.1f} ms = "
        f"{flops / per / 1e12:.3g} TFLOP/s achieved, the plan assumed {assumed / 1e12:.3g}"
    )


def _summary(task: StudyTask, label: str, psnr) -> str:
    k = len(task.seen)
    text = f"{label} seen {psnr[:k].mean():.2f}"
    return text + (f" unseen {psnr[k:].mean():.2f}" if task.unseen else "")


def _load() -> str:
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def add_study_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "study",
        help="studies of the method's effect (generalization: ERM vs DIL)",
        description="Reproducible studies; see docs/RESULTS-generalization.md.",
    )
    sub = p.add_subparsers(dest="study", metavar="STUDY")
    sub.required = True
    g = sub.add_parser(
        "generalization",
        help="train ERM and DIL variants at several seeds with equal budgets; "
        "curves at seen and unseen levels, paired intervals, verdicts",
        description="Train ERM and DIL variants with the same model, data and number of images seen, "
        "at every seed; score each at the training levels and at unseen levels along training; report "
        "mean +- std over seeds and the paired DIL - ERM difference with a 95 % interval. Writes "
        "results.md, results.csv, curves.csv and generalization_<task>.png into --out "
        "(docs/RESULTS-generalization.md).",
    )
    g.add_argument(
        "--scale",
        choices=("tiny", "cpu", "gpu"),
        default="cpu",
        help="preset: tiny (CI, seconds), cpu (every method x 3 seeds, about 90 min on 2 CPU cores at one "
        "thread), gpu (erm, sf, erm-bf in one device call on an H200: bench/gpu_study.sh)",
    )
    g.add_argument("--tiny", action="store_true", help="same as --scale tiny")
    g.add_argument(
        "--task",
        choices=TASK_NAMES,
        default="denoise",
        help="a row of dil_fast.tasks: its training confounders are the seen levels, its eval levels "
        "and periodic test beyond them the unseen ones; its model, scale and metric",
    )
    g.add_argument(
        "--order",
        type=int,
        default=1,
        choices=(1, 2),
        help="--task realsr: Real-ESRGAN's first- or second-order degradation",
    )
    g.add_argument(
        "--test_confounders",
        default=None,
        help="the held-out levels, a confounder list such as noise:25,30,40,50,70 (default: the task's "
        "eval levels and periodic test that it does not train on)",
    )
    g.add_argument(
        "--variants",
        default=None,
        help="comma-separated methods (default: the preset's): the trainer's variants (erm, sf, pf, ss, ps, "
        "ss-fo), erm-steps, and any of them + '-bf' for the bias-free RRDB (erm-bf)",
    )
    g.add_argument(
        "--seeds",
        default=None,
        help="comma-separated training seeds, every method at each (default: the preset's: cpu 1,2,3)",
    )
    g.add_argument("--seed", type=int, default=None, help="one training seed (= --seeds N)")
    g.add_argument("--out", default=os.path.join("runs", "study"), help="output folder")
    g.add_argument(
        "--trainset",
        default=None,
        help="a folder of clean images (cut by --crop/--stride, else taken as ready equal-size patches) "
        "or a packed store; default: the built-in training images",
    )
    g.add_argument(
        "--crop",
        type=int,
        default=None,
        help="cut the training images into CROP x CROP patches (default for the built-in images: the preset's)",
    )
    g.add_argument("--stride", type=int, default=None, help="... on a grid of this step (default: --crop)")
    g.add_argument("--workers", type=int, default=1, help="processes that decode and cut the training images")
    g.add_argument(
        "--testset",
        nargs="+",
        default=None,
        help="one or more test sets, each 'default' (the built-in images) or a folder of clean images; "
        "reported side by side",
    )
    g.add_argument(
        "--test_max_side",
        type=int,
        default=None,
        help="centre-crop test images to at most this side (0: whole; default: the preset's)",
    )
    g.add_argument(
        "--test_seed",
        type=int,
        default=1,
        help="test noise seed: image i of a test set draws from "
        "(test_seed, i), the same for every method and training seed",
    )
    g.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    g.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice); 1 is much faster on a CPU shared with other busy processes",
    )
    g.add_argument("--budget", type=int, default=None, help="meta-iterations per run (overrides the preset)")
    g.add_argument(
        "--eval_every",
        type=int,
        default=None,
        help="a curve point every N meta-iterations, and one at the end (0: only at the end)",
    )
    g.add_argument(
        "--last_evals",
        type=int,
        default=None,
        help="a run's score is the mean of its last N curve points (default: the preset's)",
    )
    g.add_argument(
        "--decay_from",
        type=float,
        default=None,
        help="every learning rate follows a half cosine from this fraction of the budget ...",
    )
    g.add_argument("--lr_floor", type=float, default=None, help="... down to this fraction of its value (1: constant)")
    g.add_argument(
        "--time_limit",
        type=float,
        default=None,
        help="seconds for the whole study: every run's budget is cut to what fits (measured on the first "
        "run), a run that would still overrun stops at a curve point, and the methods are compared at "
        "the last point all reached",
    )
    g.add_argument(
        "--from_curves",
        nargs="+",
        default=None,
        metavar="CSV",
        help="train nothing: write the report, results.csv, curves.csv and the figure of the runs in these "
        "curves.csv files (e.g. one study process per seed; give the same --scale, --testset and "
        "overrides they ran with)",
    )
    g.add_argument(
        "--dry-run",
        "--dry_run",
        dest="dry_run",
        action="store_true",
        help="print the plan with the cost model's estimate and exit",
    )
    for name, typ in (
        ("nf", int),
        ("nb", int),
        ("gc", int),
        ("patch_size", int),
        ("batch_size", int),
        ("lr", float),
        ("meta_lr", float),
    ):
        g.add_argument(f"--{name}", type=typ, default=None, help="override the preset")
    return p


def run_study(args) -> int:
    if args.study == "generalization":
        return run_generalization(args)
    raise FlagError(f"unknown study {args.study!r}")
