"""Patch sampler: random ``p x p`` crops + the 8 dihedral modes from a uint8 store in one launch;
the public op, its ``torch.library`` registration and fake.

``sample_crops(store, perm, start, batch, patch, key)`` -> ``[K, B, 3, p, p]``; the distribution
and its counter-based randomness: :mod:`dil_fast.ops.reference.sample_crops`. Implementations:
``triton`` (``kernels/sample_crops.py``) and ``torch`` (the reference: one gather, no host sync).
"""

from __future__ import annotations

import torch

from .. import backends
from .reference.sample_crops import sample_crops_ref

__all__ = ["sample_crops", "OUT_DTYPES"]

OP = "sample_crops"
OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.uint8)
backends.declare(OP, cuda=("triton", "torch"), cpu=("torch",))


def _empty_out(num_k, batch, patch, dtype, channels_last, device):
    if channels_last:  # [K, B, 3, p, p] view of [K, B, p, p, 3] memory
        return torch.empty(num_k, batch, patch, patch, 3, dtype=dtype, device=device).permute(0, 1, 4, 2, 3)
    return torch.empty(num_k, batch, 3, patch, patch, dtype=dtype, device=device)


@backends.implement(OP, "triton", dtypes=(torch.uint8,))
def _sample_triton(store, perm, start, batch, patch, key, counter_base, dtype, channels_last):
    out = _empty_out(perm.shape[0], batch, patch, dtype, channels_last, store.device)
    return backends.triton_kernels("sample_crops").sample_crops_fwd(
        store, perm, start, batch, patch, key, counter_base, out
    )


@backends.implement(OP, "torch", dtypes=(torch.uint8,))
def _sample_torch(store, perm, start, batch, patch, key, counter_base, dtype, channels_last):
    return sample_crops_ref(
        store, perm, start, batch, patch, key, counter_base, dtype=dtype, channels_last=channels_last
    )


@torch.library.custom_op("dil_fast::sample_crops", mutates_args=())
def _sample_crops_op(
    store: torch.Tensor,
    perm: torch.Tensor,
    start: int,
    batch: int,
    patch: int,
    key: int,
    counter_base: int,
    dtype: torch.dtype,
    channels_last: bool,
    backend: str,
) -> torch.Tensor:
    return backends.implementation(OP, backend)(
        store, perm, start, batch, patch, key, counter_base, dtype, channels_last
    )


@_sample_crops_op.register_fake
def _(store, perm, start, batch, patch, key, counter_base, dtype, channels_last, backend):
    return _empty_out(perm.shape[0], batch, patch, dtype, channels_last, store.device)


def _check(store, perm, start, batch, patch, dtype):
    if store.dtype != torch.uint8 or store.dim() != 4 or store.shape[3] != 3:
        raise ValueError(f"sample_crops: store must be [N, H, W, 3] uint8, got {tuple(store.shape)} {store.dtype}")
    if perm.dim() != 2 or perm.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"sample_crops: perm must be a [K, L] int64/int32 tensor, got {tuple(perm.shape)} {perm.dtype}"
        )
    if perm.device != store.device:
        raise ValueError(f"sample_crops: perm is on {perm.device}, store on {store.device}")
    if not (0 <= start and batch >= 1 and start + batch <= perm.shape[1]):
        raise ValueError(f"sample_crops: samples {start}..{start + batch} outside perm's {perm.shape[1]} columns")
    if not (1 <= patch <= min(store.shape[1], store.shape[2])):
        raise ValueError(
            f"sample_crops: patch {patch} does not fit the store's {store.shape[1]}x{store.shape[2]} patches"
        )
    if dtype not in OUT_DTYPES:
        raise ValueError(f"sample_crops: output dtype {dtype} is not one of {OUT_DTYPES}")


def sample_crops(
    store: torch.Tensor,
    perm: torch.Tensor,
    start: int,
    batch: int,
    patch: int,
    key: int,
    counter_base: int | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """Random crops ``[K, B, 3, p, p]`` of the patches ``perm[k, start : start + batch]``.

    ``store``: ``[N, H, W, 3]`` uint8 (any strides). ``perm``: ``[K, L]`` patch indices on the
    store's device. ``key``: 31-bit stream key (:func:`dil_fast.rng.stream_key`).
    ``counter_base``: position of sample ``j = 0`` in the epoch order (default ``start``).
    ``dtype``: float32/float16/bfloat16 (``x / 255``) or uint8. ``channels_last``: the result is a
    ``[K, B, 3, p, p]`` view of ``[K, B, p, p, 3]`` memory. ``backend``: force one (see
    :mod:`dil_fast.backends`).
    """
    counter_base = start if counter_base is None else int(counter_base)
    _check(store, perm, start, batch, patch, dtype)
    if not 0 <= key < 2**31 or not 0 <= counter_base < 2**31:
        raise ValueError("sample_crops: key and counter_base must be in [0, 2**31)")
    be = backends.backend_for(OP, store.device, store.dtype, backend)
    return _sample_crops_op(
        store, perm, int(start), int(batch), int(patch), int(key), counter_base, dtype, bool(channels_last), be
    )
