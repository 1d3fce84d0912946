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
