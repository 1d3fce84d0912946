"""Pure-torch reference of the patch sampler (:mod:`dil_fast.ops.sample_crops`): random ``p x p``
crops with the 8 dihedral modes from a uint8 patch store. The oracle of ``kernels/sample_crops.py``
and the path on every device Triton does not serve (one gather, no host synchronisation).

The distribution (a *decision*, docs/released-trainer.md):

* **Crop offsets**: every valid top-left corner ``0 .. H-p`` (rows) and ``0 .. W-p`` (columns),
  *inclusive*, uniformly. The released trainer draws ``0 .. H-p-1`` and never reaches the last
  valid offset; the store fixes that deliberately.
* **Dihedral mode**: one of 8, uniformly, numbered as the released trainer: 0 identity,
  1 flip-rows(rot90), 2 flip-rows, 3 rot90x3, 4 flip-rows(rot90x2), 5 rot90, 6 rot90x2,
  7 flip-rows(rot90x3) (rot90 = counter-clockwise in the (H, W) plane, flip-rows reverses H).
  Written as three bits of the mode: ``T = mode & 1`` (transpose), ``FR = mode >> 1 & 1`` (flip
  rows of the crop), ``FC = mode >> 2 & 1`` (flip columns): output pixel ``(r, c)`` is crop pixel
  ``(a', b')`` with ``(a, b) = (c, r) if T else (r, c)``, ``a' = p-1-a if FR``, ``b' = p-1-b if FC``.
  :func:`dihedral_ref` applies the modes literally with rot90/flip; tests check the two agree.
* **Randomness**: the offsets and mode of a sample are :func:`dil_fast.rng.crop_params` of
  (key, k, position), so a crop does not depend on how the epoch is split into batches or ranks.
"""

from __future__ import annotations

import torch

from ...rng import crop_params

__all__ = ["sample_crops_ref", "dihedral_ref"]


def dihedral_ref(img: torch.Tensor, mode: int) -> torch.Tensor:
    """Mode ``mode`` of the released numbering applied to ``[..., H, W]`` with torch.rot90/flip, literally."""
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
    """Crops ``[K, B, 3, p, p]`` from ``store`` ``[N, H, W, 3]`` uint8 on the store's device.

    Sample ``(k, j)`` is patch ``perm[k, start + j]`` cropped and turned by
    :func:`~dil_fast.rng.crop_params` at ``position = counter_base + j`` (``counter_base`` defaults
    to ``start``). Float outputs are ``x / 255`` (computed in float32); uint8 outputs are the bytes.
    ``channels_last``: the result is a ``[K, B, 3, p, p]`` view of ``[K, B, p, p, 3]`` memory.
    """
    counter_base = start if counter_base is None else int(counter_base)
    num_k = perm.shape[0]
    _, height, width, _ = store.shape
    dev = store.device
    idx = perm[:, start : start + batch].to(device=dev, dtype=torch.int64)  # [K, B]
    k = torch.arange(num_k, device=dev, dtype=torch.int64)[:, None]
    position = counter_base + torch.arange(batch, device=dev, dtype=torch.int64)[None, :]
    y, x, mode = crop_params(key, k, position, height, width, patch)  # [K, B]
    ar = torch.arange(patch, device=dev, dtype=torch.int64)
    rows = y[..., None] + torch.where(((mode >> 1) & 1).bool()[..., None], patch - 1 - ar, ar)  # FR
    cols = x[..., None] + torch.where(((mode >> 2) & 1).bool()[..., None], patch - 1 - ar, ar)  # FC
    crops = store[idx[..., None, None], rows[..., :, None], cols[..., None, :]]  # [K, B, p, p, 3]
    crops = torch.where((mode & 1).bool()[..., None, None, None], crops.transpose(2, 3), crops).contiguous()  # T
    if dtype.is_floating_point:
        crops = crops.float().div_(255).to(dtype)
    out = crops.permute(0, 1, 4, 2, 3)
    return out if channels_last else out.contiguous()
