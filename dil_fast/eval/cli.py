"""``dil-fast eval``: restore a test set with one or more checkpoints and report PSNR/SSIM, at the
released ``--level``, at a task's or a confounder list's levels, on a paired folder, or across a
sweep with a plot. The flags, the outputs and the errors are in :mod:`dil_fast.eval`'s docstring.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass

import torch

from ..data.folders import DEFAULT_FILENAME_TMPL, check_filename_tmpl
from ..data.images import tensor_to_uint8
from ..devices import resolve_device
from ..errors import CheckpointError, FlagError, InputError
from ..models.registry import ARCHS, model_scale, parse_arch_kwargs
from ..tasks import TASKS
from .checkpoint import EvalCheckpoint, load_checkpoint, parse_ckpt_arg
from .levels import NUMERIC_FAMILIES, EvalLevel, noise_level, parse_levels, parse_sweep, training_range
from .output import StagedFolder, format_log, format_sections, mean_scores, results_csv, side_by_side, sweep_csv
from .plot import PLOT_SIZE, plot_generalization
from .scoring import iter_evaluate, iter_evaluate_pairs
from .synthesis import mod_crop, needs_final_resize
from .testsets import is_paired_testset, load_paired_folder, load_paired_images, load_test_images, output_names

__all__ = ["add_eval_parser", "run_eval"]

RELEASED_LEVEL = 50.0  # the released script's --level default
SSIM_WINDOW = 11  # the Gaussian window of dil_fast.metrics' SSIM
LOG, RESULTS, SWEEP_CSV, SWEEP_PNG = "log.txt", "results.csv", "sweep.csv", "sweep.png"
COMPARE_SUFFIX = "_input_output_gt.png"


@dataclass
class _Section:
    """The scores of one checkpoint at one level (one section of log.txt)."""

    label: str
    confounder: str
    level: str
    title: str
    value: float | None  # the level as a number (a sweep's x)
    scores: list  # [(name, psnr, ssim)]

    def row(self) -> tuple[str, str, str, list]:
        return self.label, self.confounder, self.level, self.scores


@dataclass
class _Plan:
    """Everything a run needs, validated before anything is written."""

    ckpts: list[EvalCheckpoint]
    levels: list[EvalLevel] | None  # None: the paired folder
    images: list  # [(name, HxWx3)] or, paired, [(name, GT, LQ)]
    paired_level: str  # the level column of a paired run (the --lq or paired --testset folder's name)
    scale: int
    seed: int
    y: bool
    crop_border: int
    device: torch.device
    sweep: bool
    write_images: bool  # the restored images (not in a sweep unless --save_inputs)
    save_inputs: bool
    out_names: list[str]
    plot_size: tuple[int, int]
    train_range: tuple[float, float] | None


def _number_pair(text: str, flag: str, sep: str) -> tuple[float, float]:
    parts = text.split(sep)
    try:
        a, b = (float(p) for p in parts)
    except ValueError:
        raise FlagError(f"{flag} {text}: expected two numbers separated by {sep!r}") from None
    if not (math.isfinite(a) and math.isfinite(b)):
        raise FlagError(f"{flag} {text}: the numbers must be finite")
    return a, b


def _plot_size(text: str | None) -> tuple[int, int]:
    if text is None:
        return PLOT_SIZE
    w, h = _number_pair(text.lower(), "--plot_size", "x")
    if not (w.is_integer() and h.is_integer() and 200 <= w <= 8192 and 150 <= h <= 8192):
        raise FlagError(f"--plot_size {text}: expected WIDTHxHEIGHT in pixels, 200..8192 x 150..8192")
    return int(w), int(h)


def _train_range(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    lo, hi = _number_pair(text, "--train_range", ",")
    if lo > hi:
        raise FlagError(f"--train_range {text}: needs LO <= HI")
    return lo, hi


def _check_flags(args) -> None:
    if args.level is not None and (not math.isfinite(args.level) or args.level < 0):
        raise FlagError(f"--level must be a finite noise sigma >= 0 (0..255 scale), got {args.level}")
    if args.crop_border is not None and args.crop_border < 0:
        raise FlagError(f"--crop_border must be >= 0, got {args.crop_border}")
    for flag in ("scale", "nf", "nb", "gc"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise FlagError(f"--{flag} must be a positive integer, got {getattr(args, flag)}")
    modes = [f"--{m}" for m in ("level", "confounders", "sweep", "lq") if getattr(args, m) is not None]
    if len(modes) > 1:
        raise FlagError(f"give one of --level, --confounders, --sweep and --lq, got {' and '.join(modes)}")
    for flag in ("train_range", "plot_size"):
        if getattr(args, flag) is not None and args.sweep is None:
            raise FlagError(f"--{flag} belongs to --sweep (the plot)")


def _levels(args, task, paired_folder: bool) -> list[EvalLevel] | None:
    if paired_folder:
        given = [f"--{m}" for m in ("level", "confounders", "sweep") if getattr(args, m) is not None]
        if given:
            raise FlagError(
                f"--testset {args.testset} is a paired folder (GT/ and LQ/): its LQ images are the "
                f"inputs, drop {given[0]}"
            )
        return None
    if args.sweep is not None:
        return parse_sweep(args.sweep)
    if args.confounders is not None:
        return parse_levels(args.confounders, flag="--confounders")
    if args.level is not None:
        return [noise_level(args.level)]
    if args.lq is not None:
        return None
    if task is not None:
        return parse_levels(task.eval_levels, flag=f"--task {task.name}")
    return [noise_level(RELEASED_LEVEL)]


def _levels_flag(args) -> str:
    for flag in ("sweep", "confounders", "level", "task"):
        if getattr(args, flag) is not None:
            return f"--{flag} {getattr(args, flag)}"
    return "--level"


def _load_checkpoints(args, task) -> tuple[list[EvalCheckpoint], int]:
    try:
        arch_kwargs = parse_arch_kwargs(args.arch_kwargs)
    except ValueError as exc:
        raise FlagError(str(exc)) from None
    arch_kwargs.update({k: getattr(args, k) for k in ("nf", "nb", "gc") if getattr(args, k) is not None})
    named = [parse_ckpt_arg(text) for text in args.ckpt]
    labels = [label for label, _ in named]
    for label in labels:
        if labels.count(label) > 1:
            raise FlagError(f"--ckpt: two checkpoints are labelled {label!r}; name them LABEL=PATH")
        if os.sep in label or (os.altsep and os.altsep in label) or label.startswith("."):
            raise FlagError(f"--ckpt {label}=...: a label is a folder name (no path separator, no leading dot)")
    ckpts = [
        load_checkpoint(label, path, arch=args.arch, arch_kwargs=arch_kwargs, key=args.key, run_folder=True)
        for label, path in named
    ]
    for ck in ckpts:
        if ck.described_by is not None:  # a model_N.pt: its run folder said which network
            print(f"{ck.label}: {ck.arch} {ck.kwargs} (from {ck.described_by})")
    wanted = args.scale or (task.scale if task is not None else None)
    why = f"--scale {args.scale}" if args.scale else f"--task {task.name}" if task is not None else None
    scales = {}
    for ck in ckpts:
        own = model_scale(ck.model)
        if wanted is not None and hasattr(ck.model, "upscale") and own != wanted:
            raise CheckpointError(f"{ck.path}: holds a x{own} {ck.arch} network; {why} evaluates x{wanted}")
        scales[ck.label] = wanted or own
    if len(set(scales.values())) > 1:
        raise CheckpointError(
            "--ckpt: the checkpoints have different scales ("
            + ", ".join(f"{k} x{v}" for k, v in scales.items())
            + "); evaluate them separately"
        )
    return ckpts, next(iter(scales.values()))


def _check_sizes(args, images, levels, scale: int, crop_border: int) -> None:
    """Every image fits every level and SSIM's window, checked before any output exists."""
    for name, img, *_ in images:
        clean = mod_crop(img, scale)
        h, w = clean.shape[:2]
        if h < scale or w < scale:
            raise InputError(f"{name}: {img.shape[0]}x{img.shape[1]} is smaller than the scale {scale}")
        if h - 2 * crop_border < SSIM_WINDOW or w - 2 * crop_border < SSIM_WINDOW:
            raise InputError(
                f"{name}: {h}x{w} less --crop_border {crop_border} on each side is smaller than "
                f"SSIM's {SSIM_WINDOW}x{SSIM_WINDOW} window"
            )
        for level in levels or ():
            try:
                needs_final_resize(level, scale, h, w)
            except ValueError as exc:
                raise FlagError(f"{_levels_flag(args)}: {name}: {exc}") from None


def _check_save(args, write_images: bool, out_names: list[str], save_inputs: bool) -> None:
    """``--save`` can be created and written, is no input folder, and no two outputs share a name."""
    save = os.path.abspath(args.save)
    for flag in ("testset", "lq"):
        folder = getattr(args, flag)
        if folder not in (None, "default") and os.path.isdir(save) and os.path.samefile(folder, save):
            raise InputError(f"--save {args.save}: is the --{flag} folder; the outputs would mix with the test images")
    path = save
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise InputError(f"--save {args.save}: cannot create the folder ({path} is a file)")
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError(f"--save {args.save}: folder is not writable ({path})")
    if write_images:
        compare = [os.path.splitext(n)[0] + COMPARE_SUFFIX for n in out_names] if save_inputs else []
        reserved = {LOG, RESULTS, SWEEP_CSV, SWEEP_PNG}
        clash = sorted((set(out_names) & set(compare)) | ((set(out_names) | set(compare)) & reserved))
        if clash:
            raise InputError(f"--save {args.save}: two outputs would be named {clash[0]}; rename that test image")


def _plan(args) -> _Plan:
    _check_flags(args)
    if getattr(args, "sweep", None) or getattr(args, "save_inputs", False):
        from .plot import matplotlib_missing

        missing = matplotlib_missing()
        if missing:
            raise FlagError(f"{'--sweep' if getattr(args, 'sweep', None) else '--save_inputs'}: {missing}")
    task = TASKS[args.task] if args.task is not None else None
    paired_folder = args.lq is None and is_paired_testset(args.testset)
    levels = _levels(args, task, paired_folder)
    plot_size, train_range_flag = _plot_size(args.plot_size), _train_range(args.train_range)
    y = args.y if args.y is not None else (task.y if task is not None else False)
    crop_border = args.crop_border if args.crop_border is not None else (task.crop_border if task is not None else 0)
    device = resolve_device(args.device)
    tmpl = _filename_tmpl(args, paired=args.lq is not None or paired_folder)
    ckpts, scale = _load_checkpoints(args, task)
    if args.lq is not None:
        images, paired_level = load_paired_images(args.testset, args.lq, scale, filename_tmpl=tmpl), args.lq
    elif paired_folder:
        images, paired_level = load_paired_folder(args.testset, scale, filename_tmpl=tmpl), args.testset
    else:
        images, paired_level = load_test_images(args.testset), ""
    _check_sizes(args, images, levels, scale, crop_border)
    sweep = args.sweep is not None
    write_images = not sweep or args.save_inputs
    out_names = output_names([im[0] for im in images])
    _check_save(args, write_images, out_names, args.save_inputs)
    train_range = None
    if sweep:
        train_range, source = _sweep_train_range(ckpts, levels[0].family)
        if train_range is None and train_range_flag is not None:
            train_range, source = train_range_flag, "--train_range"
        if train_range is not None:
            print(f"training range: {train_range[0]:g}..{train_range[1]:g} ({source})")
    paired_name = os.path.basename(os.path.abspath(paired_level)) if paired_level else ""
    return _Plan(
        ckpts,
        levels,
        images,
        paired_name,
        scale,
        args.seed,
        y,
        crop_border,
        device,
        sweep,
        write_images,
        args.save_inputs,
        out_names,
        plot_size,
        train_range,
    )


def _filename_tmpl(args, paired: bool) -> str:
    """``--filename_tmpl``, checked; it names the LQ images of --lq or of a paired --testset only."""
    if args.filename_tmpl is None:
        return DEFAULT_FILENAME_TMPL
    if not paired:
        raise FlagError(
            f"--filename_tmpl {args.filename_tmpl!r} names degraded images: it needs --lq or a paired "
            "--testset (GT/, LQ/)"
        )
    return check_filename_tmpl(args.filename_tmpl)


def _sweep_train_range(ckpts: list[EvalCheckpoint], family: str) -> tuple[tuple[float, float] | None, str]:
    """The first checkpoint's training range of ``family`` and where it comes from (a note when
    the other checkpoints' differ)."""
    found = [(ck.label, training_range(ck.config, family)) for ck in ckpts]
    found = [(label, r) for label, r in found if r is not None]
    if not found:
        return None, ""
    if len({r for _, r in found}) > 1:
        print(
            "note: the training ranges differ ("
            + ", ".join(f"{label} {r[0]:g}..{r[1]:g}" for label, r in found)
            + f"); the plot shades {found[0][0]}'s"
        )
    return found[0][1], f"{found[0][0]}'s training state"


def _run(plan: _Plan, out: StagedFolder) -> list[_Section]:
    """Evaluate every (checkpoint, level), stage the images, print the log lines."""
    levels = plan.levels or [None]
    many_ckpts, many_levels = len(plan.ckpts) > 1, len(levels) > 1
    sections = []
    for ck in plan.ckpts:
        model = ck.model.to(plan.device).eval()
        for level in levels:
            if level is None:
                confounder, level_text, value = "paired", plan.paired_level, None
                results = iter_evaluate_pairs(
                    model, plan.images, device=plan.device, y=plan.y, crop_border=plan.crop_border, scale=plan.scale
                )
            else:
                confounder, level_text, value = level.family, level.level, level.value
                results = iter_evaluate(
                    model,
                    plan.images,
                    level,
                    seed=plan.seed,
                    device=plan.device,
                    y=plan.y,
                    crop_border=plan.crop_border,
                    scale=plan.scale,
                )
            title = (f"{ck.label} " if many_ckpts else "") + f"{confounder}:{level_text}"
            folder = os.path.join(ck.label if many_ckpts else "", level.folder if many_levels else "", "")
            if many_ckpts or many_levels:
                print(f"== {title} ==")
            scores = []
            for r, out_name in zip(results, plan.out_names):
                if plan.write_images:
                    out.write_image(folder + out_name, r.restored)
                if plan.save_inputs:
                    compare = side_by_side(tensor_to_uint8(r.degraded), r.restored, r.clean)
                    out.write_image(folder + os.path.splitext(out_name)[0] + COMPARE_SUFFIX, compare)
                scores.append((r.name, r.psnr, r.ssim))
                print(f"{r.name}: PSNR, {r.psnr}; SSIM, {r.ssim}.")
            print(format_log(scores).rsplit("\n", 1)[-1])
            sys.stdout.flush()
            sections.append(_Section(ck.label, confounder, level_text, title, value, scores))
        ck.model.cpu()  # one network on the device at a time
    return sections


def _plot_sweep(plan: _Plan, sections: list[_Section], path: str) -> None:
    family = plan.levels[0].family
    series = {
        ck.label: [(s.value, mean_scores(s.scores)[0]) for s in sections if s.label == ck.label] for ck in plan.ckpts
    }
    n = len(plan.images)
    plot_generalization(
        path,
        series,
        plan.train_range,
        f"PSNR against {family} level ({n} test images)",
        NUMERIC_FAMILIES[family],
        size=plan.plot_size,
        dashed=(),
    )


def run_eval(args) -> int:
    plan = _plan(args)
    with StagedFolder(args.save) as out:
        try:
            sections = _run(plan, out)
        except torch.cuda.OutOfMemoryError:
            raise InputError(
                f"--testset {args.testset}: an image does not fit in {plan.device} memory; try --device cpu"
            ) from None
        out.write_bytes(RESULTS, results_csv([s.row() for s in sections]))
        if plan.sweep:
            out.write_bytes(SWEEP_CSV, sweep_csv([s.row() for s in sections]))
            _plot_sweep(plan, sections, out.staged_path(SWEEP_PNG))
        out.write_bytes(LOG, format_sections([(s.title, s.scores) for s in sections]).encode("utf-8"))
        out.commit(last=LOG)
    return 0


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    tasks = ", ".join(TASKS)
    p = subparsers.add_parser(
        "eval",
        help="restore a test set with checkpoints and report PSNR/SSIM (the released eval script, any task, sweeps)",
        description="Degrade every image of --testset (Gaussian noise of --level as released, or a task's or "
        "--confounders' levels, or a --sweep), restore it with each --ckpt, write the restored images, "
        "results.csv and log.txt into --save (a sweep: sweep.csv and sweep.png). --lq evaluates a paired folder.",
    )
    p.add_argument(
        "--ckpt",
        required=True,
        nargs="+",
        metavar="[LABEL=]PATH",
        help="checkpoint(s): a training state, model_N.pt, a state_dict, BasicSR/Real-ESRGAN or official "
        "SwinIR; labelled by file stem or LABEL=PATH",
    )
    p.add_argument(
        "--testset",
        default=".",
        help="folder of clean (ground-truth) test images (default: the current folder, as released); "
        "'default': the built-in images; a paired folder (GT/ and LQ/) is evaluated on its pairs",
    )
    p.add_argument(
        "--lq",
        default=None,
        metavar="DIR",
        help="folder of degraded images matching --testset by file name stem (1/scale of the size for SR)",
    )
    p.add_argument(
        "--filename_tmpl",
        default=None,
        metavar="TMPL",
        help="name of each degraded image from its ground truth's name stem, BasicSR's filename_tmpl: '{}x4' pairs "
        "0801.png with 0801x4.png (--lq or a paired --testset; default '{}': the same stem)",
    )
    p.add_argument("--save", required=True, help="output folder (restored images, results.csv, log.txt)")
    p.add_argument(
        "--task",
        default=None,
        choices=list(TASKS),
        help=f"one of {tasks}: its eval levels, metric convention (Y, crop border) and scale",
    )
    p.add_argument(
        "--level",
        type=float,
        default=None,
        help=f"Gaussian noise sigma on 0..255, the released flag (default {RELEASED_LEVEL:g} when no "
        "--task, --confounders, --sweep or --lq is given)",
    )
    p.add_argument(
        "--confounders",
        default=None,
        help="levels to evaluate at: noise:30,40,50 | blur:4.2,5 | hybrid:mild,moderate,severe | "
        "jpeg:10,20,30 | bicubic:4 | ...; groups joined with ';' (default: the task's eval levels)",
    )
    p.add_argument(
        "--sweep",
        default=None,
        metavar="FAMILY:START:STOP:STEP",
        help="levels of one numeric family, an inclusive range (noise:5:70:5) or a list (blur:1,2,3); "
        "writes sweep.csv and sweep.png (no restored images unless --save_inputs)",
    )
    p.add_argument(
        "--train_range",
        default=None,
        metavar="LO,HI",
        help="the sweep plot's shaded training range when no checkpoint's training state gives one",
    )
    p.add_argument(
        "--plot_size",
        default=None,
        metavar="WxH",
        help=f"sweep plot size in pixels (default {PLOT_SIZE[0]}x{PLOT_SIZE[1]})",
    )
    p.add_argument("--seed", type=int, default=0, help="degradation seed; image i uses (seed, i) (default 0)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    p.add_argument(
        "--y",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="PSNR/SSIM on the BT.601 Y channel (--no-y: RGB) (default: the task's, else RGB)",
    )
    p.add_argument(
        "--crop_border",
        type=int,
        default=None,
        help="pixels removed on each side before the metrics (default: the task's, else 0)",
    )
    p.add_argument(
        "--scale", type=int, default=None, help="network output / input size (default: the task's, else the network's)"
    )
    p.add_argument(
        "--save_inputs",
        action="store_true",
        help="also write input | output | ground truth side by side (NAME_input_output_gt.png)",
    )
    p.add_argument(
        "--arch",
        default=None,
        help=", ".join(ARCHS.names()) + " or package.module:Class (default: from the checkpoint)",
    )
    p.add_argument("--arch_kwargs", default=None, help="JSON keyword arguments of --arch (override the checkpoint's)")
    p.add_argument(
        "--key",
        default="model_meta",
        choices=["model_meta", "model_task", "params_ema"],
        help="which network of a dil_fast checkpoint: the meta network (released), the task network, or the EMA "
        "of a run trained with --ema",
    )
    p.add_argument("--nf", type=int, default=None, help="RRDB width (default: from the checkpoint)")
    p.add_argument("--nb", type=int, default=None, help="number of RRDB blocks (default: from the checkpoint)")
    p.add_argument("--gc", type=int, default=None, help="RRDB growth channels (default: from the checkpoint)")
    p.set_defaults(func=run_eval)
    return p
