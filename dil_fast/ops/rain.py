"""Rain-streak op: drop map -> motion-line blur (the dispatched :func:`dil_fast.ops.blur.blur2d`)
-> composite (:mod:`dil_fast.ops.reference.rain` holds the math and the reference)."""

from __future__ import annotations

import torch

from .blur import blur2d
from .reference.rain import rain_composite, rain_drops

__all__ = ["add_rain"]


def add_rain(
    x: torch.Tensor,
    field: torch.Tensor,
    density: torch.Tensor,
    kernels: torch.Tensor,
    length: torch.Tensor,
    intensity: torch.Tensor,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """As :func:`~dil_fast.ops.reference.rain.rain_ref`, with the streak blur through the dispatcher."""
    _, _, H, W = x.shape
    streak = blur2d(rain_drops(field, density, H, W), kernels, backend=backend)
    return rain_composite(x, streak, length, intensity)
