"""One progress rule for every long command (pack, crop, train, eval, study).

:func:`progress` picks the reporter from where its lines go:

* **a terminal, tqdm installed**: a tqdm bar (done/total, rate in units/s, elapsed<ETA);
* **anything else** (a pipe, a log file, a terminal without tqdm): a plain line every
  ``interval`` seconds, ``pack: 120/500 img (24%), 35.2 img/s, ETA 0:00:11``, and a closing line
  ``pack: 500/500 img in 0:00:14, 35.7 img/s`` when a run that printed lines completes; never a
  bar, whose carriage returns would turn a log into one endless line;
* **disabled** (``--no_progress``, a non-main rank): nothing.

Every reporter has the same small interface (``update``, ``set_postfix``, ``close``, and use as a
context manager). Leaving the ``with`` block through an exception erases a terminal bar and prints
no closing line, so a failed command ends with its one ``error:`` line. tqdm is a dependency, but a
missing tqdm (``pip install --no-deps``) must never stop a training, a crop or a pack.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

__all__ = ["LOG_INTERVAL_S", "LogLines", "NullBar", "progress", "tqdm_available"]

LOG_INTERVAL_S = 30.0  # seconds between plain progress lines


def tqdm_available() -> bool:
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


class NullBar:
    """The reporter that reports nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **values) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()


def _hms(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class LogLines(NullBar):
    """Plain progress lines: one every ``interval`` seconds, and a closing line (see the module doc).

    ``emit(line)`` receives each line without a newline (default: written to ``sys.stderr``);
    ``clock`` is the time source in seconds (``time.monotonic``; tests pass a fake one).
    """

    def __init__(
        self,
        total: int | None,
        *,
        desc: str,
        unit: str = "it",
        initial: int = 0,
        interval: float = LOG_INTERVAL_S,
        emit: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total, self.desc, self.unit = total, desc, unit
        self.done = self._start_count = int(initial)
        self.interval = float(interval)
        self._emit = emit or _stderr_line
        self._clock = clock
        self._start = self._last = clock()
        self._postfix = ""
        self.lines = 0  # lines emitted so far
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.done += n
        now = self._clock()
        if now - self._last >= self.interval:
            self._last = now
            self._line(self._progress_text(now))

    def set_postfix(self, **values) -> None:
        self._postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def _rate(self, now: float) -> float:
        elapsed = now - self._start
        return (self.done - self._start_count) / elapsed if elapsed > 0 else 0.0

    def _progress_text(self, now: float) -> str:
        rate = self._rate(now)
        if self.total:
            text = f"{self.desc}: {self.done}/{self.total} {self.unit} ({100 * self.done // self.total}%)"
        else:
            text = f"{self.desc}: {self.done} {self.unit}"
        text += f", {rate:.2f} {self.unit}/s"
        if self.total and rate > 0:
            text += f", ETA {_hms((self.total - self.done) / rate)}"
        return text

    def _line(self, text: str) -> None:
        self._emit(text + (f", {self._postfix}" if self._postfix else ""))
        self.lines += 1

    def close(self, failed: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        complete = self.total is None or self.done >= self.total
        if self.lines and complete and not failed:
            now = self._clock()
            self._line(
                f"{self.desc}: {self.done}{f'/{self.total}' if self.total else ''} {self.unit} in "
                f"{_hms(now - self._start)}, {self._rate(now):.2f} {self.unit}/s"
            )

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)


class _TerminalBar(NullBar):
    """A tqdm bar with the reporters' interface; erased when its ``with`` block fails."""

    def __init__(self, bar):
        self.bar = bar

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def set_postfix(self, **values) -> None:
        self.bar.set_postfix(**values)

    def close(self) -> None:
        self.bar.close()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.bar.leave = False  # the error line that follows says what happened
        self.close()


def _stderr_line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress(
    total: int | None,
    *,
    desc: str,
    unit: str = "it",
    enabled: bool = True,
    initial: int = 0,
    stream=None,
    isatty: bool | None = None,
    interval: float = LOG_INTERVAL_S,
    emit: Callable[[str], None] | None = None,
    leave: bool = True,
):
    """The progress reporter for ``total`` units of work, by the module's rule.

    ``stream`` is where a bar or the lines go (default ``sys.stderr`` at call time); ``isatty``
    overrides the terminal test of ``stream``; ``emit`` sends the plain lines elsewhere (e.g. a
    logger's ``info``) and is not used for a bar; ``leave=False`` erases a finished bar.
    Returns a :class:`NullBar`, a tqdm bar wrapper or a :class:`LogLines`, all used as::

        with progress(len(paths), desc="crop", unit="img") as bar:
            for ...:
                bar.update()
    """
    if not enabled:
        return NullBar()
    stream = sys.stderr if stream is None else stream
    terminal = _is_terminal(stream) if isatty is None else isatty
    if terminal and tqdm_available():
        from tqdm import tqdm

        return _TerminalBar(
            tqdm(total=total, initial=initial, desc=desc, unit=unit, file=stream, dynamic_ncols=True, leave=leave)
        )
    if emit is None:

        def emit(text: str) -> None:
            stream.write(text + "\n")
            stream.flush()

    return LogLines(total, desc=desc, unit=unit, initial=initial, interval=interval, emit=emit)
