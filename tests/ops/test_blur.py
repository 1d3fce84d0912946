"""Blur ops: the references against OpenCV, the Triton kernels against the references (T1), registration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dil_fast import ops
from dil_fast.degrade import blur_kernels as bk
from dil_fast.ops import reference as ref
from tests.helpers import IDS, SHAPES, triton_tol

cv2 = pytest.importorskip("cv2")


@pytest.mark.parametrize("shape", [(17, 23), (33, 65)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_separable_blur_matches_opencv(shape, close):
    img = np.random.default_rng(0).random((*shape, 3), dtype=np.float32)
    sigma = torch.tensor([1.7])
    w = bk.gaussian_1d(sigma, 13)
    expect = cv2.sepFilter2D(img, -1, w[0].numpy(), w[0].numpy(), borderType=cv2.BORDER_REFLECT_101)
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    got = ops.blur.blur_separable(x, w[None], backend="torch")[0, 0].permute(1, 2, 0)
    close(got, expect, atol=2e-6, rtol=1e-5, name="sepFilter2D")


def test_2d_blur_matches_opencv(close):
    img = np.random.default_rng(1).random((19, 29, 3), dtype=np.float32)
    k = bk.gaussian_2d(torch.tensor([2.5]), torch.tensor([0.8]), torch.tensor([0.6]), 15)
    expect = cv2.filter2D(img, -1, k[0].numpy(), borderType=cv2.BORDER_REFLECT_101)
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    got = ops.blur.blur2d(x, k, backend="torch")[0].permute(1, 2, 0)
    close(got, expect, atol=1e-5, rtol=1e-4, name="filter2D")


def test_reflect_padding_folds_like_opencv():
    for n in (1, 2, 5):
        got = ref.reflect101_index(4 * n + 6, n, -(2 * n + 3)).tolist()
        exp = [cv2.borderInterpolate(i, n, cv2.BORDER_REFLECT_101) for i in range(-(2 * n + 3), 2 * n + 3)]
        assert got == exp, (n, got, exp)


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_separable_blur_kernel_matches_reference(dev, shape, dtype, close):
    B, H, W = shape
    x = torch.rand(B, 3, H, W, device=dev).to(dtype)
    w = bk.gaussian_1d(torch.rand(2 * B) * 3 + 0.3, 7).reshape(2, B, 7)
    got = ops.blur.blur_separable(x, w, out_dtype=dtype, backend="triton")
    exp = ops.blur.blur_separable(x.float().cpu(), w, backend="torch")
    close(got, exp.to(dtype), **triton_tol(dtype), name="blur_sep")


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_2d_blur_kernel_matches_reference(dev, dtype, close):
    x = torch.rand(3, 3, 17, 23, device=dev).to(dtype)
    kern = bk.gaussian_2d(
        torch.tensor([0.8, 1.5, 2.0]), torch.tensor([0.4, 1.0, 0.7]), torch.tensor([0.3, -1.0, 2.0]), 5
    )
    got = ops.blur.blur2d(x, kern, out_dtype=dtype, backend="triton")
    close(got, ref.blur2d_ref(x.float().cpu(), kern).to(dtype), **triton_tol(dtype), name="blur2d")


def test_blur_ops_registration_opcheck():
    x = torch.rand(2, 3, 9, 11)
    torch.library.opcheck(ops.blur._sep_op, (x, torch.rand(2, 2, 5), torch.float32, "torch"))
    torch.library.opcheck(ops.blur._2d_op, (x, torch.rand(2, 5, 5), torch.float32, "torch"))
