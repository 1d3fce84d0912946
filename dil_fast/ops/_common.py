"""Small helpers the op modules share."""

from __future__ import annotations

import torch

_U64 = 0xFFFFFFFFFFFFFFFF


def as_i64(v: int) -> int:
    """A 64-bit seed as the int64 a ``custom_op`` int argument can carry (two's complement)."""
    v = int(v) & _U64
    return v - (1 << 64) if v >= (1 << 63) else v


def seed_u64(v: int) -> int:
    """Inverse of :func:`as_i64`."""
    return int(v) & _U64


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """Host parameters -> device without a host sync (pinned memory, non-blocking) on CUDA."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def as_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images (0..255) -> float32 on [0, 1]; float images unchanged."""
    return x.float() / 255.0 if x.dtype == torch.uint8 else x


def samples_channels_last(x: torch.Tensor) -> bool:
    """True when every sample of x (``[B, C, H, W]`` or ``[K, B, C, H, W]``) is stored NHWC and
    densely (channels_last), and not also NCHW-contiguous."""
    if x.is_contiguous():
        return False
    perm = (0, 2, 3, 1) if x.dim() == 4 else (0, 1, 3, 4, 2)
    return x.permute(*perm).is_contiguous()


def empty_samples(shape, dtype, device, channels_last: bool) -> torch.Tensor:
    """An empty ``[K, B, C, H, W]``: NCHW samples, or NHWC ones (channels_last)."""
    if not channels_last:
        return torch.empty(shape, dtype=dtype, device=device)
    k, b, c, h, w = shape
    return torch.empty((k, b, h, w, c), dtype=dtype, device=device).permute(0, 1, 4, 2, 3)
