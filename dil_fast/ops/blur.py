"""Blur ops: K-fused separable blur and per-sample 2-D blur (reflect-101 borders), their
``torch.library`` registrations and fakes.

Implementations: ``triton`` (``kernels/blur.py``) and ``torch``
(:mod:`dil_fast.ops.reference.blur`); the dispatcher picks.
"""

from __future__ import annotations

import torch

from .. import backends
from ._common import as_float
from .reference.blur import blur2d_ref, blur_sep_ref

__all__ = ["blur_separable", "blur2d"]

SEP, TWO_D = "blur_separable", "blur2d"
_IN_DTYPES = (torch.uint8, torch.float16, torch.bfloat16, torch.float32)
backends.declare(SEP, cuda=("triton", "torch"), cpu=("torch",))
backends.declare(TWO_D, cuda=("triton", "torch"), cpu=("torch",))


@backends.implement(SEP, "triton", dtypes=_IN_DTYPES)
def _sep_triton(x, weights, out_dtype):
    K, B, _ = weights.shape
    kern = backends.triton_kernels("blur")
    tmp = kern.blur_sep_fwd(x, weights, 1)
    return kern.blur_sep_fwd(
        tmp.reshape(K * B, *tmp.shape[2:]), weights.reshape(1, K * B, -1), 0, out_dtype=out_dtype
    ).reshape(tmp.shape)


@backends.implement(SEP, "torch")
def _sep_torch(x, weights, out_dtype):
    xf = as_float(x)
    outs = []
    for k in range(weights.shape[0]):
        xk = xf if x.dim() == 4 else xf[k]
        outs.append(blur_sep_ref(blur_sep_ref(xk, weights[k], 3), weights[k], 2).to(out_dtype))
    return torch.stack(outs)


@torch.library.custom_op("dil_fast::blur_separable", mutates_args=())
def _sep_op(x: torch.Tensor, weights: torch.Tensor, out_dtype: torch.dtype, backend: str) -> torch.Tensor:
    return backends.implementation(SEP, backend)(x, weights, out_dtype)


@_sep_op.register_fake
def _(x, weights, out_dtype, backend):
    return x.new_empty((weights.shape[0],) + tuple(x.shape[-4:]), dtype=out_dtype)


def blur_separable(
    x: torch.Tensor, weights: torch.Tensor, *, out_dtype: torch.dtype = torch.float32, backend: str | None = None
) -> torch.Tensor:
    """K separable blurs (the same 1-D kernel along W, then along H): x ``[B, C, H, W]`` (shared)
    or ``[K, B, C, H, W]``; weights ``[K, B, T]`` (T odd) -> ``[K, B, C, H, W]``."""
    if weights.dim() != 3 or weights.shape[-1] % 2 != 1:
        raise ValueError(f"weights must be [K, B, T] with T odd, got {tuple(weights.shape)}")
    be = backends.backend_for(SEP, x.device, x.dtype, backend)
    return _sep_op(x.contiguous(), weights.to(device=x.device, dtype=torch.float32).contiguous(), out_dtype, be)


@backends.implement(TWO_D, "triton", dtypes=_IN_DTYPES)
def _2d_triton(x, kernels, out_dtype):
    return backends.triton_kernels("blur").blur2d_fwd(x, kernels, out_dtype=out_dtype)


@backends.implement(TWO_D, "torch")
def _2d_torch(x, kernels, out_dtype):
    return blur2d_ref(as_float(x), kernels).to(out_dtype)


@torch.library.custom_op("dil_fast::blur2d", mutates_args=())
def _2d_op(x: torch.Tensor, kernels: torch.Tensor, out_dtype: torch.dtype, backend: str) -> torch.Tensor:
    return backends.implementation(TWO_D, backend)(x, kernels, out_dtype)


@_2d_op.register_fake
def _(x, kernels, out_dtype, backend):
    return x.new_empty(x.shape, dtype=out_dtype)


def blur2d(
    x: torch.Tensor, kernels: torch.Tensor, *, out_dtype: torch.dtype = torch.float32, backend: str | None = None
) -> torch.Tensor:
    """Per-sample 2-D correlation: x ``[N, C, H, W]``, kernels ``[N, T, T]`` (T odd) -> ``[N, C, H, W]``."""
    if (
        kernels.dim() != 3
        or kernels.shape[0] != x.shape[0]
        or kernels.shape[1] != kernels.shape[2]
        or kernels.shape[1] % 2 != 1
    ):
        raise ValueError(f"kernels must be [N, T, T] with T odd and N = {x.shape[0]}, got {tuple(kernels.shape)}")
    be = backends.backend_for(TWO_D, x.device, x.dtype, backend)
    return _2d_op(x.contiguous(), kernels.to(device=x.device, dtype=torch.float32).contiguous(), out_dtype, be)
