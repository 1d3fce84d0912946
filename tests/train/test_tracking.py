"""curves.png from the tracker's scalars: drawn with matplotlib from metrics.csv's history (a resumed
run continues it), read through its axes; without matplotlib one warning and the run goes on."""

from __future__ import annotations

import warnings

import cv2
import pytest

from dil_fast.eval import plot
from dil_fast.train.tracking import Tracker


@pytest.fixture
def drawn(monkeypatch):
    """The figures curves.png is drawn from."""
    figures, real = [], plot.curves_figure

    def spy(*args, **kwargs):
        figures.append(real(*args, **kwargs))
        return figures[-1]

    monkeypatch.setattr(plot, "curves_figure", spy)
    return figures


def _log(tracker: Tracker, step: int, loss: float, psnr: float | None = None) -> None:
    values = {"loss/noise5": loss, "loss/noise20": 2 * loss, "lr/task": 1e-4}
    if psnr is not None:
        values["test/noise50/psnr"] = psnr
        values["test/noise50/ssim"] = 0.5
    tracker.scalars(step, 0, step, values)


def test_curves_png_after_the_first_periodic_test(tmp_path, drawn):
    tracker = Tracker(str(tmp_path), tensorboard=False)
    assert tracker.draw_curves() is None  # nothing logged yet
    for step in (38, 39, 40):
        _log(tracker, step, 0.5 - 0.01 * step, psnr=17.4689 if step == 40 else None)
    path = tracker.draw_curves("denoise, sf: ")
    tracker.close()
    assert cv2.imread(path).shape == (840, 960, 3)
    (fig,) = drawn
    loss_ax, psnr_ax = fig.axes
    assert loss_ax.get_title() == "denoise, sf: training loss per confounder"
    assert [line.get_label() for line in loss_ax.get_lines()] == ["noise5", "noise20"]
    assert list(loss_ax.get_lines()[0].get_xdata()) == [38, 39, 40]
    assert [line.get_label() for line in psnr_ax.get_lines()] == ["noise50"]
    lo, hi = psnr_ax.get_ylim()
    assert hi - lo >= plot.MIN_PSNR_SPAN and lo < 17.4689 < hi  # one test point: a readable axis
    labels = [t.get_text() for t in psnr_ax.get_yticklabels() if lo <= t.get_position()[1] <= hi]
    assert len(set(labels)) == len(labels) >= 3
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)  # no iteration 38.5
        assert not ax.get_legend().get_window_extent(fig.canvas.get_renderer()).overlaps(ax.bbox)


def test_a_resumed_run_continues_its_curves(tmp_path, drawn):
    first = Tracker(str(tmp_path), tensorboard=False)
    for step in range(3):
        _log(first, step, 1.0 / (1 + step))
    first.close()
    second = Tracker(str(tmp_path), tensorboard=False)  # reads metrics.csv back
    _log(second, 3, 0.2, psnr=21.0)
    second.draw_curves()
    second.close()
    loss_ax, psnr_ax = drawn[-1].axes
    assert list(loss_ax.get_lines()[0].get_xdata()) == [0, 1, 2, 3]
    assert list(psnr_ax.get_lines()[0].get_ydata()) == [21.0]


def test_without_matplotlib_one_warning_and_no_curves(tmp_path, monkeypatch):
    monkeypatch.setattr(plot, "matplotlib_missing", lambda: "matplotlib is not installed; pip install matplotlib")
    tracker = Tracker(str(tmp_path), tensorboard=False)
    _log(tracker, 1, 0.5)
    with pytest.warns(UserWarning, match="no curves.png: matplotlib is not installed"):
        assert tracker.draw_curves() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tracker.draw_curves() is None  # said once
    tracker.close()
    assert not (tmp_path / "curves.png").exists()
