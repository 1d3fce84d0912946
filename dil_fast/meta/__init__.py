"""DIL algorithms behind one interface: ``step(batches, *, query=None, timer=None) -> per-pair
losses``, ``meta_model``, ``task_model``, ``state_dict()`` / ``load_state_dict()``. Each variant
registers itself in :data:`VARIANTS` (:func:`register_variant`); the imports below are the list of
the built-in ones, in the order ``--variant`` lists them."""

# ruff: noqa: I001 - the import order is the registration order
from .base import LOSSES, VARIANTS, GradSync, MetaAlgorithm, PlainForward, get_loss, register_variant
from .sf import SerialFirstOrder
from .pf import ParallelFirstOrder
from .ss import SerialFirstOrderApprox, SerialSecondOrder
from .ps import ParallelSecondOrder
from .erm import ERM
from .released import ReleasedSF

__all__ = [
    "ERM",
    "GradSync",
    "LOSSES",
    "MetaAlgorithm",
    "ParallelFirstOrder",
    "ParallelSecondOrder",
    "PlainForward",
    "ReleasedSF",
    "SerialFirstOrder",
    "SerialFirstOrderApprox",
    "SerialSecondOrder",
    "VARIANTS",
    "get_loss",
    "register_variant",
]
