"""JPEG simulation op (baseline libjpeg/OpenCV encode + decode), its ``torch.library``
registration and fake.

Implementations: ``triton`` (``kernels/jpeg.py``: colour stage, 8x8 block stages, decoder colour
stage) and ``torch`` (:func:`dil_fast.ops.reference.jpeg.jpeg_ref`); the dispatcher picks. The
differentiable variant (cubic rounding surrogate) is the torch reference only.
"""

from __future__ import annotations

import functools

import torch

from .. import backends
from ._common import as_float, to_device
from .reference.jpeg import dct8_matrix, jpeg_quant_tables, jpeg_ref

__all__ = ["jpeg"]

OP = "jpeg"
backends.declare(OP, cuda=("triton", "torch"), cpu=("torch",))


@functools.lru_cache(maxsize=8)
def _dct(device: str) -> torch.Tensor:
    return to_device(dct8_matrix(), device)


@backends.implement(OP, "triton", dtypes=(torch.uint8, torch.float16, torch.bfloat16, torch.float32))
def _jpeg_triton(x, luma_q, chroma_q, out_dtype):
    return backends.triton_kernels("jpeg").jpeg_fwd(x, luma_q, chroma_q, _dct(str(x.device)), out_dtype=out_dtype)


@backends.implement(OP, "torch")
def _jpeg_torch(x, luma_q, chroma_q, out_dtype):
    return jpeg_ref(as_float(x), luma_q, tables=(luma_q, chroma_q)).to(out_dtype)


@torch.library.custom_op("dil_fast::jpeg", mutates_args=())
def _jpeg_op(
    x: torch.Tensor, luma_q: torch.Tensor, chroma_q: torch.Tensor, out_dtype: torch.dtype, backend: str
) -> torch.Tensor:
    return backends.implementation(OP, backend)(x, luma_q, chroma_q, out_dtype)


@_jpeg_op.register_fake
def _(x, luma_q, chroma_q, out_dtype, backend):
    return x.new_empty(x.shape, dtype=out_dtype)


def jpeg(
    x: torch.Tensor,
    quality: torch.Tensor,
    *,
    differentiable: bool = False,
    out_dtype: torch.dtype = torch.float32,
    backend: str | None = None,
) -> torch.Tensor:
    """Baseline JPEG simulation (:func:`~dil_fast.ops.reference.jpeg.jpeg_ref`): x ``[B, 3, H, W]``
    on [0, 1] (or uint8), quality ``[B]`` ints (host tensor or list; the tables are built on the
    host). ``differentiable=True`` runs the torch reference with the rounding surrogate (autograd)."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"JPEG simulation takes RGB images [B, 3, H, W], got {tuple(x.shape)}")
    quality = torch.as_tensor(quality).cpu().reshape(-1).expand(x.shape[0])
    luma_q, chroma_q = (to_device(t, x.device) for t in jpeg_quant_tables(quality))
    if differentiable:
        forced = backends.forced_backend(backend)
        if forced not in (None, "torch"):
            raise backends.BackendError(
                f"{OP}: differentiable=True runs only the torch reference; backend {forced!r} cannot serve it"
            )
        return jpeg_ref(as_float(x), quality, differentiable=True, tables=(luma_q, chroma_q)).to(out_dtype)
    be = backends.backend_for(OP, x.device, x.dtype, backend)
    return _jpeg_op(x.contiguous(), luma_q, chroma_q, out_dtype, be)
