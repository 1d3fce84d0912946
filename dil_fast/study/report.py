"""The generalization study's outputs: the CSV, the markdown tables and the PNG plot (drawn by
:func:`dil_fast.eval.plot.plot_generalization`, which ``dil-fast eval --sweep`` shares).

A row of results is ``{"method", "level" (an EvalLevel), "psnr", "ssim"}``; whether a level is
seen (a training confounder) or unseen (held out) is the task's (:class:`StudyTask`)."""
from __future__ import annotations

import csv

import numpy as np

from ..eval.plot import PLOT_SIZE, plot_generalization
from .methods import MethodRun, StudyTask, level_label

__all__ = ["PLOT_SIZE", "describe_levels", "markdown_tables", "plot_study", "write_csv"]


def write_csv(path: str, task: StudyTask, rows: list[dict]) -> None:
    """``task, method, confounder, level, seen, psnr, ssim``: one line per (method, level), the
    confounder family and the level as :func:`dil_fast.eval.parse_levels` writes them."""
    seen = {lv.name for lv in task.seen}
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["task", "method", "confounder", "level", "seen", "psnr", "ssim"])
        for r in rows:
            lv = r["level"]
            w.writerow([task.name, r["method"], lv.family, lv.level, lv.name in seen, r["psnr"], r["ssim"]])


def describe_levels(task: StudyTask) -> str:
    """One sentence naming the seen and the unseen levels (or saying there are none unseen)."""
    seen = f"training confounders (seen) {task.confounders}: {', '.join(level_label(task, lv) for lv in task.seen)}"
    if not task.unseen:
        return f"{seen}; no unseen levels: the task holds out none beyond its training confounders"
    return f"{seen}; held out (unseen): {', '.join(lv.name for lv in task.unseen)}"


def markdown_tables(task: StudyTask, rows: list[dict], runs: list[MethodRun], conditions: dict) -> str:
    """The PSNR table (methods x levels, the means, DIL - ERM gaps), the budget table and the
    conditions, as markdown."""
    levels = task.levels
    methods = list(dict.fromkeys(r["method"] for r in rows))
    psnr = {(r["method"], r["level"].name): r["psnr"] for r in rows}
    groups = [("mean seen", task.seen)] + ([("mean unseen", task.unseen)] if task.unseen else [])
    head = ["method"] + [level_label(task, lv) for lv in task.seen] \
        + [f"**{level_label(task, lv)}**" for lv in task.unseen] + [name for name, _ in groups]
    lines = [f"Task `{task.name}` ({task.row.paper}): PSNR (dB, {task.metric}) on the test images.", "",
             f"- {describe_levels(task)}.",
             "- columns: " + ("the " + task.axis if task.numeric else "the levels") + "; **bold** = unseen.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def mean(m, group):
        return float(np.mean([psnr[(m, lv.name)] for lv in group]))

    for m in methods:
        cells = [m] + [f"{psnr[(m, lv.name)]:.2f}" for lv in levels] + [f"{mean(m, g):.2f}" for _, g in groups]
        lines.append("| " + " | ".join(cells) + " |")
    dil = [m for m in methods if m not in ("input", "erm", "erm-steps")]
    for base in ("erm", "erm-steps"):
        if base not in methods:
            continue
        for m in dil:
            cells = [f"{m} - {base}"] + [f"{psnr[(m, lv.name)] - psnr[(base, lv.name)]:+.2f}" for lv in levels] + \
                [f"{mean(m, g) - mean(base, g):+.2f}" for _, g in groups]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Budget (identical data, model, seed; one meta-iteration = one batch per confounder):", "",
              ("| method | meta-iterations | trainer iterations | batch per confounder | optimizer steps | "
               "images seen | train time (s) |"), "|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r.method} | {r.meta_iterations} | {r.trainer_iterations} | {r.batch_per_confounder} | "
                     f"{r.optimizer_steps} | {r.images_seen} | {r.seconds:.0f} |")
    lines += ["", "Conditions:", ""] + [f"- {k}: {v}" for k, v in conditions.items()]
    return "\n".join(lines) + "\n"


def plot_study(path: str, task: StudyTask, rows: list[dict], title: str) -> None:
    """PSNR against level, one line per method, the seen levels shaded. A numeric task is drawn
    against its values; any other against the level's position (seen first), the x-axis label
    naming each position."""
    position = {lv.name: float(i + 1) for i, lv in enumerate(task.levels)}
    series: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        lv = r["level"]
        series.setdefault(r["method"], []).append((lv.value if task.numeric else position[lv.name], r["psnr"]))
    if task.numeric:
        values = [lv.value for lv in task.seen]
        train_range = (min(values), max(values))
    else:
        train_range = (1.0, float(len(task.seen)))
    plot_generalization(path, series, train_range, title, task.axis)
