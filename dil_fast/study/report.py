"""The study's written outputs: ``curves.csv`` (every evaluation, every image), ``results.csv`` (the
aggregated table and the paired differences) and the markdown report (:func:`markdown_report`).
The plots are :mod:`dil_fast.study.plots`.

The old single-point helpers stay for ``dil-fast eval --sweep``'s kind of plot
(:func:`plot_study`, drawn by :func:`dil_fast.eval.plot.plot_generalization`).
"""

from __future__ import annotations

import csv
import io

import numpy as np

from ..eval.plot import PLOT_SIZE, plot_generalization
from ..fileio import atomic_write_bytes
from .methods import StudyTask, level_label
from .results import StudyResults, comparisons

__all__ = [
    "PLOT_SIZE",
    "CURVE_FIELDS",
    "describe_levels",
    "write_curves",
    "write_results_csv",
    "markdown_report",
    "plot_study",
]

CURVE_FIELDS = [
    "task",
    "testset",
    "method",
    "seed",
    "meta_iteration",
    "images_seen",
    "train_seconds",
    "loss",
    "confounder",
    "level",
    "seen",
    "image",
    "psnr",
    "ssim",
]


def describe_levels(task: StudyTask) -> str:
    """One sentence naming the seen and the unseen levels (or saying there are none unseen)."""
    seen = f"training confounders (seen) {task.confounders}: {', '.join(level_label(task, lv) for lv in task.seen)}"
    if not task.unseen:
        return f"{seen}; no unseen levels: the task holds out none beyond its training confounders"
    return f"{seen}; held out (unseen): {', '.join(lv.name for lv in task.unseen)}"


def _write_rows(path: str, fields: list[str], rows) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(fields)
    w.writerows(rows)
    atomic_write_bytes(buf.getvalue().encode("utf-8"), path)


def _fmt(x, decimals: int = 6) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return ""
    return f"{x:.{decimals}f}" if isinstance(x, float) else str(x)


def write_curves(path: str, res: StudyResults) -> None:
    """``curves.csv``: one row per (test set, run, point, level, image), the input first (method
    ``input``, point 0); ``ssim`` where the point scored it."""
    task, seen = res.task, len(res.task.seen)
    rows = []
    for t, ts in enumerate(res.testsets):
        names = [n for n, _ in ts.images]
        for li, lv in enumerate(task.levels):
            for i, name in enumerate(names):
                rows.append(
                    [
                        task.name,
                        ts.label,
                        "input",
                        "",
                        0,
                        0,
                        0.0,
                        "",
                        lv.family,
                        lv.level,
                        li < seen,
                        name,
                        _fmt(float(res.input_psnr[t][li, i])),
                        _fmt(float(res.input_ssim[t][li, i])),
                    ]
                )
        for r in res.runs:
            for p in r.points:
                for li, lv in enumerate(task.levels):
                    for i, name in enumerate(names):
                        ssim = float(p.ssim[t][li, i]) if p.ssim is not None else None
                        rows.append(
                            [
                                task.name,
                                ts.label,
                                r.run.method,
                                r.run.seed,
                                p.meta_iteration,
                                p.images_seen,
                                f"{p.seconds:.3f}",
                                f"{p.loss:.6f}",
                                lv.family,
                                lv.level,
                                li < seen,
                                name,
                                _fmt(float(p.psnr[t][li, i])),
                                _fmt(ssim),
                            ]
                        )
    _write_rows(path, CURVE_FIELDS, rows)


def write_results_csv(path: str, res: StudyResults) -> None:
    """``results.csv``: ``kind`` ``score`` rows (per test set, method, level: PSNR mean and std
    over seeds, SSIM, seeds) and ``difference`` rows (method - baseline: mean, 95 % interval,
    pairs, verdict), the levels then ``mean seen`` / ``mean unseen``."""
    task = res.task
    fields = [
        "kind",
        "testset",
        "name",
        "confounder",
        "level",
        "seen",
        "psnr",
        "psnr_std",
        "ssim",
        "lo",
        "hi",
        "n",
        "verdict",
    ]
    cols = [(lv.family, lv.level, str(i < len(task.seen)), [i]) for i, lv in enumerate(task.levels)]
    cols += [("", name, "True" if name == "mean seen" else "False", rows) for name, rows in res.level_groups()]
    out = []
    for t, ts in enumerate(res.testsets):
        for m in ["input"] + res.methods:
            n = 1 if m == "input" else len(res.runs_of(m))
            for fam, lvl, seen, rows in cols:
                mean, std = res.cell(m, t, rows)
                ssim = res.ssim_cell(m, t, rows[0]) if len(rows) == 1 else float("nan")
                out.append(
                    ["score", ts.label, m, fam, lvl, seen, _fmt(mean, 9), _fmt(std, 9), _fmt(ssim, 9), "", "", n, ""]
                )
        for m, base in comparisons(res.methods):
            for fam, lvl, seen, rows in cols:
                d = res.paired(m, base, t, rows)
                out.append(
                    [
                        "difference",
                        ts.label,
                        f"{m} - {base}",
                        fam,
                        lvl,
                        seen,
                        _fmt(d.mean, 9),
                        "",
                        "",
                        _fmt(d.lo, 9),
                        _fmt(d.hi, 9),
                        d.n,
                        d.verdict,
                    ]
                )
    _write_rows(path, fields, out)


def _verdict_word(v: str) -> str:
    return {"better": "**better**", "worse": "**worse**", "not distinguishable": "n.d."}.get(v, v)


def headline(res: StudyResults) -> list[str]:
    """The verdict lines: each DIL method against ERM at the unseen (and the seen) levels, per test set."""
    lines = []
    for t, ts in enumerate(res.testsets):
        for m, base in comparisons(res.methods):
            if base != "erm":
                continue
            parts = []
            for name, rows in res.level_groups():
                d = res.paired(m, base, t, rows)
                parts.append(f"{name} {d.cell()} dB: {d.verdict}")
            per_level = [
                f"{level_label(res.task, lv)}: {res.paired(m, base, t, [i]).verdict}"
                for i, lv in enumerate(res.task.levels)
                if i >= len(res.task.seen)
            ]
            extra = f" (per unseen level: {', '.join(per_level)})" if per_level else ""
            lines.append(f"- `{ts.label}`, {m} − {base}: {'; '.join(parts)}{extra}.")
    return lines


def markdown_report(res: StudyResults, title: str, conditions: dict, plan: list[str] | None = None) -> str:
    """The report: verdict lines, a summary across test sets, per test set the PSNR table (mean ±
    std over seeds), the paired differences with their 95 % intervals and verdicts, the budget
    and wall-time table, the plan (estimated cost) and the conditions."""
    task = res.task
    seeds, groups = res.seeds, res.level_groups()
    n_img = {ts.label: len(ts.images) for ts in res.testsets}
    lines = [
        f"# {title}",
        "",
        f"Task `{task.name}` ({task.row.paper}); {describe_levels(task)}. PSNR in dB ({task.metric}). "
        f"Seeds {', '.join(map(str, seeds))}; each run's score is the mean of its last {res.last_evals} "
        f"evaluation(s) up to meta-iteration {res.horizon} (every run reached it).",
        "",
        "## Verdict (paired difference over seeds x test images, 95 % interval)",
        "",
    ]
    lines += headline(res) or ["- (no comparison: the study needs erm and at least one other method)"]
    # summary across test sets
    head = ["method"] + [f"{ts.label}: {name}" for ts in res.testsets for name, _ in groups]
    lines += [
        "",
        "## Summary",
        "",
        "PSNR mean ± std over seeds (dB).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for m in ["input"] + res.methods:
        cells = [m]
        for t, _ in enumerate(res.testsets):
            for _, rows in groups:
                mean, std = res.cell(m, t, rows)
                cells.append(f"{mean:.2f}" if m == "input" or len(seeds) < 2 else f"{mean:.2f} ± {std:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    for t, ts in enumerate(res.testsets):
        lines += _testset_section(res, t, ts, n_img[ts.label])
    lines += [
        "",
        "## Budget and wall time",
        "",
        "One meta-iteration gives every method the same K batches of B patches (one per confounder); "
        "train time is the wall time of the iterations, evaluations excluded (mean over seeds).",
        "",
        "| method | meta-iterations | trainer iterations | batch per confounder | optimizer steps | "
        "images seen | train time (s) | ms per meta-iteration | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in res.methods:
        runs = res.runs_of(m)
        r0 = runs[0].run
        mean_s, std_s = res.train_seconds(m)
        per = 1000 * mean_s / max(1, np.mean([r.run.meta_iterations for r in runs]))
        stops = "; ".join(sorted({f"seed {r.run.seed}: {r.run.stopped}" for r in runs if r.run.stopped}))
        sd = f" ± {std_s:.0f}" if len(runs) > 1 else ""
        lines.append(
            f"| {m} | {r0.meta_iterations} | {r0.trainer_iterations} | {r0.batch_per_confounder} | "
            f"{r0.optimizer_steps} | {r0.images_seen} | {mean_s:.0f}{sd} | {per:.0f} | {stops} |"
        )
    if plan:
        lines += ["", "## Plan (cost model, before the run)", "", "```"] + plan + ["```"]
    lines += ["", "## Conditions", ""] + [f"- {k}: {v}" for k, v in conditions.items()]
    return "\n".join(lines) + "\n"


def _testset_section(res: StudyResults, t: int, ts, n_images: int) -> list[str]:
    task, seeds, groups = res.task, res.seeds, res.level_groups()
    k = len(task.seen)
    labels = [level_label(task, lv) if i < k else f"**{level_label(task, lv)}**" for i, lv in enumerate(task.levels)]
    cols = [[i] for i in range(len(task.levels))] + [rows for _, rows in groups]
    head = ["method"] + labels + [name for name, _ in groups]
    sizes = ", ".join(f"{n} {img.shape[1]}x{img.shape[0]}" for n, img in ts.images)
    lines = [
        "",
        f"## Test set `{ts.label}` ({n_images} images: {sizes})",
        "",
        "PSNR mean ± std over seeds; **bold** = unseen level; `input` = the degraded input itself.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for m in ["input"] + res.methods:
        cells = [m]
        for rows in cols:
            mean, std = res.cell(m, t, rows)
            cells.append(f"{mean:.2f}" if m == "input" or len(seeds) < 2 else f"{mean:.2f} ± {std:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    pairs = comparisons(res.methods)
    if pairs:
        n = len(seeds) * n_images
        lines += [
            "",
            f"Paired differences, mean [95 % interval] over {len(seeds)} seed(s) x {n_images} images "
            f"= {n} pairs, then the verdict (**better** / **worse** when the interval excludes 0, "
            "n.d. = not distinguishable):",
            "",
            "| " + " | ".join(["difference"] + head[1:]) + " |",
            "|" + "---|" * len(head),
        ]
        for m, base in pairs:
            ds = [res.paired(m, base, t, rows) for rows in cols]
            lines.append("| " + " | ".join([f"{m} − {base}"] + [d.cell() for d in ds]) + " |")
            lines.append("| " + " | ".join([""] + [_verdict_word(d.verdict) for d in ds]) + " |")
    ssim_head = ["method"] + labels
    lines += [
        "",
        f"SSIM at meta-iteration {res.horizon} (mean over seeds and images):",
        "",
        "| " + " | ".join(ssim_head) + " |",
        "|" + "---|" * len(ssim_head),
    ]
    for m in ["input"] + res.methods:
        lines.append("| " + " | ".join([m] + [f"{res.ssim_cell(m, t, i):.4f}" for i in range(len(task.levels))]) + " |")
    return lines


def plot_study(path: str, task: StudyTask, rows: list[dict], title: str) -> None:
    """PSNR against level, one line per method, the seen levels shaded (OpenCV; the fallback when
    matplotlib is not installed). ``rows``: ``{"method", "level" (EvalLevel), "psnr"}``."""
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
