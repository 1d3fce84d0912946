"""bench/_common.py: time_fn times back-to-back calls; record appends row by row; results default to a
folder outside the source tree."""

import csv
import os
import time

import pytest

from bench import _common

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class CountingSleeper:
    """A fake op: counts its calls and sleeps ``seconds`` in each."""

    def __init__(self, seconds: float):
        self.seconds, self.calls = seconds, 0

    def __call__(self):
        self.calls += 1
        if self.seconds:
            time.sleep(self.seconds)


def test_time_fn_times_back_to_back_calls_and_reports_the_per_call_median():
    fn = CountingSleeper(2e-4)
    t = _common.time_fn(fn, device="cpu", warmup=2, repeat=5, min_sample_s=5e-3)
    assert isinstance(t, float) and isinstance(t, _common.Timing)
    # a 0.2 ms call cannot fill a 5 ms sample alone: several calls per sample (fewer when sleep overshoots)
    assert 2 <= t.calls <= 25, t.calls
    assert t.samples == 5
    # every call is accounted for: warm-up, the sizing probes (3 for a short call), then per round one
    # sample of t.calls calls and one single call
    assert fn.calls == 2 + 3 + 5 * (t.calls + 1)
    assert 2e-4 <= t < 5e-3 and 2e-4 <= t.single < 5e-3


def test_time_fn_caps_the_calls_of_a_free_op_and_times_a_slow_one_alone():
    free = CountingSleeper(0.0)
    t = _common.time_fn(free, device="cpu", warmup=0, repeat=3, min_sample_s=1e-3, max_calls=50)
    assert t.calls == 50 and free.calls == 3 + 3 * 51
    slow = CountingSleeper(3e-3)
    t = _common.time_fn(slow, device="cpu", warmup=0, repeat=3, min_sample_s=1e-3)
    # longer than a sample: one call per sample, one sizing probe, no extra single calls
    assert t.calls == 1 and slow.calls == 1 + 3
    assert t.single == float(t) >= 3e-3


def test_time_side_by_side_interleaves_providers_and_drops_a_failing_one(capsys):
    order = []

    def provider(name):
        return lambda: order.append(name)

    def broken():
        raise RuntimeError("not on this device")

    timings = _common.time_side_by_side(
        {"a": provider("a"), "b": provider("b"), "broken": broken}, "cpu", warmup=1, repeat=4, min_sample_s=0.0
    )
    assert set(timings) == {"a", "b"} and "broken: skipped" in capsys.readouterr().err
    timed = order[4:]  # after the warm-ups and the sizing probes of a and b (one call each: 0 s samples)
    assert timed == ["a", "b"] * 4, order


def _read(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_record_appends_each_call_at_once(tmp_path):
    out = str(tmp_path / "res")
    cols = ["case", "ms", "note"]
    path = _common.record("topic", [{"case": "x", "ms": 1.5}], "cpu", out=out, columns=cols)
    first = _read(path)
    assert first[0] == _common.ENV_KEYS + cols and len(first) == 2  # on disk before the next row exists
    _common.record("topic", [{"case": "y", "ms": 2.5, "note": "n"}], "cpu", out=out, columns=cols)
    rows = _read(path)
    assert len(rows) == 3 and rows[0] == first[0]
    assert rows[1][-3:] == ["x", "1.5", ""] and rows[2][-3:] == ["y", "2.5", "n"]
    env = dict(zip(rows[0], rows[2]))
    assert env["date"] and env["torch"] and env["load_1min"]


def test_record_starts_a_new_file_on_a_schema_change_and_keeps_every_old_one(tmp_path):
    out = str(tmp_path)
    path = _common.record("t", [{"a": 1}], "cpu", out=out)
    _common.record("t", [{"a": 2, "b": 3}], "cpu", out=out)  # new column: new file
    assert len(_read(path + ".old")) == 2 and _read(path)[0][-2:] == ["a", "b"]
    _common.record("t", [{"c": 4}], "cpu", out=out)
    assert len(_read(path + ".old")) == 2 and _read(path + ".old.1")[0][-2:] == ["a", "b"]
    assert _read(path)[0][-1] == "c" and len(_read(path)) == 2


def test_record_refuses_a_row_outside_its_columns(tmp_path):
    with pytest.raises(ValueError, match="not among the columns"):
        _common.record("t", [{"a": 1, "typo": 2}], "cpu", out=str(tmp_path), columns=["a"])


def test_default_out_dir_is_outside_the_source_tree(tmp_path, monkeypatch):
    monkeypatch.delenv("DIL_FAST_BENCH_OUT", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert _common.default_out_dir() == str(tmp_path / "cache" / "dil_fast" / "bench")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _common.default_out_dir() == str(tmp_path / "home" / ".cache" / "dil_fast" / "bench")
    assert not os.path.abspath(_common.default_out_dir()).startswith(REPO + os.sep)
    monkeypatch.setenv("DIL_FAST_BENCH_OUT", str(tmp_path / "env"))
    assert _common.default_out_dir() == str(tmp_path / "env")
    path = _common.record("t", [{"a": 1}], "cpu")
    assert path == str(tmp_path / "env" / "t.csv")
