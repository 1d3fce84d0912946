"""Pure-torch references of the blur ops (:mod:`dil_fast.ops.blur`): separable per-sample passes and
per-sample 2-D correlation, reflect-101 borders (OpenCV BORDER_REFLECT_101, torch 'reflect'); the
oracle of ``kernels/blur.py`` and its CPU path."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["reflect101_index", "blur_sep_ref", "blur2d_ref"]


def reflect101_index(n_out: int, n: int, start: int, device=None) -> torch.Tensor:
    """Indices ``start .. start+n_out-1`` folded into [0, n) by reflection without edge repeat
    (OpenCV BORDER_REFLECT_101 == torch 'reflect'), repeated as often as needed."""
    i = torch.arange(start, start + n_out, device=device, dtype=torch.int64)
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * n - 2
    i = i.abs() % period
    return torch.where(i >= n, period - i, i)


def blur_sep_ref(x: torch.Tensor, weights: torch.Tensor, dim: int) -> torch.Tensor:
    """One separable pass: ``out[n, ..., i, ...] = sum_t w[n, t] x[n, ..., reflect(i + t - R), ...]``.

    x ``[N, C, H, W]``; weights ``[N, T]`` (T odd, R = T // 2); dim 2 (H) or 3 (W). Taps summed in
    order t = 0..T-1 in float32 (the kernel's order).
    """
    N, T = weights.shape
    R = T // 2
    n = x.shape[dim]
    idx = reflect101_index(n + 2 * R, n, -R, x.device)
    xp = x.float().index_select(dim, idx)
    w = weights.float()
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for t in range(T):
        out = out + w[:, t].reshape(N, 1, 1, 1) * xp.narrow(dim, t, n)
    return out


def blur2d_ref(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Per-sample 2-D correlation with reflect-101 borders: x ``[N, C, H, W]``, kernels ``[N, T, T]``."""
    N, C, H, W = x.shape
    T = kernels.shape[-1]
    R = T // 2
    xp = x.float().index_select(2, reflect101_index(H + 2 * R, H, -R, x.device))
    xp = xp.index_select(3, reflect101_index(W + 2 * R, W, -R, x.device))
    weight = kernels.float().reshape(N, 1, 1, T, T).expand(N, C, 1, T, T).reshape(N * C, 1, T, T)
    out = F.conv2d(xp.reshape(1, N * C, H + 2 * R, W + 2 * R), weight, groups=N * C)
    return out.reshape(N, C, H, W)
