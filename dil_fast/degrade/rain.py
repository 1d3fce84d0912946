"""The synthetic rain confounder (streaks: drops smeared along per-sample motion lines)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..ops._common import to_device
from ..ops.rain import add_rain
from . import blur_kernels as bk
from .base import Confounder, check_range, fmt, is_range, register
from .ctx import spread

__all__ = ["Rain"]


@register("rain")
@dataclass(frozen=True)
class Rain(Confounder):
    """Synthetic rain streaks: drops at ``density`` (fraction of pixels) drawn from the auxiliary
    Philox field, smeared along a line of ``length`` pixels at ``angle`` degrees from vertical
    (per-sample 2-D blur), added with ``intensity`` to every channel, clipped. Each field may be a
    (lo, hi) range drawn per sample."""

    density: float | tuple[float, float] = (0.002, 0.01)
    length: float | tuple[float, float] = (8.0, 20.0)
    angle: float | tuple[float, float] = (-20.0, 20.0)
    intensity: float | tuple[float, float] = (0.4, 0.9)

    def __post_init__(self):
        check_range("Rain.density", self.density, 0.0, 1.0)
        check_range("Rain.length", self.length, 1.0, 63.0)
        check_range("Rain.angle", self.angle, -90.0, 90.0)
        check_range("Rain.intensity", self.intensity, 0.0, 1.0)

    @property
    def name(self) -> str:
        return f"rain{fmt(self.density)}"

    def ops(self):
        return ("blur2d",)

    def apply(self, x, ctx, *, backend=None):
        B, C, H, W = x.shape
        u = ctx.sample_uniform(4)
        density = to_device(spread(u[:, 0], self.density).float(), x.device)
        length = spread(u[:, 1], self.length)
        angle = spread(u[:, 2], self.angle)
        intensity = to_device(spread(u[:, 3], self.intensity).float(), x.device)
        lmax = max(self.length) if is_range(self.length) else self.length
        T = 2 * int(math.ceil(lmax / 2)) + 1
        kernels = to_device(bk.motion_line_2d(length, angle, T), x.device)
        return add_rain(
            x,
            ctx.field_uniform(2 * H * W),
            density,
            kernels,
            to_device(length.float(), x.device),
            intensity,
            backend=backend,
        )
