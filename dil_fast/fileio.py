"""Atomic file writes: every file dil_fast writes goes to a temporary name in the target folder and
is renamed over the final name, so a crash leaves either the old file or the new one, never half
of one. The file gets the mode a plain ``open`` would give (0666 less the umask: collaborators
read the results), not ``mkstemp``'s 0600. Our temporary names start with a dot and end with
:data:`TMP_SUFFIX`, so an interrupted write's leftover is recognisable (the run folder removes
them at start). Used by every stage (data, train, eval), so it sits below all of them."""

from __future__ import annotations

import functools
import os
import tempfile
from typing import BinaryIO, Callable

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_save", "file_mode", "TMP_SUFFIX"]

TMP_SUFFIX = ".dil_fast.tmp"  # our temporary files end so (hidden: they also start with a dot)


@functools.lru_cache(maxsize=1)
def file_mode() -> int:
    """0666 less the process umask (read once: the umask can only be read by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str, write: Callable[[BinaryIO], None], *, fsync: bool = False) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=TMP_SUFFIX, dir=folder)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _discard(tmp)
        raise


def _discard(tmp: str) -> None:
    """Remove a failed write's temporary file. In a folder that became read-only it cannot be
    removed: it is emptied instead (truncating needs only the file's own permission), and the next
    run in the folder removes the empty leftover; the write's own error is what the caller sees."""
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    except OSError:
        try:
            os.truncate(tmp, 0)
        except OSError:
            pass


def atomic_write_bytes(data: bytes, path: str, *, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(data), fsync=fsync)


def atomic_save(obj, path: str) -> None:
    """``torch.save(obj)`` to ``path`` atomically (fsync before the rename)."""
    import torch

    atomic_write(path, lambda f: torch.save(obj, f), fsync=True)
