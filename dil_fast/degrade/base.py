"""The confounder spec base: small frozen dataclasses, each a distortion ``apply(x, ctx) -> y`` on
float images ``[B, C, H, W]`` on [0, 1], with a short ``name`` and ``to_dict()`` / ``from_dict()``;
the registry of spec kinds (by explicit decorator; the families import in :mod:`dil_fast.degrade`).

A field given as ``(lo, hi)`` is drawn per sample (uniform) from the counter stream of the
sample's global index, so a sample's parameters do not depend on the batch it is in; per-batch
choices (resize scale and mode, which branch of a Choice) are drawn once per
(seed, step, confounder, stage). Noise levels are on the 0..255 scale, as in the paper.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch

from ..ops._common import samples_channels_last, to_device
from ..registry import Registry
from .ctx import Ctx

__all__ = [
    "Confounder",
    "SPEC_TYPES",
    "register",
    "spec_from_dict",
    "fmt",
    "is_range",
    "check_range",
    "constant",
    "FAMILIES",
    "Fused",
    "register_family",
    "non_negative",
    "int_in",
    "as_kernel_input",
    "as_float_nchw",
]

#: confounder families by the name ``--confounders`` / ``--levels`` write (``noise:5,10``): each
#: family module registers its parser (value text -> a spec, or a list of specs), the axis label of
#: a numeric family (for sweeps; None for named levels) and, where it has one, its fused K-way kernel
FAMILIES = Registry("confounder family", "--confounders")


@dataclass(frozen=True)
class Fused:
    """One launch for K confounders of a family: ``applies(specs)`` says whether it serves them,
    ``run(clean, specs, ctxs, *, seed, step, sample_offset, out_dtype, backend)`` returns
    ``[K, B, C, H, W]``; ``op`` is the dispatcher op it runs."""

    op: str
    applies: Callable
    run: Callable


def register_family(
    name: str, parse: Callable, *, axis: str | None = None, aliases: tuple[str, ...] = (), fused: Fused | None = None
) -> Callable:
    """Register a confounder family: ``parse(value)`` -> a spec (or a list of specs) from one written
    value, ValueError with the reason when it is not one; ``axis``: the label of a numeric family's
    values (a sweep's x-axis; None: named levels); ``aliases``: other names of the same family."""
    FAMILIES.register(name, parse, aliases=aliases, axis=axis, fused=fused)
    return parse


def non_negative(v: str) -> float:
    """A family value that is a finite number >= 0."""
    x = float(v)
    if not math.isfinite(x) or x < 0:
        raise ValueError(f"{v!r} is not a non-negative number")
    return x


def int_in(lo: int, hi: int, what: str) -> Callable[[str], int]:
    """A parser of integer values in ``[lo, hi]`` (``what`` names them in the refusal)."""

    def parse(v: str) -> int:
        x = int(v)
        if not lo <= x <= hi:
            raise ValueError(f"{what} {v!r} is not in {lo}..{hi}")
        return x

    return parse


def as_float_nchw(x: torch.Tensor) -> torch.Tensor:
    """Clean images as float32 NCHW on [0, 1] (uint8 read as x / 255)."""
    if x.dtype == torch.uint8:
        return x.contiguous().float().div_(255.0)
    if not x.dtype.is_floating_point:
        raise TypeError(f"clean images must be uint8 or float, got {x.dtype}")
    return x.float().contiguous()


def as_kernel_input(x: torch.Tensor, keep_channels_last: bool = False) -> torch.Tensor:
    """Clean images as a fused kernel reads them: uint8 / fp16 / bf16 / fp32 as they are (no
    conversion pass), contiguous, or channels-last samples kept so (``keep_channels_last``)."""
    if x.dtype in (torch.uint8, torch.float16, torch.bfloat16, torch.float32):
        return x if keep_channels_last and samples_channels_last(x) else x.contiguous()
    return as_float_nchw(x)


SPEC_TYPES: dict[str, type] = {}


def register(kind: str):
    """Class decorator: registers a spec under ``kind`` (its ``to_dict()`` type tag)."""

    def deco(cls):
        cls.kind = kind
        SPEC_TYPES[kind] = cls
        return cls

    return deco


def fmt(v) -> str:
    """A field value as it appears in a spec's short name."""
    if isinstance(v, (tuple, list)):
        return "-".join(fmt(x) for x in v)
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def is_range(v) -> bool:
    return isinstance(v, (tuple, list))


def check_range(name: str, v, lo: float, hi: float) -> None:
    """ValueError unless ``v`` is a number in [lo, hi] or a (lo', hi') pair inside it."""
    vals = list(v) if is_range(v) else [v]
    if is_range(v) and (len(vals) != 2 or vals[0] > vals[1]):
        raise ValueError(f"{name} must be a number or a (lo, hi) pair with lo <= hi, got {v!r}")
    for x in vals:
        if not isinstance(x, (int, float)) or not (lo <= x <= hi):
            raise ValueError(f"{name} must lie in [{lo}, {hi}], got {v!r}")


class Confounder:
    """Base of every spec. Subclasses are frozen dataclasses registered by kind."""

    kind: ClassVar[str] = ""

    @property
    def name(self) -> str:  # pragma: no cover - every spec overrides
        return self.kind

    def apply(self, x: torch.Tensor, ctx: Ctx, *, backend: str | None = None) -> torch.Tensor:
        raise NotImplementedError

    def ops(self) -> tuple[str, ...]:
        """The dispatcher ops :meth:`apply` runs (for the up-front check of a forced backend)."""
        return ()

    def output_size(self, h: int, w: int, orig: tuple[int, int] | None = None) -> tuple[int | None, int | None]:
        """(H', W') of an (h, w) input; None where it is drawn at random."""
        return h, w

    def to_dict(self) -> dict:
        d = {"type": self.kind}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, tuple) and v and isinstance(v[0], Confounder):
                v = [s.to_dict() for s in v]
            elif isinstance(v, tuple):
                v = list(v)
            d[f.name] = v
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Confounder":
        return spec_from_dict(d)


@functools.lru_cache(maxsize=256)
def constant(values: tuple, batch: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    """``[batch, len(values)]`` read-only device tensor of per-sample parameters that draw nothing."""
    t = torch.tensor(values, dtype=torch.float64).to(dtype).reshape(1, -1).expand(batch, -1).contiguous()
    return to_device(t, device)


def _tuplify(v):
    if isinstance(v, list):
        if v and isinstance(v[0], dict):
            return tuple(spec_from_dict(s) for s in v)
        return tuple(_tuplify(x) for x in v)
    return v


def spec_from_dict(d: dict) -> Confounder:
    """Inverse of ``to_dict`` for every registered spec (Compose and Choice nest)."""
    d = dict(d)
    kind = d.pop("type", None)
    if kind not in SPEC_TYPES:
        raise ValueError(f"unknown confounder type {kind!r}; known: {', '.join(sorted(SPEC_TYPES))}")
    return SPEC_TYPES[kind](**{k: _tuplify(v) for k, v in d.items()})
