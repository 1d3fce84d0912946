"""Flat parameter buffers and the fused optimizer / meta-update steps of the native core."""
from . import functional
from .flat import FlatBucket, FlatParams, StackedParams
from .fused_adam import FusedAdam

__all__ = ["FlatBucket", "FlatParams", "StackedParams", "FusedAdam", "functional"]
