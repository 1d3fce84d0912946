"""DIL_ss, serial second-order (Eq. 4), and its first-order approximation ss-fo."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..ops.optim import as_lr
from .base import Batch, register_variant
from .batched import (
    check_choice,
    flat_views,
    meta_reduce,
    per_model_loss,
    stackable,
    stacked_virtual_sgd,
    virtual_update,
)
from .virtual import VirtualModelDIL

__all__ = ["SerialSecondOrder", "SerialFirstOrderApprox"]


@register_variant
class SerialSecondOrder(VirtualModelDIL):
    """``ss``: Eq. 4 literally. For each confounder k (support batch ``(x_k, y_k)``) a virtual model
    ``φ_k = θ − α ∇_θ L(f_θ(x_k), y_k)``, every one from θ; outer loss
    ``Σ_k L(f_{φ_k}(x_q), y_q)`` on one query batch; its gradient w.r.t. θ goes through the virtual
    step (autograd double backward: Hessian-vector products); one meta-Adam step.

    Arguments (keyword-only after ``model``):

    * ``alpha=1e-4``: the virtual step size.
    * ``inner_optimizer="sgd"``: ``"sgd"`` is the plain step above. ``"adam"`` replaces it by one
      Adam step per confounder whose moments persist across meta-iterations (K-stacked, one set per
      confounder position), ``inner_betas=(0.0, 0.999)`` as in ``sf``, lr ``alpha``; the meta-gradient
      differentiates through the first moment and holds the ``1/(sqrt(v̂)+eps)`` preconditioner
      constant (see :func:`~dil_fast.meta.batched.virtual_update`).
    * ``meta_lr=1e-4``, ``meta_betas=(0.9, 0.999)``: the meta Adam. ``loss="l1"``.
    * ``query="mixture"``: the query batch is built from the given batches (sample j from
      confounder ``j mod K``); ``"split"`` holds out the second half of every batch as the query;
      ``"explicit"`` requires ``step(batches, query=(x, y))`` (an explicit query is used in any mode).
    * ``outer_reduction="sum"``: Σ_k over the virtual models as in Eq. 4 (``"mean"`` divides by K).
    * ``virtual_batching="auto"``: ``"batched"`` runs the K virtual models as one vmapped pass
      (grouped convolutions) over K-stacked parameters, ``"looped"`` one model at a time (each
      model's graph freed before the next: less memory); ``"auto"`` is looped on CPU (where the
      batched pass measured 1.0-1.4x slower) and elsewhere batched unless the batched pass raises
      for an input signature (a model vmap cannot batch, out of memory), then looped for that
      signature from then on: deterministic, so equal seeds give equal numbers;
      ``"tune"`` times both once per signature and keeps the faster (may differ between runs; see
      :class:`~dil_fast.meta.batched.PathChooser`). Batches of unequal shapes always loop; the
      choices are saved with the state.

    ``step(batches, query=None)`` returns the K inner (support) losses at θ, detached. Distributed:
    the final meta-gradient is averaged across ranks (``grad_sync``); each rank's virtual steps use
    its own data.
    """

    name = "ss"
    summary = "serial second-order (Eq. 4)"
    first_order = False

    def __init__(self, model: nn.Module, *, outer_reduction: str = "sum", **options):
        """``options``: the other keyword arguments listed above (``VirtualModelDIL``'s, same defaults)."""
        super().__init__(model, **options)
        self.outer_reduction = check_choice(outer_reduction, ("sum", "mean"), "outer_reduction")
        self._alpha_tensor: torch.Tensor | None = None  # alpha on the device, for the fused virtual step
        self._alpha_value: float | None = None

    def hparams(self) -> dict:
        return {**super().hparams(), "outer_reduction": self.outer_reduction}

    def _can_batch(self, support) -> bool:
        return stackable(support)

    def _virtual_models(self, params, support, *, path: str, second: bool):
        """The K virtual models from ``params``: returns ``(phi, inner losses [K], moments)``;
        ``phi`` is K-stacked (``[K, *shape]``) on the batched path, a list of K lists when looped."""
        k = len(support)
        adam = self._adam_args([p.unsqueeze(0).expand(k, *p.shape) for p in params])
        if path == "batched":
            xs = torch.stack([b[0] for b in support])
            ys = torch.stack([b[1] for b in support])
            theta_k = [p.unsqueeze(0).expand(k, *p.shape) for p in params]
            inner = per_model_loss(self.loss_fn, self._fmodel.stacked(theta_k, xs, shared_input=False), ys)
            g = torch.autograd.grad(inner.sum(), theta_k, create_graph=second, materialize_grads=True)
            phi, new_m, new_v = virtual_update(theta_k, g, alpha=self.alpha, adam=adam)
            return phi, inner, (None if adam is None else (new_m, new_v))
        phis, inner, moments = [], [], []
        for i, batch in enumerate(support):
            phi, loss, mv = self._virtual_model(params, batch, i, adam, second=second)
            phis.append(phi)
            inner.append(loss)
            moments.append(mv)
        return phis, torch.stack(inner), _stack_moments(moments)

    def _flat_first_order(self, support, query):
        """Batched first-order path on flat K-stacked buffers ``[K, P]``: the K virtual steps and the
        reduction over K are one op each (the native fused step when ``self.fused``)."""
        k = len(support)
        xq, yq = query
        shapes = [p.shape for p in self._params]
        theta = torch.cat([p.detach().reshape(-1) for p in self._params])
        theta_k = theta.expand(k, -1).requires_grad_()
        xs = torch.stack([b[0] for b in support])
        ys = torch.stack([b[1] for b in support])
        out = self._fmodel.stacked(flat_views(theta_k, shapes), xs, shared_input=False)
        inner = per_model_loss(self.loss_fn, out, ys)
        (g,) = torch.autograd.grad(inner.sum(), theta_k, materialize_grads=True)
        alpha = self._alpha_on(theta.device) if self._use_fused else self.alpha
        phi = stacked_virtual_sgd(theta, g, alpha, fused=self._use_fused, backend=self.backend).requires_grad_()
        outer = per_model_loss(self.loss_fn, self._fmodel.stacked(flat_views(phi, shapes), xq, shared_input=True), yq)
        (grads_k,) = torch.autograd.grad(outer.sum(), phi, materialize_grads=True)
        (meta_grad,) = meta_reduce([grads_k], self.outer_reduction)
        grads = [t.view(s) for t, s in zip(meta_grad.split([p.numel() for p in self._params]), shapes)]
        return grads, inner.detach(), None

    def _alpha_on(self, device: torch.device) -> torch.Tensor:
        """``alpha`` as the device tensor the fused step reads, made once (a float would be copied to
        the device at every step: a host sync, which also makes the step impossible to capture)."""
        t = self._alpha_tensor
        if t is None or t.device != device or self._alpha_value != self.alpha:
            t = self._alpha_tensor = as_lr(self.alpha, device)
            self._alpha_value = self.alpha
        return t

    def _virtual_model(self, params, batch: Batch, i: int, adam, *, second: bool):
        """Virtual model ``i`` alone (the looped path): ``(phi, inner loss, (m_i, v_i) or None)``."""
        x, y = batch
        loss = self.loss_fn(self._fmodel(params, x), y)
        g = torch.autograd.grad(loss, params, create_graph=second, materialize_grads=True)
        adam_i = None if adam is None else ([m[i] for m in adam[0]], [v[i] for v in adam[1]], *adam[2:])
        phi, m_i, v_i = virtual_update(params, g, alpha=self.alpha, adam=adam_i)
        return phi, loss, (None if adam is None else (m_i, v_i))

    def outer_objective(self, params: Sequence[torch.Tensor], support: Sequence[Batch], query: Batch, *, path: str):
        """Eq. 4 as a differentiable function of ``params`` (θ): ``Σ_k L(f_{φ_k(θ)}(x_q), y_q)``
        (divided by K for ``outer_reduction="mean"``), with the graph through the virtual steps.
        Returns ``(objective, inner losses [K], new inner-Adam moments or None)``."""
        xq, yq = query
        scale = 1.0 if self.outer_reduction == "sum" else 1.0 / len(support)
        phi, inner, moments = self._virtual_models(params, support, path=path, second=True)
        if path == "batched":
            outer = per_model_loss(self.loss_fn, self._fmodel.stacked(phi, xq, shared_input=True), yq)
            return outer.sum() * scale, inner, moments
        total = sum(self.loss_fn(self._fmodel(p, xq), yq) for p in phi)
        return total * scale, inner, moments

    def meta_gradient(self, support, query, *, path: str):
        xq, yq = query
        if not self.first_order and path == "batched":
            objective, inner, moments = self.outer_objective(self._params, support, query, path=path)
            grads = torch.autograd.grad(objective, self._params, materialize_grads=True)
            return list(grads), inner.detach(), moments
        one_buffer = len({(p.dtype, p.device) for p in self._params}) == 1
        if self.first_order and path == "batched" and self._inner_state is None and one_buffer:
            return self._flat_first_order(support, query)
        if self.first_order and path == "batched":
            phi, inner, moments = self._virtual_models(self._params, support, path=path, second=False)
            phi = [t.detach().requires_grad_() for t in phi]
            outer = per_model_loss(self.loss_fn, self._fmodel.stacked(phi, xq, shared_input=True), yq)
            grads_k = torch.autograd.grad(outer.sum(), phi, materialize_grads=True)
            return meta_reduce(grads_k, self.outer_reduction), inner.detach(), moments
        # looped: one virtual model's graph at a time (the memory-lean oracle)
        scale = 1.0 if self.outer_reduction == "sum" else 1.0 / len(support)
        adam = self._adam_args([p.unsqueeze(0).expand(len(support), *p.shape) for p in self._params])
        grads = [torch.zeros_like(p) for p in self._params]
        inner, moments = [], []
        for i, batch in enumerate(support):
            phi, loss, mv = self._virtual_model(self._params, batch, i, adam, second=not self.first_order)
            if self.first_order:
                phi = [t.detach().requires_grad_() for t in phi]
            outer = self.loss_fn(self._fmodel(phi, xq), yq) * scale
            gi = torch.autograd.grad(outer, phi if self.first_order else self._params, materialize_grads=True)
            torch._foreach_add_(grads, [t.detach() for t in gi])
            inner.append(loss.detach())
            moments.append(mv)
        return grads, torch.stack(inner), _stack_moments(moments)


def _stack_moments(moments):
    """K per-model ``(m_i, v_i)`` pairs -> K-stacked ``(m, v)``; None for a plain inner step."""
    if moments[0] is None:
        return None
    exp_avg = [torch.stack(ts) for ts in zip(*(m for m, _ in moments))]
    exp_avg_sq = [torch.stack(ts) for ts in zip(*(v for _, v in moments))]
    return exp_avg, exp_avg_sq


@register_variant
class SerialFirstOrderApprox(SerialSecondOrder):
    """``ss-fo``: Eq. 4 with the first-order approximation. The same K virtual models
    ``φ_k = θ − α ∇L_k(θ)`` as ``ss``, but the outer gradient is taken at each ``φ_k`` (no
    Hessian term, no graph through the virtual step) and the K gradients are reduced to the
    meta-gradient, by default averaged (``outer_reduction="mean"``). Arguments and defaults as
    :class:`SerialSecondOrder` otherwise. Equals ``ss`` with the virtual step detached (up to the
    1/K of the mean).

    The batched path with the plain inner step runs on flat K-stacked buffers ``[K, P]``: the K
    virtual steps are one op (the native core's fused ``sgd_step_`` when ``fused`` is True; ``None``
    = the rule of :func:`dil_fast.ops.optim.fused_optimizer`, ``False`` = torch) and the meta
    reduction over K one ``sum``/``mean``. ``backend`` forces the implementation of that op."""

    name = "ss-fo"
    summary = "Eq. 4 with the first-order approximation"
    first_order = True
    ops = ("sgd_step",)

    def __init__(self, model: nn.Module, *, outer_reduction: str = "mean", **options):
        """``options``: the other keyword arguments of :class:`SerialSecondOrder` (same defaults)."""
        super().__init__(model, outer_reduction=outer_reduction, **options)

    def hparams(self) -> dict:
        return {**super().hparams(), "fused": self.fused}
