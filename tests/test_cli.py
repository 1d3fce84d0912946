"""The `dil-fast` command as a user of an installed wheel meets it: --version, --help with the
defaults, the built-in samples without the `samples` extra, and the benchmarks installed with the
package (tier T0: the wheel is a pure-Python one, built in seconds)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from dil_fast import __version__, bench_cli, cli
from dil_fast.errors import InputError, SamplesUnavailable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out == f"dil-fast {__version__}\n"


@pytest.mark.parametrize(
    "command,expected",
    [
        ("pack", ["--workers WORKERS  decoding processes (default: ", "(default: every"]),
        ("crop", ["patch side in pixels (default: 256)", "grid step in pixels (default: 256)"]),
        # train's flags come from dil_fast/train/config.py: the formatter reaches its sub-parser too,
        # also for flags defined without a help text (--patch_size, --total_epoch)
        ("train", ["(default: 32)", "default: 64", "default: 30"]),
    ],
)
def test_help_shows_the_defaults(command, expected, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # unwrap argparse's line breaks
    assert info.value.code == 0
    for piece in expected:
        assert " ".join(piece.split()) in text, (piece, text)
    assert "(default: None)" not in text and "(default: False)" not in text


def test_every_option_of_our_commands_has_a_help_text():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for command in ("pack", "crop", "bench"):
        for action in sub.choices[command]._actions:
            assert action.help, f"dil-fast {command} {action.option_strings or action.dest} has no help text"


def test_builtin_samples_without_scikit_image(monkeypatch):
    from dil_fast.data import builtin

    for name in [m for m in sys.modules if m == "skimage" or m.startswith("skimage.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "skimage", None)  # `import skimage` now raises ImportError
    with pytest.raises(SamplesUnavailable) as info:
        builtin.builtin_test_images()
    message = str(info.value)
    assert isinstance(info.value, InputError) and "\n" not in message
    assert "pip install dil-fast[samples]" in message and "scikit-image" in message


# ---------------------------------------------------------------------------------------------
# The wheel: the benchmarks are in it, and `dil-fast bench` finds them outside a checkout


@pytest.fixture(scope="module")
def pure_wheel(tmp_path_factory):
    """A pure-Python wheel (DIL_FAST_BUILD_EXT=0) of a copy of the checkout, unpacked: (wheel, folder)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info", "build", "results")
    for folder in ("dil_fast", "kernels", "bench"):
        shutil.copytree(os.path.join(ROOT, folder), src / folder, ignore=skip)
    for name in ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "build_ext_support.py"):
        shutil.copy2(os.path.join(ROOT, name), src / name)
    env = {**os.environ, "DIL_FAST_BUILD_EXT": "0", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-index",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (whl,) = (tmp / "dist").glob("dil_fast-*.whl")
    with zipfile.ZipFile(whl) as z:
        z.extractall(tmp / "installed")
    return whl, tmp / "installed"


def test_wheel_holds_the_benchmarks(pure_wheel):
    whl, _ = pure_wheel
    names = set(zipfile.ZipFile(whl).namelist())
    bench_scripts = sorted(f for f in os.listdir(os.path.join(ROOT, "bench")) if f.endswith(".py"))
    assert {
        "dil_fast/benchmarks/bench_optim.py",
        "dil_fast/benchmarks/_common.py",
        "dil_fast/benchmarks/__init__.py",
        "dil_fast/kernels/__init__.py",
    } <= names
    assert {f"dil_fast/benchmarks/{f}" for f in bench_scripts} <= names
    assert not any(n.startswith("bench/") for n in names)  # no top-level `bench` package


def test_bench_runs_from_the_installed_package(pure_wheel, tmp_path):
    _, installed = pure_wheel
    env = {**os.environ, "PYTHONPATH": str(installed)}
    probe = "import dil_fast.bench_cli as b; print(b.__file__, b.CHECKOUT_BENCH_DIR)"
    where = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path, check=True
    )
    module_file, checkout_bench = where.stdout.split()
    assert module_file.startswith(str(installed)) and not os.path.exists(checkout_bench)  # no checkout here
    listed = subprocess.run(
        [sys.executable, "-m", "dil_fast", "bench", "list"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert {"optim", "degrade", "loader", "train"} <= set(listed.stdout.split())
    # a script's own imports (bench._common) resolve in the installed layout: its --help runs them
    helped = subprocess.run(
        [sys.executable, "-m", "dil_fast", "bench", "optim", "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert helped.returncode == 0 and "usage: bench_optim.py" in helped.stdout, helped.stderr


def test_bench_without_benchmarks_is_one_line(tmp_path, monkeypatch, capfd):
    monkeypatch.setattr(bench_cli, "CHECKOUT_BENCH_DIR", str(tmp_path / "no_checkout"))
    monkeypatch.setattr(bench_cli, "_installed_bench_dir", lambda: None)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "list"]) == 2
    err = capfd.readouterr().err
    assert err.splitlines() == [
        (
            "error: --bench_dir: no benchmarks found (neither installed with dil_fast nor in "
            "a source checkout); pass --bench_dir"
        )
    ]
