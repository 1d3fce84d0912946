"""The progress rule: a bar on a terminal, plain lines in a pipe or a log, nothing when disabled; and
without tqdm, crop, pack and train run all the same."""

from __future__ import annotations

import io
import os
import sys

import pytest

from dil_fast._progress import LogLines, NullBar, progress, tqdm_available
from tests.conftest import make_png_folder


@pytest.fixture
def no_tqdm(monkeypatch):
    for name in [m for m in sys.modules if m == "tqdm" or m.startswith("tqdm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tqdm", None)  # `import tqdm` now raises ImportError


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_log_lines_every_interval_with_rate_and_eta():
    clock, lines = _Clock(), []
    bar = LogLines(100, desc="pack", unit="img", interval=10, emit=lines.append, clock=clock)
    for _ in range(20):
        clock.now += 0.25  # 4 img/s
        bar.update()
    assert lines == []  # 5 s: nothing yet
    for _ in range(20):
        clock.now += 0.25
        bar.update()
    assert lines == ["pack: 40/100 img (40%), 4.00 img/s, ETA 0:00:15"]
    bar.set_postfix(loss="0.0312")
    for _ in range(60):
        clock.now += 0.25
        bar.update()
    bar.close()
    assert lines[1:] == [
        "pack: 80/100 img (80%), 4.00 img/s, ETA 0:00:05, loss=0.0312",
        "pack: 100/100 img in 0:00:25, 4.00 img/s, loss=0.0312",
    ]


def test_log_lines_stay_quiet_for_short_or_failed_runs():
    clock, lines = _Clock(), []
    with LogLines(3, desc="crop", unit="img", interval=10, emit=lines.append, clock=clock) as bar:
        bar.update(3)
    assert lines == []  # done within the interval: no line at all
    with (
        pytest.raises(RuntimeError),
        LogLines(10, desc="crop", unit="img", interval=1, emit=lines.append, clock=clock) as bar,
    ):
        clock.now += 2
        bar.update()
        raise RuntimeError("bad input")
    assert lines == ["crop: 1/10 img (10%), 0.50 img/s, ETA 0:00:18"]  # no closing line after a failure


def test_rule_picks_the_reporter():
    assert isinstance(progress(5, desc="x", enabled=False, isatty=True), NullBar)
    assert type(progress(5, desc="x", isatty=False, stream=io.StringIO())) is LogLines
    if tqdm_available():
        bar = progress(5, desc="x", isatty=True, stream=io.StringIO())
        assert type(bar.bar).__name__ == "tqdm"
        bar.close()


def test_pipe_gets_lines_and_never_a_bar():
    read_fd, write_fd = os.pipe()
    with os.fdopen(write_fd, "w") as pipe:
        assert not pipe.isatty()
        with progress(4, desc="pack", unit="img", stream=pipe, interval=0) as bar:
            for _ in range(4):
                bar.update()
    with os.fdopen(read_fd) as f:
        text = f.read()
    assert "\r" not in text and "|" not in text
    lines = text.splitlines()
    assert len(lines) == 5 and lines[0].startswith("pack: 1/4 img (25%), ") and " img/s" in lines[0]
    assert lines[-1].startswith("pack: 4/4 img in 0:00:00, ")


def test_terminal_gets_a_bar_with_rate_and_eta(terminal):
    pytest.importorskip("tqdm")
    stream, read = terminal
    assert stream.isatty()
    with progress(4, desc="pack", unit="img", stream=stream) as bar:
        for _ in range(4):
            bar.update()
    out = read()
    assert "\r" in out and "pack: 100%" in out and "4/4" in out and "img/s]" in out
    assert "<00:00" in out  # elapsed<remaining


def test_pack_and_crop_follow_the_rule(tmp_path, monkeypatch, capfd, terminal):
    from dil_fast.data.crop import crop_folder
    from dil_fast.data.pack import pack_folder

    make_png_folder(tmp_path / "img", n=3, size=32)
    # stderr a pipe (pytest's capture): not one bar character, no carriage return
    pack_folder(str(tmp_path / "img"), str(tmp_path / "store"), workers=1)
    crop_folder(str(tmp_path / "img"), str(tmp_path / "patches"), size=16, stride=16, workers=1)
    err = capfd.readouterr().err
    assert "\r" not in err and "%|" not in err
    if not tqdm_available():
        return
    stream, read = terminal
    monkeypatch.setattr(sys, "stderr", stream)  # stderr a terminal: the bar
    pack_folder(str(tmp_path / "img"), str(tmp_path / "store2"), workers=1)
    crop_folder(str(tmp_path / "img"), str(tmp_path / "patches2"), size=16, stride=16, workers=1)
    out = read()
    assert "pack: 100%" in out and "crop: 100%" in out and "3/3" in out and "img/s]" in out


def test_crop_pack_train_without_tqdm(no_tqdm, tmp_path):
    from dil_fast.data.crop import crop_folder
    from dil_fast.data.pack import pack_folder

    assert not tqdm_available()
    assert type(progress(1, desc="x", isatty=True, stream=io.StringIO())) is LogLines  # plain lines instead
    make_png_folder(tmp_path / "img", n=3, size=40)
    make_png_folder(tmp_path / "test", n=1, size=24)
    res = crop_folder(str(tmp_path / "img"), str(tmp_path / "patches"), size=16, stride=16, progress=True)
    assert res["patches"] == 12 and len(list((tmp_path / "patches").iterdir())) == 12
    pack_folder(str(tmp_path / "patches"), str(tmp_path / "store"), progress=True)
    assert (tmp_path / "store").exists()
    from dil_fast.train import TrainConfig, Trainer

    cfg = TrainConfig(
        ckpt_save=str(tmp_path / "run"),
        trainset=str(tmp_path / "patches"),
        testset=str(tmp_path / "test"),
        patch_size=16,
        batch_size=2,
        total_epoch=1,
        num_workers=0,
        device="cpu",
        nf=8,
        nb=1,
        gc=4,
        progress=True,
    )
    assert Trainer(cfg).run() == 0 and (tmp_path / "run" / "model_1.pt").exists()
