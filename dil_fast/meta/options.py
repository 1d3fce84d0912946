"""A variant's own options (beyond the learning rates and the loss every variant takes): a
dataclass whose fields carry their flag's help and choices, from which ``dil-fast train`` makes its
flags (:func:`option_fields`) and checks the values (:func:`make_options`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["NoOptions", "QueryOptions", "VirtualOptions", "option", "option_fields", "make_options"]

VIRTUAL_BATCHING = ("auto", "tune", "batched", "looped")
QUERY_CHOICES = ("mixture", "split")  # "explicit" needs a query batch in the API; not a flag value
INNER_OPTIMIZERS = ("sgd", "adam")


def option(default: Any, help: str, *, choices: tuple | None = None, positive: bool = False):
    """A dataclass field that is also a ``dil-fast train`` flag ``--<name>``."""
    return field(default=default, metadata={"help": help, "choices": choices, "positive": positive})


@dataclass(frozen=True)
class NoOptions:
    """A variant with no options of its own."""


@dataclass(frozen=True)
class QueryOptions:
    """The options of the variants with a query (outer) batch (pf, and the virtual-model ones)."""

    query: str = option(
        "mixture",
        "outer (query) batch: drawn from the given batches (mixture) or a held-out half of each batch (split)",
        choices=QUERY_CHOICES,
    )
    virtual_batching: str = option(
        "auto",
        "the K virtual models in one batched pass or one at a time (pf/ps: how the union loss is "
        "evaluated); auto: looped on CPU, else batched unless it fails (deterministic); tune: time both once, "
        "keep the faster",
        choices=VIRTUAL_BATCHING,
    )


@dataclass(frozen=True)
class VirtualOptions(QueryOptions):
    """The options of the second-order variants and their first-order approximation (ss, ps, ss-fo)."""

    alpha: float = option(1e-4, "inner (virtual) step size", positive=True)
    inner_optimizer: str = option(
        "sgd", "inner step: a plain gradient step (sgd) or one Adam step", choices=INNER_OPTIMIZERS
    )


def option_fields(options_cls) -> list[dataclasses.Field]:
    return list(dataclasses.fields(options_cls))


def make_options(options_cls, values: dict, variant: str):
    """``options_cls(**values)`` after checking each value against its field (choices, finite and
    positive numbers); ValueError naming the flag. Unknown names are refused too."""
    known = {f.name: f for f in option_fields(options_cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(
            f"--variant {variant} takes no --{unknown[0]} (its options: {', '.join('--' + n for n in known) or 'none'})"
        )
    for name, value in values.items():
        meta = known[name].metadata
        if meta.get("choices") and value not in meta["choices"]:
            raise ValueError(f"--{name} must be one of {', '.join(map(str, meta['choices']))}, got {value!r}")
        if meta.get("positive"):
            try:
                ok = math.isfinite(float(value)) and float(value) > 0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"--{name} must be a finite number > 0, got {value!r}")
    return options_cls(**values)
