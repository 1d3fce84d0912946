"""bench/gpu_check.sh: the dry run prints a plan in priority order whose caps fit the 8-minute budget,
and a run whose budget cannot hold a step skips it and still writes the summary."""
import csv
import os
import re
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "bench", "gpu_check.sh")
STEP = re.compile(r"^\s+(\d+)\s+(\d+|rest)\s+(\S+)\s+(.+)$")


def _plan(*args):
    done = subprocess.run(["bash", SCRIPT, "--dry-run", *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return [STEP.match(line).groups() for line in done.stdout.splitlines() if STEP.match(line)], done.stdout


def test_dry_run_plan_fits_480_s_in_priority_order():
    steps, out = _plan()
    names = [name for _, _, name, _ in steps]
    assert [int(i) for i, _, _, _ in steps] == list(range(1, len(steps) + 1))
    fixed = [int(cap) for _, cap, _, _ in steps if cap != "rest"]
    assert sum(fixed) <= 480 and all(c > 5 for c in fixed)
    assert f"fixed caps total: {sum(fixed)} s of the 470 s budget" in out
    assert [cap for _, cap, _, _ in steps].count("rest") == 1 and steps[-1][1] == "rest"
    order = ["setup-build", "setup-info", "gpu-tier", "bench-optim", "bench-noise", "bench-sampler", "bench-train",
             "bench-host", "bench-meta"]
    assert [n for n in names if n in order] == order
    commands = dict((name, cmd) for _, _, name, cmd in steps)
    assert "-m gpu" in commands["gpu-tier"] and "DIL_FAST_SKIP_AUTOTUNE=1" in commands["gpu-tier"]
    assert "--sizes 16624131" in commands["bench-optim"] and "--shapes 8x4" in commands["bench-train"]
    assert "--families noise " in commands["bench-noise"] and "--providers store-gpu" in commands["bench-sampler"]
    assert all('--out "$OUT"' in cmd for name, cmd in commands.items() if name.startswith("bench-"))


def test_a_budget_that_holds_no_step_skips_them_all(tmp_path):
    out = tmp_path / "check"
    done = subprocess.run(["bash", SCRIPT, "--out", str(out), "--budget", "5"], capture_output=True, text=True,
                          timeout=60, cwd=str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    with open(out / "summary.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    steps, _ = _plan()
    assert [r["name"] for r in rows] == [name for _, _, name, _ in steps]
    assert {r["status"] for r in rows} == {"skipped"}
    assert re.search(r"setup-build: skipped \([0-5] s left, cap 85 s\)", (out / "gpu_check.log").read_text())


def test_bad_arguments_are_one_line_errors():
    done = subprocess.run(["bash", SCRIPT, "--budget", "soon", "--dry-run"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "--budget must be whole seconds" in done.stderr
    done = subprocess.run(["bash", SCRIPT], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "--out DIR is required" in done.stderr


class _Parsed(Exception):
    pass


def test_every_benchmark_step_of_the_plan_parses_its_flags(monkeypatch):
    import argparse
    import importlib
    import shlex

    real_parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(real_parse(self, args, namespace))  # an unknown flag exits with status 2 instead

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    steps, _ = _plan()
    seen = set()
    for _, _, name, cmd in steps:
        words = shlex.split(cmd.replace('"$OUT"', "/tmp/out"))
        scripts = [w for w in words if w.startswith("bench/bench_")]
        if not scripts:
            continue
        topic = scripts[0][len("bench/"):-len(".py")]
        args = words[words.index(scripts[0]) + 1:]
        main = importlib.import_module(f"bench.{topic}").main
        try:
            main(args)
        except _Parsed as parsed:
            assert parsed.args[0].out == "/tmp/out", name
        else:
            raise AssertionError(f"{name}: {topic}.main did not parse its arguments")
        seen.add(topic)
    assert seen == {"bench_optim", "bench_degrade", "bench_loader", "bench_train", "bench_host", "bench_meta"}
