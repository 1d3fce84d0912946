"""Resize confounders: a fixed resize (the final x1/s of a super-resolution degradation) and
Real-ESRGAN's random resize."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ops.resize import MODES, resize
from .base import Confounder, fmt, register

__all__ = ["Resize", "RandomResize"]


@register("resize")
@dataclass(frozen=True)
class Resize(Confounder):
    """Resize by ``scale`` (output ``floor(H * scale)``, at least 1) or to ``size`` (h, w).
    ``relative_to='original'`` scales the size the whole confounder started from (a final
    Real-ESRGAN resize). Convention: torch ``F.interpolate(..., antialias=True)`` for 'bilinear'
    and 'bicubic', ``mode='area'`` for 'area'."""

    scale: float | None = None
    size: tuple[int, int] | None = None
    mode: str = "bicubic"
    relative_to: str = "current"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"Resize.mode must be 'area', 'bilinear' or 'bicubic', got {self.mode!r}")
        if (self.scale is None) == (self.size is None):
            raise ValueError("Resize takes exactly one of scale and size")
        if self.scale is not None and not (0 < float(self.scale) <= 64):
            raise ValueError(f"Resize.scale must be in (0, 64], got {self.scale!r}")
        if self.relative_to not in ("current", "original"):
            raise ValueError(f"Resize.relative_to must be 'current' or 'original', got {self.relative_to!r}")

    @property
    def name(self) -> str:
        what = f"{fmt(self.scale)}" if self.scale is not None else f"{self.size[0]}x{self.size[1]}"
        return f"resize{what}{self.mode}"

    def output_size(self, h, w, orig=None):
        if self.size is not None:
            return int(self.size[0]), int(self.size[1])
        bh, bw = orig if (self.relative_to == "original" and orig is not None) else (h, w)
        if bh is None or bw is None:
            return None, None
        return max(1, int(bh * self.scale)), max(1, int(bw * self.scale))

    def ops(self):
        return ("resize",)

    def apply(self, x, ctx, *, backend=None):
        size = self.output_size(x.shape[2], x.shape[3], ctx.orig_size)
        return resize(x, size, self.mode, backend=backend)


@register("random_resize")
@dataclass(frozen=True)
class RandomResize(Confounder):
    """Real-ESRGAN's random resize, per batch: up (scale in ``up``) / down (``down``) / keep with
    ``probs``, mode drawn uniformly from ``modes``."""

    probs: tuple = (0.2, 0.7, 0.1)
    up: tuple[float, float] = (1.0, 1.5)
    down: tuple[float, float] = (0.15, 1.0)
    modes: tuple = ("area", "bilinear", "bicubic")

    @property
    def name(self) -> str:
        return f"rresize{fmt(self.down)}"

    def apply(self, x, ctx, *, backend=None):
        u0, u1, u2 = ctx.batch_uniform(3)
        cum = np.cumsum(self.probs) / np.sum(self.probs)
        which = int(np.searchsorted(cum, u0, side="right"))
        scale = (
            self.up[0] + (self.up[1] - self.up[0]) * u1
            if which == 0
            else self.down[0] + (self.down[1] - self.down[0]) * u1
            if which == 1
            else 1.0
        )
        mode = self.modes[min(int(u2 * len(self.modes)), len(self.modes) - 1)]
        H, W = x.shape[2:]
        size = (max(1, int(H * scale)), max(1, int(W * scale)))
        if size == (H, W):
            return x
        return resize(x, size, mode, backend=backend)

    def ops(self):
        return ("resize",)

    def output_size(self, h, w, orig=None):
        return None, None  # random: known again after a fixed-size Resize
