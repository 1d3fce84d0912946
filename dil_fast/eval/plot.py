"""Plots, drawn with matplotlib on its Agg canvas (no display, no pyplot state): PSNR against a
degradation level with the training range shaded (``dil-fast eval --sweep``, the study's fallback
plot), the training curves (``curves.png``) and the canvas of the side-by-side panels
(:func:`dil_fast.eval.output.side_by_side`).

The axes follow a few rules, each a defect of the earlier hand-drawn plots (tested on the
figures' axes): a value axis always spans a readable range (one periodic-test point does not
collapse it: at least :data:`MIN_PSNR_SPAN` dB for PSNR) and its tick labels carry no offset;
an iteration axis has integer ticks only; legends sit outside the plotting area, right of it, so
they never hide a curve's end; the training range is shaded whenever the caller knows it.

Each ``*_figure`` function returns a :class:`matplotlib.figure.Figure` of exactly ``size`` pixels
(width, height); :func:`render` turns one into an ``H x W x 3`` uint8 RGB array and
:func:`save_figure` writes it as a PNG atomically. matplotlib is a dependency of dil-fast; a
missing one is a one-line :class:`~dil_fast.errors.DilFastError` saying how to install it.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import DilFastError, InputError
from ..fileio import atomic_write_bytes

__all__ = [
    "PLOT_SIZE",
    "CURVES_SIZE",
    "MIN_PSNR_SPAN",
    "DPI",
    "new_figure",
    "render",
    "save_figure",
    "write_png",
    "generalization_figure",
    "plot_generalization",
    "curves_figure",
    "matplotlib_missing",
]

PLOT_SIZE = (960, 600)  # width, height of a sweep's PNG
CURVES_SIZE = (960, 420)  # one panel of curves.png
MIN_PSNR_SPAN = 1.0  # dB: the least range a PSNR axis shows
DPI = 100  # figure pixels per inch: sizes are given in pixels
_SERIES_GREY = "0.45"


def matplotlib_missing() -> str | None:
    """Why matplotlib cannot be used (None: it can)."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError as exc:
        return (
            f"matplotlib is not installed ({exc}); it draws dil-fast's plots: pip install matplotlib "
            "(a dependency of dil-fast)"
        )
    return None


def new_figure(size: tuple[int, int]):
    """A Figure of ``size`` (width, height) pixels on an Agg canvas (never pyplot, never a display)."""
    why = matplotlib_missing()
    if why:
        raise DilFastError(why)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    w, h = size
    fig = Figure(figsize=(w / DPI, h / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def render(fig) -> np.ndarray:
    """The figure drawn: ``H x W x 3`` uint8 RGB, exactly its pixel size."""
    fig.canvas.draw()
    return np.ascontiguousarray(np.asarray(fig.canvas.buffer_rgba())[:, :, :3])


def write_png(img: np.ndarray, path: str) -> None:
    """``img`` (``H x W x 3`` BGR uint8) as a PNG at ``path``, atomically; one-line
    :class:`InputError` on failure."""
    import cv2

    ok, png = cv2.imencode(".png", img)
    if not ok:
        raise InputError(f"{path}: cannot encode the plot as PNG")
    try:
        atomic_write_bytes(png.tobytes(), path)
    except OSError as exc:
        raise InputError(f"{path}: cannot write the plot ({exc.strerror or exc})") from None


def save_figure(fig, path: str) -> np.ndarray:
    """Render ``fig``, write it to ``path`` as a PNG (atomically) and return the BGR image written."""
    bgr = np.ascontiguousarray(render(fig)[:, :, ::-1])
    write_png(bgr, path)
    return bgr


def _finite(points) -> list[tuple[float, float]]:
    return sorted((float(x), float(y)) for x, y in points if math.isfinite(x) and math.isfinite(y))


def _value_limits(values: list[float], min_span: float) -> tuple[float, float]:
    """A y range holding ``values`` with a 6 % margin, at least ``min_span`` wide (one value, or
    values that barely differ, stay readable instead of collapsing onto one tick)."""
    if not values:
        return 0.0, 1.0
    lo, hi = min(values), max(values)
    margin = (hi - lo) * 0.06
    lo, hi = lo - margin, hi + margin
    if hi - lo < min_span:
        mid = (lo + hi) / 2
        lo, hi = mid - min_span / 2, mid + min_span / 2
    return lo, hi


def _x_limits(xs: list[float], integer: bool) -> tuple[float, float]:
    if not xs:
        return 0.0, 1.0
    lo, hi = min(xs), max(xs)
    pad = (hi - lo) * 0.04
    if pad == 0:  # one x value: a unit each side (an iteration), or 5 % of it (a level)
        pad = 1.0 if integer else max(abs(lo) * 0.05, 0.5)
    return lo - pad, hi + pad


def _style_axes(ax, *, integer_x: bool, x_ticks: list[float] | None = None) -> None:
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    formatter = ScalarFormatter(useOffset=False)  # "17.47", never "+1.7e1" with ticks "0.0002"
    formatter.set_scientific(False)
    ax.yaxis.set_major_formatter(formatter)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=7, steps=[1, 2, 2.5, 5, 10]))
    if x_ticks is not None and len(x_ticks) <= 20:
        ax.set_xticks(x_ticks)
        ax.set_xticklabels([f"{x:g}" for x in x_ticks])
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=10, integer=integer_x))
    ax.grid(True, color="0.9", lw=0.8)
    ax.set_axisbelow(True)


def _legend_outside(ax) -> None:
    """The legend right of the plotting area, so no curve runs under it."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False, fontsize=9)


def _draw_series(ax, series: dict[str, list[tuple[float, float]]], dashed: tuple[str, ...], markers: bool) -> list:
    """One line per series (non-finite points skipped); returns every y drawn."""
    ys = []
    colors = iter(f"C{i}" for i in range(10_000))
    for name, points in series.items():
        good = _finite(points)
        grey = name in dashed
        color = _SERIES_GREY if grey else next(colors)
        if not good:
            continue
        xs, vals = zip(*good)
        ax.plot(
            xs,
            vals,
            ls="--" if grey else "-",
            color=color,
            lw=1.8,
            label=name,
            marker="o" if markers or len(good) == 1 else None,
            ms=4,
        )
        ys += vals
    return ys


def generalization_figure(
    series: dict[str, list[tuple[float, float]]],
    train_range: tuple[float, float] | None,
    title: str,
    xlabel: str,
    ylabel: str = "PSNR (dB)",
    *,
    size: tuple[int, int] = PLOT_SIZE,
    dashed: tuple[str, ...] = ("input",),
):
    """PSNR against level: ``series`` (name -> [(level, psnr)]) as lines with markers, x ticks at
    the evaluated levels, ``train_range`` (lo, hi) shaded (None: none), the legend outside."""
    fig = new_figure(size)
    ax = fig.add_subplot()
    if train_range is not None:
        ax.axvspan(train_range[0], train_range[1], color="0.88", lw=0, zorder=0, label="training range")
    ys = _draw_series(ax, series, dashed, markers=True)
    xs = sorted({x for s in series.values() for x, _ in _finite(s)})
    ax.set_xlim(*_x_limits(xs + list(train_range or ()), integer=False))
    ax.set_ylim(*_value_limits(ys, MIN_PSNR_SPAN))
    _style_axes(ax, integer_x=False, x_ticks=xs or None)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    _legend_outside(ax)
    fig.set_layout_engine("constrained")
    return fig


def plot_generalization(
    path: str,
    series: dict[str, list[tuple[float, float]]],
    train_range: tuple[float, float] | None,
    title: str,
    xlabel: str,
    ylabel: str = "PSNR (dB)",
    size: tuple[int, int] = PLOT_SIZE,
    dashed: tuple[str, ...] = ("input",),
) -> np.ndarray:
    """:func:`generalization_figure` written to ``path`` as a PNG of ``size`` (width, height)
    pixels, atomically; returns the ``H x W x 3`` BGR image written."""
    return save_figure(
        generalization_figure(series, train_range, title, xlabel, ylabel, size=size, dashed=dashed), path
    )


def curves_figure(
    losses: dict[str, list[tuple[float, float]]],
    psnr: dict[str, list[tuple[float, float]]],
    title: str = "",
    *,
    panel: tuple[int, int] = CURVES_SIZE,
):
    """``curves.png``: the training loss per confounder against the meta-iteration, and (when
    there is any) the periodic test's PSNR per test degradation below it on the same iteration
    range, one ``panel``-sized row each; integer iteration ticks, legends outside."""
    rows = 2 if psnr else 1
    fig = new_figure((panel[0], panel[1] * rows))
    axes = fig.subplots(rows, 1, squeeze=False)[:, 0]
    panels = [(axes[0], losses, f"{title}training loss per confounder".strip(), "loss", False)]
    if psnr:
        panels.append((axes[1], psnr, "periodic test", "PSNR (dB)", True))
    # one iteration axis for both panels, so a test point sits under the losses of its iteration
    xlim = _x_limits([x for series in (losses, psnr) for s in series.values() for x, _ in _finite(s)], integer=True)
    for ax, series, name, ylabel, markers in panels:
        ys = _draw_series(ax, series, (), markers=markers)
        ax.set_xlim(*xlim)
        mid = (max(ys) + min(ys)) / 2 if ys else 0.0
        min_span = MIN_PSNR_SPAN if ylabel.startswith("PSNR") else max(abs(mid) * 0.1, 1e-6)
        ax.set_ylim(*_value_limits(ys, min_span))
        _style_axes(ax, integer_x=True)
        ax.set_title(name, fontsize=11)
        ax.set_xlabel("meta-iteration")
        ax.set_ylabel(ylabel)
        _legend_outside(ax)
    fig.set_layout_engine("constrained")
    return fig
