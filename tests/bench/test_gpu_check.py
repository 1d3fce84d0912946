"""bench/gpu_check.sh: the plan fits the budget in the issue's order; the rehearsal runs every step
in its CPU form and leaves the three files the device can return; refusals are one line."""

import csv
import os
import re
import subprocess
import sys
import tarfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "bench", "gpu_check.sh")
STEP = re.compile(r"^\s+(\d+)\s+(\d+)\s+(\S+)\s+(.+)\s+\[(\d+): .+\]$")
ORDER = ["setup-build", "setup-info", "gpu-tier", "micro", "bench-train", "bench-compile", "smoke"]


def _run(*args, timeout=60, **kw):
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, timeout=timeout, env=env, **kw)


def _plan(*args):
    done = _run("--dry-run", *args)
    assert done.returncode == 0, done.stderr
    return [STEP.match(line).groups() for line in done.stdout.splitlines() if STEP.match(line)], done.stdout


def test_dry_run_plan_fits_420_s_in_the_issue_order():
    steps, out = _plan()
    assert [name for _, _, name, _, _ in steps] == ORDER
    caps = [int(cap) for _, cap, _, _, _ in steps]
    assert sum(caps) <= 420 and f"caps total: {sum(caps)} s of the 420 s budget" in out
    # every cap holds its stated cold-start estimate with a margin
    assert all(int(est) < int(cap) for _, cap, _, _, est in steps)
    commands = {name: cmd for _, _, name, cmd, _ in steps}
    assert "-m 'gpu or triton'" in commands["gpu-tier"] and "DIL_FAST_SKIP_AUTOTUNE=1" in commands["gpu-tier"]
    assert "--shapes 8x4" in commands["bench-train"] and "--weight_options cw,ws,cw+ws" in commands["bench-train"]
    assert "--compile" in commands["bench-compile"] and "gpu_smoke.py" in commands["smoke"]
    rehearsal, _ = _plan("--rehearse")
    assert [name for _, _, name, _, _ in rehearsal] == ORDER
    assert all(
        "--quick" in cmd or "--tiny" in cmd or "TRITON_INTERPRET=1" in cmd or "setup" in name or "info" in cmd
        for _, _, name, cmd, _ in rehearsal
    )


def test_rehearsal_runs_every_step_and_returns_three_files(tmp_path):
    out = tmp_path / "check"
    done = _run("--rehearse", "--out", str(out), timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert sorted(os.listdir(out)) == ["gpu_check.log", "results.tar.gz", "summary.tsv"]
    with open(out / "summary.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [r["name"] for r in rows] == ORDER and {r["status"] for r in rows} == {"ok"}
    with tarfile.open(out / "results.tar.gz") as tar:
        names = tar.getnames()
    assert {f"logs/{i + 1:02d}-{name}.log" for i, name in enumerate(ORDER)} <= set(names)
    assert {
        "csv/optim.csv",
        "csv/degrade.csv",
        "csv/loader.csv",
        "csv/ceilings.csv",
        "csv/train.csv",
        "csv/smoke.csv",
        "junit-gpu.xml",
    } <= set(names)
    log = (out / "gpu_check.log").read_text()
    assert "== verdict" in log and "output folder: 3 files" in log and "6/6 variants ok" in log
    assert re.search(r"b\+cw\+ws/a = [0-9.]+x speedup", log)


def test_a_budget_that_holds_no_step_skips_them_all(tmp_path):
    out = tmp_path / "check"
    done = _run("--out", str(out), "--budget", "5", cwd=str(tmp_path))
    assert done.returncode == 1, done.stdout + done.stderr
    with open(out / "summary.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [r["name"] for r in rows] == ORDER and {r["status"] for r in rows} == {"skipped"}
    assert re.search(r"setup-build: skipped \([0-5] s left, cap 90 s\)", (out / "gpu_check.log").read_text())
    assert sorted(os.listdir(out)) == ["gpu_check.log", "results.tar.gz", "summary.tsv"]


def test_bad_arguments_are_one_line_errors(tmp_path):
    done = _run("--budget", "soon", "--dry-run")
    assert done.returncode == 2 and "--budget must be whole seconds" in done.stderr
    done = _run()
    assert done.returncode == 2 and "--out DIR is required" in done.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    done = _run("--out", str(tmp_path / "full"))
    assert done.returncode == 2 and "is not empty" in done.stderr and os.listdir(tmp_path / "full") == ["x"]


class _Parsed(Exception):
    pass


def test_every_python_step_parses_its_flags(monkeypatch):
    """Both forms of every benchmark step parse with the scripts' own argument parsers."""
    import argparse
    import importlib
    import shlex

    real_parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(real_parse(self, args, namespace))  # an unknown flag exits with status 2 instead

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    seen = set()
    for form in ((), ("--rehearse",)):
        steps, _ = _plan(*form)
        for _, _, name, cmd, _ in steps:
            words = shlex.split(cmd.replace('"$CSV"', "/tmp/out"))
            scripts = [w for w in words if w.startswith("bench/")]
            if not scripts:
                continue
            module = scripts[0][len("bench/") : -len(".py")]
            args = words[words.index(scripts[0]) + 1 :]
            try:
                importlib.import_module(f"bench.{module}").main(args)
            except _Parsed as parsed:
                assert parsed.args[0].out == "/tmp/out", name
            else:
                raise AssertionError(f"{name}: {module}.main did not parse its arguments")
            seen.add(module)
    assert seen == {"gpu_micro", "bench_train", "gpu_smoke"}
