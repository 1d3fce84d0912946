"""bench/bench_train.py --quick as the CI correctness gate: it runs on CPU, writes its rows with finite
ratios, and refuses to report a speedup when the fast path disagrees with the reference computation."""

import csv
import math

import pytest
import torch

from bench import bench_train
from dil_fast.meta import SerialFirstOrder

QUICK = ["--quick", "--backend", "torch", "--iters", "1", "--warmup", "1"]


@pytest.fixture(autouse=True)
def _bench_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DIL_FAST_BENCH_OUT", str(tmp_path / "out"))
    torch.set_num_threads(1)  # restored by the conftest fixture


def _rows(tmp_path):
    with open(tmp_path / "out" / "train.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_quick_bench_writes_rows_with_finite_ratios(tmp_path, capsys):
    assert bench_train.main(QUICK + ["--profile"]) == 0
    out = capsys.readouterr().out
    assert "correctness (b vs reference): ok" in out and "b/a = " in out and "b/d = " in out
    assert "-- profile of case (b) --" in out and "aten::convolution_backward" in out
    assert (tmp_path / "out" / "profile_train_b" / "trace_meta_iteration.json").exists()
    rows = {r["case"].split()[0]: r for r in _rows(tmp_path)}
    assert set(rows) == {"(a)", "(b)", "(d)"}
    for r in rows.values():
        assert float(r["meta_it_s"]) > 0 and math.isfinite(float(r["images_s"]))
        assert r["device"] and r["torch"] == torch.__version__
    b = rows["(b)"]
    assert math.isfinite(float(b["speedup_vs_a"])) and float(b["speedup_vs_a"]) > 0
    assert math.isfinite(float(b["time_vs_floor"])) and float(b["time_vs_floor"]) > 0
    assert b["correct"] == "True"
    assert sum(float(b[f"split_{n}_ms"]) for n in bench_train.SPLIT) > 0


def test_gate_refuses_a_speedup_when_the_fast_path_disagrees(tmp_path, capsys, monkeypatch):
    # a fast path with the wrong inner learning rate trains differently from the reference
    monkeypatch.setattr(bench_train, "build_fast_algorithm", lambda model: SerialFirstOrder(model, inner_lr=3e-4))
    assert bench_train.main(QUICK) == 1
    out = capsys.readouterr().out
    assert "CORRECTNESS GATE FAILED" in out and "b/a, b/d: refused" in out
    assert "b/a = " not in out
    b = {r["case"].split()[0]: r for r in _rows(tmp_path)}["(b)"]
    assert b["speedup_vs_a"] == "refused" and b["time_vs_floor"] == "refused" and b["correct"] == "False"


def test_gate_check_agreement_directly():
    dev = torch.device("cpu")
    base = bench_train.make_model(bench_train.MODELS["rrdb-tiny"], dev)
    opts = bench_train.resolve_options(dev)
    ok, why = bench_train.check_agreement(base, dev, 2, 2, 16, opts)
    assert ok, why
    opts_cl = bench_train.FastOptions(precision="bf16", channels_last=True)
    ok, why = bench_train.check_agreement(base, dev, 2, 2, 16, opts_cl)
    assert ok and "bf16 as timed: loss rel err" in why, why
    # a subtle fault (meta Adam beta1 0.8 instead of 0.9) moves the weights by ~1% only: the float64
    # comparison still sees it
    bench_train_build = bench_train.build_fast_algorithm
    try:
        bench_train.build_fast_algorithm = lambda m: SerialFirstOrder(m, meta_betas=(0.8, 0.999))
        ok, why = bench_train.check_agreement(base, dev, 2, 2, 16, opts)
    finally:
        bench_train.build_fast_algorithm = bench_train_build
    assert not ok and "float64" in why, why
