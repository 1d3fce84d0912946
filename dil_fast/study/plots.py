"""The study's figure: one PNG with, per test set, a row of panels (matplotlib, when importable).

Per test set: one panel per level with PSNR against meta-iterations, one line per method (mean
over seeds, the band +- one standard deviation; seen levels solid, unseen dashed; the degraded
input as a grey dotted line), then the unseen-level mean against the seen-level mean along
training (does a method reach a better unseen score at the same seen score, or is it early
stopping?), then each method's paired difference to ERM against the level with its 95 % interval.

Without matplotlib (``pip install matplotlib``) :func:`plot_figure` returns False and the study
draws its OpenCV plot of PSNR against level instead (:func:`dil_fast.study.report.plot_study`).
"""

from __future__ import annotations

import importlib.util
import math

from .methods import level_label
from .results import StudyResults, comparisons

__all__ = ["matplotlib_available", "plot_figure"]


def matplotlib_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def plot_figure(path: str, res: StudyResults, title: str) -> bool:
    """Draw the figure into ``path`` (PNG); False when matplotlib is not installed."""
    if not matplotlib_available():
        return False
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    task = res.task
    levels = list(task.levels)
    k = len(task.seen)
    ncols = min(4, math.ceil(math.sqrt(len(levels) + 2)))
    per_set = math.ceil((len(levels) + 2) / ncols)
    nrows = per_set * len(res.testsets)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.3 * nrows), squeeze=False)
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(res.methods)}
    for t, ts in enumerate(res.testsets):
        panels = [axes[t * per_set + i // ncols][i % ncols] for i in range(per_set * ncols)]
        for li, lv in enumerate(levels):
            ax, seen = panels[li], li < k
            base = float(res.input_psnr[t][li].mean())
            lo, hi = base, base
            for m in res.methods:
                its, mean, std = res.mean_curve(m, t, [li])
                if len(its) == 0:
                    continue
                ax.plot(its, mean, "-" if seen else "--", color=colors[m], lw=1.6, label=m, marker=".", ms=4)
                if len(res.seeds) > 1:
                    ax.fill_between(its, mean - std, mean + std, color=colors[m], alpha=0.15, lw=0)
                late = mean[its >= its[-1] / 4]  # the first points of a curve would squash the rest
                lo, hi = min(lo, float(late.min())), max(hi, float(mean.max()))
            ax.axhline(base, color="0.5", ls=":", lw=1.2, label="input")
            ax.set_ylim(lo - 0.1 * (hi - lo) - 0.2, hi + 0.1 * (hi - lo) + 0.2)
            ax.set_title(f"{ts.label}: {level_label(task, lv)} ({'seen' if seen else 'unseen'})", fontsize=10)
            ax.set_xlabel("meta-iteration", fontsize=8)
            ax.set_ylabel("PSNR (dB)", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        # unseen mean against seen mean along training
        ax = panels[len(levels)]
        groups = dict(res.level_groups())
        if "mean unseen" in groups:
            for m in res.methods:
                _, xs, _ = res.mean_curve(m, t, groups["mean seen"])
                _, ys, _ = res.mean_curve(m, t, groups["mean unseen"])
                ax.plot(xs, ys, "-", color=colors[m], lw=1.2, marker="o", ms=3, label=m)
                if len(xs):
                    ax.plot(xs[-1:], ys[-1:], "o", color=colors[m], ms=8, mec="k")
            ax.set_xlabel("mean PSNR, seen levels (dB)", fontsize=8)
            ax.set_ylabel("mean PSNR, unseen levels (dB)", fontsize=8)
            ax.set_title(f"{ts.label}: unseen vs seen along training", fontsize=10)
        else:
            ax.text(0.5, 0.5, "no unseen levels", ha="center", va="center", transform=ax.transAxes)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        # paired difference to ERM per level with the 95 % interval
        ax = panels[len(levels) + 1]
        xs = [lv.value if task.numeric else i + 1 for i, lv in enumerate(levels)]
        pairs = [(m, b) for m, b in comparisons(res.methods) if b == "erm"]
        width = (max(xs) - min(xs) or 1) * 0.012
        for j, (m, base) in enumerate(pairs):
            ds = [res.paired(m, base, t, [i]) for i in range(len(levels))]
            off = (j - (len(pairs) - 1) / 2) * width
            mean = [d.mean for d in ds]
            err = [[d.mean - d.lo if d.n > 1 else 0 for d in ds], [d.hi - d.mean if d.n > 1 else 0 for d in ds]]
            ax.errorbar(
                [x + off for x in xs],
                mean,
                yerr=err,
                fmt="o-",
                color=colors[m],
                ms=3,
                lw=1,
                capsize=2,
                label=f"{m} − {base}",
            )
        ax.axhline(0.0, color="k", lw=0.8)
        if k < len(levels):
            ax.axvspan(xs[0] - width, xs[k - 1] + width, color="0.9", zorder=0)
        ax.set_xlabel(task.axis if task.numeric else "level (position)", fontsize=8)
        ax.set_ylabel("PSNR difference (dB)", fontsize=8)
        ax.set_title(f"{ts.label}: difference to erm, 95 % interval", fontsize=10)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if pairs:
            ax.legend(fontsize=7)
        for ax in panels[len(levels) + 2 :]:
            ax.axis("off")
        handles, labels = panels[0].get_legend_handles_labels()
        panels[0].legend(handles, labels, fontsize=7)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    import os

    tmp = f"{path}.tmp-{os.getpid()}.png"
    try:
        fig.savefig(tmp, dpi=90)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return True
