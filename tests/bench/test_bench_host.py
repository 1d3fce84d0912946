"""bench/bench_host.py --quick: every part runs on the CPU in seconds and appends its rows to host.csv."""

import csv

import torch

from bench import bench_host


def test_quick_run_writes_rows_of_every_part(tmp_path, capsys):
    assert bench_host.main(["--quick", "--out", str(tmp_path), "--devices", "cpu"]) == 0
    assert "appended to" in capsys.readouterr().out
    with open(tmp_path / "host.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["part"] for r in rows} == {"a", "b", "c", "d", "e"}
    assert all(r["torch"] == torch.__version__ and r["date"] for r in rows)
    timed = [r for r in rows if r["calls"]]
    assert timed and all(float(r["us_per_call"]) > 0 and float(r["us_single"]) > 0 for r in timed)
    by_case = {r["case"]: r for r in rows if r["part"] in "ab"}
    floor = float(by_case["aten add_ (one dispatcher op: the floor)"]["us_per_call"])
    step = by_case["FusedAdam.step()"]
    assert step["target_us"] == "50.0" and step["within_target"] in ("True", "False") and step["tensors"] == "698"
    # one FusedAdam step over 698 tensors costs less host time than a per-tensor torch Adam step
    assert float(step["us_per_call"]) < float(by_case["torch.optim.Adam for-loop"]["us_per_call"])
    assert float(step["us_per_call"]) > floor

    counts = {}
    for r in rows:
        if r["part"] == "d":
            counts.setdefault(r["case"].split()[1], {})[r["op"]] = int(r["count"])
    fused, unfused = counts["fused=True"], counts["fused=False"]
    # the fused optimizer runs its steps as native launches, the per-tensor Adam as aten ops
    assert (
        fused["native launches (outside the dispatcher)"] == 5
        and unfused["native launches (outside the dispatcher)"] == 0
    )
    assert fused["total aten ops"] < unfused["total aten ops"]
    # 698 tensors x 5 Adam steps of several ops each, against a handful of launches and checks
    assert 10 * fused["phase optimizer"] < unfused["phase optimizer"]
    assert sum(v for k, v in fused.items() if k.startswith("phase ")) == fused["total aten ops"]
    # RRDB-23 has 1 + 23 * 3 * 5 + 3 = 349 convolutions, run forward and backward once per confounder
    assert fused["aten.convolution.default"] == fused["aten.convolution_backward.default"] == 4 * 349
    assert len([k for k in fused if k.startswith("aten.")]) == 10

    # (e) one inner step of the fast path: 698 weights (349 of them 4-D convolution weights)
    step = {}
    for r in rows:
        if r["part"] == "e":
            step.setdefault(r["case"], {})[r["op"]] = int(r["count"])
    default, cl, shadow, both = (step[c] for c in bench_host.WEIGHT_OPTIONS)
    assert default["weight casts (per tensor)"] == 698 and default["weight casts (whole buffer)"] == 0
    assert default["gradient accumulations"] == 698 and default["gradient casts"] >= 698
    assert default["weight layout copies in convolutions"] == 349 * 2  # forward and backward-input
    assert cl["weight layout copies in convolutions"] == 0 and cl["weight casts (per tensor)"] == 698
    assert shadow["weight casts (per tensor)"] == 0 and shadow["weight casts (whole buffer)"] == 1
    assert shadow["gradient accumulations"] == 1 and shadow["gradient casts"] <= 2
    assert both["weight layout copies in convolutions"] == 0 and both["gradient accumulations"] == 1
    assert both["dispatcher ops, views excluded"] < default["dispatcher ops, views excluded"] - 2 * 698
