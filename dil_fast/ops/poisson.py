"""Poisson (shot) noise op: one implementation, the torch reference
(:func:`dil_fast.ops.reference.poisson.poisson_noise_ref`); declared with the dispatcher so a
forced ``triton``/``cuda`` backend is refused for it like for any other op."""

from __future__ import annotations

import torch

from .. import backends
from .reference.poisson import poisson_noise_ref

__all__ = ["poisson_noise"]

OP = "poisson"
backends.declare(OP, default=("torch",))
backends.implement(OP, "torch")(poisson_noise_ref)


def poisson_noise(
    x: torch.Tensor,
    scale: torch.Tensor,
    gray: torch.Tensor,
    uniform: torch.Tensor,
    normal: torch.Tensor,
    *,
    levels: int = 256,
    clip: bool = True,
    backend: str | None = None,
) -> torch.Tensor:
    """See :func:`~dil_fast.ops.reference.poisson.poisson_noise_ref` (shapes and math)."""
    fn = backends.select(OP, x.device, None, backends.forced_backend(backend)).fn
    return fn(x, scale, gray, uniform, normal, levels=levels, clip=clip)
