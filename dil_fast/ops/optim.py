"""Optimizer ops of the native core, registered with ``torch.library`` as ``dil_fast::*``.

Each op has a CPU kernel (the C++ twin in ``dil_fast._C``), a CUDA kernel (launched on the
current stream of the tensors' device) and a fake implementation, so ``torch.compile`` and CUDA
graphs see real ops. All ops work in place and return nothing. Conventions (shared with the
references in :mod:`dil_fast.ops.ref_optim`):

* float32 or float64 buffers, contiguous, one device; ``param`` is ``[P]`` or K-stacked ``[K, P]``.
* ``step``: float32, read as the count before the update (``step[k]`` per row when it has K
  elements, else ``step[0]``) and incremented everywhere afterwards, on the device.
* ``lr``: float32/float64, one element (or one per row for the stacked Adam/SGD).
* ``found_inf``: optional float32 flag; when non-zero the op changes nothing (no host sync).
* ``grad_scale``: optional float32 scalar the gradients are divided by.

The ops need ``dil_fast._C``; :mod:`dil_fast.optim.functional` picks these or the references.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import backends

__all__ = ["adam_step_", "meta_step_", "sgd_step_", "nonfinite_check_", "DTYPE_CODES"]

DTYPE_CODES = {torch.float32: 0, torch.float64: 1}


def _addr(t: Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _code(t: Tensor, what: str) -> int:
    try:
        return DTYPE_CODES[t.dtype]
    except KeyError:
        raise TypeError(f"{what} must be float32 or float64, got {t.dtype}") from None


def _require(ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(msg)


def _check_buffers(what: str, ref: Tensor, **others: Tensor | None) -> None:
    _require(ref.dim() in (1, 2), f"{what}: expected a [P] or [K, P] buffer, got shape {tuple(ref.shape)}")
    _code(ref, what)
    for name, t in others.items():
        if t is None:
            continue
        _require(t.device == ref.device, f"{what}: {name} is on {t.device} but the parameters are on {ref.device}")
        _require(t.is_contiguous(), f"{what}: {name} must be contiguous")
    _require(ref.is_contiguous(), f"{what}: the parameter buffer must be contiguous")


def _check_scalars(what: str, ref: Tensor, rows: int, step: Tensor | None, lr: Tensor,
                   found_inf: Tensor | None, grad_scale: Tensor | None = None, *, lr_per_row: bool = True) -> None:
    if step is not None:
        _require(step.dtype == torch.float32 and step.numel() >= 1,
                 f"{what}: step must be a float32 tensor with at least one element, got {step.dtype}")
        if ref.dim() == 2:
            _require(step.numel() in (1, rows), f"{what}: step needs 1 or K={rows} elements, got {step.numel()}")
        _require(step.device == ref.device and step.is_contiguous(), f"{what}: step must be contiguous on {ref.device}")
    _require(lr.dtype in (torch.float32, torch.float64), f"{what}: lr must be float32 or float64, got {lr.dtype}")
    _require(lr.numel() == 1 or (lr_per_row and lr.numel() == rows),
             f"{what}: lr needs 1{' or K=' + str(rows) if lr_per_row else ''} elements, got {lr.numel()}")
    _require(lr.device == ref.device, f"{what}: lr is on {lr.device} but the parameters are on {ref.device}")
    for name, t in (("found_inf", found_inf), ("grad_scale", grad_scale)):
        if t is not None:
            _require(t.dtype == torch.float32 and t.numel() == 1 and t.device == ref.device,
                     f"{what}: {name} must be a one-element float32 tensor on {ref.device}")


def _same(what: str, ref: Tensor, **others: Tensor) -> None:
    for name, t in others.items():
        _require(t.shape == ref.shape and t.dtype == ref.dtype,
                 f"{what}: {name} has shape {tuple(t.shape)} / {t.dtype}, expected {tuple(ref.shape)} / {ref.dtype}")


def _native(device: torch.device):
    ok, why = backends.native_can_run(device)
    if not ok:
        raise backends.BackendError(f"dil_fast optimizer ops on {device}: {why}")
    return backends.native()


def _cuda_launch(t: Tensor) -> dict:
    return {"device": t.device.index if t.device.index is not None else torch.cuda.current_device(),
            "stream": torch.cuda.current_stream(t.device).cuda_stream}


# --------------------------------------------------------------------------------------------
# Adam / AdamW, flat or K-stacked
# --------------------------------------------------------------------------------------------
@torch.library.custom_op("dil_fast::adam_step_", mutates_args=("param", "exp_avg", "exp_avg_sq", "step"))
def adam_step_(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: Tensor,
    lr: Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    adamw: bool,
    found_inf: Tensor | None = None,
    grad_scale: Tensor | None = None,
) -> None:
    """Adam/AdamW (``torch.optim.Adam`` math) on ``param`` [P] or [K, P] in one launch."""
    raise NotImplementedError(f"dil_fast::adam_step_ has no kernel for {param.device}")


def _adam_args(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay, adamw,
               found_inf, grad_scale) -> dict:
    what = "adam_step_"
    _check_buffers(what, param, grad=grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)
    _same(what, param, grad=grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)
    rows = 1 if param.dim() == 1 else param.shape[0]
    _check_scalars(what, param, rows, step, lr, found_inf, grad_scale)
    return dict(
        dtype=_code(param, what), rows=rows, cols=param.shape[-1], param=param.data_ptr(), grad=grad.data_ptr(),
        exp_avg=exp_avg.data_ptr(), exp_avg_sq=exp_avg_sq.data_ptr(), step=step.data_ptr(),
        step_numel=step.numel(), lr=lr.data_ptr(), lr_dtype=_code(lr, "lr"), lr_numel=lr.numel(),
        beta1=float(beta1), beta2=float(beta2), eps=float(eps), weight_decay=float(weight_decay),
        adamw=bool(adamw), found_inf=_addr(found_inf), grad_scale=_addr(grad_scale),
    )


@adam_step_.register_kernel("cpu")
def _adam_cpu(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay, adamw,
              found_inf=None, grad_scale=None):
    args = _adam_args(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay, adamw,
                      found_inf, grad_scale)
    _native(param.device).adam_cpu(**args, threads=torch.get_num_threads())


@adam_step_.register_kernel("cuda")
def _adam_cuda(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay, adamw,
               found_inf=None, grad_scale=None):
    args = _adam_args(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay, adamw,
                      found_inf, grad_scale)
    _native(param.device).adam_cuda(**args, **_cuda_launch(param))


@adam_step_.register_fake
def _adam_fake(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay, adamw,
               found_inf=None, grad_scale=None):
    return None


# --------------------------------------------------------------------------------------------
# Meta step: gradient reduced from K sources, fused with Adam and the optional reset
# --------------------------------------------------------------------------------------------
@torch.library.custom_op("dil_fast::meta_step_", mutates_args=("meta", "sources", "exp_avg", "exp_avg_sq", "step"))
def meta_step_(
    meta: Tensor,
    sources: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: Tensor,
    lr: Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    adamw: bool,
    reduction: int,
    reset: bool,
    found_inf: Tensor | None = None,
) -> None:
    """Adam step of ``meta`` [P]; grad = mean_k(meta - sources[k]) (reduction 0) or
    mean_k(sources[k]) (reduction 1), ``sources`` [P] or [K, P]; ``reset`` (reduction 0) writes
    the new meta into every source. (Not named ``mode``: that name clashes inside torch's
    dispatch-mode redirection.)"""
    raise NotImplementedError(f"dil_fast::meta_step_ has no kernel for {meta.device}")


def _meta_args(meta, sources, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay, adamw, reduction,
               reset, found_inf) -> dict:
    what = "meta_step_"
    _check_buffers(what, meta, sources=sources, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)
    _require(meta.dim() == 1, f"{what}: meta must be a flat [P] buffer, got shape {tuple(meta.shape)}")
    _same(what, meta, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)
    _require(sources.dtype == meta.dtype and sources.shape[-1] == meta.shape[0] and sources.dim() in (1, 2),
             f"{what}: sources must be [P] or [K, P] of {meta.dtype} with P={meta.shape[0]}, "
             f"got {tuple(sources.shape)} / {sources.dtype}")
    _require(reduction in (0, 1), f"{what}: reduction must be 0 (mean of meta - sources) or 1 (mean of sources)")
    _require(not (reset and reduction == 1), f"{what}: reset needs reduction 0 (the sources are task weights)")
    _check_scalars(what, meta, 1, step, lr, found_inf, lr_per_row=False)
    rows = 1 if sources.dim() == 1 else sources.shape[0]
    _require(rows >= 1, f"{what}: sources needs at least one row")
    return dict(
        dtype=_code(meta, what), rows=rows, cols=meta.shape[0], meta=meta.data_ptr(), sources=sources.data_ptr(),
        exp_avg=exp_avg.data_ptr(), exp_avg_sq=exp_avg_sq.data_ptr(), step=step.data_ptr(),
        step_numel=step.numel(), lr=lr.data_ptr(), lr_dtype=_code(lr, "lr"), beta1=float(beta1),
        beta2=float(beta2), eps=float(eps), weight_decay=float(weight_decay), adamw=bool(adamw), mode=int(reduction),
        reset=bool(reset), found_inf=_addr(found_inf),
    )


@meta_step_.register_kernel("cpu")
def _meta_cpu(meta, sources, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay, adamw, reduction, reset,
              found_inf=None):
    args = _meta_args(meta, sources, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay, adamw, reduction,
                      reset, found_inf)
    _native(meta.device).meta_adam_cpu(**args, threads=torch.get_num_threads())


@meta_step_.register_kernel("cuda")
def _meta_cuda(meta, sources, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay, adamw, reduction, reset,
               found_inf=None):
    args = _meta_args(meta, sources, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay, adamw, reduction,
                      reset, found_inf)
    _native(meta.device).meta_adam_cuda(**args, **_cuda_launch(meta))


@meta_step_.register_fake
def _meta_fake(meta, sources, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay, adamw, reduction, reset,
               found_inf=None):
    return None


# --------------------------------------------------------------------------------------------
# SGD (virtual updates), flat or K-stacked, optionally from a broadcast base
# --------------------------------------------------------------------------------------------
@torch.library.custom_op("dil_fast::sgd_step_", mutates_args=("param",))
def sgd_step_(
    param: Tensor,
    grad: Tensor,
    lr: Tensor,
    weight_decay: float,
    base: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    """``param[k] <- x - lr_k * (grad[k] + wd * x)``, x = ``base`` [P] (broadcast) or ``param[k]``."""
    raise NotImplementedError(f"dil_fast::sgd_step_ has no kernel for {param.device}")


def _sgd_args(param, grad, lr, weight_decay, base, found_inf) -> dict:
    what = "sgd_step_"
    _check_buffers(what, param, grad=grad, base=base)
    _same(what, param, grad=grad)
    if base is not None:
        _require(base.dim() == 1 and base.shape[0] == param.shape[-1] and base.dtype == param.dtype,
                 f"{what}: base must be [P] with P={param.shape[-1]} and dtype {param.dtype}")
    rows = 1 if param.dim() == 1 else param.shape[0]
    _check_scalars(what, param, rows, None, lr, found_inf)
    return dict(dtype=_code(param, what), rows=rows, cols=param.shape[-1], param=param.data_ptr(),
                grad=grad.data_ptr(), base=_addr(base), lr=lr.data_ptr(), lr_dtype=_code(lr, "lr"),
                lr_numel=lr.numel(), weight_decay=float(weight_decay), found_inf=_addr(found_inf))


@sgd_step_.register_kernel("cpu")
def _sgd_cpu(param, grad, lr, weight_decay, base=None, found_inf=None):
    _native(param.device).sgd_cpu(**_sgd_args(param, grad, lr, weight_decay, base, found_inf),
                                  threads=torch.get_num_threads())


@sgd_step_.register_kernel("cuda")
def _sgd_cuda(param, grad, lr, weight_decay, base=None, found_inf=None):
    _native(param.device).sgd_cuda(**_sgd_args(param, grad, lr, weight_decay, base, found_inf),
                                   **_cuda_launch(param))


@sgd_step_.register_fake
def _sgd_fake(param, grad, lr, weight_decay, base=None, found_inf=None):
    return None


# --------------------------------------------------------------------------------------------
# Device-side non-finite check
# --------------------------------------------------------------------------------------------
@torch.library.custom_op("dil_fast::nonfinite_check_", mutates_args=("found_inf",))
def nonfinite_check_(x: Tensor, found_inf: Tensor) -> None:
    """``found_inf <- 1`` when ``x`` holds a NaN or an infinity; never cleared, no host sync."""
    raise NotImplementedError(f"dil_fast::nonfinite_check_ has no kernel for {x.device}")


def _nonfinite_args(x, found_inf) -> dict:
    what = "nonfinite_check_"
    _require(x.is_contiguous(), f"{what}: x must be contiguous")
    _require(found_inf.dtype == torch.float32 and found_inf.numel() == 1 and found_inf.device == x.device,
             f"{what}: found_inf must be a one-element float32 tensor on {x.device}")
    return dict(dtype=_code(x, what), n=x.numel(), data=x.data_ptr(), found_inf=found_inf.data_ptr())


@nonfinite_check_.register_kernel("cpu")
def _nonfinite_cpu(x, found_inf):
    _native(x.device).nonfinite_cpu(**_nonfinite_args(x, found_inf))


@nonfinite_check_.register_kernel("cuda")
def _nonfinite_cuda(x, found_inf):
    _native(x.device).nonfinite_cuda(**_nonfinite_args(x, found_inf), **_cuda_launch(x))


@nonfinite_check_.register_fake
def _nonfinite_fake(x, found_inf):
    return None
