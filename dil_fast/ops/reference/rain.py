"""Pure-torch reference of synthetic rain streaks (:mod:`dil_fast.ops.rain`).

Drops at ``density`` (fraction of pixels) from a uniform field, each of brightness in [0.5, 1),
smeared along per-sample motion-line kernels (2-D correlation, reflect-101 borders), scaled by the
line length, clipped to [0, 1], added with ``intensity`` to every channel, clipped.
"""

from __future__ import annotations

import torch

from .blur import blur2d_ref

__all__ = ["rain_drops", "rain_composite", "rain_ref"]


def rain_drops(field: torch.Tensor, density: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Drop map ``[B, 1, H, W]`` from uniforms ``field`` ``[B, 2*H*W]`` and ``density`` ``[B]``: the
    first H*W uniforms decide where drops fall, the next H*W their brightness."""
    hw = height * width
    drops = (field[:, :hw] < density[:, None]).float() * (0.5 + 0.5 * field[:, hw : 2 * hw])
    return drops.reshape(-1, 1, height, width)


def rain_composite(
    x: torch.Tensor, streak: torch.Tensor, length: torch.Tensor, intensity: torch.Tensor
) -> torch.Tensor:
    """``clip(x + intensity * clip(streak * length, 0, 1), 0, 1)``; streak ``[B, 1, H, W]``."""
    B = x.shape[0]
    streak = (streak * length.float().reshape(B, 1, 1, 1)).clamp(0, 1)
    return (x.float() + intensity.float().reshape(B, 1, 1, 1) * streak).clamp(0, 1)


def rain_ref(
    x: torch.Tensor,
    field: torch.Tensor,
    density: torch.Tensor,
    kernels: torch.Tensor,
    length: torch.Tensor,
    intensity: torch.Tensor,
) -> torch.Tensor:
    """x ``[B, C, H, W]`` on [0, 1]; field ``[B, 2*H*W]`` uniforms; density, length, intensity
    ``[B]``; kernels ``[B, T, T]`` (motion lines) -> ``[B, C, H, W]`` float32."""
    _, _, H, W = x.shape
    streak = blur2d_ref(rain_drops(field, density, H, W), kernels)
    return rain_composite(x, streak, length, intensity)
