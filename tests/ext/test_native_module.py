"""The native core dil_fast._C reports what it was built with; dil-fast info tells the truth."""

from __future__ import annotations

import pytest

import dil_fast


def test_module_reports_its_build(native):
    assert isinstance(native.has_cuda(), bool)
    archs = native.cuda_archs()
    if native.has_cuda():
        assert archs and all(a.startswith(("sm_", "compute_")) for a in archs)
        assert native.cuda_runtime_version_compiled() >= 11000
        assert native.cuda_runtime_version() >= 11000
    else:
        assert archs == [] and native.cuda_runtime_version() == 0
    info = dil_fast.info()
    assert info["native_core"].startswith("loaded (CPU twins: ")
    assert "cuda_archs" in info and "cuda_runtime" in info
    from dil_fast._info import format_info

    text = format_info(info)
    assert "native_core" in text and "cuda_archs" in text


def test_info_reports_optional_packages(monkeypatch):
    from dil_fast import _info

    info = dil_fast.info()
    assert {"dali", "scikit_image", "tqdm"} <= set(info)
    tqdm = pytest.importorskip("tqdm")
    assert info["tqdm"] == tqdm.__version__
    monkeypatch.setattr(_info, "_found", lambda module: module != "tqdm")
    assert _info.collect()["tqdm"].startswith("not installed (progress bars")
