"""DIL with virtual models: serial second-order (ss, Eq. 4), its first-order approximation (ss-fo)
and parallel second-order (ps, Eq. 5).

No task network exists here: the virtual models ``φ`` are functions of θ (``meta_model``'s
parameters) evaluated with ``torch.func.functional_call``; ``task_model`` is ``meta_model``.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
from torch import nn

from .base import Batch, MetaAlgorithm, as_float_betas, get_loss
from .batched import (
    QUERY_MODES,
    VIRTUAL_BATCHING,
    FunctionalModel,
    InnerAdamState,
    PathChooser,
    check_choice,
    concatenable,
    flat_views,
    fused_available,
    meta_reduce,
    per_model_loss,
    stackable,
    stacked_virtual_sgd,
    support_and_query,
    virtual_update,
)

INNER_OPTIMIZERS = ("sgd", "adam")


class _VirtualModelDIL(MetaAlgorithm):
    """Shared plumbing: meta Adam, inner optimizer state, query construction, path choice.

    The keyword arguments and defaults of ``__init__`` are those every variant below takes
    (documented on :class:`SerialSecondOrder`); the variants add their own."""

    def __init__(
        self,
        model: nn.Module,
        *,
        alpha: float = 1e-4,
        inner_optimizer: str = "sgd",
        inner_betas=(0.0, 0.999),
        meta_lr: float = 1e-4,
        meta_betas=(0.9, 0.999),
        loss: str = "l1",
        query: str = "mixture",
        virtual_batching: str = "auto",
    ):
        super().__init__()
        if not alpha > 0:
            raise ValueError(f"alpha (the virtual step size) must be positive, got {alpha!r}")
        self.alpha = float(alpha)
        self.inner_optimizer = check_choice(inner_optimizer, INNER_OPTIMIZERS, "inner_optimizer")
        self.inner_betas = as_float_betas(inner_betas, "inner_betas")
        self.meta_betas = as_float_betas(meta_betas, "meta_betas")
        self.loss_name = loss
        self.loss_fn = get_loss(loss)
        self.query = check_choice(query, QUERY_MODES, "query")
        self.virtual_batching = check_choice(virtual_batching, VIRTUAL_BATCHING, "virtual_batching")
        self.meta_model = model
        self.task_model = model
        self._fmodel = FunctionalModel(model)
        self._params = [p for p in model.parameters()]
        self._meta_opt = torch.optim.Adam(self._params, lr=meta_lr, betas=self.meta_betas)
        self._inner_state = InnerAdamState(self.inner_betas) if self.inner_optimizer == "adam" else None
        self._chooser = PathChooser()

    @property
    def meta_optimizer(self) -> torch.optim.Optimizer:
        return self._meta_opt

    @property
    def task_lr(self) -> float:
        return self.alpha

    def hparams(self) -> dict:
        return {
            "alpha": self.alpha, "inner_optimizer": self.inner_optimizer, "inner_betas": self.inner_betas,
            "meta_lr": self.meta_lr, "meta_betas": self.meta_betas, "loss": self.loss_name,
            "query": self.query, "virtual_batching": self.virtual_batching,
        }

    def state_dict(self) -> dict:
        state = super().state_dict()
        del state["task_model"]  # the same network as meta_model
        state["inner_state"] = None if self._inner_state is None else self._inner_state.state_dict()
        state["path_choices"] = dict(self._chooser.choices)
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self._inner_state is not None:
            if state.get("inner_state") is None:
                raise ValueError("state has no inner Adam state but this algorithm uses inner_optimizer='adam'")
            self._inner_state.load_state_dict(state["inner_state"])
        self._chooser.choices = dict(state.get("path_choices", {}))

    # -- the path ----------------------------------------------------------------------------------
    def _can_batch(self, support: Sequence[Batch]) -> bool:
        raise NotImplementedError

    def _resolve_path(self, support, query) -> tuple[str, str | None]:
        """``(path, key)``: the path to run and, for ``"auto"`` on a signature not seen before, the
        signature under which :meth:`step` records the outcome of its first batched attempt."""
        if self.virtual_batching == "looped":
            return "looped", None
        if not self._can_batch(support):
            if self.virtual_batching == "batched":
                raise ValueError(
                    'virtual_batching="batched" needs confounder batches of identical shapes; '
                    f"got {[tuple(b[0].shape) for b in support]} (use 'auto' or 'looped')"
                )
            return "looped", None
        if self.virtual_batching == "batched":
            return "batched", None
        key = PathChooser.signature(support, query)
        if key in self._chooser.choices:
            return self._chooser.choices[key], None
        if self.virtual_batching == "auto":
            if not self._auto_prefers_batched(support[0][0].device):
                return self._chooser.record(key, "looped"), None
            return "batched", key
        runners = {
            path: (lambda path=path: self.meta_gradient(support, query, path=path))
            for path in ("batched", "looped")
        }
        return self._chooser.choose(key, runners, support[0][0].device), None

    @staticmethod
    def _auto_prefers_batched(device: torch.device) -> bool:
        """The ``"auto"`` rule: batch the K virtual models except on CPU, where the batched pass
        measured 1.0-1.4x slower than the loop (bench/RESULTS.md)."""
        return device.type != "cpu"

    def _adam_args(self, like: Sequence[torch.Tensor]):
        if self._inner_state is None:
            return None
        st = self._inner_state
        st.ensure(like)
        return st.exp_avg, st.exp_avg_sq, st.step + 1, st.betas, st.eps

    def meta_gradient(self, support: Sequence[Batch], query: Batch, *, path: str):
        """The meta-gradient for θ (one tensor per parameter), without changing any state.
        Returns ``(grads, inner_losses [K] detached, new inner-Adam moments or None)``."""
        raise NotImplementedError

    def step(self, batches: Sequence[Batch], query: Batch | None = None) -> torch.Tensor:
        support, q = support_and_query(batches, self.query, query)
        path, probe = self._resolve_path(support, q)
        try:
            grads, inner_losses, moments = self.meta_gradient(support, q, path=path)
        except (RuntimeError, ValueError, NotImplementedError) as exc:
            if probe is not None:  # "auto": the batched pass cannot run this model/input: loop, for good
                if isinstance(exc, torch.cuda.OutOfMemoryError):
                    torch.cuda.empty_cache()
                first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                warnings.warn(f'{self.name}: virtual_batching="auto" runs the K virtual models one at a time for '
                              f"inputs {probe}: the batched pass failed ({type(exc).__name__}: {first_line})",
                              RuntimeWarning, stacklevel=2)
                path, probe = self._chooser.record(probe, "looped"), None
                grads, inner_losses, moments = self.meta_gradient(support, q, path=path)
            elif (path != "batched" or self.virtual_batching != "batched" or not isinstance(exc, RuntimeError)
                  or isinstance(exc, torch.cuda.OutOfMemoryError)):
                raise
            else:
                raise RuntimeError(
                    f'virtual_batching="batched" failed for {type(self.meta_model).__name__}: {exc}. If the model '
                    "mutates buffers in its forward (e.g. BatchNorm in training mode) it cannot be vmapped; "
                    'use virtual_batching="looped" or "auto".'
                ) from exc
        if probe is not None:
            self._chooser.record(probe, path)
        for p, g in zip(self._params, grads):
            if p.grad is None:
                p.grad = g.detach().clone()
            else:  # in place: keeps gradient views (e.g. a flat gradient buffer) intact
                p.grad.copy_(g)
        self._sync_grads(self.meta_model)
        self._meta_opt.step()
        if self._inner_state is not None:
            self._inner_state.exp_avg, self._inner_state.exp_avg_sq = moments
            self._inner_state.step += 1
        self.iteration += 1
        return inner_losses


class SerialSecondOrder(_VirtualModelDIL):
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
    first_order = False

    def __init__(self, model: nn.Module, *, outer_reduction: str = "sum", **options):
        """``options``: the other keyword arguments listed above (``_VirtualModelDIL``'s, same defaults)."""
        super().__init__(model, **options)
        self.outer_reduction = check_choice(outer_reduction, ("sum", "mean"), "outer_reduction")

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
        use_fused = self.fused if self.fused is not None else fused_available(theta.device)
        phi = stacked_virtual_sgd(theta, g, self.alpha, fused=use_fused).requires_grad_()
        outer = per_model_loss(self.loss_fn, self._fmodel.stacked(flat_views(phi, shapes), xq, shared_input=True), yq)
        (grads_k,) = torch.autograd.grad(outer.sum(), phi, materialize_grads=True)
        (meta_grad,) = meta_reduce([grads_k], self.outer_reduction)
        grads = [t.view(s) for t, s in zip(meta_grad.split([p.numel() for p in self._params]), shapes)]
        return grads, inner.detach(), None

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


class SerialFirstOrderApprox(SerialSecondOrder):
    """``ss-fo``: Eq. 4 with the first-order approximation. The same K virtual models
    ``φ_k = θ − α ∇L_k(θ)`` as ``ss``, but the outer gradient is taken at each ``φ_k`` (no
    Hessian term, no graph through the virtual step) and the K gradients are reduced to the
    meta-gradient, by default averaged (``outer_reduction="mean"``). Arguments and defaults as
    :class:`SerialSecondOrder` otherwise. Equals ``ss`` with the virtual step detached (up to the
    1/K of the mean).

    The batched path with the plain inner step runs on flat K-stacked buffers ``[K, P]``: the K
    virtual steps are one op (the native core's fused ``sgd_step_`` when ``fused`` is True; ``None``
    = whenever :mod:`dil_fast.optim` serves the device, ``False`` = torch) and the meta reduction
    over K one ``sum``/``mean``."""

    name = "ss-fo"
    first_order = True

    def __init__(self, model: nn.Module, *, outer_reduction: str = "mean", fused: bool | None = None, **options):
        """``options``: the other keyword arguments of :class:`SerialSecondOrder` (same defaults)."""
        super().__init__(model, outer_reduction=outer_reduction, **options)
        self.fused = fused

    def hparams(self) -> dict:
        return {**super().hparams(), "fused": self.fused}


class ParallelSecondOrder(_VirtualModelDIL):
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
