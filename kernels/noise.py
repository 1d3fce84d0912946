"""Additive Gaussian noise (+ clip + 8-bit rounding), single and fused K-way.

Counter scheme: dil_fast/rng.py (Philox-4x32-10); normal transform and the pure-torch reference:
dil_fast/ops/reference/noise.py (it draws the same uint32 words; values agree up to the float
rounding of log/cos/sin).

Compiled numerics: everything after the normal draw (x / 255 of uint8 input, x + sigma * n, clip,
round to 1/255) rounds as the torch reference does on the CPU, so the output is bit-exact given the
same normal field: divisions by 255 round as IEEE division (``_div255``), and nothing is contracted
into an FMA (launched with ``NOISE_LAUNCH_OPTIONS``). The Box-Muller radius takes the IEEE square
root, so the compiled field equals torch's on CUDA bit for bit (H200, Triton 3.6; libdevice's
log/cos/sin are CUDA's logf/cosf/sinf). bench/bench_compile.py (``NUMERICS``) checks the PTX.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dil_fast.ops._common import empty_samples, samples_channels_last

from ._autotune import configs

PHILOX_M0 = tl.constexpr(0xD2511F53)
PHILOX_M1 = tl.constexpr(0xCD9E8D57)
PHILOX_W0 = tl.constexpr(0x9E3779B9)
PHILOX_W1 = tl.constexpr(0xBB67AE85)


@triton.jit
def _philox4x32(c0, c1, c2, c3, k0, k1):
    """Philox-4x32-10 of uint32 counters (c0..c3) under key (k0, k1)."""
    for _ in tl.static_range(10):
        a0 = c0
        a2 = c2
        c0 = tl.umulhi(a2, PHILOX_M1) ^ c1 ^ k0
        c2 = tl.umulhi(a0, PHILOX_M0) ^ c3 ^ k1
        c1 = a2 * PHILOX_M1
        c3 = a0 * PHILOX_M0
        k0 = k0 + PHILOX_W0
        k1 = k1 + PHILOX_W1
    return c0, c1, c2, c3


@triton.jit
def _uniform(x):
    """uint32 -> float32 in (0, 1): ((x >> 9) * 2 + 1) * 2**-24, exact."""
    return ((x >> 9).to(tl.float32) * 2.0 + 1.0) * (1.0 / 16777216.0)


@triton.jit
def _normal4(j, c1, c2, c3, k0, k1):
    """The 4 normals of counter j (Box-Muller on its 4 uniforms), each shaped like j."""
    x0, x1, x2, x3 = _philox4x32(j, c1 + tl.zeros_like(j), c2 + tl.zeros_like(j), c3 + tl.zeros_like(j), k0, k1)
    r0 = tl.sqrt_rn(-2.0 * tl.log(_uniform(x0)))
    r2 = tl.sqrt_rn(-2.0 * tl.log(_uniform(x2)))
    t1 = 6.283185307179586 * _uniform(x1)
    t3 = 6.283185307179586 * _uniform(x3)
    return r0 * tl.cos(t1), r0 * tl.sin(t1), r2 * tl.cos(t3), r2 * tl.sin(t3)


@triton.jit
def _div255(v):
    """v / 255 in float32, rounded as IEEE division rounds it, for integer-valued v (a byte, a
    round8 level): the float64 product is within 2**-52 (relative) of v / 255, whose binary digits
    repeat with period 8 and so never lie that close to a float32 rounding boundary
    (test_float64_product_divides_by_255_as_ieee_division checks every float32 mantissa). A plain
    / compiles to an approximate division; div_rn was slower on an H200 (1.8x in the gray path)."""
    return (v.to(tl.float64) * (1.0 / 255.0)).to(tl.float32)


@triton.jit
def _read(v, IN_U8: tl.constexpr):
    """A loaded value as float32: bytes / 255 as the torch path's x.float() / 255 rounds it on the
    CPU (x * (1/255) differs in the last bit for 126 of the 256 byte values)."""
    if IN_U8:
        return _div255(v)
    return v.to(tl.float32)


@triton.jit
def _round8(y):
    """y rounded to a multiple of 1/255: floor(y * 255 + 0.5) / 255, the division IEEE."""
    return _div255(tl.floor(y * 255.0 + 0.5))


@triton.jit
def _interleave4(v0, v1, v2, v3):
    """[Q] x 4 -> [4Q] with out[4q + l] = v_l[q]; each thread keeps its q's four values together."""
    return tl.interleave(tl.interleave(v0, v2), tl.interleave(v1, v3))


# BLOCK elements per program, walked in TILEs of 1024: a program's share of a sample can be large
# while the live state (8 or 4 elements and 2 or 1 Philox counters per thread) fits in registers.
# ptxas spills a value or two at BLOCK 4096 (Triton 3.9: with 8 warps, and with 4 in the gray
# uint8 path since the IEEE square root's slow-path call) or TILE 2048 (3.6/3.9); on an H200,
# autotuning picked BLOCK 1024 for 3 x 256 x 256 images. bench/bench_compile.py measures every config.
_BLOCKS = [{"BLOCK": 1024, "TILE": 1024}, {"BLOCK": 2048, "TILE": 1024}]

# Launch options of _noise_fwd_kernel (bench/bench_compile.py compiles with the same): no FMA
# contraction, so x + sigma * n and y * 255 + 0.5 round twice, as in torch.
NOISE_LAUNCH_OPTIONS = {"enable_fp_fusion": False}


@triton.jit
def _at(e, HW, C, CL: tl.constexpr):
    """Memory offset inside a sample of NCHW element index e: e itself, or its NHWC place when CL."""
    if CL:
        return (e % HW) * C + e // HW
    return e


@triton.autotune(configs=configs(_BLOCKS, {"BLOCK": 8192, "TILE": 8192}, (4, 8)), key=["CHW", "K", "HAS_GRAY", "CL"])
@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "step_lo", "sample_offset", "k_base", "stream"])
def _noise_fwd_kernel(
    x_ptr,
    out_ptr,
    sigma_ptr,
    gray_ptr,
    K,
    B,
    CHW,
    HW,
    C,
    stride_xk,
    stride_xb,
    stride_ok,
    stride_ob,
    seed_lo,
    seed_hi,
    step_lo,
    sample_offset,
    k_base,
    stream,
    IN_U8: tl.constexpr,
    CLIP: tl.constexpr,
    ROUND8: tl.constexpr,
    HAS_GRAY: tl.constexpr,
    CL: tl.constexpr,
    BLOCK: tl.constexpr,
    TILE: tl.constexpr,
):
    """out[k, b, e] = round8(clip(x[k, b, e] + sigma[k, b] * n_{k,b}(e))) for k < K, x / 255 if IN_U8.

    e is the NCHW element index inside a sample; n_{k,b}(e) is normal number e (e mod HW when
    gray[k, b]) of the counter stream (seed, step, k_base + k, sample_offset + b, stream): normal
    4j + l is Box-Muller output l of Philox counter j. Program (p, b) covers elements
    [p * BLOCK, (p + 1) * BLOCK) of sample b in tiles of TILE; the clean tile is loaded once and
    reused for all K confounders (stride_xk = 0: shared batch). The four normals of a counter are
    interleaved into element order, so every counter is computed once. CL: every sample of x and of
    out is stored NHWC (channels_last); the field still follows the NCHW index, so the numbers are
    those of the NCHW layout.
    """
    pid = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    k0 = seed_lo.to(tl.uint32)
    k1 = seed_hi.to(tl.uint32)
    c1 = (sample_offset + b).to(tl.uint32)
    c3 = step_lo.to(tl.uint32)
    x_b = x_ptr + b * stride_xb
    out_b = out_ptr + b * stride_ob
    # a constant trip count: tiles past CHW are masked off (autotuning picks a small BLOCK for small
    # images); a runtime bound makes ptxas spill a few bytes in the odd-size variants
    for tile in tl.range(0, BLOCK // TILE, loop_unroll_factor=1):
        e0 = pid * BLOCK + tile * TILE
        e = e0 + tl.arange(0, TILE)
        j = (e0 // 4 + tl.arange(0, TILE // 4)).to(tl.uint32)
        if not HAS_GRAY:
            mask = e < CHW
            at = _at(e, HW, C, CL)
            x = _read(tl.load(x_b + at, mask=mask, other=0.0), IN_U8)
        for k in range(K):
            kk = tl.cast(k, tl.int64)  # k * stride reaches K * B * C * H * W, past int32
            c2 = (((k_base + k) & 0xFFFF) | (stream << 16)).to(tl.uint32)
            n0, n1, n2, n3 = _normal4(j, c1, c2, c3, k0, k1)
            n = _interleave4(n0, n1, n2, n3)
            sigma = tl.load(sigma_ptr + kk * B + b).to(tl.float32)
            if HAS_GRAY:
                gray = tl.load(gray_ptr + kk * B + b) != 0
                n_field = tl.where(gray, HW, CHW)
                n_rep = tl.where(gray, C, 1)
                m = e < n_field
                for c in range(0, n_rep):
                    offs = _at(e + tl.cast(c, tl.int64) * HW, HW, C, CL)
                    xv = _read(tl.load(x_b + kk * stride_xk + offs, mask=m, other=0.0), IN_U8)
                    y = xv + sigma * n
                    if CLIP:
                        y = tl.minimum(tl.maximum(y, 0.0), 1.0)
                    if ROUND8:
                        y = _round8(y)
                    tl.store(out_b + kk * stride_ok + offs, y.to(out_ptr.dtype.element_ty), mask=m)
            else:
                if stride_xk != 0:
                    x = _read(tl.load(x_b + kk * stride_xk + at, mask=mask, other=0.0), IN_U8)
                y = x + sigma * n
                if CLIP:
                    y = tl.minimum(tl.maximum(y, 0.0), 1.0)
                if ROUND8:
                    y = _round8(y)
                tl.store(out_b + kk * stride_ok + at, y.to(out_ptr.dtype.element_ty), mask=mask)


def noise_fwd(
    x: torch.Tensor,
    sigma: torch.Tensor,
    *,
    seed: int,
    step: int,
    k_base: int = 0,
    sample_offset: int = 0,
    stream: int = 0,
    clip: bool = True,
    round8: bool = False,
    gray: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """x ``[B, C, H, W]`` (shared) or ``[K, B, C, H, W]`` (independent), float or uint8 (read as
    x / 255); sigma ``[K, B]`` on the [0, 1] scale; gray ``[K, B]`` bool or None.
    Returns ``[K, B, C, H, W]`` of out_dtype, each sample stored NHWC when x's are (channels_last)."""
    K, B = sigma.shape
    shared = x.dim() == 4
    cl = samples_channels_last(x)
    if not cl:
        x = x.contiguous()
    C, H, W = x.shape[-3:]
    out = empty_samples((K, B, C, H, W), out_dtype, x.device, cl)
    CHW, HW = C * H * W, H * W
    sigma = sigma.to(device=x.device, dtype=torch.float32).contiguous()
    has_gray = gray is not None
    gray_t = (
        gray.to(device=x.device, dtype=torch.int32).contiguous()
        if has_gray
        else torch.zeros(1, dtype=torch.int32, device=x.device)
    )
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    if B > 65535:  # CUDA's limit on grid dimension 1
        raise ValueError(f"noise: batch {B} exceeds 65535; split the batch")

    def grid(meta):
        return (triton.cdiv(CHW, meta["BLOCK"]), B)

    _noise_fwd_kernel[grid](
        x,
        out,
        sigma,
        gray_t,
        K,
        B,
        CHW,
        HW,
        C,
        0 if shared else B * CHW,
        CHW,
        B * CHW,
        CHW,
        seed & 0xFFFFFFFF,
        seed >> 32,
        int(step) & 0xFFFFFFFF,
        int(sample_offset),
        int(k_base),
        int(stream),
        IN_U8=x.dtype == torch.uint8,
        CLIP=bool(clip),
        ROUND8=bool(round8),
        HAS_GRAY=has_gray,
        CL=cl,
        **NOISE_LAUNCH_OPTIONS,
    )
    return out
