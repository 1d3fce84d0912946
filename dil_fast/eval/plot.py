"""PSNR-against-level line plots drawn with OpenCV (no plotting library): one line with markers per
series, the training range shaded, ticks at the evaluated levels, a legend. Used by
``dil-fast eval --sweep`` and the generalization study (:mod:`dil_fast.study.report`)."""
from __future__ import annotations

import math

import numpy as np

from ..errors import InputError
from ..fileio import atomic_write_bytes

__all__ = ["PLOT_SIZE", "draw_lines", "plot_generalization", "write_png"]

PLOT_SIZE = (960, 600)  # width, height of the PNG


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


def plot_generalization(path: str, series: dict[str, list[tuple[float, float]]],
                        train_range: tuple[float, float] | None, title: str, xlabel: str, ylabel: str = "PSNR (dB)",
                        size: tuple[int, int] = PLOT_SIZE, dashed: tuple[str, ...] = ("input",)) -> np.ndarray:
    """Draw ``series`` (name -> [(x, y)]) as lines with markers, shade ``train_range`` (lo, hi) on x
    (None: no shading), write a PNG of ``size`` (width, height) atomically.

    Pure OpenCV. Non-finite points are skipped; series named in ``dashed`` are drawn grey and
    dashed; x ticks sit at the evaluated levels. Returns the ``H x W x 3`` BGR image written.
    """
    img = draw_lines(series, train_range, title, xlabel, ylabel, size=size, dashed=dashed)
    write_png(img, path)
    return img


def write_png(img: np.ndarray, path: str) -> None:
    """``img`` (BGR) as a PNG at ``path``, atomically; one-line :class:`InputError` on failure."""
    import cv2

    ok, png = cv2.imencode(".png", img)
    if not ok:
        raise InputError(f"{path}: cannot encode the plot as PNG")
    try:
        atomic_write_bytes(png.tobytes(), path)
    except OSError as exc:
        raise InputError(f"{path}: cannot write the plot ({exc.strerror or exc})") from None


def draw_lines(series: dict[str, list[tuple[float, float]]], train_range: tuple[float, float] | None, title: str,
               xlabel: str, ylabel: str, *, size: tuple[int, int] = PLOT_SIZE, dashed: tuple[str, ...] = (),
               x_ticks: str = "levels", markers: bool = True) -> np.ndarray:
    """The plot of :func:`plot_generalization` as an ``H x W x 3`` BGR array. ``x_ticks``:
    ``"levels"`` (a tick at every x present) or ``"even"`` (evenly spaced round values, for long
    curves); ``markers``: a dot at every point."""
    import cv2

    W, H = size
    img = np.full((H, W, 3), 255, np.uint8)
    left, right, top, bottom = 80, 30, 50, 70
    pts = [(x, y) for s in series.values() for x, y in s if math.isfinite(x) and math.isfinite(y)]
    xs = [p[0] for p in pts] + list(train_range or ())
    xs = xs or [0.0, 1.0]
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
    a = b = -1  # pixel columns of the training range (none: off the plot)
    if train_range is not None:
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
    # x ticks at the evaluated levels (or evenly spaced), skipping labels that would overlap
    last_right = -10 ** 9
    if x_ticks == "even":
        xstep = _nice_step(max(x1 - x0, 1e-6))
        tick_xs = [xstep * i for i in range(math.ceil(x0 / xstep), math.floor(x1 / xstep) + 1)]
    else:
        tick_xs = sorted({p[0] for p in pts})
    for x in tick_xs:
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
        for p in good if markers else ():
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
    return img
