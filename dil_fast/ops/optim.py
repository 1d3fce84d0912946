"""Optimizer ops: flat / K-stacked Adam, the fused DIL meta step, SGD (virtual updates) and the
device-side non-finite check.

Each op has a native implementation (``cuda``: the CUDA kernel, or its C++ CPU twin, of
``dil_fast._C``; registered as the dispatcher op ``dil_fast::<name>`` with CPU, CUDA and fake
kernels, so ``torch.compile`` and CUDA graphs see real ops) and the pure-torch reference of
:mod:`dil_fast.ops.reference.optim` (``torch``); :mod:`dil_fast.backends` picks. All ops work in
place and return nothing. Conventions:

* float32 or float64 buffers, contiguous, one device; ``param`` is ``[P]`` or K-stacked ``[K, P]``.
* ``step``: float32, read as the count before the update (``step[k]`` per row when it has K
  elements, else ``step[0]``) and incremented everywhere afterwards, on the device.
* ``lr``: float32/float64 tensor (or a float), one element (or one per row for Adam/SGD).
* ``found_inf``: optional float32 flag; when non-zero the op changes nothing (no host sync).
* ``grad_scale``: optional float32 scalar the gradients are divided by (Adam).

The argument lists have one definition each: the schema below (the dispatcher op and its
reference share its names) and, on the native side, the argument structs of ``csrc/optim.h``
that :func:`adam_args` / :func:`meta_args` / :func:`sgd_args` fill. Those builders validate;
:class:`NativeLaunch` keeps a validated struct so a flat-buffer optimizer checks once, when its
buffers are built, and each step is one native call.

The ops are registered with ``torch.library.Library.define``/``impl`` rather than
``torch.library.custom_op``, for the host time per call (bench/RESULTS.md, "Host overhead").
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import backends
from .reference.optim import adam_step_ref_, meta_step_ref_, nonfinite_check_ref_, sgd_step_ref_

__all__ = [
    "adam_step_",
    "meta_step_",
    "sgd_step_",
    "nonfinite_check_",
    "as_lr",
    "fused_optimizer",
    "new_step",
    "adam_args",
    "meta_args",
    "sgd_args",
    "NativeLaunch",
    "DTYPE_CODES",
    "REDUCTIONS",
]

DTYPE_CODES = {torch.float32: 0, torch.float64: 1}
REDUCTIONS = {"diff": 0, "mean": 1}
_FLOATS = tuple(DTYPE_CODES)

_LIB = torch.library.Library("dil_fast", "FRAGMENT")
_SCHEMAS = {
    "adam_step_": "adam_step_(Tensor(a!) param, Tensor grad, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, "
    "Tensor(d!) step, Tensor lr, float beta1, float beta2, float eps, float weight_decay, "
    "bool adamw, Tensor? found_inf=None, Tensor? grad_scale=None) -> ()",
    "meta_step_": "meta_step_(Tensor(a!) meta, Tensor(b!) sources, Tensor(c!) exp_avg, Tensor(d!) exp_avg_sq, "
    "Tensor(e!) step, Tensor lr, float beta1, float beta2, float eps, float weight_decay, "
    "bool adamw, int reduction, bool reset, Tensor? found_inf=None) -> ()",
    "sgd_step_": "sgd_step_(Tensor(a!) param, Tensor grad, Tensor lr, float weight_decay, Tensor? base=None, "
    "Tensor? found_inf=None) -> ()",
    "nonfinite_check_": "nonfinite_check_(Tensor x, Tensor(a!) found_inf) -> ()",
}
for _schema in _SCHEMAS.values():
    _LIB.define(_schema)

for _op in ("adam_step", "meta_step", "sgd_step", "nonfinite_check"):
    backends.declare(_op, cuda=("cuda", "torch"), cpu=("cuda", "torch"))


# ---------------------------------------------------------------------------------- validation
def _require(ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(msg)


def _code(t: Tensor, what: str) -> int:
    try:
        return DTYPE_CODES[t.dtype]
    except KeyError:
        raise TypeError(f"{what} must be float32 or float64, got {t.dtype}") from None


def _addr(t: Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _check_buffers(what: str, ref: Tensor, **others: Tensor | None) -> None:
    _require(ref.dim() in (1, 2), f"{what}: expected a [P] or [K, P] buffer, got shape {tuple(ref.shape)}")
    _code(ref, what)
    _require(ref.is_contiguous(), f"{what}: the parameter buffer must be contiguous")
    for name, t in others.items():
        if t is None:
            continue
        _require(t.device == ref.device, f"{what}: {name} is on {t.device} but the parameters are on {ref.device}")
        _require(t.is_contiguous(), f"{what}: {name} must be contiguous")


def _same(what: str, ref: Tensor, **others: Tensor) -> None:
    for name, t in others.items():
        _require(
            t.shape == ref.shape and t.dtype == ref.dtype,
            f"{what}: {name} has shape {tuple(t.shape)} / {t.dtype}, expected {tuple(ref.shape)} / {ref.dtype}",
        )


def _check_scalars(
    what: str,
    ref: Tensor,
    rows: int,
    step: Tensor | None,
    lr: Tensor,
    found_inf: Tensor | None,
    grad_scale: Tensor | None = None,
    *,
    lr_per_row: bool = True,
) -> None:
    if step is not None:
        _require(
            step.dtype == torch.float32 and step.numel() >= 1,
            f"{what}: step must be a float32 tensor with at least one element, got {step.dtype}",
        )
        if ref.dim() == 2:
            _require(step.numel() in (1, rows), f"{what}: step needs 1 or K={rows} elements, got {step.numel()}")
        _require(step.device == ref.device and step.is_contiguous(), f"{what}: step must be contiguous on {ref.device}")
    _require(lr.dtype in _FLOATS, f"{what}: lr must be float32 or float64, got {lr.dtype}")
    _require(
        lr.numel() == 1 or (lr_per_row and lr.numel() == rows),
        f"{what}: lr needs 1{' or K=' + str(rows) if lr_per_row else ''} elements, got {lr.numel()}",
    )
    _require(lr.device == ref.device, f"{what}: lr is on {lr.device} but the parameters are on {ref.device}")
    for name, t in (("found_inf", found_inf), ("grad_scale", grad_scale)):
        if t is not None:
            _require(
                t.dtype == torch.float32 and t.numel() == 1 and t.device == ref.device,
                f"{what}: {name} must be a one-element float32 tensor on {ref.device}",
            )


def _native_for(device: torch.device):
    ok, why = backends.native_can_run(device)
    if not ok:
        raise backends.BackendError(f"dil_fast optimizer ops on {device}: {why}")
    return backends.native()


# ------------------------------------------------------------------- native argument structs
def adam_args(
    param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay, adamw, found_inf=None, grad_scale=None
):
    """Validate the arguments of ``adam_step_`` and return the native ``AdamArgs`` struct."""
    what = "adam_step_"
    _check_buffers(what, param, grad=grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)
    _same(what, param, grad=grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)
    rows = 1 if param.dim() == 1 else param.shape[0]
    _check_scalars(what, param, rows, step, lr, found_inf, grad_scale)
    a = _native_for(param.device).AdamArgs()
    a.dtype, a.rows, a.cols = _code(param, what), rows, param.shape[-1]
    a.param, a.grad, a.exp_avg, a.exp_avg_sq = (t.data_ptr() for t in (param, grad, exp_avg, exp_avg_sq))
    a.step, a.step_numel = step.data_ptr(), step.numel()
    a.lr, a.lr_dtype, a.lr_numel = lr.data_ptr(), _code(lr, "lr"), lr.numel()
    a.beta1, a.beta2, a.eps, a.weight_decay, a.adamw = (
        float(beta1),
        float(beta2),
        float(eps),
        float(weight_decay),
        bool(adamw),
    )
    a.found_inf, a.grad_scale = _addr(found_inf), _addr(grad_scale)
    return a


def meta_args(
    meta,
    sources,
    exp_avg,
    exp_avg_sq,
    step,
    lr,
    beta1,
    beta2,
    eps,
    weight_decay,
    adamw,
    reduction,
    reset,
    found_inf=None,
):
    """Validate the arguments of ``meta_step_`` (``reduction`` 0 = diff, 1 = mean) -> ``MetaArgs``."""
    what = "meta_step_"
    _check_buffers(what, meta, sources=sources, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)
    _require(meta.dim() == 1, f"{what}: meta must be a flat [P] buffer, got shape {tuple(meta.shape)}")
    _same(what, meta, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)
    _require(
        sources.dtype == meta.dtype and sources.shape[-1] == meta.shape[0] and sources.dim() in (1, 2),
        f"{what}: sources must be [P] or [K, P] of {meta.dtype} with P={meta.shape[0]}, "
        f"got {tuple(sources.shape)} / {sources.dtype}",
    )
    _require(reduction in (0, 1), f"{what}: reduction must be 0 (mean of meta - sources) or 1 (mean of sources)")
    _require(not (reset and reduction == 1), f"{what}: reset needs reduction 0 (the sources are task weights)")
    _check_scalars(what, meta, 1, step, lr, found_inf, lr_per_row=False)
    rows = 1 if sources.dim() == 1 else sources.shape[0]
    _require(rows >= 1, f"{what}: sources needs at least one row")
    m = _native_for(meta.device).MetaArgs()
    a = m.adam
    a.dtype, a.rows, a.cols = _code(meta, what), rows, meta.shape[0]
    a.param, a.grad, a.exp_avg, a.exp_avg_sq = (t.data_ptr() for t in (meta, sources, exp_avg, exp_avg_sq))
    a.step, a.step_numel = step.data_ptr(), step.numel()
    a.lr, a.lr_dtype, a.lr_numel = lr.data_ptr(), _code(lr, "lr"), 1
    a.beta1, a.beta2, a.eps, a.weight_decay, a.adamw = (
        float(beta1),
        float(beta2),
        float(eps),
        float(weight_decay),
        bool(adamw),
    )
    a.found_inf, a.grad_scale = _addr(found_inf), 0
    m.adam = a
    m.mode, m.reset = int(reduction), bool(reset)
    return m


def sgd_args(param, grad, lr, weight_decay, base=None, found_inf=None):
    """Validate the arguments of ``sgd_step_`` and return the native ``SgdArgs`` struct."""
    what = "sgd_step_"
    _check_buffers(what, param, grad=grad, base=base)
    _same(what, param, grad=grad)
    if base is not None:
        _require(
            base.dim() == 1 and base.shape[0] == param.shape[-1] and base.dtype == param.dtype,
            f"{what}: base must be [P] with P={param.shape[-1]} and dtype {param.dtype}",
        )
    rows = 1 if param.dim() == 1 else param.shape[0]
    _check_scalars(what, param, rows, None, lr, found_inf)
    a = _native_for(param.device).SgdArgs()
    a.dtype, a.rows, a.cols = _code(param, what), rows, param.shape[-1]
    a.param, a.grad, a.base = param.data_ptr(), grad.data_ptr(), _addr(base)
    a.lr, a.lr_dtype, a.lr_numel = lr.data_ptr(), _code(lr, "lr"), lr.numel()
    a.weight_decay, a.found_inf = float(weight_decay), _addr(found_inf)
    return a


def _nonfinite_args(x, found_inf) -> tuple:
    what = "nonfinite_check_"
    _require(x.is_contiguous(), f"{what}: x must be contiguous")
    _require(
        found_inf.dtype == torch.float32 and found_inf.numel() == 1 and found_inf.device == x.device,
        f"{what}: found_inf must be a one-element float32 tensor on {x.device}",
    )
    return _code(x, what), x.numel(), x.data_ptr(), found_inf.data_ptr()


class NativeLaunch:
    """A validated native optimizer call whose buffers never move (flat buffers): ``launch()`` runs
    ``kind`` ("adam", "meta_adam" or "sgd") with the prebuilt struct on the CPU twin (torch's thread
    count) or on the current CUDA stream of the buffers' device. ``args`` may be edited between
    calls for the per-call pointers (``found_inf``, ``grad_scale``)."""

    def __init__(self, kind: str, args, device: torch.device):
        self.args = args
        self.device = torch.device(device)
        mod = backends.native()
        if self.device.type == "cuda":
            self._fn = getattr(mod, f"{kind}_cuda")
            self._index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        else:
            self._fn = getattr(mod, f"{kind}_cpu")

    def __call__(self) -> None:
        if self.device.type == "cuda":
            self._fn(self.args, self._index, torch.cuda.current_stream(self.device).cuda_stream)
        else:
            self._fn(self.args, torch.get_num_threads())


def _cuda_launch(t: Tensor) -> tuple[int, int]:
    return (
        t.device.index if t.device.index is not None else torch.cuda.current_device(),
        torch.cuda.current_stream(t.device).cuda_stream,
    )


# ------------------------------------------------------------------- dispatcher kernels (native)
def _adam_cpu(*args):
    _native_for(args[0].device).adam_cpu(adam_args(*args), torch.get_num_threads())


def _adam_cuda(*args):
    _native_for(args[0].device).adam_cuda(adam_args(*args), *_cuda_launch(args[0]))


def _meta_cpu(*args):
    _native_for(args[0].device).meta_adam_cpu(meta_args(*args), torch.get_num_threads())


def _meta_cuda(*args):
    _native_for(args[0].device).meta_adam_cuda(meta_args(*args), *_cuda_launch(args[0]))


def _sgd_cpu(*args):
    _native_for(args[0].device).sgd_cpu(sgd_args(*args), torch.get_num_threads())


def _sgd_cuda(*args):
    _native_for(args[0].device).sgd_cuda(sgd_args(*args), *_cuda_launch(args[0]))


def _nonfinite_cpu(x, found_inf):
    _native_for(x.device).nonfinite_cpu(*_nonfinite_args(x, found_inf))


def _nonfinite_cuda(x, found_inf):
    _native_for(x.device).nonfinite_cuda(*_nonfinite_args(x, found_inf), *_cuda_launch(x))


for _name, _cpu, _cuda in (
    ("adam_step_", _adam_cpu, _adam_cuda),
    ("meta_step_", _meta_cpu, _meta_cuda),
    ("sgd_step_", _sgd_cpu, _sgd_cuda),
    ("nonfinite_check_", _nonfinite_cpu, _nonfinite_cuda),
):
    _LIB.impl(_name, _cpu, "CPU")
    _LIB.impl(_name, _cuda, "CUDA")
    torch.library.register_fake(f"dil_fast::{_name}", lambda *args, **kwargs: None, lib=_LIB)

backends.implement("adam_step", "cuda", dtypes=_FLOATS)(torch.ops.dil_fast.adam_step_)
backends.implement("meta_step", "cuda", dtypes=_FLOATS)(torch.ops.dil_fast.meta_step_)
backends.implement("sgd_step", "cuda", dtypes=_FLOATS)(torch.ops.dil_fast.sgd_step_)
backends.implement("nonfinite_check", "cuda", dtypes=_FLOATS)(torch.ops.dil_fast.nonfinite_check_)
backends.implement("adam_step", "torch")(adam_step_ref_)
backends.implement("meta_step", "torch")(meta_step_ref_)
backends.implement("sgd_step", "torch")(sgd_step_ref_)
backends.implement("nonfinite_check", "torch")(nonfinite_check_ref_)


# ------------------------------------------------------------------------------ public functions
def as_lr(lr, device) -> Tensor:
    """A learning rate as the one-element float64 tensor on ``device`` the ops read."""
    if isinstance(lr, Tensor):
        return lr if lr.device == torch.device(device) else lr.to(device)
    return torch.tensor(float(lr), dtype=torch.float64, device=device)


def new_step(device, k: int = 1) -> Tensor:
    """A zeroed float32 step counter with ``k`` elements on ``device``."""
    return torch.zeros(k, dtype=torch.float32, device=device)


def fused_optimizer(device, backend: str | None = None) -> bool:
    """The one rule for "fused optimizer or not": flat-buffer optimizers (:class:`dil_fast.optim.FusedAdam`,
    the fused meta step) are used exactly when the native core serves the optimizer ops on
    ``device`` (with ``backend`` forced, when that backend is ``cuda``); otherwise the algorithms use
    ``torch.optim.Adam`` per tensor (``backend="torch"`` is the reference path).

    On the CPU the rule is the measured one, fixed: the native twin's flat Adam is faster than
    torch's fused CPU Adam (bench/RESULTS.md), so the native core is preferred whenever it is
    loaded; nothing is timed at run time."""
    return backends.backend_for("adam_step", device, torch.float32, backend) == "cuda"


def adam_step_(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: Tensor,
    lr,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    adamw: bool = False,
    found_inf: Tensor | None = None,
    grad_scale: Tensor | None = None,
    *,
    backend: str | None = None,
) -> None:
    """Adam / AdamW (``torch.optim.Adam`` math) in place on ``param`` [P] or [K, P] (K independent
    rows, ``lr`` and ``step`` per row or shared), one launch."""
    lr = as_lr(lr, param.device)
    fn = backends.select("adam_step", param.device, param.dtype, backends.forced_backend(backend)).fn
    fn(
        param,
        grad,
        exp_avg,
        exp_avg_sq,
        step,
        lr,
        float(beta1),
        float(beta2),
        float(eps),
        float(weight_decay),
        bool(adamw),
        found_inf,
        grad_scale,
    )


def meta_step_(
    meta: Tensor,
    sources: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: Tensor,
    lr,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    adamw: bool = False,
    *,
    reduction: str = "diff",
    reset: bool = False,
    found_inf: Tensor | None = None,
    backend: str | None = None,
) -> None:
    """Meta Adam step of ``meta`` [P] with the gradient reduced over ``sources`` [K, P] (or [P]):
    ``reduction="diff"``: mean_k(meta - sources[k]) (task weights, the Reptile step); ``"mean"``:
    mean_k(sources[k]) (task gradients). ``reset`` (diff only): every source row <- the new meta,
    in the same pass (the task weights of the next meta-iteration). With ``found_inf`` set nothing
    is updated, but ``reset`` still copies the unchanged meta into the sources."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"meta_step_: reduction must be 'diff' or 'mean', got {reduction!r}")
    lr = as_lr(lr, meta.device)
    fn = backends.select("meta_step", meta.device, meta.dtype, backends.forced_backend(backend)).fn
    fn(
        meta,
        sources,
        exp_avg,
        exp_avg_sq,
        step,
        lr,
        float(beta1),
        float(beta2),
        float(eps),
        float(weight_decay),
        bool(adamw),
        REDUCTIONS[reduction],
        bool(reset),
        found_inf,
    )


def sgd_step_(
    param: Tensor,
    grad: Tensor,
    lr,
    weight_decay: float = 0.0,
    base: Tensor | None = None,
    found_inf: Tensor | None = None,
    *,
    backend: str | None = None,
) -> None:
    """SGD (no momentum, ``torch.optim.SGD`` math) on ``param`` [P] or [K, P]; with ``base`` [P]
    every row becomes a virtual update of one set of weights: ``param[k] = base - lr_k * grad[k]``."""
    lr = as_lr(lr, param.device)
    fn = backends.select("sgd_step", param.device, param.dtype, backends.forced_backend(backend)).fn
    fn(param, grad, lr, float(weight_decay), base, found_inf)


def nonfinite_check_(x: Tensor, found_inf: Tensor, *, backend: str | None = None) -> None:
    """``found_inf <- 1`` when ``x`` holds a NaN/inf or a magnitude above 2^62, whose square overflows
    Adam's float32 second moment (never cleared here; zero it per step)."""
    backends.select("nonfinite_check", x.device, x.dtype, backends.forced_backend(backend)).fn(x, found_inf)
