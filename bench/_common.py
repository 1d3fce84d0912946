"""Shared benchmark plumbing: device timing, the environment record, CSV output.

Every ``bench_<topic>.py`` builds rows (dicts) and calls :func:`record`, which adds the device,
versions and git revision and appends to ``bench/results/<topic>.csv`` (or ``$DIL_FAST_BENCH_OUT``).
"""
from __future__ import annotations

import csv
import datetime as _dt
import os
import platform
import statistics
import subprocess
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def git_revision() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True, check=True
        ).stdout.strip()
    except Exception:  # noqa: BLE001 - a tarball without .git still benchmarks
        return "unknown"


def environment(device: torch.device) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # noqa: BLE001
        triton_version = "none"
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": name,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": triton_version,
        "revision": git_revision(),
    }


def time_fn(fn, *, device, warmup: int = 3, repeat: int = 20, setup=None) -> float:
    """Median seconds of ``fn()`` over ``repeat`` runs after ``warmup`` runs.

    CUDA: timed with events on the current stream. CPU: wall clock. ``setup()`` (untimed) runs
    before every call, e.g. to draw fresh random inputs.
    """
    dev = torch.device(device)
    for _ in range(warmup):
        if setup:
            setup()
        fn()
    times = []
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        for _ in range(repeat):
            if setup:
                setup()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(repeat):
            if setup:
                setup()
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(device, nbytes: int = 1 << 28) -> float:
    """Measured device-to-device copy bandwidth in bytes/s (read + write counted)."""
    dev = torch.device(device)
    n = nbytes if dev.type == "cuda" else min(nbytes, 1 << 26)
    src = torch.empty(n, dtype=torch.uint8, device=dev).random_(0, 255)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device=dev, warmup=3, repeat=10)
    return 2 * n / t


def record(topic: str, rows: list[dict], device) -> str:
    """Append rows (with the environment) to the topic's CSV; returns its path."""
    out_dir = os.environ.get("DIL_FAST_BENCH_OUT", os.path.join(HERE, "results"))
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{topic}.csv")
    env = environment(device)
    full = [{**env, **r} for r in rows]
    keys = list(dict.fromkeys(k for r in full for k in r))
    exists = os.path.exists(path)
    if exists:
        with open(path, newline="") as f:
            old_keys = next(csv.reader(f), [])
        if old_keys != keys:  # a changed schema starts a fresh file beside the old one
            os.replace(path, path + ".old")
            exists = False
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        if not exists:
            w.writeheader()
        w.writerows(full)
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
