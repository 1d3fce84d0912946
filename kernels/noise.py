"""Additive Gaussian noise (+ clip + 8-bit rounding), single and fused K-way.

Counter scheme and normal transform: dil_fast/ops/ref_degrade.py (the reference draws the same
uint32 words; values agree up to the float rounding of log/cos/sin).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

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
    r0 = tl.sqrt(-2.0 * tl.log(_uniform(x0)))
    r2 = tl.sqrt(-2.0 * tl.log(_uniform(x2)))
    t1 = 6.283185307179586 * _uniform(x1)
    t3 = 6.283185307179586 * _uniform(x3)
    return r0 * tl.cos(t1), r0 * tl.sin(t1), r2 * tl.cos(t3), r2 * tl.sin(t3)


@triton.autotune(configs=configs([{"BLOCK": 1024}, {"BLOCK": 2048}, {"BLOCK": 4096}], {"BLOCK": 8192}, (4, 8)),
                 key=["CHW", "K", "HAS_GRAY"])
@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "step_lo", "sample_offset", "k_base", "stream"])
def _noise_fwd_kernel(
    x_ptr, out_ptr, sigma_ptr, gray_ptr,
    K, B, CHW, HW, C,
    stride_xk, stride_xb, stride_ok, stride_ob,
    seed_lo, seed_hi, step_lo, sample_offset, k_base, stream,
    IN_SCALE: tl.constexpr, CLIP: tl.constexpr, ROUND8: tl.constexpr, HAS_GRAY: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """out[k, b, e] = round8(clip(x[k, b, e] * IN_SCALE + sigma[k, b] * n_{k,b}(e))) for k < K.

    e is the NCHW element index inside a sample; n_{k,b}(e) is normal number e (e mod HW when
    gray[k, b]) of the counter stream (seed, step, k_base + k, sample_offset + b, stream). The
    clean tile is loaded once and reused for all K confounders (stride_xk = 0: shared batch).
    """
    pid = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    Q: tl.constexpr = BLOCK // 4
    j = pid * Q + tl.arange(0, Q)
    lane = tl.arange(0, 4)
    e = j[:, None] * 4 + lane[None, :]
    k0 = seed_lo.to(tl.uint32)
    k1 = seed_hi.to(tl.uint32)
    c1 = (sample_offset + b).to(tl.uint32)
    c3 = step_lo.to(tl.uint32)
    ju = j.to(tl.uint32)
    if not HAS_GRAY:
        mask = e < CHW
        x = tl.load(x_ptr + b * stride_xb + e, mask=mask, other=0.0).to(tl.float32) * IN_SCALE
    for k in range(K):
        c2 = (((k_base + k) & 0xFFFF) | (stream << 16)).to(tl.uint32)
        n0, n1, n2, n3 = _normal4(ju, c1, c2, c3, k0, k1)
        n = tl.where(lane[None, :] == 0, n0[:, None],
                     tl.where(lane[None, :] == 1, n1[:, None],
                              tl.where(lane[None, :] == 2, n2[:, None], n3[:, None])))
        sigma = tl.load(sigma_ptr + k * B + b).to(tl.float32)
        if HAS_GRAY:
            gray = tl.load(gray_ptr + k * B + b) != 0
            n_field = tl.where(gray, HW, CHW)
            n_rep = tl.where(gray, C, 1)
            for c in range(0, n_rep):
                offs = e + c * HW
                m = e < n_field
                xv = tl.load(x_ptr + k * stride_xk + b * stride_xb + offs, mask=m, other=0.0).to(tl.float32) * IN_SCALE
                y = xv + sigma * n
                if CLIP:
                    y = tl.minimum(tl.maximum(y, 0.0), 1.0)
                if ROUND8:
                    y = tl.floor(y * 255.0 + 0.5) / 255.0
                tl.store(out_ptr + k * stride_ok + b * stride_ob + offs, y.to(out_ptr.dtype.element_ty), mask=m)
        else:
            if stride_xk != 0:
                x = tl.load(x_ptr + k * stride_xk + b * stride_xb + e, mask=mask, other=0.0).to(tl.float32) * IN_SCALE
            y = x + sigma * n
            if CLIP:
                y = tl.minimum(tl.maximum(y, 0.0), 1.0)
            if ROUND8:
                y = tl.floor(y * 255.0 + 0.5) / 255.0
            tl.store(out_ptr + k * stride_ok + b * stride_ob + e, y.to(out_ptr.dtype.element_ty), mask=mask)


def noise_fwd(x: torch.Tensor, sigma: torch.Tensor, *, seed: int, step: int, k_base: int = 0,
              sample_offset: int = 0, stream: int = 0, clip: bool = True, round8: bool = False,
              gray: torch.Tensor | None = None, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """x ``[B, C, H, W]`` (shared) or ``[K, B, C, H, W]`` (independent), float or uint8 (read as
    x / 255); sigma ``[K, B]`` on the [0, 1] scale; gray ``[K, B]`` bool or None.
    Returns ``[K, B, C, H, W]`` of out_dtype."""
    K, B = sigma.shape
    shared = x.dim() == 4
    x = x.contiguous()
    C, H, W = x.shape[-3:]
    out = torch.empty((K, B, C, H, W), dtype=out_dtype, device=x.device)
    CHW, HW = C * H * W, H * W
    sigma = sigma.to(device=x.device, dtype=torch.float32).contiguous()
    has_gray = gray is not None
    gray_t = (gray.to(device=x.device, dtype=torch.int32).contiguous() if has_gray
              else torch.zeros(1, dtype=torch.int32, device=x.device))
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    if B > 65535:  # CUDA's limit on grid dimension 1
        raise ValueError(f"noise: batch {B} exceeds 65535; split the batch")

    def grid(meta):
        return (triton.cdiv(CHW, meta["BLOCK"]), B)

    _noise_fwd_kernel[grid](
        x, out, sigma, gray_t,
        K, B, CHW, HW, C,
        0 if shared else B * CHW, CHW, B * CHW, CHW,
        seed & 0xFFFFFFFF, seed >> 32, int(step) & 0xFFFFFFFF, int(sample_offset), int(k_base), int(stream),
        IN_SCALE=1.0 / 255.0 if x.dtype == torch.uint8 else 1.0,
        CLIP=bool(clip), ROUND8=bool(round8), HAS_GRAY=has_gray,
    )
    return out
