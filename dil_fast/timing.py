"""Wall-clock timing that waits for the device: the one helper the profiler, the virtual-batching
tuner and the benchmarks share. (Timing code only: the training loop never synchronises.)"""

from __future__ import annotations

import time

import torch

__all__ = ["synchronize", "best_of", "mean_time"]


def synchronize(device) -> None:
    """Wait for the work queued on ``device`` (a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(fn, device, repeat: int = 2) -> float:
    """The fastest of ``repeat`` synchronised calls of ``fn``, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best


def mean_time(fn, device, repeat: int = 10) -> float:
    """Seconds per call of ``fn`` over ``repeat`` back-to-back calls after one warm-up call."""
    fn()
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    synchronize(device)
    return (time.perf_counter() - t0) / repeat
