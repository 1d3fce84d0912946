"""The fused Gaussian-noise op: the reference's statistics, the Triton kernel against it (T1), registration."""

from __future__ import annotations

import math

import pytest
import torch

from dil_fast import backends, ops, rng
from dil_fast.ops import reference as ref
from tests.helpers import IDS, SHAPES, triton_tol


def test_gaussian_noise_statistics_and_clip_round():
    x = torch.full((4, 3, 24, 24), 0.5)
    sigma = torch.tensor([5.0, 10.0, 20.0, 30.0]) / 255
    y = ref.gaussian_noise_ref(x, sigma, seed=0, step=0, clip=False)
    z = (y - x) / sigma.reshape(-1, 1, 1, 1)
    n = z[0].numel()
    assert (z.reshape(4, -1).mean(1).abs() < 5 / math.sqrt(n)).all()
    assert ((z.reshape(4, -1).std(1) - 1).abs() < 5 / math.sqrt(2 * n)).all()
    y8 = ref.gaussian_noise_ref(torch.rand(2, 3, 9, 7), torch.tensor([0.3, 0.3]), seed=0, step=0, round8=True)
    assert y8.min() >= 0 and y8.max() <= 1
    assert torch.equal(y8 * 255, (y8 * 255).round())


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_noise_op_registration_opcheck(channels_last):
    x = torch.rand(2, 3, 9, 11)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(
        ops.noise._noise_op, (x, torch.rand(2, 2) * 0.1, None, 1, 2, 0, 0, 0, True, False, torch.float32, "torch")
    )


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_noise_kernel_matches_reference(dev, shape, dtype, close):
    B, H, W = shape
    x = torch.rand(B, 3, H, W, device=dev).to(dtype)
    sigma = torch.rand(2, B, device=dev) * 0.2
    got = ops.noise.gaussian_noise(
        x, sigma, seed=2**40 + 3, step=5, sample_offset=7, clip=False, out_dtype=dtype, backend="triton"
    )
    for k in range(2):
        exp = ref.gaussian_noise_ref(x.float(), sigma[k], seed=2**40 + 3, step=5, k=k, sample_offset=7, clip=False)
        close(got[k], exp.to(dtype), **triton_tol(dtype), name=f"noise k={k}")


@pytest.mark.triton
@pytest.mark.parametrize("case", ["fp32", "fp32-unclipped", "uint8", "uint8-gray"])
def test_noise_kernel_exact_given_the_same_normal_field(dev, case):
    """The arithmetic after the draw (bytes / 255, sigma * n, clip, round) is exact against the
    reference fed the kernel's own normal field (recovered from an unclipped run on zeros with
    sigma 1). Compiled, bench/bench_compile.py (NUMERICS) checks the same claim on the sm_90 PTX."""
    B, C, H, W = 2, 3, 9, 13
    field = ops.noise.gaussian_noise(
        torch.zeros(B, C, H, W, device=dev), torch.ones(1, B, device=dev), seed=9, step=1, clip=False, backend="triton"
    )[0]
    x = torch.rand(B, C, H, W, device=dev)
    if case.startswith("uint8"):
        x = (x * 255).round().to(torch.uint8)
    gray = torch.tensor([[True, False]], device=dev) if case.endswith("gray") else None
    clip = round8 = case != "fp32-unclipped"
    sigma = torch.tensor([[0.05, 0.3]], device=dev)
    got = ops.noise.gaussian_noise(x, sigma, seed=9, step=1, clip=clip, round8=round8, gray=gray, backend="triton")[0]
    # the oracle runs on the CPU: on CUDA, torch computes t / 255.0 as t * (1 / 255.0), 1 ulp off IEEE
    xf = x.cpu().float() / 255 if x.dtype == torch.uint8 else x.cpu()
    exp = ref.gaussian_noise_ref(
        xf,
        sigma[0].cpu(),
        seed=0,
        step=0,
        clip=clip,
        round8=round8,
        gray=None if gray is None else gray[0].cpu(),
        normal=field.reshape(B, -1).cpu(),
    )
    got = got.cpu()
    assert torch.equal(got, exp), f"{int((got != exp).sum())} of {got.numel()} elements differ"


def test_float64_product_divides_by_255_as_ieee_division():
    """kernels/noise.py's _div255: float32(float64(v) * (1/255)) is v / 255 rounded once, for every
    float32 mantissa v < 2**24 (other integer-valued v differ from one by a power of two)."""
    for start in range(0, 2**24, 2**22):
        v = torch.arange(start, start + 2**22, dtype=torch.float64)
        got, want = (v * (1.0 / 255.0)).float(), v.float() / 255.0
        assert torch.equal(got, want), f"{int((got != want).sum())} mantissas differ from {start}"


@pytest.mark.triton
def test_noise_kernel_gray_and_uint8_input(dev, close):
    B, H, W = 3, 11, 7
    x8 = torch.randint(0, 256, (B, 1, H, W), dtype=torch.uint8, device=dev).expand(B, 3, H, W)
    sigma = torch.full((2, B), 0.1, device=dev)
    gray = torch.tensor([[True, False, True], [False, True, False]], device=dev)
    got = ops.noise.gaussian_noise(x8, sigma, seed=1, step=2, gray=gray, round8=True, backend="triton")
    for k in range(2):
        exp = ref.gaussian_noise_ref(x8.float() / 255, sigma[k], seed=1, step=2, k=k, gray=gray[k], round8=True)
        close(got[k], exp, atol=1e-6, rtol=0, name=f"gray noise k={k}")
    assert torch.equal(got[0, 0, 0], got[0, 0, 1])  # a gray sample: one field for all channels
    assert not torch.equal(got[0, 1, 0], got[0, 1, 1])


@pytest.mark.triton
def test_noise_kernel_statistics(dev):
    B, H, W = 4, 16, 16
    x = torch.full((B, 3, H, W), 0.5, device=dev)
    sigma = torch.tensor([[5.0, 10.0, 20.0, 30.0]], device=dev) / 255
    z = (ops.noise.gaussian_noise(x, sigma, seed=3, step=0, clip=False, backend="triton")[0] - x) / sigma.reshape(
        B, 1, 1, 1
    )
    z = z.reshape(B, -1).double().cpu()
    n = z.shape[1]
    assert (z.mean(1).abs() < 5 / math.sqrt(n)).all(), z.mean(1)
    assert ((z.std(1) - 1).abs() < 5 / math.sqrt(2 * n)).all(), z.std(1)


@pytest.mark.triton
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
    mine = torch.stack(rng.philox4x32(torch.arange(16), 0, 0, 0, *rng.seed_key(seed)), -1).reshape(-1)
    assert torch.equal(out.cpu().long() & rng.M32, mine)


@pytest.mark.parametrize(
    "backend", [pytest.param("torch", id="torch"), pytest.param("triton", id="triton", marks=pytest.mark.triton)]
)
@pytest.mark.parametrize("case", ["fp32", "uint8-gray-round8", "independent"])
def test_channels_last_samples_give_the_same_numbers_stored_nhwc(request, backend, case):
    """Channels-last input (the PatchStore sampler's crops for a channels-last model) gives the NCHW
    input's numbers, with every output sample stored NHWC: no layout copy before the model."""
    dev = request.getfixturevalue("dev") if backend == "triton" else torch.device("cpu")
    g = torch.Generator().manual_seed(4)
    B, C, H, W = 3, 3, 9, 13
    if case == "uint8-gray-round8":
        x = torch.randint(0, 256, (B, C, H, W), generator=g, dtype=torch.uint8)
        kw = dict(gray=torch.tensor([[True, False, True], [False, True, False]]), round8=True)
    elif case == "independent":
        x = torch.rand(2, B, C, H, W, generator=g)
        kw = {}
    else:
        x = torch.rand(B, C, H, W, generator=g)
        kw = {}
    x = x.to(dev)
    kw = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    sigma = (torch.rand(2, B, generator=g) * 0.2).to(dev)
    x_cl = (
        x.contiguous(memory_format=torch.channels_last)
        if x.dim() == 4
        else x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    )
    assert not x_cl.is_contiguous()
    plain = ops.noise.gaussian_noise(x, sigma, seed=5, step=2, backend=backend, **kw)
    nhwc = ops.noise.gaussian_noise(x_cl, sigma, seed=5, step=2, backend=backend, **kw)
    assert torch.equal(nhwc, plain)
    assert all(nhwc[k].is_contiguous(memory_format=torch.channels_last) for k in range(2))
    assert nhwc.permute(0, 1, 3, 4, 2).is_contiguous()
