"""Temporary folders of a running command (pack's ``OUTPUT.tmp-<pid>``, crop's staging folder)
and the test "is that process alive": a folder is named with its creator's PID and locked (flock on
the folder itself) while the command works, so a later run tells a folder in use from one that a
killed run left behind, and removes only the latter. Below every stage (data and train use it)."""

from __future__ import annotations

import os
import re

__all__ = ["lock_folder", "release_folder_lock", "stale_folders", "pid_alive"]


def lock_folder(path: str) -> int | None:
    """Hold an exclusive lock on the folder ``path`` until :func:`release_folder_lock`; returns the
    descriptor, or None where folders cannot be locked (no ``fcntl``)."""
    try:
        import fcntl
    except ImportError:
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        pass  # a file system without locks (some NFS): the PID in the name still tells it apart
    return fd


def release_folder_lock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock


def _lock_state(path: str) -> bool | None:
    """True when another process holds the folder's lock, False when nobody does, None when unknown."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (another user's counts; non-POSIX: assumed)."""
    if os.name != "posix":
        return True  # no cheap, safe test: treat it as running
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except OverflowError:
        return False  # larger than any PID
    return True


def stale_folders(parent: str, prefix: str, started: float, *, by_age: bool = True) -> list[str]:
    """The folders ``parent/<prefix><pid>...`` that no running command owns (to remove or repair).

    A folder is stale when nobody holds its lock and either its creator's PID (the digits right
    after ``prefix``) is not running or, with ``by_age``, it was last modified before ``started``
    (the time, as ``time.time()``, the calling command started: a folder that recent may be one a
    command has just created and not locked yet). Where the lock cannot be tested, only a dead PID
    makes a folder stale. Entries that vanish or cannot be read are skipped.
    """
    try:
        names = sorted(os.listdir(parent))
    except OSError:
        return []
    stale = []
    for name in names:
        path = os.path.join(parent, name)
        if not name.startswith(prefix) or os.path.islink(path) or not os.path.isdir(path):
            continue
        match = re.match(r"(\d+)(?:\.|$)", name[len(prefix) :])
        pid_dead = match is not None and not pid_alive(int(match.group(1)))
        locked = _lock_state(path)
        if locked is True:
            continue
        if pid_dead:
            stale.append(path)
        elif by_age and locked is False:
            try:
                if os.path.getmtime(path) < started:
                    stale.append(path)
            except OSError:
                continue
    return stale
