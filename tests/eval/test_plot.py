"""The plots (matplotlib, Agg) read through their axes: readable value ranges with one point,
integer iteration ticks, legends clear of the curves, the training range shaded, labelled panels
with gaps, exact pixel sizes; and the one-line message without matplotlib."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dil_fast.errors import DilFastError
from dil_fast.eval import output, plot
from dil_fast.eval.output import PANEL_GAP, PANEL_LABELS, side_by_side, side_by_side_figure
from dil_fast.eval.plot import MIN_PSNR_SPAN, curves_figure, generalization_figure, plot_generalization, render

SWEEP = {
    "dil": [(5, 30.1), (10, 29.0), (20, 27.1), (50, 19.5), (70, 16.0)],
    "erm": [(5, 30.5), (10, 29.3), (20, 27.0), (50, 15.2), (70, 12.1)],
}


def _visible_ticks(ax, axis: str) -> list[float]:
    lo, hi = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
    ticks = ax.get_xticks() if axis == "x" else ax.get_yticks()
    return [t for t in ticks if lo - 1e-9 <= t <= hi + 1e-9]


def _tick_labels(ax, axis: str) -> list[str]:
    lo, hi = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
    labels = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    return [t.get_text() for t in labels if lo - 1e-9 <= t.get_position()[0 if axis == "x" else 1] <= hi + 1e-9]


def _assert_readable_value_axis(ax, min_span: float) -> None:
    lo, hi = ax.get_ylim()
    assert hi - lo >= min_span - 1e-9, (lo, hi)
    labels = _tick_labels(ax, "y")
    assert len(labels) >= 3 and len(set(labels)) == len(labels), labels  # not "17.4689" twice
    assert ax.yaxis.get_offset_text().get_text() == ""  # no "+1.7e1" with ticks that mean nothing alone


def _assert_legend_clear_of_the_plot(fig) -> None:
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        legend = ax.get_legend()
        assert legend is not None
        box = legend.get_window_extent(renderer)
        assert not box.overlaps(ax.bbox), (box, ax.bbox)
        assert box.x0 >= ax.bbox.x1 and box.x1 <= fig.bbox.x1 + 1  # right of the axes, inside the figure


@pytest.mark.parametrize("points", [[(40, 17.4689)], [(40, 17.4689), (80, 17.4690)]], ids=["one-point", "flat"])
def test_one_periodic_test_point_keeps_the_psnr_axis_readable(points):
    fig = curves_figure({"noise5": [(38, 0.5), (39, 0.48), (40, 0.47)]}, {"noise50": points})
    render(fig)
    loss_ax, psnr_ax = fig.axes
    _assert_readable_value_axis(psnr_ax, MIN_PSNR_SPAN)
    lo, hi = psnr_ax.get_ylim()
    assert lo < 17.4689 < hi
    _assert_readable_value_axis(loss_ax, 0.0)
    sweep = generalization_figure({"a": [(50, 17.4689)]}, None, "t", "noise")
    render(sweep)
    _assert_readable_value_axis(sweep.axes[0], MIN_PSNR_SPAN)


@pytest.mark.parametrize("steps", [[38, 39, 40], [40], list(range(0, 2501, 50)), [3, 4]], ids=str)
def test_iteration_ticks_are_integers(steps):
    losses = {"noise5": [(s, 1.0 / (1 + s)) for s in steps], "noise20": [(s, 2.0 / (1 + s)) for s in steps]}
    fig = curves_figure(losses, {"noise50": [(steps[-1], 20.0)]})
    render(fig)
    for ax in fig.axes:
        ticks = _visible_ticks(ax, "x")
        assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks
        assert all("." not in label for label in _tick_labels(ax, "x"))
    assert fig.axes[0].get_xlim() == fig.axes[1].get_xlim()  # one iteration axis for both panels


def test_legends_never_cover_a_curve():
    long = {f"a rather long confounder name {i}": [(s, 0.5 - 0.01 * s + 0.02 * i) for s in range(10)] for i in range(4)}
    fig = curves_figure(long, {"noise50": [(4, 20.0), (9, 21.0)]}, "denoise, sf: ")
    render(fig)
    _assert_legend_clear_of_the_plot(fig)
    sweep = generalization_figure({**SWEEP, "checkpoint with a long label": [(5, 25.0), (70, 15.5)]}, (5, 20), "t", "x")
    render(sweep)
    _assert_legend_clear_of_the_plot(sweep)


def _shaded_span(ax) -> tuple[float, float]:
    (patch,) = [p for p in ax.patches if p.get_label() == "training range"]
    box = patch.get_window_extent(ax.figure.canvas.get_renderer())
    (x0, _), (x1, _) = ax.transData.inverted().transform([(box.x0, box.y0), (box.x1, box.y1)])
    return x0, x1


def test_sweep_shades_the_training_range_and_ticks_the_levels():
    fig = generalization_figure(SWEEP, (5, 20), "PSNR against noise level", "noise sigma", dashed=())
    render(fig)
    (ax,) = fig.axes
    x0, x1 = _shaded_span(ax)
    assert x0 == pytest.approx(5, abs=0.2) and x1 == pytest.approx(20, abs=0.2)
    assert list(_visible_ticks(ax, "x")) == [5, 10, 20, 50, 70]
    assert _tick_labels(ax, "x") == ["5", "10", "20", "50", "70"]
    assert [line.get_label() for line in ax.get_lines()] == ["dil", "erm"]
    assert ax.get_title() == "PSNR against noise level" and ax.get_xlabel() == "noise sigma"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["training range", "dil", "erm"]
    plain = generalization_figure(SWEEP, None, "t", "x")
    assert not [p for p in plain.axes[0].patches if p.get_label() == "training range"]


def test_dashed_grey_series_and_non_finite_points():
    fig = generalization_figure(
        {"input": [(1.0, 20.0), (5.0, float("nan")), (9.0, 18.0)], "a": [(1.0, 21.0)], "none": [(2.0, math.inf)]},
        (1.0, 4.0),
        "t",
        "x",
    )
    (ax,) = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"input", "a"}  # a series with no finite point draws nothing
    assert lines["input"].get_linestyle() == "--" and list(lines["input"].get_xdata()) == [1.0, 9.0]
    assert lines["a"].get_marker() == "o"  # a single point is visible


def test_exact_pixel_sizes_and_the_file_is_the_returned_image(tmp_path):
    import cv2

    img = plot_generalization(str(tmp_path / "q.png"), SWEEP, (5.0, 20.0), "t", "x", size=(401, 257))
    assert img.shape == (257, 401, 3)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "q.png")), img)
    assert render(curves_figure({"l": [(1, 1.0), (2, 0.5)]}, {})).shape == (420, 960, 3)
    assert render(curves_figure({"l": [(1, 1.0)]}, {"p": [(1, 20.0)]})).shape == (840, 960, 3)


@pytest.mark.parametrize("scale", [1, 4])
def test_side_by_side_panels_are_labelled_apart_and_exact(scale):
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    restored = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    degraded = clean[::scale, ::scale].copy()
    fig, boxes = side_by_side_figure(degraded, restored, clean)
    labels = [t.get_text() for t in fig.texts]
    assert labels == ([f"input (x{scale} nearest)"] if scale > 1 else ["input"]) + list(PANEL_LABELS[1:])
    img = render(fig)
    renderer = fig.canvas.get_renderer()
    text_boxes = [t.get_window_extent(renderer) for t in fig.texts]
    for (top, left, h, w), text, box in zip(boxes, fig.texts, text_boxes):
        # each label sits above its own panel, centred on it
        assert box.y0 >= img.shape[0] - top - 1 and abs((box.x0 + box.x1) / 2 - (left + w / 2)) < 1.5
    for a, b in zip(text_boxes, text_boxes[1:]):
        assert not a.overlaps(b)
    for (_, left_a, _, w_a), (_, left_b, _, _) in zip(boxes, boxes[1:]):
        assert left_b - (left_a + w_a) >= PANEL_GAP
    expected = [np.repeat(np.repeat(degraded, scale, 0), scale, 1), restored, clean]
    for (top, left, h, w), want in zip(boxes, expected):
        np.testing.assert_array_equal(img[top : top + h, left : left + w], want)
    gap = img[boxes[0][0] :, boxes[0][1] + boxes[0][3] : boxes[1][1]]
    assert (gap == 255).all()  # white between the panels
    np.testing.assert_array_equal(side_by_side(degraded, restored, clean), img)
    with pytest.raises(ValueError, match="do not line up"):
        side_by_side(clean[:, :20], restored, clean)


def test_without_matplotlib_one_line(monkeypatch):
    monkeypatch.setattr(plot, "matplotlib_missing", lambda: "matplotlib is not installed (x); pip install matplotlib")
    with pytest.raises(DilFastError, match="pip install matplotlib") as info:
        plot.generalization_figure(SWEEP, None, "t", "x")
    assert "\n" not in str(info.value)
    with pytest.raises(DilFastError, match="pip install matplotlib"):
        output.side_by_side(*(np.zeros((8, 8, 3), np.uint8),) * 3)
