"""Degradation kernels, tier T1 (Triton under TRITON_INTERPRET=1 on CPU tensors) and T3 (CUDA):
every kernel against its torch reference (fp32 tight, fp16 relative), the fused K-way paths
against K separate calls, split invariance, the kernel Philox against Triton's own."""
from __future__ import annotations

import math

import pytest
import torch

from dil_fast import backends
from dil_fast.degrade import (JPEG, Ctx, GaussianBlur, GaussianNoise, Rain, Resize, counterfactual, deblur_levels,
                              denoise_levels)
from dil_fast.degrade import blur_kernels as bk
from dil_fast.ops import degrade as ops
from dil_fast.ops import ref_degrade as ref

pytestmark = pytest.mark.triton

SHAPES = [(3, 17, 23), (2, 33, 65)]  # (B, H, W), C = 3
IDS = [f"B{b}_{h}x{w}" for b, h, w in SHAPES]



@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one intra-op thread avoids oversubscribing a shared CI box (restored by
    conftest's state fixture)."""
    torch.set_num_threads(1)
    yield

@pytest.fixture
def dev():
    if torch.cuda.is_available():
        return torch.device("cuda")
    if backends.triton_interpret() and backends.triton_status().available:
        return torch.device("cpu")
    pytest.skip("tier T1: Triton kernels need CUDA or TRITON_INTERPRET=1 set before the test run")


def _tol(dtype):
    return dict(atol=1e-6, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_noise_kernel_matches_reference(dev, shape, dtype, close):
    B, H, W = shape
    x = torch.rand(B, 3, H, W, device=dev).to(dtype)
    sigma = torch.rand(2, B, device=dev) * 0.2
    got = ops.gaussian_noise(x, sigma, seed=2**40 + 3, step=5, sample_offset=7, clip=False, out_dtype=dtype,
                             backend="triton")
    for k in range(2):
        exp = ref.gaussian_noise_ref(x.float(), sigma[k], seed=2**40 + 3, step=5, k=k, sample_offset=7, clip=False)
        close(got[k], exp.to(dtype), **_tol(dtype), name=f"noise k={k}")


def test_noise_kernel_exact_given_the_same_normal_field(dev):
    """The arithmetic after the draw (sigma * n, clip, round) is exact against the reference fed
    the kernel's own normal field (recovered from an unclipped run on zeros with sigma 1)."""
    B, C, H, W = 2, 3, 9, 13
    field = ops.gaussian_noise(torch.zeros(B, C, H, W, device=dev), torch.ones(1, B, device=dev), seed=9, step=1,
                               clip=False, backend="triton")[0]
    x = torch.rand(B, C, H, W, device=dev)
    sigma = torch.tensor([[0.05, 0.3]], device=dev)
    got = ops.gaussian_noise(x, sigma, seed=9, step=1, round8=True, backend="triton")[0]
    exp = ref.gaussian_noise_ref(x, sigma[0], seed=0, step=0, round8=True, normal=field.reshape(B, -1))
    assert torch.equal(got, exp)


def test_noise_kernel_gray_and_uint8_input(dev, close):
    B, H, W = 3, 11, 7
    x8 = torch.randint(0, 256, (B, 1, H, W), dtype=torch.uint8, device=dev).expand(B, 3, H, W)
    sigma = torch.full((2, B), 0.1, device=dev)
    gray = torch.tensor([[True, False, True], [False, True, False]], device=dev)
    got = ops.gaussian_noise(x8, sigma, seed=1, step=2, gray=gray, round8=True, backend="triton")
    for k in range(2):
        exp = ref.gaussian_noise_ref(x8.float() / 255, sigma[k], seed=1, step=2, k=k, gray=gray[k], round8=True)
        close(got[k], exp, atol=1e-6, rtol=0, name=f"gray noise k={k}")
    assert torch.equal(got[0, 0, 0], got[0, 0, 1])  # a gray sample: one field for all channels
    assert not torch.equal(got[0, 1, 0], got[0, 1, 1])


def test_noise_kernel_statistics(dev):
    B, H, W = 4, 16, 16
    x = torch.full((B, 3, H, W), 0.5, device=dev)
    sigma = torch.tensor([[5.0, 10.0, 20.0, 30.0]], device=dev) / 255
    z = (ops.gaussian_noise(x, sigma, seed=3, step=0, clip=False, backend="triton")[0] - x) / sigma.reshape(B, 1, 1, 1)
    z = z.reshape(B, -1).double().cpu()
    n = z.shape[1]
    assert (z.mean(1).abs() < 5 / math.sqrt(n)).all(), z.mean(1)
    assert ((z.std(1) - 1).abs() < 5 / math.sqrt(2 * n)).all(), z.std(1)


def test_kernel_philox_matches_triton_randint4x(dev):
    """Our Philox (kernels/noise.py and the torch reference) is the standard one Triton ships."""
    triton = backends.triton_status().module
    tl = pytest.importorskip("triton.language")

    @triton.jit
    def _draw(out_ptr, seed, N: tl.constexpr):
        o = tl.arange(0, N)
        a, b, c, d = tl.randint4x(seed, o)
        tl.store(out_ptr + o * 4, a)
        tl.store(out_ptr + o * 4 + 1, b)
        tl.store(out_ptr + o * 4 + 2, c)
        tl.store(out_ptr + o * 4 + 3, d)

    seed = 123456789012
    out = torch.zeros(64, dtype=torch.int32, device=dev)
    _draw[(1,)](out, seed, 16)
    mine = torch.stack(ref.philox4x32_ref(torch.arange(16), 0, 0, 0, *ref.seed_key(seed)), -1).reshape(-1)
    assert torch.equal(out.cpu().long() & ref.M32, mine)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_separable_blur_kernel_matches_reference(dev, shape, dtype, close):
    B, H, W = shape
    x = torch.rand(B, 3, H, W, device=dev).to(dtype)
    w = bk.gaussian_1d(torch.rand(2 * B) * 3 + 0.3, 7).reshape(2, B, 7)
    got = ops.blur_separable(x, w, out_dtype=dtype, backend="triton")
    exp = ops.blur_separable(x.float().cpu(), w, backend="torch")
    close(got, exp.to(dtype), **_tol(dtype), name="blur_sep")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_2d_blur_kernel_matches_reference(dev, dtype, close):
    x = torch.rand(3, 3, 17, 23, device=dev).to(dtype)
    kern = bk.gaussian_2d(torch.tensor([0.8, 1.5, 2.0]), torch.tensor([0.4, 1.0, 0.7]), torch.tensor([0.3, -1.0, 2.0]), 5)
    got = ops.blur2d(x, kern, out_dtype=dtype, backend="triton")
    close(got, ref.blur2d_ref(x.float().cpu(), kern).to(dtype), **_tol(dtype), name="blur2d")


@pytest.mark.parametrize("mode", ["bicubic", "area", "bilinear"])
@pytest.mark.parametrize("size", [(9, 11), (40, 47)], ids=["down", "up"])
def test_resize_kernel_matches_reference(dev, mode, size, close):
    x = torch.rand(2, 3, 17, 23, device=dev)
    got = ops.resize(x, size, mode, backend="triton")
    close(got, ops.resize(x.cpu(), size, mode, backend="torch"), atol=1e-6, rtol=1e-5, name=f"resize {mode}")


def test_resize_kernel_fp16(dev, close):
    x = torch.rand(2, 3, 17, 23, device=dev).half()
    got = ops.resize(x, (9, 11), "bicubic", out_dtype=torch.float16, backend="triton")
    close(got, ops.resize(x.float().cpu(), (9, 11), "bicubic", backend="torch").half(), atol=2e-3, rtol=2e-3)


def test_jpeg_block_kernel_matches_reference(dev):
    """Same block arithmetic in a different summation order: a rounding step may flip where an
    intermediate sits within float error of .5, so allow rare one-level differences."""
    planes = (torch.rand(5, 24, 40) * 255).round()
    q = torch.cat([t for t in ref.jpeg_quant_tables(torch.tensor([10, 30, 50, 75, 95]))[:1]])
    got = ops._jpeg_blocks_op(planes.to(dev), q.to(dev), "triton").cpu()
    exp = ref.jpeg_blocks_ref(planes, q)
    diff = (got - exp).abs()
    assert torch.isfinite(got).all()
    assert float((diff > 0).float().mean()) < 0.005, f"{int((diff > 0).sum())} samples differ"


@pytest.mark.parametrize("shape", [(2, 17, 23), (1, 33, 40)], ids=["17x23", "33x40"])
def test_jpeg_full_pipeline_triton_vs_torch(dev, shape):
    """Colour stages, block stages and upsampling in Triton against the torch path: identical
    except rare one-level rounding flips (different float summation order)."""
    B, H, W = shape
    x = torch.rand(B, 3, H, W, device=dev)
    q = torch.tensor([20, 90][:B])
    got = ops.jpeg(x, q, backend="triton").cpu()
    exp = ops.jpeg(x.cpu(), q, backend="torch")
    assert got.shape == exp.shape and torch.isfinite(got).all()
    assert float(((got - exp).abs() > 1e-6).float().mean()) < 0.01
    assert float((got - exp).abs().mean()) < 1e-3
    x8 = (x * 255).round().byte()
    got8 = ops.jpeg(x8, q, out_dtype=torch.float16, backend="triton").cpu().float()
    assert float((got8 - exp).abs().mean()) < 2e-3


@pytest.mark.parametrize("which", ["noise", "blur"])
def test_fused_k_way_equals_separate_calls(dev, which):
    specs = denoise_levels((5, 10, 20)) if which == "noise" else deblur_levels((1, 2, 3), kernel_size=5)
    clean = torch.rand(3, 3, 17, 23, device=dev)
    fused = counterfactual(clean, specs, seed=4, step=2, sample_offset=1, backend="triton")
    sep = torch.stack([s.apply(clean, Ctx(seed=4, step=2, k=k, sample_offset=1, batch=3, device=dev), backend="triton")
                       for k, s in enumerate(specs)])
    assert torch.equal(fused, sep)
    ref_out = counterfactual(clean.cpu(), specs, seed=4, step=2, sample_offset=1, backend="torch")
    torch.testing.assert_close(fused.cpu(), ref_out, atol=1e-6, rtol=1e-5)


def test_split_invariance_and_independent_mode(dev):
    specs = [GaussianNoise(15), GaussianNoise((5, 25))]
    clean = torch.rand(8, 3, 9, 11, device=dev)
    full = counterfactual(clean, specs, seed=11, step=6, backend="triton")
    halves = torch.cat([counterfactual(clean[:4], specs, seed=11, step=6, backend="triton"),
                        counterfactual(clean[4:], specs, seed=11, step=6, sample_offset=4, backend="triton")], dim=1)
    assert torch.equal(full, halves)
    assert torch.equal(full, counterfactual(clean, specs, seed=11, step=6, backend="triton"))
    ind = counterfactual(torch.stack([clean, clean.flip(0)]), specs, seed=11, step=6, mode="independent",
                         backend="triton")
    assert torch.equal(ind[0], full[0])


def test_mixed_confounders_through_triton(dev, close):
    specs = [GaussianBlur(1.5, kernel_size=5, sigma_y=0.7, angle=20), JPEG(40), Resize(size=(17, 23), mode="bilinear"),
             Rain(length=(2.0, 4.0))]
    clean = torch.rand(2, 3, 17, 23, device=dev)
    got = counterfactual(clean, specs, seed=0, step=1, backend="triton").cpu()
    exp = counterfactual(clean.cpu(), specs, seed=0, step=1, backend="torch")
    for k in (0, 2, 3):
        close(got[k], exp[k], atol=1e-5, rtol=1e-5, name=specs[k].name)
    assert float((got[1] - exp[1]).abs().mean()) < 1e-3
