"""Flat parameter buffers and the fused optimizers built on the optimizer ops of
:mod:`dil_fast.ops.optim` (the functional steps themselves live there)."""

from .flat import FlatBucket, FlatParams, StackedParams
from .fused_adam import FusedAdam

__all__ = ["FlatBucket", "FlatParams", "StackedParams", "FusedAdam"]
