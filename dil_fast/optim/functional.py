"""Functional fused optimizer steps on flat ``[P]`` / K-stacked ``[K, P]`` buffers.

Every function works in place and picks its implementation per call:

* ``"cuda"`` (the native core ``dil_fast._C``: CUDA kernels for CUDA tensors, the C++ CPU twins
  for CPU tensors) when it can serve the tensors' device;
* ``"torch"``: the pure-torch references of :mod:`dil_fast.ops.ref_optim` otherwise.

``backend=`` (or ``DIL_FAST_BACKEND=torch|cuda``, read once) forces one; a forced ``"cuda"`` that
cannot serve the inputs raises :class:`dil_fast.backends.BackendError` with the reason. These ops
have no Triton implementation, so ``DIL_FAST_BACKEND=triton`` leaves the choice automatic here.

Scalars that change between steps live on the device so a step can be captured in a CUDA graph:
``step`` (float32, the count before the update, incremented in place) and ``lr`` (float32/float64;
a Python float is accepted and turned into a tensor, which costs a small host-to-device copy).
``found_inf`` (float32, one element): when non-zero the step changes nothing, decided on the
device without a host sync; :func:`nonfinite_check_` sets it from a gradient buffer.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import backends
from ..ops import optim as _ops
from ..ops import ref_optim as _ref

__all__ = [
    "choose_backend",
    "as_lr",
    "new_step",
    "adam_step_",
    "adam_step_stacked_",
    "meta_step_",
    "meta_step_stacked_",
    "sgd_step_",
    "nonfinite_check_",
]

_CHOICES = ("torch", "cuda")


def choose_backend(device: torch.device | str, backend: str | None = None) -> str:
    """``"cuda"`` (native core) or ``"torch"`` for tensors on ``device``; see the module doc."""
    device = torch.device(device)
    forced = backend if backend not in (None, "auto") else backends.forced_backend()
    if forced not in (None, *_CHOICES, "triton"):
        raise backends.BackendError(f"unknown backend {forced!r}; expected one of {', '.join(_CHOICES)}")
    if forced == "torch":
        return "torch"
    ok, why = backends.native_can_run(device)
    if ok and device.type == "cuda":
        st = backends.native_cuda_status()
        ok, why = st.available, st.reason
    if ok:
        return "cuda"
    if forced == "cuda":
        raise backends.BackendError(f"optimizer ops: backend 'cuda' cannot run on {device}: {why}")
    return "torch"


def as_lr(lr: float | Tensor, device: torch.device | str) -> Tensor:
    """``lr`` as a float64 tensor on ``device`` (tensors on that device are passed through)."""
    if isinstance(lr, Tensor):
        return lr if lr.device == torch.device(device) else lr.to(device)
    return torch.tensor(float(lr), dtype=torch.float64, device=device)


def new_step(device: torch.device | str, k: int = 1) -> Tensor:
    """A zeroed float32 step counter with ``k`` elements on ``device``."""
    return torch.zeros(k, dtype=torch.float32, device=device)


def adam_step_(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: Tensor,
    lr: float | Tensor,
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
    """One Adam (``adamw=False``, L2 added to the gradient) or AdamW step on ``param`` [P] (or
    [K, P]: K independent rows). ``step`` is read before and incremented after (all elements)."""
    lr = as_lr(lr, param.device)
    fn = _ops.adam_step_ if choose_backend(param.device, backend) == "cuda" else _ref.adam_step_ref_
    fn(param, grad, exp_avg, exp_avg_sq, step, lr, float(beta1), float(beta2), float(eps), float(weight_decay),
       bool(adamw), found_inf, grad_scale)


def adam_step_stacked_(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: Tensor,
    lr: float | Tensor,
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
    """K Adam steps in one launch: every buffer is [K, P]; ``step`` and ``lr`` have 1 or K elements."""
    if param.dim() != 2:
        raise ValueError(f"adam_step_stacked_: expected [K, P] buffers, got shape {tuple(param.shape)}")
    adam_step_(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay, adamw, found_inf,
               grad_scale, backend=backend)


def meta_step_(
    meta: Tensor,
    task: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: Tensor,
    lr: float | Tensor,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    adamw: bool = False,
    reset_task: bool = False,
    found_inf: Tensor | None = None,
    *,
    backend: str | None = None,
) -> None:
    """The Reptile meta step in one pass: grad = meta - task, Adam on ``meta`` [P], and with
    ``reset_task`` the task weights start the next meta-iteration from the new meta (task <- meta)."""
    meta_step_stacked_(meta, task, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay, adamw,
                       reduction="diff", reset_tasks=reset_task, found_inf=found_inf, backend=backend)


def meta_step_stacked_(
    meta: Tensor,
    tasks: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: Tensor,
    lr: float | Tensor,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    adamw: bool = False,
    *,
    reduction: str = "diff",
    reset_tasks: bool = False,
    found_inf: Tensor | None = None,
    backend: str | None = None,
) -> None:
    """Meta Adam step of ``meta`` [P] with the gradient reduced over ``tasks`` [K, P] (or [P]):
    ``reduction="diff"``: mean_k(meta - tasks[k]) (task weights); ``"mean"``: mean_k(tasks[k])
    (task gradients). ``reset_tasks`` (diff only): every task row <- the new meta, same pass."""
    modes = {"diff": 0, "mean": 1}
    if reduction not in modes:
        raise ValueError(f"meta_step_stacked_: reduction must be 'diff' or 'mean', got {reduction!r}")
    lr = as_lr(lr, meta.device)
    fn = _ops.meta_step_ if choose_backend(meta.device, backend) == "cuda" else _ref.meta_step_ref_
    fn(meta, tasks, exp_avg, exp_avg_sq, step, lr, float(beta1), float(beta2), float(eps), float(weight_decay),
       bool(adamw), modes[reduction], bool(reset_tasks), found_inf)


def sgd_step_(
    param: Tensor,
    grad: Tensor,
    lr: float | Tensor,
    weight_decay: float = 0.0,
    base: Tensor | None = None,
    found_inf: Tensor | None = None,
    *,
    backend: str | None = None,
) -> None:
    """SGD (no momentum, ``torch.optim.SGD`` math) on ``param`` [P] or [K, P]; with ``base`` [P]
    every row becomes a virtual update of one set of weights: ``param[k] = base - lr_k * grad[k]``."""
    lr = as_lr(lr, param.device)
    fn = _ops.sgd_step_ if choose_backend(param.device, backend) == "cuda" else _ref.sgd_step_ref_
    fn(param, grad, lr, float(weight_decay), base, found_inf)


def nonfinite_check_(x: Tensor, found_inf: Tensor, *, backend: str | None = None) -> None:
    """``found_inf <- 1`` when ``x`` holds a NaN/inf (never cleared here; zero it per step)."""
    fn = _ops.nonfinite_check_ if choose_backend(x.device, backend) == "cuda" else _ref.nonfinite_check_ref_
    fn(x, found_inf)
