"""The one dispatcher: which implementations exist, which one serves (op, device, dtype, forced
backend), and why the others cannot. It is also the only reader of dil_fast's ``DIL_FAST_*``
environment variables (the build's switches stay in ``build_ext_support.py``).

Three backends (docs/ARCHITECTURE.md):

* ``torch``  - the pure-torch reference in :mod:`dil_fast.ops.reference`; serves every op on any device.
* ``triton`` - a Triton kernel of :mod:`dil_fast.kernels`; CUDA tensors, or CPU tensors when
  ``TRITON_INTERPRET=1`` was set before Triton was imported (the CI tier T1).
* ``cuda``   - the native core ``dil_fast._C``: CUDA kernels and their C++ CPU twins.

Every op module registers its implementations with :func:`implement` and declares, per device
type, the order in which they are preferred (:func:`declare`); :func:`select` is the only place
that picks one. A forced backend (``backend=`` of an op, ``--backend``, or ``DIL_FAST_BACKEND``,
read once) restricts the choice to that backend: if it cannot serve the inputs, a
:class:`BackendError` names the op, the backend and the reason; :func:`check_forced` does the same
up front for every op a run will use, listing each one that cannot be served. Availability is
computed once and remembered; a failed import is kept with its reason and re-raised with the fix.
"""

from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from .errors import DilFastError

BACKENDS = ("torch", "triton", "cuda")


class BackendError(DilFastError, RuntimeError):
    """A requested backend cannot serve the inputs; the message lists why (the CLI prints it as one line)."""


@dataclass(frozen=True)
class Status:
    available: bool
    reason: str = ""
    module: object | None = None


# ------------------------------------------------------------------------------------ environment
def _env_flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


@functools.lru_cache(maxsize=None)
def env_backend() -> str | None:
    """The backend forced by ``DIL_FAST_BACKEND``, or None (read once)."""
    value = os.environ.get("DIL_FAST_BACKEND", "").strip().lower()
    if not value or value == "auto":
        return None
    if value not in BACKENDS:
        raise BackendError(f"DIL_FAST_BACKEND={value!r} is not one of {', '.join(BACKENDS)} (or 'auto')")
    return value


def forced_backend(backend: str | None = None) -> str | None:
    """``backend`` when given (an op's ``backend=``, ``--backend``), else ``DIL_FAST_BACKEND``."""
    if backend is None or backend == "auto":
        return env_backend()
    if backend not in BACKENDS:
        raise BackendError(f"backend {backend!r} is not one of {', '.join(BACKENDS)} (or 'auto')")
    return backend


@functools.lru_cache(maxsize=None)
def triton_interpret() -> bool:
    """True when Triton runs under its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return _env_flag("TRITON_INTERPRET")


@functools.lru_cache(maxsize=None)
def skip_autotune() -> bool:
    """True when Triton autotuning collapses to one config: under the interpreter, or when
    ``DIL_FAST_SKIP_AUTOTUNE=1`` (the first GPU config; a short GPU check)."""
    return triton_interpret() or _env_flag("DIL_FAST_SKIP_AUTOTUNE")


def bench_out_default() -> str | None:
    """``DIL_FAST_BENCH_OUT``: where benchmarks write their CSVs when ``--out`` is not given."""
    return os.environ.get("DIL_FAST_BENCH_OUT") or None


# ----------------------------------------------------------------------------------- availability
@functools.lru_cache(maxsize=None)
def triton_status() -> Status:
    try:
        triton = importlib.import_module("triton")
    except Exception as exc:  # noqa: BLE001 - remembered and reported, never swallowed
        return Status(False, f"triton is not importable ({exc}); install it with `pip install triton`")
    mode = (
        "interpreter: kernels run on CPU tensors (TRITON_INTERPRET=1)"
        if triton_interpret()
        else "compiled: kernels run on CUDA tensors"
    )
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
    try:
        mod.set_cpu_isa(os.environ.get("DIL_FAST_CPU_ISA", "auto").strip().lower())
    except ValueError as exc:
        return Status(False, str(exc))
    return Status(True, f"loaded (CPU twins: {mod.cpu_isa()})", mod)


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


def native_can_run(device: torch.device) -> tuple[bool, str]:
    """Whether the native core can serve tensors of ``device`` (its CPU twins always can)."""
    st = native_status()
    if not st.available:
        return False, st.reason
    if device.type == "cpu":
        return True, ""
    if device.type == "cuda":
        cuda = native_cuda_status()
        return cuda.available, "" if cuda.available else cuda.reason
    return False, f"the native core has no kernels for {device.type} tensors"


@functools.lru_cache(maxsize=None)
def native_cuda_status() -> Status:
    """Whether the native core's CUDA kernels can run here: compiled in, and its statically linked
    CUDA runtime starts and sees a device (an old driver is reported, not hidden)."""
    st = native_status()
    if not st.available:
        return Status(False, st.reason)
    mod = st.module
    if not bool(mod.has_cuda()):
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
    if not st.available:
        return []
    return list(st.module.cuda_archs())


_CAN_RUN = {"triton": triton_can_run, "cuda": native_can_run, "torch": lambda device: (True, "")}


# --------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Implementation:
    """One backend's implementation of one op: ``fn`` serves tensors of ``devices`` and ``dtypes``
    (``None``: any floating/uint8 dtype the op itself accepts)."""

    op: str
    backend: str
    fn: Callable
    devices: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...] | None = None

    def refusal(self, device: torch.device, dtype: torch.dtype | None) -> str:
        """Why this implementation cannot serve (device, dtype); ``""`` when it can."""
        if device.type not in self.devices:
            return f"no {self.backend} implementation for {device.type} tensors"
        if dtype is not None and self.dtypes is not None and dtype not in self.dtypes:
            return f"the {self.backend} implementation takes {', '.join(map(str, self.dtypes))}, not {dtype}"
        ok, why = _CAN_RUN[self.backend](device)
        return "" if ok else why


_IMPLS: dict[str, dict[str, Implementation]] = {}
_PREFERENCE: dict[str, dict[str, tuple[str, ...]]] = {}


def declare(op: str, **preference: tuple[str, ...]) -> None:
    """Declare ``op`` and its backends in order of preference per device type, e.g.
    ``declare("noise", cuda=("triton", "torch"), cpu=("torch",))``."""
    _PREFERENCE[op] = {dev: tuple(order) for dev, order in preference.items()}
    _IMPLS.setdefault(op, {})
    select.cache_clear()


def implement(
    op: str, backend: str, *, devices: Iterable[str] = ("cpu", "cuda"), dtypes: Iterable[torch.dtype] | None = None
):
    """Decorator registering ``fn`` as ``op``'s implementation in ``backend``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}")

    def deco(fn):
        _IMPLS.setdefault(op, {})[backend] = Implementation(
            op, backend, fn, tuple(devices), None if dtypes is None else tuple(dtypes)
        )
        select.cache_clear()
        return fn

    return deco


def ops() -> list[str]:
    """Every declared op."""
    return sorted(_PREFERENCE)


def _order(op: str, device: torch.device) -> tuple[str, ...]:
    pref = _PREFERENCE[op]
    return pref.get(device.type, pref.get("default", ("torch",)))


@functools.lru_cache(maxsize=1024)
def select(
    op: str, device: torch.device, dtype: torch.dtype | None = None, forced: str | None = None
) -> Implementation:
    """The implementation that serves ``op`` on ``device``/``dtype``: the first available backend of
    the op's preference, or exactly ``forced`` (:func:`forced_backend` is applied by the caller);
    :class:`BackendError` naming the reason when the forced one cannot serve. Cached."""
    if op not in _PREFERENCE:
        raise KeyError(f"unknown op {op!r}; declared: {', '.join(ops())}")
    device = torch.device(device)
    impls = _IMPLS[op]
    if forced is not None:
        impl = impls.get(forced)
        why = "no implementation" if impl is None else impl.refusal(device, dtype)
        if why:
            served = [b for b in BACKENDS if b in impls and not impls[b].refusal(device, dtype)]
            raise BackendError(
                f"{op}: backend {forced!r} cannot serve {device.type} tensors ({why}); "
                f"available here: {', '.join(served) or 'none'}"
            )
        return impl
    reasons = []
    for name in _order(op, device):
        impl = impls.get(name)
        why = "no implementation" if impl is None else impl.refusal(device, dtype)
        if not why:
            return impl
        reasons.append(f"{name}: {why}")
    raise BackendError(f"{op}: no backend serves {device.type} tensors ({'; '.join(reasons)})")


def backend_for(op: str, device, dtype: torch.dtype | None = None, backend: str | None = None) -> str:
    """The name of the backend :func:`select` picks (``backend`` forced, else ``DIL_FAST_BACKEND``)."""
    return select(op, torch.device(device), dtype, forced_backend(backend)).backend


def implementation(op: str, backend: str) -> Callable:
    """``op``'s function in ``backend`` (used inside a registered op once the choice is made)."""
    return _IMPLS[op][backend].fn


def check_forced(op_names: Iterable[str], device, backend: str | None) -> str | None:
    """Up-front check of a run: the forced backend (``backend`` or ``DIL_FAST_BACKEND``) must serve
    every op in ``op_names`` on ``device``. Returns the forced backend (None when nothing is forced);
    raises one :class:`BackendError` listing every op it cannot serve and why."""
    forced = forced_backend(backend)
    if forced is None:
        return None
    device = torch.device(device)
    problems = []
    for op in dict.fromkeys(op_names):
        try:
            select(op, device, None, forced)
        except BackendError as exc:
            problems.append(str(exc))
    if problems:
        raise BackendError(f"backend {forced!r} cannot serve this run on {device}: " + " | ".join(problems))
    return forced


def plan(op_names: Iterable[str], device, backend: str | None = None) -> dict[str, str]:
    """``{op: backend}`` for the ops of a run (the log's one-line account of who serves what)."""
    forced = forced_backend(backend)
    device = torch.device(device)
    return {op: select(op, device, None, forced).backend for op in dict.fromkeys(op_names)}
