"""Shared fixtures. Nothing here touches a GPU or global state at import time."""

from __future__ import annotations

import fcntl
import os
import pty
import random
import select
import struct
import termios
import threading
import time

import numpy as np
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    skip_gpu = pytest.mark.skip(reason="tier T3: no CUDA device on this machine")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _cpu_below_tier_t3(request, monkeypatch):
    """Tiers T0 and T2 run on the CPU on every machine: their exact numbers are the CPU's, and a
    command without ``--device`` must not move to a GPU where there is one. A GPU-tier test (marker
    ``gpu``) and a Triton-tier test (the ``dev`` fixture: CUDA where there is one, else the
    interpreter) see the machine as it is. Subprocesses inherit the hidden GPU through the environment."""
    if request.node.get_closest_marker("gpu") is None and "dev" not in request.fixturenames:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture(autouse=True)
def _restore_global_state():
    """Seed every test and restore the RNG / determinism settings afterwards."""
    torch_state = torch.get_rng_state()
    np_state = np.random.get_state()
    py_state = random.getstate()
    det = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    # Tiny tensors: one intra-op thread is faster than two and never oversubscribes a shared CI core.
    torch.set_num_threads(1)
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    yield
    torch.set_rng_state(torch_state)
    np.random.set_state(np_state)
    random.setstate(py_state)
    torch.use_deterministic_algorithms(det)
    torch.set_num_threads(threads)


def assert_close_verbose(actual, expected, *, atol=1e-6, rtol=1e-5, name="tensor"):
    """allclose that says how many elements differ, where the worst is, and flags NaN/inf."""
    actual = torch.as_tensor(actual).detach().cpu().double()
    expected = torch.as_tensor(expected).detach().cpu().double()
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    nonfinite = (~torch.isfinite(actual)) & torch.isfinite(expected)
    assert not nonfinite.any(), f"{name}: {int(nonfinite.sum())} non-finite values where reference is finite"
    diff = (actual - expected).abs()
    bad = diff > atol + rtol * expected.abs()
    if bad.any():
        idx = int(torch.argmax(diff.flatten()))
        where = np.unravel_index(idx, tuple(actual.shape)) if actual.dim() else ()
        raise AssertionError(
            f"{name}: {int(bad.sum())}/{bad.numel()} elements differ; worst at {where}: "
            f"{actual.flatten()[idx].item()!r} vs {expected.flatten()[idx].item()!r} "
            f"(|diff| {diff.max().item():.3e}, atol {atol}, rtol {rtol})"
        )


@pytest.fixture
def dev():
    """The device the Triton kernels run on: CUDA, else the CPU under the interpreter (tier T1)."""
    from dil_fast import backends

    if torch.cuda.is_available():
        return torch.device("cuda")
    if backends.triton_interpret() and backends.triton_status().available:
        return torch.device("cpu")
    pytest.skip("tier T1: Triton kernels need CUDA or TRITON_INTERPRET=1 set before the test run")


@pytest.fixture(scope="session")
def native():
    """The native core module (tier T2); skipped with the reason on a pure-Python install."""
    from dil_fast import backends
    from tests.helpers import require

    require("cuda")
    return backends.native_status().module


@pytest.fixture
def close():
    return assert_close_verbose


@pytest.fixture
def nan_like():
    """Fresh outputs filled with NaN, so an element a kernel forgets to write fails the test."""

    def make(*shape, dtype=torch.float32, device="cpu"):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    return make


def make_png_folder(folder, n=6, size=48, seed=0, channels=3):
    """Write n random-but-structured uint8 PNGs (smooth gradients + texture) into folder."""
    import cv2

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
        base = np.stack([yy, xx, (yy + xx) / 2], -1)[..., :channels]
        img = np.clip(base * 200 + rng.normal(0, 20, base.shape) + 20, 0, 255).astype(np.uint8)
        p = os.path.join(str(folder), f"{i:06d}.png")
        cv2.imwrite(p, img)
        paths.append(p)
    return paths


@pytest.fixture
def png_folder(tmp_path):
    return lambda n=6, size=48, seed=0, name="train", channels=3: make_png_folder(
        tmp_path / name, n=n, size=size, seed=seed, channels=channels
    )


@pytest.fixture
def terminal():
    """A pseudo-terminal: ``(stream written by the code under test, read() of what reached it)``.

    A thread drains the terminal as it is written: a pty holds only a few kB, and a writer whose
    output nobody reads would block."""
    main_fd, term_fd = pty.openpty()
    fcntl.ioctl(term_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a new pty is 0 x 0
    stream = os.fdopen(term_fd, "w")
    chunks: list[str] = []
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            ready, _, _ = select.select([main_fd], [], [], 0.05)
            if ready:
                try:
                    chunks.append(os.read(main_fd, 1 << 16).decode(errors="replace"))
                except OSError:  # the terminal side was closed
                    return

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()

    def read() -> str:
        stream.flush()
        time.sleep(0.3)  # what was just written reaches the reader
        text = "".join(chunks)
        chunks.clear()
        return text

    yield stream, read
    stop.set()
    reader.join()
    stream.close()
    os.close(main_fd)
