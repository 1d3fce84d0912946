"""Patch sampler: random p×p crops with the 8 dihedral modes from a uint8 patch store, one launch.

Math (identical to :func:`dil_fast.ops.reference.sample_crops.sample_crops_ref`, bit for bit):
for sample ``s = k * B + j`` of the launch,

    i            = perm[k, start + j]                          (patch index in the store)
    (y, x, mode) = hash(key, k, counter_base + j)              (counter-based, dil_fast/rng.py)
    T, FR, FC    = mode & 1, mode >> 1 & 1, mode >> 2 & 1
    (a, b)       = (c, r) if T else (r, c);  a = p-1-a if FR;  b = p-1-b if FC
    out[k, j, ch, r, c] = store[i, y + a, x + b, ch]  (/ 255 in fp32 for float outputs)

Grid: (K * B, cdiv(p * p, BLOCK)); the hash is computed once per program on int64 scalars.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _lo32(x):
    # x mod 2**32 for x >= 0, using shifts only (no 64-bit literal whose type could differ by version)
    return x - ((x >> 32) << 32)


@triton.jit
def _mul32(x, C_LO: tl.constexpr, C_HI: tl.constexpr):
    # (x * c) mod 2**32 with c = C_HI * 2**16 + C_LO, split so int64 never overflows
    lo = x * C_LO
    hi = x * C_HI
    hi = (hi - ((hi >> 16) << 16)) << 16
    return _lo32(lo + hi)


@triton.jit
def _mix32(x):
    x = x ^ (x >> 16)
    x = _mul32(x, 0x352D, 0x7FEB)
    x = x ^ (x >> 15)
    x = _mul32(x, 0xA68B, 0x846C)
    x = x ^ (x >> 16)
    return x


@triton.jit(do_not_specialize=["key", "start", "counter_base", "batch", "height", "width"])
def _sample_crops_fwd_kernel(
    store_ptr,
    perm_ptr,
    out_ptr,
    key,
    start,
    counter_base,
    batch,
    height,
    width,
    s_n,
    s_h,
    s_w,
    s_c,
    p_k,
    p_l,
    o_k,
    o_b,
    o_c,
    o_h,
    o_w,
    PATCH: tl.constexpr,
    BLOCK: tl.constexpr,
    TO_FLOAT: tl.constexpr,
):
    """out[k, j, :, r, c] = dihedral(crop(store[perm[k, start+j]], y, x), mode)[:, r, c]."""
    sample = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1).to(tl.int64)
    batch64 = batch.to(tl.int64)
    k = sample // batch64
    j = sample - k * batch64
    idx = tl.load(perm_ptr + k * p_k + (start.to(tl.int64) + j) * p_l).to(tl.int64)

    position = counter_base.to(tl.int64) + j
    base = _mix32(key.to(tl.int64) ^ _mix32(position ^ _mix32(k)))
    hy = _mix32(base ^ 1)
    hx = _mix32(base ^ 2)
    hm = _mix32(base ^ 3)
    y = (hy * (height.to(tl.int64) - PATCH + 1)) >> 32
    x = (hx * (width.to(tl.int64) - PATCH + 1)) >> 32
    mode = hm >> 29
    t = mode & 1
    fr = (mode >> 1) & 1
    fc = (mode >> 2) & 1

    offs = tile * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < PATCH * PATCH
    r = offs // PATCH
    c = offs - r * PATCH
    a = tl.where(t == 1, c, r)
    b = tl.where(t == 1, r, c)
    a = tl.where(fr == 1, PATCH - 1 - a, a)
    b = tl.where(fc == 1, PATCH - 1 - b, b)
    src = store_ptr + idx * s_n + (y + a) * s_h + (x + b) * s_w
    dst = out_ptr + k * o_k + j * o_b + r * o_h + c * o_w
    for ch in tl.static_range(3):
        v = tl.load(src + ch * s_c, mask=mask, other=0)
        if TO_FLOAT:
            v = tl.math.div_rn(v.to(tl.float32), 255.0)  # IEEE division (plain / is approximate on GPU)
        tl.store(dst + ch * o_c, v.to(out_ptr.dtype.element_ty), mask=mask)


def sample_crops_fwd(
    store: torch.Tensor,
    perm: torch.Tensor,
    start: int,
    batch: int,
    patch: int,
    key: int,
    counter_base: int,
    out: torch.Tensor,
) -> torch.Tensor:
    """Launch the sampler into ``out`` ([K, B, 3, p, p], any strides, float or uint8); returns it."""
    num_k = perm.shape[0]
    _, height, width, _ = store.shape
    block = min(triton.next_power_of_2(patch * patch), 1024)
    grid = (num_k * batch, triton.cdiv(patch * patch, block))
    _sample_crops_fwd_kernel[grid](
        store,
        perm,
        out,
        int(key),
        int(start),
        int(counter_base),
        int(batch),
        int(height),
        int(width),
        *store.stride(),
        *perm.stride(),
        *out.stride(),
        PATCH=int(patch),
        BLOCK=block,
        TO_FLOAT=out.dtype.is_floating_point,
        num_warps=4,
    )
    return out
