"""The run folder (``--ckpt_save``): work is never lost or mixed.

* A lock file (``.dil_fast.lock``: PID and host) refuses a second live run in the same folder with
  one line naming the holder's PID; a stale lock (its PID is dead on this host) is taken over, and
  so is a lock file that says no PID and host (empty or garbage: no run of ours writes one, since a
  starting run writes its PID right after creating the file, which is given a second to happen),
  with a line saying so.
* A folder that already holds a run (``last.pt``, ``train.log`` or ``model_*.pt``) is archived
  first: renamed ``NAME_archived_YYYYmmdd_HHMMSS`` (as BasicSR does) and the log says so;
  ``--auto_resume`` instead continues from its ``last.pt``, and ``--resume NAME/last.pt`` continues
  in the folder too (train.log and metrics.csv are appended to).
* Our own orphaned temporary files (``.*.dil_fast.tmp``: a write cut by a crash or ``kill -9``) are
  removed at start, once the lock is held.
* Files follow the umask (:mod:`dil_fast.fileio`).

Only rank 0 touches the folder; every rank takes the same ``--auto_resume`` decision from it.
"""

from __future__ import annotations

import os
import socket
import time

from ..checkpoints import LAST, is_checkpoint_name
from ..errors import FlagError, InputError
from ..fileio import TMP_SUFFIX
from ..staging import pid_alive

__all__ = ["RunFolder", "LOCK_NAME", "holds_a_run", "check_writable"]

LOCK_NAME = ".dil_fast.lock"
LOG_NAME = "train.log"


def holds_a_run(folder: str) -> bool:
    """True when ``folder`` holds the files of a run (a checkpoint or a log), so a new one must not mix with it."""
    if not os.path.isdir(folder):
        return False
    return any(n == LOG_NAME or is_checkpoint_name(n) for n in os.listdir(folder))


def check_writable(folder: str, flag: str = "--ckpt_save") -> None:
    """One-line :class:`FlagError` unless ``folder`` is, or can be created as, a writable folder."""
    folder = os.path.abspath(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise FlagError(f"{flag} {folder}: is a file, not a folder")
    probe = folder
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
        raise FlagError(f"{flag} {folder}: {probe} is not writable")


UNREADABLE = "unreadable"  # a lock file that holds no "PID HOST" (empty or garbage)
_WRITER_GRACE_S = 1.0  # how long a lock file may stay unreadable while the run that made it writes its PID


def _read_lock(path: str) -> tuple[int, str] | str | None:
    """``(pid, host)`` of the lock file, None when there is none, :data:`UNREADABLE` when it says no PID."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            pid, _, host = f.read().strip().partition(" ")
    except FileNotFoundError:
        return None
    except OSError as exc:
        folder = os.path.dirname(path)
        raise FlagError(f"--ckpt_save {folder}: cannot read its lock file ({exc.strerror or exc})") from None
    try:
        return int(pid), host
    except ValueError:
        return UNREADABLE


_REUSE_SLACK_S = 60.0  # a holder's start may look this much later than its lock (clock adjustments)


def _started_after_lock(pid: int, lock: str) -> bool:
    """True when process ``pid`` started after ``lock`` was written, so it cannot be the run that
    wrote it (the PID was reused after that run died). Linux only (``/proc``); False elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()  # the fields after the command name
        with open("/proc/stat", "rb") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith(b"btime"))
        started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time in ticks
        return started > os.path.getmtime(lock) + _REUSE_SLACK_S
    except (OSError, ValueError, IndexError, StopIteration):
        return False


class RunFolder:
    """Set up ``folder`` for a run: lock, archive or resume, clean (see the module docstring)."""

    def __init__(self, folder: str, *, auto_resume: bool = False, continues: bool = False):
        """``continues``: the run resumes a state of this folder (``--resume FOLDER/last.pt``), so the
        folder is kept, as with ``--auto_resume``."""
        self.folder = os.path.abspath(folder)
        self.auto_resume = auto_resume
        self.continues = continues or auto_resume
        self.archived: str | None = None
        self.took_over: int | str | None = None  # the stale holder's PID, or UNREADABLE
        self._stale: tuple[int, str] | str | None = None  # the lock content judged stale
        self._why = ""  # why it is stale
        self.removed: list[str] = []
        self._lock = os.path.join(self.folder, LOCK_NAME)
        self._held = False

    def resume_path(self) -> str | None:
        """``last.pt`` to continue from (``--auto_resume`` and the folder holds one), else None."""
        last = os.path.join(self.folder, LAST)
        return last if self.auto_resume and os.path.isfile(last) else None

    def _refuse_live_lock(self) -> None:
        held = _read_lock(self._lock)
        waited = 0.0
        while held == UNREADABLE and waited < _WRITER_GRACE_S:  # a run that just created it writes its PID now
            time.sleep(0.1)
            waited += 0.1
            held = _read_lock(self._lock)
        if held is None:
            return
        if held == UNREADABLE:
            self.took_over, self._stale = UNREADABLE, UNREADABLE
            return
        pid, host = held
        here = host == socket.gethostname()
        if here and not pid_alive(pid):
            self.took_over, self._stale, self._why = pid, held, "not running"
            return
        if here and _started_after_lock(pid, self._lock):
            self.took_over, self._stale = pid, held
            self._why = "the PID now belongs to a process started after the lock"
            return
        if pid == os.getpid():
            return
        elsewhere = (
            "" if here else f" (a run on another host cannot be checked from here: if it is gone, delete {self._lock})"
        )
        raise FlagError(
            f"--ckpt_save {self.folder}: a run (PID {pid} on {host or 'this host'}) is using it; "
            f"wait for it, stop it, or give another folder{elsewhere}"
        )

    def acquire(self) -> "RunFolder":
        check_writable(self.folder)
        if os.path.isdir(self.folder):
            self._refuse_live_lock()
            if not self.continues and holds_a_run(self.folder):
                stamp = time.strftime("%Y%m%d_%H%M%S")
                self.archived = f"{self.folder}_archived_{stamp}"
                n = 1
                while os.path.exists(self.archived):  # two archives within a second
                    n += 1
                    self.archived = f"{self.folder}_archived_{stamp}_{n}"
                try:
                    os.rename(self.folder, self.archived)
                except OSError as exc:
                    raise InputError(
                        f"--ckpt_save {self.folder}: cannot archive the earlier run ({exc.strerror or exc})"
                    ) from None
                self.took_over = None
        try:
            os.makedirs(self.folder, exist_ok=True)
            if self.took_over is not None and _read_lock(self._lock) == self._stale:
                os.unlink(self._lock)  # only the stale one: a run that took it meanwhile keeps it
            fd = os.open(self._lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            self._refuse_live_lock()  # another run took it between our check and our create
            raise FlagError(f"--ckpt_save {self.folder}: another run took the folder while this one started") from None
        except OSError as exc:
            raise InputError(
                f"--ckpt_save {self.folder}: cannot create the folder or its lock ({exc.strerror or exc})"
            ) from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"{os.getpid()} {socket.gethostname()}\n")
        self._held = True
        for name in os.listdir(self.folder):
            if name.startswith(".") and name.endswith(TMP_SUFFIX):
                os.unlink(os.path.join(self.folder, name))
                self.removed.append(name)
        return self

    def release(self) -> None:
        if self._held:
            self._held = False
            try:
                if _read_lock(self._lock) == (os.getpid(), socket.gethostname()):
                    os.unlink(self._lock)
            except (OSError, FlagError):
                pass  # a folder made read-only: the lock stays, stale once this process ends

    def report(self) -> list[str]:
        """The log lines of what was done to the folder."""
        lines = []
        if self.archived:
            lines.append(
                f"The earlier run in {self.folder} was archived to {self.archived} (pass --auto_resume to "
                "continue it instead)"
            )
        if self.took_over == UNREADABLE:
            lines.append(
                f"Took over the lock file {LOCK_NAME}, which named no run (empty or not 'PID HOST'): treated as stale"
            )
        elif self.took_over is not None:
            lines.append(f"Took over the stale lock of PID {self.took_over} ({self._why})")
        if self.removed:
            lines.append(f"Removed {len(self.removed)} orphaned temporary file(s) of an interrupted write")
        return lines
