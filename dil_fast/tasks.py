"""The paper's experiments as tasks: ``dil-fast train --task NAME`` (and ``eval --task``, ``study
--task``) set the training confounders, the periodic test degradation, the model, the scale and
the metric convention of the paper's tables in one row. ``--confounders``, ``--test_confounders``,
``--arch``, ``--scale``, ``--y`` and ``--crop_border`` override a row's values.

Confounder strings are :func:`dil_fast.degrade.parse_confounders` groups. Where the paper leaves a
choice open the row says **decision** (docs/released-trainer.md, "Confounder sets").
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Task", "TASKS", "task_table_markdown"]


@dataclass(frozen=True)
class Task:
    name: str
    confounders: str  # training confounders, one per listed value
    test: str  # the periodic test degradation (the paper's unseen level)
    eval_levels: str  # what ``dil-fast eval --task`` evaluates by default
    arch: str  # rrdb | rrdb_x4
    scale: int  # output / input size of the network (1: restoration, 4: x4 super-resolution)
    y: bool  # metrics on the BT.601 Y channel (else RGB)
    crop_border: int  # pixels removed per side before the metrics
    paper: str  # where the paper reports it
    note: str = ""


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            "denoise",
            "noise:5,10,15,20",
            "noise:50",
            "noise:5,10,15,20,30,40,50",
            "rrdb",
            1,
            False,
            0,
            "Table 1 (RRDB, CBSD68 / Kodak24 / McMaster / Urban100 / Manga109)",
            "AWGN on [0, 1] images, clipped; the released trainer's task",
        ),
        Task(
            "deblur",
            "blur:1,2,3,4",
            "blur:5",
            "blur:1,2,3,4,4.2,4.4,4.6,4.8,5",
            "rrdb",
            1,
            False,
            0,
            "Table 2 (Set5 and others)",
            "isotropic Gaussian blur of sigma = level; decision: 21 taps",
        ),
        Task(
            "hybrid",
            "hybrid:severe-low,severe-mid,severe-high",
            "hybrid:moderate",
            "hybrid:mild,moderate,severe",
            "rrdb",
            1,
            True,
            0,
            "Table 3 (hybrid distortions, Y)",
            "blur -> noise -> JPEG; decision: the severe level's ranges cut in thirds give the training confounders",
        ),
        Task(
            "jpeg",
            "jpeg:40,50,60,70",
            "jpeg:20",
            "jpeg:10,20,30,40,50,60,70",
            "rrdb",
            1,
            True,
            0,
            "(not in the paper; the hybrid task's JPEG stage alone)",
            "decision: train on quality 40-70, test the unseen harsher 10-30",
        ),
        Task(
            "realsr",
            "realsr:1",
            "bicubic:4",
            "bicubic:4",
            "rrdb_x4",
            4,
            True,
            4,
            "Table 4 (RealSR V3, DRealSR, x4, Y)",
            "decision: Real-ESRGAN's first-order degradation split by blur family and noise type gives four "
            "confounders (realsr:2 adds the second-order stage, --order 2); real test pairs via --testset with LQ/",
        ),
        Task(
            "derain",
            "rain:light,medium,heavy",
            "rain:storm",
            "rain:light,medium,heavy,storm",
            "rrdb",
            1,
            True,
            0,
            "Table 5 (Rain100L, Rain12, Rain800, Y)",
            "three rain datasets as three confounders: give three paired --trainset folders; without them, "
            "synthetic rain at three densities (decision) stands in",
        ),
        Task(
            "realnoise",
            "isp:raw,linear,srgb,jpeg",
            "isp:mixed",
            "isp:raw,linear,srgb,jpeg,mixed",
            "rrdb",
            1,
            True,
            0,
            "Table 6 (SIDD, DND, Y)",
            "decision: one camera-pipeline noise model (after CBDNet) with the noise injected at four stages; "
            "isp:mixed (every stage at once) is the unseen test; real test pairs via --testset with LQ/",
        ),
    )
}


def task_table_markdown() -> str:
    """The table the README shows (one row per task)."""
    head = "| task | training confounders | periodic test | model | scale | metric | paper |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for t in TASKS.values():
        metric = ("Y" if t.y else "RGB") + (f", crop {t.crop_border}" if t.crop_border else "")
        lines.append(f"| `{t.name}` | `{t.confounders}` | `{t.test}` | {t.arch} | x{t.scale} | {metric} | {t.paper} |")
    return "\n".join(lines)
