"""Separable resampling by index/weight tables (the tables fix the convention: see
resample_tables in dil_fast/ops/reference/resize.py, also the reference)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._autotune import configs


@triton.autotune(
    configs=configs([{"BH": 16, "BW": 64}, {"BH": 32, "BW": 32}, {"BH": 8, "BW": 128}], {"BH": 64, "BW": 128}, (4, 8)),
    key=["H_in", "W_in", "H_out", "W_out", "T", "AXIS"],
)
@triton.jit
def _resample_fwd_kernel(
    x_ptr,
    idx_ptr,
    wt_ptr,
    out_ptr,
    H_in,
    W_in,
    H_out,
    W_out,
    T,
    IN_SCALE: tl.constexpr,
    AXIS: tl.constexpr,
    BH: tl.constexpr,
    BW: tl.constexpr,
):
    """AXIS 0: out[n, h, w] = sum_t wt[h, t] * x[n, idx[h, t], w]   (W_out == W_in)
    AXIS 1: out[n, h, w] = sum_t wt[w, t] * x[n, h, idx[w, t]]   (H_out == H_in), t = 0..T-1."""
    pid_t = tl.program_id(0)
    plane = tl.program_id(1).to(tl.int64)
    n_tw = tl.cdiv(W_out, BW)
    h = (pid_t // n_tw) * BH + tl.arange(0, BH)
    w = (pid_t % n_tw) * BW + tl.arange(0, BW)
    mh = h < H_out
    mw = w < W_out
    mask = mh[:, None] & mw[None, :]
    src = x_ptr + plane * H_in * W_in
    acc = tl.zeros((BH, BW), dtype=tl.float32)
    for t in range(T):
        if AXIS == 0:
            ii = tl.load(idx_ptr + h * T + t, mask=mh, other=0).to(tl.int64)
            wt = tl.load(wt_ptr + h * T + t, mask=mh, other=0.0)
            v = tl.load(src + ii[:, None] * W_in + w[None, :], mask=mask, other=0.0).to(tl.float32)
            acc += wt[:, None] * (v * IN_SCALE)
        else:
            ii = tl.load(idx_ptr + w * T + t, mask=mw, other=0).to(tl.int64)
            wt = tl.load(wt_ptr + w * T + t, mask=mw, other=0.0)
            v = tl.load(src + h[:, None].to(tl.int64) * W_in + ii[None, :], mask=mask, other=0.0).to(tl.float32)
            acc += wt[None, :] * (v * IN_SCALE)
    tl.store(
        out_ptr + plane * H_out * W_out + h[:, None].to(tl.int64) * W_out + w[None, :],
        acc.to(out_ptr.dtype.element_ty),
        mask=mask,
    )


def resample_fwd(
    x: torch.Tensor, idx: torch.Tensor, wt: torch.Tensor, axis: int, *, out_dtype=torch.float32
) -> torch.Tensor:
    """One pass along axis (0 = H, 1 = W) of x ``[N, C, H, W]`` with tables ``[n_out, T]``."""
    N, C, H, W = x.shape
    n_out, T = idx.shape
    H_out, W_out = (n_out, W) if axis == 0 else (H, n_out)
    x = x.contiguous()
    out = torch.empty((N, C, H_out, W_out), dtype=out_dtype, device=x.device)

    if N * C > 65535:  # CUDA's limit on grid dimension 1
        raise ValueError(f"resize: batch x channels = {N * C} exceeds 65535; split the batch")

    def grid(meta):
        return (triton.cdiv(H_out, meta["BH"]) * triton.cdiv(W_out, meta["BW"]), N * C)

    _resample_fwd_kernel[grid](
        x,
        idx.to(device=x.device, dtype=torch.int32).contiguous(),
        wt.to(device=x.device, dtype=torch.float32).contiguous(),
        out,
        H,
        W,
        H_out,
        W_out,
        T,
        IN_SCALE=1.0 / 255.0 if x.dtype == torch.uint8 else 1.0,
        AXIS=axis,
    )
    return out
