"""Pure-torch references of the optimizer ops (the oracle of the native core and its fallback).

They follow ``torch.optim.Adam`` / ``torch.optim.SGD`` operation by operation, on flat ``[P]`` or
K-stacked ``[K, P]`` buffers, with the same conventions as the native ops in
:mod:`dil_fast.ops.optim`:

* ``step`` is a float32 tensor read as the count *before* the update (row ``k`` reads ``step[k]``
  when it has one element per row, else ``step[0]``); every element is incremented afterwards.
* ``lr`` is a float32/float64 tensor with one element (or one per row).
* ``found_inf`` (float32, one element): when non-zero, nothing changes (step included). The check
  stays on the device (``torch.where``), so no host sync happens.
* ``grad_scale`` (float32, one element): gradients are divided by it first.
* Like the native ops they are optimizer updates, not differentiable: they run under no_grad.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "adam_step_ref_",
    "meta_step_ref_",
    "sgd_step_ref_",
    "nonfinite_check_ref_",
]


def _rows(x: Tensor) -> int:
    return 1 if x.dim() == 1 else x.shape[0]


def _per_row(t: Tensor, rows: int, like: Tensor) -> Tensor:
    """A per-row scalar tensor shaped to broadcast over ``like`` ([P] or [K, P])."""
    t = t.reshape(-1)
    if like.dim() == 1:
        return t[0]
    if t.numel() == 1:
        t = t.expand(rows)
    return t.reshape(rows, 1)


def _keep(flag: Tensor | None, old: Tensor, new: Tensor) -> Tensor:
    return new if flag is None else torch.where(flag.reshape(()) != 0, old, new)


def _adam_math(param, grad, exp_avg, exp_avg_sq, step_new, lr, beta1, beta2, eps, weight_decay, adamw):
    """Returns (param, exp_avg, exp_avg_sq) after one Adam step; step_new/lr broadcast per row."""
    step_new = step_new.double()
    lr = lr.double()
    if weight_decay != 0:
        if adamw:
            param = param * (1 - lr * weight_decay).to(param.dtype)
        else:
            grad = grad.add(param, alpha=weight_decay)
    exp_avg = exp_avg.lerp(grad, 1 - beta1)
    exp_avg_sq = exp_avg_sq.mul(beta2).addcmul_(grad, grad, value=1 - beta2)
    # a Python number as the base: a tensor made from beta here would be a pageable host-to-device
    # copy at every step on CUDA (a host sync, and a CUDA graph cannot capture it)
    bias_correction1 = 1 - torch.pow(float(beta1), step_new)
    bias_correction2 = 1 - torch.pow(float(beta2), step_new)
    neg_step_size = (-(lr / bias_correction1)).to(param.dtype)
    bc2_sqrt = bias_correction2.sqrt().to(param.dtype)
    denom = exp_avg_sq.sqrt() / bc2_sqrt + eps
    param = param + neg_step_size * exp_avg / denom
    return param, exp_avg, exp_avg_sq


@torch.no_grad()
def adam_step_ref_(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: Tensor,
    lr: Tensor,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    adamw: bool = False,
    found_inf: Tensor | None = None,
    grad_scale: Tensor | None = None,
) -> None:
    """Adam/AdamW in place on ``param`` [P] or [K, P] (K independent rows)."""
    rows = _rows(param)
    if grad_scale is not None:
        grad = grad / grad_scale.reshape(())
    step_new = _per_row(step, rows, param).double() + 1
    lr_t = _per_row(lr, rows, param)
    p, m, v = _adam_math(param, grad, exp_avg, exp_avg_sq, step_new, lr_t, beta1, beta2, eps, weight_decay, adamw)
    param.copy_(_keep(found_inf, param, p))
    exp_avg.copy_(_keep(found_inf, exp_avg, m))
    exp_avg_sq.copy_(_keep(found_inf, exp_avg_sq, v))
    step.add_(1 if found_inf is None else (found_inf.reshape(()) == 0).to(step.dtype))


@torch.no_grad()
def meta_step_ref_(
    meta: Tensor,
    sources: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: Tensor,
    lr: Tensor,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    adamw: bool = False,
    reduction: int = 0,
    reset: bool = False,
    found_inf: Tensor | None = None,
) -> None:
    """Meta Adam step of ``meta`` [P] with grad = mean_k(meta - sources[k]) (reduction 0) or
    mean_k(sources[k]) (reduction 1); ``sources`` is [P] or [K, P]. ``reset`` (reduction 0): sources <- meta."""
    src = sources.reshape(-1, meta.numel())
    grad = (meta - src).mean(0) if reduction == 0 else src.mean(0)
    if src.shape[0] == 1:
        grad = (meta - src[0]) if reduction == 0 else src[0].clone()
    step_new = step.reshape(-1)[0].double() + 1
    p, m, v = _adam_math(
        meta, grad, exp_avg, exp_avg_sq, step_new, lr.reshape(-1)[0], beta1, beta2, eps, weight_decay, adamw
    )
    new_meta = _keep(found_inf, meta, p)
    exp_avg.copy_(_keep(found_inf, exp_avg, m))
    exp_avg_sq.copy_(_keep(found_inf, exp_avg_sq, v))
    meta.copy_(new_meta)
    if reset:  # also under found_inf: the sources restart from the (then unchanged) meta
        src.copy_(new_meta.expand_as(src))
    step.add_(1 if found_inf is None else (found_inf.reshape(()) == 0).to(step.dtype))


@torch.no_grad()
def sgd_step_ref_(
    param: Tensor,
    grad: Tensor,
    lr: Tensor,
    weight_decay: float = 0.0,
    base: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    """SGD in place: ``param[k] <- x - lr_k * (grad[k] + wd * x)`` with x = base [P] or param[k]."""
    rows = _rows(param)
    x = param if base is None else base.expand_as(param)
    g = grad if weight_decay == 0 else grad.add(x, alpha=weight_decay)
    neg_lr = (-_per_row(lr, rows, param).double()).to(param.dtype)
    param.copy_(_keep(found_inf, param, x + neg_lr * g))


GRAD_LIMIT = 2.0**62  # as csrc/optim_math.h's kGradLimit


@torch.no_grad()
def nonfinite_check_ref_(x: Tensor, found_inf: Tensor) -> None:
    """``found_inf <- 1`` when any element of ``x`` is NaN, infinite or larger in magnitude than
    2^62 (its square would overflow Adam's second moment), never cleared here."""
    bad = (~(x.abs() <= GRAD_LIMIT)).any().to(found_inf.dtype)
    found_inf.copy_(torch.maximum(found_inf, bad.reshape(found_inf.shape)))
