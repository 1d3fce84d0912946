"""The released trainer's log format (KAIR's ``utils_logger``): ``yy-mm-dd HH:MM:SS.mmm : message``,
to ``train.log`` in the checkpoint folder (appended) and to the console."""

from __future__ import annotations

import logging
import os
import sys

_FORMAT = "%(asctime)s.%(msecs)03d : %(message)s"
_DATEFMT = "%y-%m-%d %H:%M:%S"


class _TqdmConsole(logging.Handler):
    """Console handler that prints above a live tqdm progress bar instead of through it."""

    def emit(self, record):
        from tqdm import tqdm

        tqdm.write(self.format(record), file=sys.stdout)


def make_logger(
    name: str, log_file: str | None, *, console: bool = True, stream=None, progress_bar: bool = False
) -> logging.Logger:
    """A logger writing the reference's line format to ``log_file`` and the console.

    Handlers are replaced on every call, so repeated runs in one process do not duplicate lines.
    """
    logger = logging.getLogger(f"dil_fast.{name}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    fmt = logging.Formatter(_FORMAT, datefmt=_DATEFMT)
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        fh = logging.FileHandler(log_file, mode="a")
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    if console:
        sh = _TqdmConsole() if progress_bar else logging.StreamHandler(stream or sys.stdout)
        sh.setFormatter(fmt)
        logger.addHandler(sh)
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    return logger


class NoteLogger:
    """Collects what :meth:`Trainer.open` reports before the run's log file exists."""

    def __init__(self, notes: list[str]):
        self.notes = notes

    def info(self, msg: str) -> None:
        self.notes.append(msg)
