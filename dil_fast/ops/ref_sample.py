"""Pure-torch reference of the patch sampler (crop + dihedral augmentation from a uint8 store).

The sampler's distribution (a *decision* documented in docs and tests):

* **Crop offsets**: every valid top-left corner ``0 .. H-p`` (rows) and ``0 .. W-p`` (columns),
  *inclusive*, uniformly. The released trainer draws ``0 .. H-p-1`` and never reaches the last
  valid offset (REFERENCE.md §3 defects); the store fixes that deliberately.
* **Dihedral mode**: one of 8, uniformly, numbered as REFERENCE.md §3: 0 identity,
  1 flip-rows(rot90), 2 flip-rows, 3 rot90×3, 4 flip-rows(rot90×2), 5 rot90, 6 rot90×2,
  7 flip-rows(rot90×3) (rot90 = counter-clockwise in the (H, W) plane, flip-rows reverses H).
  Written as three bits of the mode: ``T = mode & 1`` (transpose), ``FR = mode >> 1 & 1`` (flip
  rows of the crop), ``FC = mode >> 2 & 1`` (flip columns): the output pixel ``(r, c)`` is the crop
  pixel ``(a', b')`` with ``(a, b) = (c, r) if T else (r, c)``, ``a' = p-1-a if FR else a``,
  ``b' = p-1-b if FC else b``. (The reference below applies rot90/flip literally instead.)
* **Randomness is counter-based**: the offsets and mode of one sample are a hash of a 31-bit
  ``key`` (from seed and epoch, :func:`stream_key`), the confounder ``k`` and the sample's
  ``position`` in that confounder's epoch order. So a sample's crop does not depend on how the
  epoch is split into batches or ranks, and resuming at any position reproduces it exactly.
  Integer draws use the high 32 bits of ``hash * range`` (bias below ``range / 2**32``).

All integer arithmetic is done in int64 on values below 2**32 (multiplications are split into
16-bit halves so nothing overflows), which the Triton kernel repeats operation for operation.
"""
from __future__ import annotations

import torch

__all__ = ["mix32", "mix32_int", "stream_key", "crop_params_ref", "sample_crops_ref", "dihedral_ref"]

_M32 = 0xFFFFFFFF
_C1 = 0x7FEB352D  # multipliers of the "lowbias32" integer hash (public-domain hash-prospector result)
_C2 = 0x846CA68B


def _mul32(x, c: int):
    """(x * c) mod 2**32 for 0 <= x < 2**32 without overflowing int64."""
    lo = x * (c & 0xFFFF)
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _M32


def mix32(x):
    """32-bit avalanche hash of int64 values in [0, 2**32) (tensor or int)."""
    x = x ^ (x >> 16)
    x = _mul32(x, _C1)
    x = x ^ (x >> 15)
    x = _mul32(x, _C2)
    x = x ^ (x >> 16)
    return x


def mix32_int(x: int) -> int:
    return int(mix32(int(x) & _M32))


def stream_key(seed: int, epoch: int, salt: int = 0) -> int:
    """31-bit key of the random stream for (seed, epoch, salt); fits a Triton int32 argument."""
    seed = int(seed) & ((1 << 64) - 1)
    h = mix32_int((seed & _M32) ^ mix32_int(seed >> 32))
    h = mix32_int(h ^ mix32_int(int(epoch) & _M32))
    h = mix32_int(h ^ mix32_int((int(salt) + 0x9E3779B9) & _M32))
    return h & 0x7FFFFFFF


def crop_params_ref(key: int, k, position, height: int, width: int, patch: int):
    """(y, x, mode) int64 tensors for samples of confounder ``k`` at epoch ``position``.

    ``k`` and ``position`` are int64 tensors (broadcast together), ``key`` from :func:`stream_key`.
    """
    k = torch.as_tensor(k, dtype=torch.int64)
    position = torch.as_tensor(position, dtype=torch.int64)
    base = mix32(key ^ mix32(position ^ mix32(k)))
    hy = mix32(base ^ 1)
    hx = mix32(base ^ 2)
    hm = mix32(base ^ 3)
    y = (hy * (height - patch + 1)) >> 32
    x = (hx * (width - patch + 1)) >> 32
    mode = hm >> 29
    return y, x, mode


def dihedral_ref(img: torch.Tensor, mode: int) -> torch.Tensor:
    """Mode ``mode`` of REFERENCE.md §3 applied to ``[..., H, W]`` with torch.rot90/flip, literally."""
    dims = (-2, -1)
    flip_rows = lambda t: torch.flip(t, dims=(-2,))  # noqa: E731 - reverses H
    rot = lambda t, n: torch.rot90(t, n, dims=dims)  # noqa: E731 - counter-clockwise
    table = {
        0: lambda t: t,
        1: lambda t: flip_rows(rot(t, 1)),
        2: flip_rows,
        3: lambda t: rot(t, 3),
        4: lambda t: flip_rows(rot(t, 2)),
        5: lambda t: rot(t, 1),
        6: lambda t: rot(t, 2),
        7: lambda t: flip_rows(rot(t, 3)),
    }
    return table[int(mode)](img)


def sample_crops_ref(
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
) -> torch.Tensor:
    """Crops ``[K, B, 3, p, p]`` from ``store [N, H, W, 3] uint8``.

    Sample ``(k, j)`` is patch ``perm[k, start + j]`` cropped and turned by
    :func:`crop_params_ref` at ``position = counter_base + j`` (``counter_base`` defaults to
    ``start``). Float outputs are ``x / 255``; uint8 outputs are the bytes.
    """
    if counter_base is None:
        counter_base = start
    num_k = perm.shape[0]
    _, height, width, _ = store.shape
    if channels_last:  # [K, B, 3, p, p] view of [K, B, p, p, 3] memory
        out = torch.empty(num_k, batch, patch, patch, 3, dtype=dtype, device=store.device).permute(0, 1, 4, 2, 3)
    else:
        out = torch.empty(num_k, batch, 3, patch, patch, dtype=dtype, device=store.device)
    for k in range(num_k):
        pos = torch.arange(batch, dtype=torch.int64) + counter_base
        ys, xs, modes = crop_params_ref(key, k, pos, height, width, patch)
        for j in range(batch):
            idx = int(perm[k, start + j])
            y, x, m = int(ys[j]), int(xs[j]), int(modes[j])
            crop = store[idx, y : y + patch, x : x + patch, :].permute(2, 0, 1)
            crop = dihedral_ref(crop, m)
            out[k, j] = (crop.float() / 255).to(dtype) if dtype.is_floating_point else crop
    return out
