"""Blur: separable per-sample passes (fused over K confounders) and per-sample 2-D correlation,
both with reflect-101 borders (OpenCV BORDER_REFLECT_101, torch 'reflect'). Reference:
dil_fast/ops/reference/blur.py."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._autotune import configs

_TILES = [{"BH": 16, "BW": 64}, {"BH": 32, "BW": 32}, {"BH": 8, "BW": 128}]
_TILE_INTERPRETER = {"BH": 64, "BW": 128}  # the interpreter pays per program, not per element


@triton.jit
def _reflect101(i, n):
    """Fold index i into [0, n) by reflection without repeating the edge sample."""
    n = n + tl.zeros_like(i)  # a tensor even when n was specialised to the constant 1
    period = tl.maximum(2 * n - 2, 1)
    i = tl.abs(i) % period
    i = tl.where(i >= n, period - i, i)
    return tl.where(n > 1, i, 0)


@triton.autotune(configs=configs(_TILES, _TILE_INTERPRETER, (4, 8)), key=["H", "W", "K", "T", "AXIS"])
@triton.jit
def _blur_sep_fwd_kernel(
    x_ptr,
    w_ptr,
    out_ptr,
    K,
    B,
    C,
    H,
    W,
    stride_xk,
    stride_xb,
    stride_ok,
    stride_ob,
    IN_SCALE: tl.constexpr,
    T: tl.constexpr,
    AXIS: tl.constexpr,
    BH: tl.constexpr,
    BW: tl.constexpr,
):
    """out[k, b, c, h, w] = sum_t w[k, b, t] * x[k, b, c, reflect(h + t - T//2), w]   (AXIS 0)
                          = sum_t w[k, b, t] * x[k, b, c, h, reflect(w + t - T//2)]   (AXIS 1),
    taps summed in order t = 0..T-1 in float32; stride_xk = 0 reads one clean batch for all K.
    The taps are a loop, not unrolled: unrolled, ptxas keeps every tap's addresses and values of a
    tile in flight and spills (Triton 3.6, up to 620 B per thread at T = 21)."""
    pid_t = tl.program_id(0)
    bc = tl.program_id(1).to(tl.int64)
    b = bc // C
    c = bc % C
    n_tw = tl.cdiv(W, BW)
    h = (pid_t // n_tw) * BH + tl.arange(0, BH)
    w = (pid_t % n_tw) * BW + tl.arange(0, BW)
    mask = (h[:, None] < H) & (w[None, :] < W)
    plane = c * H * W
    for k in range(K):
        kk = tl.cast(k, tl.int64)  # k * stride reaches K * B * C * H * W, past int32
        src = x_ptr + kk * stride_xk + b * stride_xb + plane
        taps = w_ptr + (kk * B + b) * T
        acc = tl.zeros((BH, BW), dtype=tl.float32)
        for t in tl.range(0, T, loop_unroll_factor=1):
            wt = tl.load(taps + t).to(tl.float32)
            if AXIS == 0:
                hh = _reflect101(h + (t - T // 2), H)
                offs = hh[:, None].to(tl.int64) * W + w[None, :]
            else:
                ww = _reflect101(w + (t - T // 2), W)
                offs = h[:, None].to(tl.int64) * W + ww[None, :]
            v = tl.load(src + offs, mask=mask, other=0.0).to(tl.float32) * IN_SCALE
            acc += wt * v
        dst = out_ptr + kk * stride_ok + b * stride_ob + plane
        tl.store(dst + h[:, None].to(tl.int64) * W + w[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.autotune(configs=configs(_TILES, _TILE_INTERPRETER, (4, 8)), key=["H", "W", "T"])
@triton.jit
def _blur2d_fwd_kernel(
    x_ptr,
    kern_ptr,
    out_ptr,
    C,
    H,
    W,
    IN_SCALE: tl.constexpr,
    T: tl.constexpr,
    BH: tl.constexpr,
    BW: tl.constexpr,
):
    """out[n, c, h, w] = sum_{i,j} kern[n, i, j] * x[n, c, reflect(h + i - T//2), reflect(w + j - T//2)],
    taps summed row by row in float32; both tap loops stay loops (see _blur_sep_fwd_kernel)."""
    pid_t = tl.program_id(0)
    nc = tl.program_id(1).to(tl.int64)
    n = nc // C
    n_tw = tl.cdiv(W, BW)
    h = (pid_t // n_tw) * BH + tl.arange(0, BH)
    w = (pid_t % n_tw) * BW + tl.arange(0, BW)
    mask = (h[:, None] < H) & (w[None, :] < W)
    src = x_ptr + nc * H * W
    taps = kern_ptr + n * T * T
    acc = tl.zeros((BH, BW), dtype=tl.float32)
    for i in tl.range(0, T, loop_unroll_factor=1):
        rows = src + _reflect101(h + (i - T // 2), H).to(tl.int64)[:, None] * W
        for j in tl.range(0, T, loop_unroll_factor=1):
            ww = _reflect101(w + (j - T // 2), W)
            wt = tl.load(taps + i * T + j).to(tl.float32)
            v = tl.load(rows + ww[None, :], mask=mask, other=0.0).to(tl.float32) * IN_SCALE
            acc += wt * v
    dst = out_ptr + nc * H * W + h[:, None].to(tl.int64) * W + w[None, :]
    tl.store(dst, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _scale(x):
    return 1.0 / 255.0 if x.dtype == torch.uint8 else 1.0


def _check_planes(planes: int) -> None:
    if planes > 65535:  # CUDA's limit on grid dimension 1
        raise ValueError(f"blur: batch x channels = {planes} exceeds 65535; split the batch")


def _grid(H, W, planes):
    def grid(meta):
        return (triton.cdiv(H, meta["BH"]) * triton.cdiv(W, meta["BW"]), planes)

    return grid


def blur_sep_fwd(x: torch.Tensor, weights: torch.Tensor, axis: int, *, out_dtype=torch.float32) -> torch.Tensor:
    """One separable pass along axis (0 = H, 1 = W). x ``[B, C, H, W]`` (shared by all K) or
    ``[K, B, C, H, W]``; weights ``[K, B, T]`` (T odd). Returns ``[K, B, C, H, W]``."""
    K, B, T = weights.shape
    shared = x.dim() == 4
    x = x.contiguous()
    C, H, W = x.shape[-3:]
    out = torch.empty((K, B, C, H, W), dtype=out_dtype, device=x.device)
    _check_planes(B * C)
    _blur_sep_fwd_kernel[_grid(H, W, B * C)](
        x,
        weights.to(device=x.device, dtype=torch.float32).contiguous(),
        out,
        K,
        B,
        C,
        H,
        W,
        0 if shared else B * C * H * W,
        C * H * W,
        B * C * H * W,
        C * H * W,
        IN_SCALE=_scale(x),
        T=T,
        AXIS=axis,
    )
    return out


def blur2d_fwd(x: torch.Tensor, kernels: torch.Tensor, *, out_dtype=torch.float32) -> torch.Tensor:
    """Per-sample 2-D correlation: x ``[N, C, H, W]``, kernels ``[N, T, T]`` -> ``[N, C, H, W]``."""
    N, C, H, W = x.shape
    T = kernels.shape[-1]
    x = x.contiguous()
    out = torch.empty((N, C, H, W), dtype=out_dtype, device=x.device)
    _check_planes(N * C)
    _blur2d_fwd_kernel[_grid(H, W, N * C)](
        x,
        kernels.to(device=x.device, dtype=torch.float32).contiguous(),
        out,
        C,
        H,
        W,
        IN_SCALE=_scale(x),
        T=T,
    )
    return out
