"""Resize op: separable resampling by index/weight tables (torch ``antialias=True`` bilinear /
bicubic, 'area' pooling), its ``torch.library`` registration and fake.

Implementations: ``triton`` (``kernels/resize.py``) and ``torch``
(:mod:`dil_fast.ops.reference.resize`); the dispatcher picks.
"""

from __future__ import annotations

import functools

import torch

from .. import backends
from ._common import as_float, to_device
from .reference.resize import resample_ref, resample_tables

__all__ = ["resize", "MODES"]

OP = "resize"
MODES = ("area", "bilinear", "bicubic")
backends.declare(OP, cuda=("triton", "torch"), cpu=("torch",))


@functools.lru_cache(maxsize=128)
def _tables(n_in: int, n_out: int, mode: str, device: str):
    idx, wt = resample_tables(n_in, n_out, mode)
    return to_device(idx, device), to_device(wt, device)


@backends.implement(OP, "triton", dtypes=(torch.uint8, torch.float16, torch.bfloat16, torch.float32))
def _resize_triton(x, idx_h, wt_h, idx_w, wt_w, out_dtype):
    kern = backends.triton_kernels("resize")
    return kern.resample_fwd(kern.resample_fwd(x, idx_h, wt_h, 0), idx_w, wt_w, 1, out_dtype=out_dtype)


@backends.implement(OP, "torch")
def _resize_torch(x, idx_h, wt_h, idx_w, wt_w, out_dtype):
    return resample_ref(resample_ref(as_float(x), idx_h, wt_h, 2), idx_w, wt_w, 3).to(out_dtype)


@torch.library.custom_op("dil_fast::resize", mutates_args=())
def _resize_op(
    x: torch.Tensor,
    idx_h: torch.Tensor,
    wt_h: torch.Tensor,
    idx_w: torch.Tensor,
    wt_w: torch.Tensor,
    out_dtype: torch.dtype,
    backend: str,
) -> torch.Tensor:
    return backends.implementation(OP, backend)(x, idx_h, wt_h, idx_w, wt_w, out_dtype)


@_resize_op.register_fake
def _(x, idx_h, wt_h, idx_w, wt_w, out_dtype, backend):
    return x.new_empty((x.shape[0], x.shape[1], idx_h.shape[0], idx_w.shape[0]), dtype=out_dtype)


def resize(
    x: torch.Tensor,
    size: tuple[int, int],
    mode: str = "bicubic",
    *,
    out_dtype: torch.dtype = torch.float32,
    backend: str | None = None,
) -> torch.Tensor:
    """x ``[N, C, H, W]`` -> ``[N, C, size[0], size[1]]``, as ``F.interpolate(x, size, mode=mode,
    antialias=True)`` for 'bilinear'/'bicubic' and ``mode='area'`` for 'area' (no clamping)."""
    H, W = x.shape[-2:]
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"resize to {size} is empty")
    if mode not in MODES:
        raise ValueError(f"resize mode {mode!r} is not one of {', '.join(map(repr, MODES))}")
    idx_h, wt_h = _tables(H, h, mode, str(x.device))
    idx_w, wt_w = _tables(W, w, mode, str(x.device))
    be = backends.backend_for(OP, x.device, x.dtype, backend)
    return _resize_op(x.contiguous(), idx_h, wt_h, idx_w, wt_w, out_dtype, be)
