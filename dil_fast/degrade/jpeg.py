"""The JPEG confounder (baseline libjpeg quality scaling)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ops.jpeg import jpeg
from .base import Confounder, check_range, fmt, int_in, is_range, register, register_family
from .ctx import Ctx

__all__ = ["JPEG"]


@register("jpeg")
@dataclass(frozen=True)
class JPEG(Confounder):
    """Baseline JPEG at ``quality`` (int 1..100, or a (lo, hi) range drawn per sample as an
    integer): see :func:`dil_fast.ops.reference.jpeg.jpeg_ref`. ``differentiable`` uses the cubic
    rounding surrogate (torch path)."""

    quality: int | tuple[int, int] = 75
    differentiable: bool = False

    def __post_init__(self):
        check_range("JPEG.quality", self.quality, 1, 100)

    @property
    def name(self) -> str:
        return f"jpeg{fmt(self.quality)}"

    def qualities(self, ctx: Ctx) -> torch.Tensor:
        """Per-sample qualities ``[B]`` (int64, on the host)."""
        if not is_range(self.quality):
            return torch.full((ctx.batch,), int(self.quality), dtype=torch.int64)
        u = ctx.sample_uniform(1)[:, 0]
        lo, hi = int(self.quality[0]), int(self.quality[1])
        return lo + torch.floor(u.double() * (hi - lo + 1)).long().clamp_max(
            hi - lo
        )  # stays on the host: ops.jpeg builds its tables there

    def ops(self):
        return ("jpeg",)

    def apply(self, x, ctx, *, backend=None):
        if x.shape[1] != 3:
            raise ValueError(f"JPEG needs RGB input, got {x.shape[1]} channels")
        return jpeg(x, self.qualities(ctx), differentiable=self.differentiable, backend=backend)


register_family("jpeg", lambda v: JPEG(int_in(1, 100, "JPEG quality")(v)), axis="JPEG quality")
