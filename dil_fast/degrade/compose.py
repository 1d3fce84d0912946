"""Composite confounders: stages in sequence (Compose) and one of several per batch (Choice)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .base import Confounder, register

__all__ = ["Compose", "Choice"]


@register("compose")
@dataclass(frozen=True)
class Compose(Confounder):
    """Stages applied in order; stage i draws from its own streams (``ctx.child(i)``)."""

    stages: tuple = ()
    label: str | None = None

    def __post_init__(self):
        if not self.stages or not all(isinstance(s, Confounder) for s in self.stages):
            raise ValueError("Compose needs a non-empty sequence of confounder specs")
        object.__setattr__(self, "stages", tuple(self.stages))

    @property
    def name(self) -> str:
        return self.label or "+".join(s.name for s in self.stages)

    def output_size(self, h, w, orig=None):
        orig = orig or (h, w)
        for s in self.stages:
            h, w = s.output_size(h, w, orig)
        return h, w

    def ops(self):
        return tuple(dict.fromkeys(op for s in self.stages for op in s.ops()))

    def apply(self, x, ctx, *, backend=None):
        if ctx.orig_size is None:
            ctx = dataclasses.replace(ctx, orig_size=(x.shape[2], x.shape[3]))
        for i, s in enumerate(self.stages):
            x = s.apply(x, ctx.child(i), backend=backend)
        return x


@register("choice")
@dataclass(frozen=True)
class Choice(Confounder):
    """One of ``options`` per batch, with probabilities ``probs`` (default uniform)."""

    options: tuple = ()
    probs: tuple | None = None
    label: str | None = None

    def __post_init__(self):
        if not self.options or not all(isinstance(s, Confounder) for s in self.options):
            raise ValueError("Choice needs a non-empty sequence of confounder specs")
        object.__setattr__(self, "options", tuple(self.options))
        if self.probs is not None and (len(self.probs) != len(self.options) or abs(sum(self.probs) - 1) > 1e-6):
            raise ValueError(f"Choice.probs must have one entry per option and sum to 1, got {self.probs!r}")

    @property
    def name(self) -> str:
        return self.label or "(" + "|".join(s.name for s in self.options) + ")"

    def output_size(self, h, w, orig=None):
        sizes = {s.output_size(h, w, orig) for s in self.options}
        if len(sizes) != 1:
            raise ValueError(f"Choice options give different output sizes {sorted(sizes)}")
        return sizes.pop()

    def ops(self):
        return tuple(dict.fromkeys(op for s in self.options for op in s.ops()))

    def apply(self, x, ctx, *, backend=None):
        probs = self.probs or [1.0 / len(self.options)] * len(self.options)
        u = ctx.batch_uniform(1)[0]
        i = int(np.searchsorted(np.cumsum(probs), u, side="right"))
        i = min(i, len(self.options) - 1)
        return self.options[i].apply(x, ctx.child(i), backend=backend)
