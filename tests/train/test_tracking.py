"""curves.png from the tracker's scalars: drawn with matplotlib from metrics.csv's history (a resumed
run continues it), read through its axes; without matplotlib one warning and the run goes on.
``--wandb PROJECT``: the same scalars (tags, steps) as TensorBoard and the options as config, through
a stand-in module (and the real wandb offline where the extra is installed); refusals in one line."""

from __future__ import annotations

import logging
import sys
import types
import warnings

import cv2
import pytest

from dil_fast.eval import plot
from dil_fast.train.tracking import Monitor, RunClock, Tracker


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


# ---------------------------------------------------------------------- --wandb PROJECT
class _FakeRun:
    def __init__(self, **kwargs):
        self.kwargs, self.logged, self.finished = kwargs, [], False
        self.id = kwargs.get("id") or f"fake{len(kwargs)}"

    def log(self, data, step=None):
        self.logged.append((step, dict(data)))

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    """A stand-in ``wandb`` module: ``init`` records its arguments; project ``refused`` fails as W&B does."""

    class Error(Exception):
        pass

    def init(**kwargs):
        if kwargs["project"] == "refused":
            raise Error("api_key not configured (no-tty). call wandb.login(key=[your_api_key])\nmore")
        module.runs.append(_FakeRun(**kwargs))
        return module.runs[-1]

    module = types.ModuleType("wandb")
    module.init, module.errors, module.runs = init, types.SimpleNamespace(Error=Error), []
    monkeypatch.setitem(sys.modules, "wandb", module)
    return module


def _tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_wandb_gets_the_tensorboard_scalars_and_the_options(tmp_path, fake_wandb):
    pytest.importorskip("torch.utils.tensorboard")
    options = {"config": {"lr": 1e-4, "levels": [5, 20]}, "resolved": {"device": "cpu"}, "path": tmp_path}
    folder = tmp_path / "run_a"
    folder.mkdir()
    tracker = Tracker(str(folder), tensorboard=True, wandb_project="dil", options=options)
    monitor = Monitor(
        logging.getLogger("test_tracking"),
        tracker,
        RunClock(100),
        ["noise5", "noise20"],
        images_per_it=8,
        max_bad_steps=0,
    )
    for step in (1, 3, 5):  # the training loop's log points
        monitor.log_point(None, 0, step, 5, step, step, [1, 0], 1e-4, 5e-5)([0.5 / step, 0.25, 0.0, 0.0])
    tracker.scalars(5, 0, 0, {"test/noise50/psnr": 21.5, "test/noise50/ssim": 0.61})  # the periodic test
    tracker.close()

    (run,) = fake_wandb.runs
    assert run.finished
    assert run.kwargs["project"] == "dil" and run.kwargs["name"] == "run_a" and run.kwargs["dir"] == str(folder)
    assert run.kwargs["config"] == {**options, "path": str(tmp_path)}  # the run's options, as JSON has them
    assert run.kwargs["id"] is None and run.kwargs["resume"] is None  # a new run
    logged: dict[str, list[tuple[int, float]]] = {}
    for step, data in run.logged:
        for tag, value in data.items():
            logged.setdefault(tag, []).append((step, value))
    board = _tensorboard_scalars(folder / "tb")
    assert (
        sorted(logged)
        == sorted(board)
        == sorted(
            ["loss/noise5", "loss/noise20", "lr/task", "lr/meta", "speed/meta_it_s", "speed/images_s"]
            + ["skipped/nonfinite", "test/noise50/psnr", "test/noise50/ssim"]
        )
    )
    for tag, points in board.items():  # the same steps and values (TensorBoard keeps float32)
        assert [s for s, _ in logged[tag]] == [s for s, _ in points], tag
        assert [v for _, v in logged[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag
    assert logged["loss/noise20"] == [(1, 0.5), (3, 0.5 / 3), (5, 0.1)]  # order [1, 0]: loss 0 is noise20's
    assert (folder / "wandb" / "dil_fast_run_id").read_text().strip() == run.id


def test_a_continued_run_continues_its_wandb_run(tmp_path, fake_wandb):
    first = Tracker(str(tmp_path), tensorboard=False, wandb_project="dil")
    _log(first, 1, 0.5)
    first.close()
    second = Tracker(str(tmp_path), tensorboard=False, wandb_project="dil")  # metrics.csv is there
    _log(second, 2, 0.4)
    second.close()
    one, two = fake_wandb.runs
    assert (two.kwargs["id"], two.kwargs["resume"]) == (one.id, "allow")
    assert [step for step, _ in two.logged] == [2]
    (tmp_path / "other").mkdir()
    Tracker(str(tmp_path / "other"), tensorboard=False, wandb_project="dil").close()
    assert fake_wandb.runs[-1].kwargs["id"] is None  # a new folder: a new W&B run


def test_wandb_that_cannot_start_stops_before_metrics_csv(tmp_path, fake_wandb):
    from dil_fast.errors import FlagError

    with pytest.raises(FlagError) as info:
        Tracker(str(tmp_path), tensorboard=False, wandb_project="refused")
    message = str(info.value)
    assert "\n" not in message and message.startswith("--wandb refused: W&B did not start (api_key not configured")
    assert "WANDB_MODE=offline" in message
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("project", ["", "team/proj", "a:b", "x" * 129])
def test_wandb_project_names_w_and_b_refuses(fake_wandb, project):
    from dil_fast.errors import FlagError
    from dil_fast.train.tracking import check_wandb

    with pytest.raises(FlagError, match=r"^--wandb .*: a W&B project name has 1 to 128 characters"):
        check_wandb(project)
    check_wandb("dil-fast denoise_2")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--wandb", "proj"], "--wandb needs wandb, an optional extra: pip install 'dil-fast[wandb]'"),
        (["--wandb", "a/b"], "--wandb 'a/b': a W&B project name"),
    ],
    ids=["not-installed", "bad-name"],
)
def test_wandb_refusals_on_the_command_line(tmp_path, monkeypatch, capsys, args, needle):
    from dil_fast.cli import main

    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed, even where the extra is
    out = tmp_path / "run"
    (tmp_path / "train").mkdir()
    rc = main(["train", "--trainset", str(tmp_path / "train"), "--ckpt_save", str(out), "--device", "cpu", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not out.exists()  # nothing created


def test_real_wandb_offline(tmp_path, monkeypatch):
    """The installed wandb (the extra), offline: nothing reaches the network."""
    wandb = pytest.importorskip("wandb")
    for key, value in {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_CONFIG_DIR": str(tmp_path / "config"),
        "WANDB_CACHE_DIR": str(tmp_path / "cache"),
        "WANDB_DATA_DIR": str(tmp_path / "data"),
    }.items():
        monkeypatch.setenv(key, value)
    folder = tmp_path / "run_b"
    folder.mkdir()
    tracker = Tracker(str(folder), tensorboard=False, wandb_project="dil", options={"config": {"lr": 1e-4}})
    for step in (1, 2):
        _log(tracker, step, 0.5 / step, psnr=20.0 + step)
    run = tracker.wandb.run
    assert run.config["config"] == {"lr": 1e-4}
    tracker.close()
    (offline,) = (folder / "wandb").glob("offline-run-*")
    assert (offline / f"run-{run.id}.wandb").is_file()
    assert (folder / "wandb" / "dil_fast_run_id").read_text().strip() == run.id
    assert wandb.run is None  # finished
