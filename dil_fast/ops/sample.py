"""Public patch-sampler op: random p×p crops + dihedral modes from a uint8 store, in one launch.

``sample_crops(store, perm, start, batch, patch, key)`` -> ``[K, B, 3, p, p]``; the distribution
and the counter-based randomness are documented in :mod:`dil_fast.ops.ref_sample`. Backends:
``triton`` (CUDA tensors, or CPU under ``TRITON_INTERPRET=1``) and ``torch`` (a vectorised gather,
exact against the reference); :func:`dil_fast.backends.choose` picks, ``DIL_FAST_BACKEND`` forces.
Registered as ``dil_fast::sample_crops`` so torch.compile and CUDA graphs see one op.
"""
from __future__ import annotations

import torch

from .. import backends
from .ref_sample import crop_params_ref

__all__ = ["sample_crops", "OUT_DTYPES"]

OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.uint8)


def _empty_out(num_k, batch, patch, dtype, channels_last, device):
    if channels_last:  # [K, B, 3, p, p] view of [K, B, p, p, 3] memory
        return torch.empty(num_k, batch, patch, patch, 3, dtype=dtype, device=device).permute(0, 1, 4, 2, 3)
    return torch.empty(num_k, batch, 3, patch, patch, dtype=dtype, device=device)


def _gather_crops(store, idx, y, x, mode, patch):
    """Vectorised: one advanced-indexing gather ([K, B, p, p, 3] uint8); no host sync (CUDA)."""
    ar = torch.arange(patch, device=store.device, dtype=torch.int64)
    flip_rows = ((mode >> 1) & 1).bool()[..., None]
    flip_cols = ((mode >> 2) & 1).bool()[..., None]
    rows = y[..., None] + torch.where(flip_rows, patch - 1 - ar, ar)  # [K, B, p]
    cols = x[..., None] + torch.where(flip_cols, patch - 1 - ar, ar)
    crops = store[idx[..., None, None], rows[..., :, None], cols[..., None, :]]  # flipped crops
    transpose = (mode & 1).bool()[..., None, None, None]
    return torch.where(transpose, crops.transpose(2, 3), crops).contiguous()


def _loop_crops(store, idx, y, x, mode, patch):
    """Per-sample views (flip, transpose) copied into place: faster than the gather on CPU."""
    num_k, batch = idx.shape
    out = torch.empty(num_k, batch, patch, patch, 3, dtype=torch.uint8)
    for k, (ik, yk, xk, mk) in enumerate(zip(idx.tolist(), y.tolist(), x.tolist(), mode.tolist())):
        for j in range(batch):
            crop = store[ik[j], yk[j] : yk[j] + patch, xk[j] : xk[j] + patch]
            dims = [d for d, bit in ((0, 2), (1, 4)) if mk[j] & bit]  # FR flips rows, FC columns
            if dims:
                crop = crop.flip(dims)
            out[k, j] = crop.transpose(0, 1) if mk[j] & 1 else crop
    return out


def _sample_crops_torch(store, perm, start, batch, patch, key, counter_base, dtype, channels_last, *, gather=None):
    num_k = perm.shape[0]
    _, height, width, _ = store.shape
    dev = store.device
    idx = perm[:, start : start + batch].to(device=dev, dtype=torch.int64)
    kk = torch.arange(num_k, device=dev, dtype=torch.int64)[:, None]
    pos = counter_base + torch.arange(batch, device=dev, dtype=torch.int64)[None, :]
    y, x, mode = crop_params_ref(key, kk, pos, height, width, patch)  # [K, B]
    gather = dev.type != "cpu" if gather is None else gather
    crops = (_gather_crops if gather else _loop_crops)(store, idx, y, x, mode, patch)  # [K, B, p, p, 3]
    if channels_last:
        out = crops.float().div_(255).to(dtype) if dtype.is_floating_point else crops
        return out.permute(0, 1, 4, 2, 3)
    work = torch.float32 if dtype.is_floating_point else dtype
    out = torch.empty(num_k, batch, 3, patch, patch, dtype=work, device=dev)
    out.copy_(crops.permute(0, 1, 4, 2, 3))
    return out.div_(255).to(dtype) if dtype.is_floating_point else out


def _check(store, perm, start, batch, patch, dtype):
    if store.dtype != torch.uint8 or store.dim() != 4 or store.shape[3] != 3:
        raise ValueError(f"sample_crops: store must be [N, H, W, 3] uint8, got {tuple(store.shape)} {store.dtype}")
    if perm.dim() != 2 or perm.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"sample_crops: perm must be a [K, L] int64/int32 tensor, got {tuple(perm.shape)} {perm.dtype}")
    if perm.device != store.device:
        raise ValueError(f"sample_crops: perm is on {perm.device}, store on {store.device}")
    if not (0 <= start and batch >= 1 and start + batch <= perm.shape[1]):
        raise ValueError(f"sample_crops: samples {start}..{start + batch} outside perm's {perm.shape[1]} columns")
    if not (1 <= patch <= min(store.shape[1], store.shape[2])):
        raise ValueError(f"sample_crops: patch {patch} does not fit the store's {store.shape[1]}x{store.shape[2]} patches")
    if dtype not in OUT_DTYPES:
        raise ValueError(f"sample_crops: output dtype {dtype} is not one of {OUT_DTYPES}")


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
    if backend == "triton":
        kern = backends.triton_kernels("sample_crops")
        out = _empty_out(perm.shape[0], batch, patch, dtype, channels_last, store.device)
        return kern.sample_crops_fwd(store, perm, start, batch, patch, key, counter_base, out)
    return _sample_crops_torch(store, perm, start, batch, patch, key, counter_base, dtype, channels_last)


@_sample_crops_op.register_fake
def _(store, perm, start, batch, patch, key, counter_base, dtype, channels_last, backend):
    return _empty_out(perm.shape[0], batch, patch, dtype, channels_last, store.device)


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
    store's device. ``key``: 31-bit stream key (:func:`dil_fast.ops.ref_sample.stream_key`).
    ``counter_base``: position of sample ``j = 0`` in the epoch order (default ``start``).
    ``dtype``: float32/float16/bfloat16 (``x / 255``) or uint8. ``channels_last``: the result is a
    ``[K, B, 3, p, p]`` view of ``[K, B, p, p, 3]`` memory. ``backend``: force ``torch``/``triton``.
    """
    counter_base = start if counter_base is None else int(counter_base)
    _check(store, perm, start, batch, patch, dtype)
    if not 0 <= key < 2**31 or not 0 <= counter_base < 2**31:
        raise ValueError("sample_crops: key and counter_base must be in [0, 2**31)")
    chosen = backends.choose("sample_crops", store.device, ("triton", "torch"), forced=backend)
    return _sample_crops_op(
        store, perm, int(start), int(batch), int(patch), int(key), counter_base, dtype, bool(channels_last), chosen
    )
