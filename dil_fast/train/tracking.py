"""Experiment tracking: the run's options, its scalars and its clock.

* ``options.json`` (and ``options.yaml`` when PyYAML is installed) in the run folder at start: every
  resolved option (the task's values filled in), the model, the backends that serve each op, the
  versions and the command line.
* ``metrics.csv``, always: one row per scalar, ``step, epoch, iteration, seconds, tag, value``
  (appended and flushed as they come, so a killed run keeps its curves), with the tags
  ``loss/<confounder>``, ``lr/task``, ``lr/meta``, ``speed/meta_it_s``, ``speed/images_s``,
  ``skipped/nonfinite`` and ``test/<degradation>/psnr|ssim``.
* TensorBoard event files under ``tb/`` too, when ``torch.utils.tensorboard`` can be imported (the
  ``tensorboard`` extra).
* :class:`RunClock`: meta-iterations/s over the last log interval and the whole run's ETA, from
  host wall time only (no device synchronisation).
"""
from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import sys
import time

from ..fileio import atomic_write_bytes, file_mode

__all__ = ["Tracker", "RunClock", "write_options", "format_duration"]


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return str(_dt.timedelta(seconds=seconds))


def write_options(folder: str, options: dict) -> list[str]:
    """Write ``options.json`` (and ``options.yaml`` if PyYAML is there); returns the file names."""
    names = ["options.json"]
    atomic_write_bytes((json.dumps(options, indent=2, sort_keys=True, default=str) + "\n").encode(),
                       os.path.join(folder, "options.json"))
    try:
        import yaml
    except ImportError:
        return names
    atomic_write_bytes(yaml.safe_dump(json.loads(json.dumps(options, default=str)), sort_keys=True).encode(),
                       os.path.join(folder, "options.yaml"))
    return names + ["options.yaml"]


class Tracker:
    """Scalars to ``metrics.csv`` (always) and to TensorBoard (when available); see the module doc."""

    FIELDS = ("step", "epoch", "iteration", "seconds", "tag", "value")

    def __init__(self, folder: str, *, tensorboard: bool = True):
        self.folder = folder
        path = os.path.join(folder, "metrics.csv")
        new = not os.path.exists(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, file_mode())
        self._file = os.fdopen(fd, "a", newline="", encoding="utf-8", buffering=1)
        self._csv = csv.writer(self._file)
        if new:
            self._csv.writerow(self.FIELDS)
        self._t0 = time.time()
        self.tb = None
        self.tb_reason = "disabled"
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                self.tb_reason = f"TensorBoard is not installed ({exc}); pip install tensorboard for event files"
            else:
                self.tb = SummaryWriter(log_dir=os.path.join(folder, "tb"))
                self.tb_reason = ""

    def scalars(self, step: int, epoch: int, iteration: int, values: dict[str, float]) -> None:
        seconds = round(time.time() - self._t0, 3)
        for tag, value in values.items():
            self._csv.writerow((step, epoch, iteration, seconds, tag, value))
            if self.tb is not None:
                self.tb.add_scalar(tag, value, step)
        self._file.flush()

    def close(self) -> None:
        self._file.close()
        if self.tb is not None:
            self.tb.close()


class RunClock:
    """Speed and ETA of the run from host wall time (``mark`` at every log point)."""

    def __init__(self, total_iterations: int, done: int = 0):
        self.total, self.start_done = total_iterations, done
        self.t0 = self.t_mark = time.time()
        self.done_mark = done

    def mark(self, done: int) -> dict:
        """``{"it_s", "elapsed", "eta"}`` after ``done`` meta-iterations of the run in all."""
        now = time.time()
        window = now - self.t_mark
        it_s = (done - self.done_mark) / window if window > 0 and done > self.done_mark else 0.0
        overall = (done - self.start_done) / (now - self.t0) if now > self.t0 and done > self.start_done else 0.0
        rate = it_s or overall
        self.t_mark, self.done_mark = now, done
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        return {"it_s": it_s, "elapsed": now - self.t0, "eta": eta}


def command_line() -> str:
    return " ".join(sys.argv)
