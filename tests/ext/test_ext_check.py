"""python -m dil_fast.ext_check: a GPU set-up step refuses a dil_fast._C without the arch it needs."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

from dil_fast import backends, ext_check


def fake_native(monkeypatch, archs, available=True, reason=""):
    module = types.SimpleNamespace(cuda_archs=lambda: list(archs))
    status = backends.Status(available, reason, module if available else None)
    monkeypatch.setattr(backends, "native_status", lambda: status)


@pytest.mark.parametrize(
    "spec,name",
    [
        ("sm_90", "sm_90"),
        ("90", "sm_90"),
        ("9.0", "sm_90"),
        (" SM_86 ", "sm_86"),
        ("90a", "sm_90a"),
        ("compute_90", "compute_90"),
    ],
)
def test_arch_names(spec, name):
    assert ext_check.arch_name(spec) == name


@pytest.mark.parametrize("spec", ["", "9", "sm_", "abc", "90ab"])
def test_bad_arch_names_are_refused(spec):
    with pytest.raises(ValueError, match="is not a CUDA arch"):
        ext_check.arch_name(spec)


def test_build_with_the_arch_passes(monkeypatch, capsys):
    fake_native(monkeypatch, ["sm_80", "sm_90", "compute_90"])
    assert ext_check.main(["sm_90"]) == 0
    assert ext_check.main(["sm_80", "9.0"]) == 0
    assert "carries sm_90" in capsys.readouterr().out


def test_cpu_only_build_fails_with_one_line(monkeypatch, capsys):
    fake_native(monkeypatch, [])
    assert ext_check.main(["sm_90"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "built without CUDA kernels" in err and "DIL_FAST_CUDA_ARCHS=90" in err


def test_build_without_the_arch_names_what_is_missing(monkeypatch, capsys):
    fake_native(monkeypatch, ["sm_80", "compute_80"])
    assert ext_check.main(["sm_80", "sm_90"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no sm_90 (it carries sm_80, compute_80)" in err
    assert "DIL_FAST_CUDA_ARCHS=80,90" in err
    # PTX for an arch is not its SASS
    fake_native(monkeypatch, ["sm_80", "compute_90"])
    assert ext_check.missing_archs(["sm_90"], ["sm_80", "compute_90"]) == ["sm_90"]
    assert ext_check.main(["sm_90"]) == 2


def test_missing_native_core_fails_with_its_reason(monkeypatch, capsys):
    fake_native(monkeypatch, [], available=False, reason="disabled by DIL_FAST_DISABLE_EXT=1")
    assert ext_check.main(["sm_90"]) == 2
    assert "not available: disabled by DIL_FAST_DISABLE_EXT=1" in capsys.readouterr().err


def test_bad_arch_argument_exits_2(capsys):
    assert ext_check.main(["sm9"]) == 2
    assert "is not a CUDA arch" in capsys.readouterr().err


def test_module_runs_as_a_command():
    """The real build, as a set-up script runs it: exit 0 exactly when it carries sm_90."""
    out = subprocess.run(
        [sys.executable, "-m", "dil_fast.ext_check", "sm_90"], capture_output=True, text=True, timeout=120
    )
    has_sm90 = "sm_90" in backends.native_cuda_archs()
    assert out.returncode == (0 if has_sm90 else 2), out.stderr
    assert len((out.stdout + out.stderr).strip().splitlines()) == 1
