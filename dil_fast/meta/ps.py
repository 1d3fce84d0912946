"""DIL_ps: parallel second-order (Eq. 5)."""

from __future__ import annotations

from typing import Sequence

import torch

from .base import Batch, register_variant
from .batched import concatenable, virtual_update
from .virtual import VirtualModelDIL

__all__ = ["ParallelSecondOrder"]


@register_variant
class ParallelSecondOrder(VirtualModelDIL):
    """``ps``: Eq. 5. One virtual model ``φ̄ = θ − α ∇_θ L̄(θ)`` on the inner loss averaged over
    the confounders (the mean over the union of the K support batches, which is the mean of the K
    per-confounder losses for equal batch sizes); outer loss ``L(f_{φ̄}(x_q), y_q)``; its gradient
    goes through the virtual step (double backward); one meta-Adam step.

    Arguments as :class:`SerialSecondOrder` (``alpha=1e-4``, ``inner_optimizer="sgd"`` or
    ``"adam"`` with one persistent set of moments, ``inner_betas=(0.0, 0.999)``, ``meta_lr=1e-4``,
    ``meta_betas=(0.9, 0.999)``, ``loss="l1"``, ``query="mixture"``), except that there is a single
    virtual model: ``virtual_batching`` only decides how the inner loss is evaluated: ``"batched"``
    one forward over the concatenated batches, ``"looped"`` one forward per confounder (gradients
    summed with weights ``n_k / N``). ``"auto"`` is the rule "batched whenever the batches
    concatenate" (one larger forward is never slower than K smaller ones; no timing).
    """

    name = "ps"
    summary = "parallel second-order (Eq. 5)"

    def _can_batch(self, support) -> bool:
        return concatenable(support)

    def _resolve_path(self, support, query) -> tuple[str, str | None]:
        if self.virtual_batching == "auto":
            return ("batched" if self._can_batch(support) else "looped"), None
        return super()._resolve_path(support, query)

    def outer_objective(self, params: Sequence[torch.Tensor], support: Sequence[Batch], query: Batch, *, path: str):
        """Eq. 5 as a differentiable function of ``params`` (θ): ``L(f_{φ̄(θ)}(x_q), y_q)`` with the
        graph through the virtual step. Returns ``(objective, inner losses [K], new moments or None)``."""
        xq, yq = query
        sizes = [b[0].shape[0] for b in support]
        total = float(sum(sizes))
        if path == "batched":
            x = torch.cat([b[0] for b in support])
            y = torch.cat([b[1] for b in support])
            per_elem = self.loss_fn(self._fmodel(params, x), y, reduction="none")
            per_pair = torch.stack([c.mean() for c in per_elem.split(sizes)])
            inner = per_elem.mean()
        else:
            per_pair = torch.stack([self.loss_fn(self._fmodel(params, x), y) for x, y in support])
            inner = sum(loss * (n / total) for loss, n in zip(per_pair, sizes))
        g = torch.autograd.grad(inner, params, create_graph=True, materialize_grads=True)
        adam = self._adam_args(params)
        phi, new_m, new_v = virtual_update(params, g, alpha=self.alpha, adam=adam)
        outer = self.loss_fn(self._fmodel(phi, xq), yq)
        return outer, per_pair, (None if adam is None else (new_m, new_v))

    def meta_gradient(self, support, query, *, path: str):
        objective, per_pair, moments = self.outer_objective(self._params, support, query, path=path)
        grads = torch.autograd.grad(objective, self._params, materialize_grads=True)
        return list(grads), per_pair.detach(), moments
