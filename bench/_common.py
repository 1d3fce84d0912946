"""Shared benchmark plumbing: timing, the environment record, CSV output.

Timing (:func:`time_fn`): a sample is enough back-to-back calls to last ``min_sample_s`` (2 ms by
default), so a small op is never timed as one call between two events (whose own cost and
resolution, a few microseconds, would swamp it); the per-call time is sample / calls, and the
median over samples is reported, beside the median of single calls (what one call costs when
nothing hides its launch latency).

Output (:func:`record`): every benchmark appends each row, or each case's rows, as soon as it is
measured, so a run stopped by ``timeout`` keeps everything it finished. The CSVs go to
``<out>/<topic>.csv`` where ``out`` is the benchmark's ``--out DIR``, else ``DIL_FAST_BENCH_OUT``
(read through :func:`dil_fast.backends.bench_out_default`), else ``$XDG_CACHE_HOME/dil_fast/bench``
(``~/.cache/dil_fast/bench``): outside the source tree. ``bench/results/`` holds the curated record
and is written only when ``--out bench/results`` is given.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import functools
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

from dil_fast import backends

HERE = os.path.dirname(os.path.abspath(__file__))
MIN_SAMPLE_S = 2e-3  # the least time one timed sample lasts
MAX_CALLS = 10_000  # calls per sample at most (a 0.2 us call still gets a 2 ms sample)
ENV_KEYS = ["date", "device", "threads", "torch", "triton", "revision", "load_1min"]


@functools.lru_cache(maxsize=None)
def git_revision() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True, check=True
        ).stdout.strip()
    except Exception:  # noqa: BLE001 - a tarball without .git still benchmarks
        return "unknown"


@functools.lru_cache(maxsize=None)
def _versions() -> tuple[str, str]:
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # noqa: BLE001
        triton_version = "none"
    return torch.__version__, triton_version


def environment(device) -> dict:
    """The conditions of a measurement: date, device name, CPU threads, versions, git revision and the
    machine's 1-minute load average (other jobs slow a shared machine down)."""
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    torch_version, triton_version = _versions()
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": name,
        "threads": torch.get_num_threads(),
        "torch": torch_version,
        "triton": triton_version,
        "revision": git_revision(),
        "load_1min": round(os.getloadavg()[0], 2),
    }


# ------------------------------------------------------------------------------------------ timing
class Timing(float):
    """Seconds per call (the median over samples of back-to-back calls), with the conditions:
    ``single`` (median seconds of one call timed alone), ``calls`` (calls per sample) and
    ``samples`` (how many samples the median is over). It is a float, so it reads as the per-call
    time wherever a number is expected."""

    single: float
    calls: int
    samples: int

    def __new__(cls, per_call: float, single: float, calls: int, samples: int):
        obj = super().__new__(cls, per_call)
        obj.single, obj.calls, obj.samples = float(single), int(calls), int(samples)
        return obj


def sample_seconds(fn, calls: int, device, clock: str | None = None) -> float:
    """Seconds of ``calls`` back-to-back calls of ``fn``.

    ``clock="events"`` (the default on CUDA): CUDA events on the current stream around the calls,
    i.e. device time, which for host-bound calls is the host's time per call. ``"wall"`` (the default
    on a CPU): the wall clock, CUDA synchronised before and after (so on CUDA it is host time plus
    the last call's device tail).
    """
    dev = torch.device(device)
    clock = clock or ("events" if dev.type == "cuda" else "wall")
    if clock == "events":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter() - t0


def calls_per_sample(single_s: float, min_sample_s: float, max_calls: int = MAX_CALLS) -> int:
    """Back-to-back calls for a sample of at least ``min_sample_s`` when one call takes ``single_s``."""
    return max(1, min(max_calls, math.ceil(min_sample_s / max(single_s, 1e-9))))


def _probe_seconds(fn, dev: torch.device, clock: str | None, min_sample_s: float, setup=None) -> float:
    """Seconds of one call, to size the samples: one timing when it exceeds ``min_sample_s``, else
    the least of three (a first call after other work runs cold and would make the samples short)."""
    times = []
    for _ in range(3):
        if setup:
            setup()
        times.append(sample_seconds(fn, 1, dev, clock))
        if times[-1] >= min_sample_s:
            break
    return min(times)


def _timed_rounds(
    fns: dict, dev: torch.device, *, repeat: int, min_sample_s: float, clock: str | None, max_calls: int, setup=None
) -> dict:
    """Timing of each fn (already warm) in interleaved rounds: each round times, for every fn in turn,
    one sample of back-to-back calls and (when a sample holds more than one call) one single call."""
    calls = {
        name: calls_per_sample(_probe_seconds(fn, dev, clock, min_sample_s, setup), min_sample_s, max_calls)
        for name, fn in fns.items()
    }
    per_call = {name: [] for name in fns}
    single = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            if setup:
                setup()
            per_call[name].append(sample_seconds(fn, calls[name], dev, clock) / calls[name])
            if calls[name] > 1:
                if setup:
                    setup()
                single[name].append(sample_seconds(fn, 1, dev, clock))
    out = {}
    for name in fns:
        median = statistics.median(per_call[name])
        out[name] = Timing(median, statistics.median(single[name]) if single[name] else median, calls[name], repeat)
    return out


def time_fn(
    fn,
    *,
    device,
    warmup: int = 3,
    repeat: int = 20,
    setup=None,
    min_sample_s: float = MIN_SAMPLE_S,
    clock: str | None = None,
    max_calls: int = MAX_CALLS,
) -> Timing:
    """Per-call median seconds of ``fn()`` (a :class:`Timing`, also carrying the single-call median).

    After ``warmup`` calls, one call is timed to size the samples (the least of three when it is
    short): n = ceil(min_sample_s / its time) calls, at most ``max_calls``. Then ``repeat`` rounds each time one
    sample of n back-to-back calls
    (per call: its time / n) and, when n > 1, one single call. ``setup()`` (untimed) runs before
    every sample, e.g. to draw fresh random inputs; the calls of one sample share it. ``clock``: see
    :func:`sample_seconds`.
    """
    dev = torch.device(device)
    for _ in range(warmup):
        if setup:
            setup()
        fn()
    return _timed_rounds(
        {"fn": fn}, dev, repeat=repeat, min_sample_s=min_sample_s, clock=clock, max_calls=max_calls, setup=setup
    )["fn"]


def time_side_by_side(
    providers: dict,
    device,
    *,
    warmup: int = 3,
    repeat: int = 20,
    min_sample_s: float = MIN_SAMPLE_S,
    clock: str | None = None,
    max_calls: int = MAX_CALLS,
) -> dict:
    """:class:`Timing` of each provider of one case (name -> zero-argument callable), timed side by
    side: every round times each provider once (as :func:`time_fn` does), so the machine's condition
    (other jobs, clocks) hits them alike. A provider that raises during warm-up (e.g. an op its
    device lacks) is reported on stderr and left out of the result."""
    dev = torch.device(device)
    warm = {}
    for name, fn in providers.items():
        try:
            for _ in range(warmup):
                fn()
        except Exception as exc:  # noqa: BLE001 - one unsupported provider must not end the run
            print(f"  {name}: skipped ({type(exc).__name__}: {exc})", file=sys.stderr)
            continue
        warm[name] = fn
    return _timed_rounds(warm, dev, repeat=repeat, min_sample_s=min_sample_s, clock=clock, max_calls=max_calls)


def copy_bandwidth(device, nbytes: int = 1 << 28) -> float:
    """Measured device-to-device copy bandwidth in bytes/s (read + write counted)."""
    dev = torch.device(device)
    n = nbytes if dev.type == "cuda" else min(nbytes, 1 << 26)
    src = torch.empty(n, dtype=torch.uint8, device=dev).random_(0, 255)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device=dev, warmup=3, repeat=10)
    return 2 * n / t


# ------------------------------------------------------------------------------------------ output
def default_out_dir() -> str:
    """Where results go without ``--out``: ``DIL_FAST_BENCH_OUT``, else the user's cache folder."""
    explicit = backends.bench_out_default()
    if explicit:
        return explicit
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "dil_fast", "bench")


def add_out_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--out DIR`` every benchmark takes."""
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="folder of the result CSVs (default: $DIL_FAST_BENCH_OUT, else "
        "~/.cache/dil_fast/bench; the curated record is --out bench/results)",
    )


def _free_name(path: str) -> str:
    """``path.old``, or ``path.old.N`` for the first N not taken: an older file is never overwritten."""
    candidate, n = path + ".old", 0
    while os.path.exists(candidate):
        n += 1
        candidate = f"{path}.old.{n}"
    return candidate


def record(topic: str, rows: list[dict], device, *, out: str | None = None, columns: list[str] | None = None) -> str:
    """Append ``rows`` (each with the :func:`environment` of now) to ``<out>/<topic>.csv``; returns its path.

    Call it for each row, or each case's rows, as soon as they are measured: the file is opened,
    appended to and closed every time, so a killed run keeps every row recorded before. The file's
    columns are the environment's then ``columns`` (default: the keys of ``rows`` in order); a row
    without a column leaves it empty, a row with a key outside ``columns`` is a ValueError. When the
    file on disk has other columns (a changed schema), it is moved aside to ``<topic>.csv.old`` (or
    ``.old.N``) and a new file starts.
    """
    out_dir = out or default_out_dir()
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{topic}.csv")
    wanted = columns if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
    keys = ENV_KEYS + [k for k in wanted if k not in ENV_KEYS]
    for r in rows:
        extra = [k for k in r if k not in keys]
        if extra:
            raise ValueError(f"record({topic!r}): row keys {extra} are not among the columns {wanted}")
    env = environment(device)
    exists = os.path.exists(path)
    if exists:
        with open(path, newline="") as f:
            old_keys = next(csv.reader(f), [])
        if old_keys != keys:
            os.replace(path, _free_name(path))
            exists = False
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, restval="")
        if not exists:
            w.writeheader()
        w.writerows({**env, **r} for r in rows)
    return path


def print_table(rows: list[dict], keys: list[str] | None = None) -> None:
    if not rows:
        return
    keys = keys or list(rows[0])
    cells = [[str(r.get(k, "")) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    print("  ".join(k.ljust(w) for k, w in zip(keys, widths)))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths)))
