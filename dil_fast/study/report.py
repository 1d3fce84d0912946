"""The generalization study's outputs: the CSV, the markdown tables and the PNG plot (drawn by
:func:`dil_fast.eval.plot.plot_generalization`, which ``dil-fast eval --sweep`` shares)."""
from __future__ import annotations

import csv

import numpy as np

from ..eval.plot import PLOT_SIZE, plot_generalization  # noqa: F401 - the study's plot, shared with eval
from .methods import MethodRun, Task


def write_csv(path: str, task: Task, rows: list[dict]) -> None:
    fields = ["task", "method", "level", "seen", "psnr", "ssim"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({"task": task.name, **{k: r[k] for k in fields[1:]}})


def fmt_level(v: float) -> str:
    return f"{v:g}"


def markdown_tables(task: Task, rows: list[dict], runs: list[MethodRun], conditions: dict) -> str:
    levels = list(task.seen) + list(task.unseen)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    psnr = {(r["method"], r["level"]): r["psnr"] for r in rows}
    head = ["method"] + [f"{fmt_level(v)}" for v in task.seen] + [f"**{fmt_level(v)}**" for v in task.unseen] \
        + ["mean seen", "mean unseen"]
    lines = [f"PSNR (dB, RGB) on the test images; {task.axis}; training levels "
             f"{', '.join(map(fmt_level, task.seen))}, **bold** = unseen.", "",
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
