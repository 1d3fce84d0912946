"""A contributor's new confounder family in one file: ``--plugin tests.plugins.toy_family`` makes
``toyshift:10,20`` (a brightness shift, on the 0..255 scale) a family of ``--confounders``,
``--test_confounders`` and ``dil-fast eval --confounders`` / ``--sweep``."""

from __future__ import annotations

from dataclasses import dataclass

from dil_fast.degrade import Confounder, register, register_family
from dil_fast.degrade.base import fmt, non_negative


@register("toyshift")
@dataclass(frozen=True)
class ToyShift(Confounder):
    amount: float = 10.0

    @property
    def name(self) -> str:
        return f"toyshift{fmt(self.amount)}"

    def apply(self, x, ctx, *, backend=None):
        return (x + self.amount / 255.0).clamp(0.0, 1.0)


register_family("toyshift", lambda v: ToyShift(non_negative(v)), axis="toy brightness shift (0..255)")
