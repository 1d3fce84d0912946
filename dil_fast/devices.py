"""The one function that turns a ``--device`` value into a ``torch.device`` (train, eval and the
study all use it)."""

from __future__ import annotations

import torch

from .errors import FlagError

__all__ = ["resolve_device"]


def resolve_device(name: str | None, *, local_rank: int | None = None, flag: str = "--device") -> torch.device:
    """``--device`` as a torch.device: default ``cuda`` (``cuda:LOCAL_RANK`` under DDP) when a GPU
    is available, else ``cpu``; :class:`FlagError` naming the flag when it cannot be used."""
    if name is None:
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", local_rank) if local_rank is not None else torch.device("cuda")
    if name == "cuda" and local_rank is not None:
        name = f"cuda:{local_rank}"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise FlagError(f"{flag} {name}: not a device name (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise FlagError(f"{flag} {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise FlagError(f"{flag} {name}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise FlagError(f"{flag} {name}: unsupported device type (use cpu or cuda)")
    return device
