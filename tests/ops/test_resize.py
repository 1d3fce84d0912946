"""Resize op: the reference against torch.interpolate, the Triton kernel against the reference (T1)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dil_fast import ops


@pytest.mark.parametrize("mode", ["bilinear", "bicubic", "area"])
@pytest.mark.parametrize("size", [(9, 11), (40, 70)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_resize_matches_torch_interpolate(mode, size, close):
    x = torch.rand(3, 3, 17, 23)
    got = ops.resize.resize(x, size, mode, backend="torch")
    kw = {} if mode == "area" else {"antialias": True, "align_corners": False}
    close(got, F.interpolate(x, size=size, mode=mode, **kw), atol=3e-6, rtol=1e-5, name=f"resize {mode}")


@pytest.mark.triton
@pytest.mark.parametrize("mode", ["bicubic", "area", "bilinear"])
@pytest.mark.parametrize("size", [(9, 11), (40, 47)], ids=["down", "up"])
def test_resize_kernel_matches_reference(dev, mode, size, close):
    x = torch.rand(2, 3, 17, 23, device=dev)
    got = ops.resize.resize(x, size, mode, backend="triton")
    close(got, ops.resize.resize(x.cpu(), size, mode, backend="torch"), atol=1e-6, rtol=1e-5, name=f"resize {mode}")


@pytest.mark.triton
def test_resize_kernel_fp16(dev, close):
    x = torch.rand(2, 3, 17, 23, device=dev).half()
    got = ops.resize.resize(x, (9, 11), "bicubic", out_dtype=torch.float16, backend="triton")
    close(got, ops.resize.resize(x.float().cpu(), (9, 11), "bicubic", backend="torch").half(), atol=2e-3, rtol=2e-3)
