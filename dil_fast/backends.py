"""The one place that knows which implementations are available and picks one.

Three implementations exist for every hot op (docs/ARCHITECTURE.md):

* ``torch``  - the pure-torch reference in :mod:`dil_fast.ops.reference`; runs anywhere.
* ``triton`` - a Triton kernel from :mod:`dil_fast.kernels`; CUDA tensors, or CPU tensors when
  ``TRITON_INTERPRET=1`` was set before Triton was imported (the CI tier T1).
* ``cuda``   - the native core ``dil_fast._C`` (CUDA kernels and their C++ CPU twins).

No other module imports Triton or ``dil_fast._C`` directly. Availability is computed once and
remembered; a failed import is kept with its reason and re-raised with the fix when a caller
forces that backend. ``DIL_FAST_BACKEND=torch|triton|cuda`` (read once) forces a backend; a
forced backend that cannot serve the inputs raises :class:`BackendError` naming every reason.
"""
from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass

import torch

BACKENDS = ("torch", "triton", "cuda")


class BackendError(RuntimeError):
    """A requested backend cannot serve the inputs; the message lists why."""


@dataclass(frozen=True)
class Status:
    available: bool
    reason: str = ""
    module: object | None = None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


@functools.lru_cache(maxsize=None)
def forced_backend() -> str | None:
    """The backend forced by ``DIL_FAST_BACKEND``, or None (read once)."""
    value = os.environ.get("DIL_FAST_BACKEND", "").strip().lower()
    if not value or value == "auto":
        return None
    if value not in BACKENDS:
        raise BackendError(
            f"DIL_FAST_BACKEND={value!r} is not one of {', '.join(BACKENDS)} (or 'auto')"
        )
    return value


@functools.lru_cache(maxsize=None)
def triton_interpret() -> bool:
    """True when Triton runs under its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return _env_flag("TRITON_INTERPRET")


@functools.lru_cache(maxsize=None)
def skip_autotune() -> bool:
    """True when Triton autotuning collapses to one config: under the interpreter, or when
    ``DIL_FAST_SKIP_AUTOTUNE=1`` (the first GPU config; a short GPU check)."""
    return triton_interpret() or _env_flag("DIL_FAST_SKIP_AUTOTUNE")


@functools.lru_cache(maxsize=None)
def triton_status() -> Status:
    try:
        triton = importlib.import_module("triton")
    except Exception as exc:  # noqa: BLE001 - remembered and reported, never swallowed
        return Status(False, f"triton is not importable ({exc}); install it with `pip install triton`")
    mode = ("interpreter: kernels run on CPU tensors (TRITON_INTERPRET=1)" if triton_interpret()
            else "compiled: kernels run on CUDA tensors")
    return Status(True, f"triton {triton.__version__} ({mode})", triton)


@functools.lru_cache(maxsize=None)
def native_status() -> Status:
    """Whether the native core ``dil_fast._C`` loaded, and why not."""
    if _env_flag("DIL_FAST_DISABLE_EXT"):
        return Status(False, "disabled by DIL_FAST_DISABLE_EXT=1")
    try:
        mod = importlib.import_module("dil_fast._C")
    except ImportError as exc:
        return Status(
            False,
            f"dil_fast._C did not load ({exc}); rebuild it with "
            "`pip install --no-build-isolation -e .` (see docs/ENV.md for DIL_FAST_BUILD_EXT)",
        )
    return Status(True, "loaded", mod)


def native():
    """The native module, or :class:`BackendError` with the reason it did not load."""
    st = native_status()
    if not st.available:
        raise BackendError(st.reason)
    return st.module


def triton_kernels(name: str):
    """Import ``dil_fast.kernels.<name>`` (raises :class:`BackendError` if Triton is missing)."""
    st = triton_status()
    if not st.available:
        raise BackendError(st.reason)
    return importlib.import_module(f"dil_fast.kernels.{name}")


def triton_can_run(device: torch.device) -> tuple[bool, str]:
    """Whether Triton kernels can run on tensors of ``device``."""
    st = triton_status()
    if not st.available:
        return False, st.reason
    if device.type == "cuda":
        return True, ""
    if device.type == "cpu" and triton_interpret():
        return True, ""
    return False, f"triton runs {device.type} tensors only under TRITON_INTERPRET=1"


def native_can_run(device: torch.device, *, needs_cuda_kernels: bool = True) -> tuple[bool, str]:
    """Whether the native core can serve tensors of ``device`` (CPU twins always can)."""
    st = native_status()
    if not st.available:
        return False, st.reason
    if device.type == "cpu":
        return True, ""
    if device.type == "cuda":
        has_cuda = bool(getattr(st.module, "has_cuda", lambda: False)())
        if needs_cuda_kernels and not has_cuda:
            return False, "dil_fast._C was built without CUDA kernels (no nvcc at build time)"
        return True, ""
    return False, f"the native core has no kernels for {device.type} tensors"


def choose(op: str, device: torch.device, preference: tuple[str, ...], *, forced: str | None = None) -> str:
    """Pick the first backend of ``preference`` that can run ``op`` on ``device``.

    ``forced`` (or ``DIL_FAST_BACKEND``) restricts the choice to one backend; if it cannot serve
    the inputs a :class:`BackendError` lists the reason. ``torch`` always serves.
    """
    forced = forced or forced_backend()
    device = torch.device(device)
    reasons = {}
    candidates = (forced,) if forced else preference
    for name in candidates:
        if name == "torch":
            return "torch"
        if name == "triton":
            ok, why = triton_can_run(device)
        elif name == "cuda":
            ok, why = native_can_run(device)
        else:
            ok, why = False, f"unknown backend {name!r}"
        if ok:
            return name
        reasons[name] = why
    if forced:
        raise BackendError(f"{op}: backend {forced!r} cannot run on {device}: {reasons[forced]}")
    return "torch"


@functools.lru_cache(maxsize=None)
def native_cuda_status() -> Status:
    """Whether the native core's CUDA kernels can run here: compiled in, and its statically linked
    CUDA runtime starts and sees a device (an old driver is reported, not hidden)."""
    st = native_status()
    if not st.available:
        return Status(False, st.reason)
    mod = st.module
    if not bool(getattr(mod, "has_cuda", lambda: False)()):
        return Status(False, "dil_fast._C was built without CUDA kernels (no nvcc at build time)")
    try:
        n = int(mod.cuda_device_count())
    except RuntimeError as exc:
        return Status(False, f"the CUDA runtime in dil_fast._C cannot start: {exc}")
    if n == 0:
        return Status(False, "the CUDA runtime in dil_fast._C sees no device")
    return Status(True, f"{n} device(s), archs {', '.join(mod.cuda_archs())}", mod)


def native_cuda_archs() -> list[str]:
    """CUDA targets compiled into dil_fast._C (empty without the extension or without CUDA)."""
    st = native_status()
    if not st.available or not hasattr(st.module, "cuda_archs"):
        return []
    return list(st.module.cuda_archs())
