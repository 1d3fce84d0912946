"""Atomic file writes: every file dil_fast writes goes to a temporary name in the target folder and
is renamed over the final name, so a crash leaves either the old file or the new one, never half
of one. Used by every stage (data, train, eval), so it sits below all of them."""
from __future__ import annotations

import os
import tempfile
from typing import BinaryIO, Callable

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_save", "TMP_SUFFIX"]

TMP_SUFFIX = ".dil_fast.tmp"  # our temporary files end so (hidden: they also start with a dot)


def atomic_write(path: str, write: Callable[[BinaryIO], None], *, fsync: bool = False) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=TMP_SUFFIX, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(data: bytes, path: str, *, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(data), fsync=fsync)


def atomic_save(obj, path: str) -> None:
    """``torch.save(obj)`` to ``path`` atomically (fsync before the rename)."""
    import torch

    atomic_write(path, lambda f: torch.save(obj, f), fsync=True)
