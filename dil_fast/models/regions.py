"""Compiled regions: a network marks the forward of its repeated block (RRDBNet's RRDB) with
:func:`compiled_region`; inside :func:`compiling_regions` (the trainer's ``--compile``), every
instance of that block runs one ``torch.compile`` of the marked forward, so a 23-block RRDB-23 is
compiled once per block type, not 23 times and not as one 349-convolution graph. Outside that
context, and under ``torch.no_grad`` or ``torch.func.vmap``, the forward runs as written.

The fast path switches the regions on for its training forward; nothing patches the modules.
(``torch.compiler.nested_compile_region`` does the same inside one graph, but its higher-order op
refuses parameters that alias one another, which the flat parameter buffers of the fused
optimizers are.)
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Callable

import torch

__all__ = ["compiled_region", "compiling_regions", "has_regions"]

_COMPILER: contextvars.ContextVar = contextvars.ContextVar("dil_fast_compiled_regions", default=None)


def compiled_region(forward: Callable) -> Callable:
    """Mark a module's ``forward(self, x, ...)`` as a compiled region (see the module doc)."""

    @functools.wraps(forward)
    def region(self, x, *args, **kwargs):
        compiled = _COMPILER.get()
        if compiled is None or not torch.is_grad_enabled() or torch._C._functorch.is_batchedtensor(x):
            return forward(self, x, *args, **kwargs)
        return compiled(forward)(self, x, *args, **kwargs)

    region.dil_fast_region = True
    return region


def has_regions(module: torch.nn.Module) -> bool:
    """True when a submodule's forward is a :func:`compiled_region`."""
    return any(getattr(type(m).forward, "dil_fast_region", False) for m in module.modules())


@contextlib.contextmanager
def compiling_regions(cache: dict, compile_fn: Callable = None):
    """Run the marked regions compiled: ``cache`` maps each region's forward to its compiled
    function (kept by the caller across calls, so each is compiled once); ``compile_fn`` defaults
    to ``torch.compile``."""
    compile_fn = compile_fn or torch.compile

    def compiled(forward):
        fn = cache.get(forward)
        if fn is None:
            fn = cache[forward] = compile_fn(forward)
        return fn

    token = _COMPILER.set(compiled)
    try:
        yield
    finally:
        _COMPILER.reset(token)
