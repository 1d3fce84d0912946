"""The shared plumbing of the DIL variants with virtual models (ss, ss-fo, ps): meta Adam, inner
optimizer state, query construction and the batched/looped path choice.

No task network exists here: the virtual models ``φ`` are functions of θ (``meta_model``'s
parameters) evaluated with ``torch.func.functional_call``; ``task_model`` is ``meta_model``.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch
from torch import nn

from .base import Batch, MetaAlgorithm, as_float_betas, get_loss, make_adam, resolve_fused
from .batched import (
    QUERY_MODES,
    FunctionalModel,
    InnerAdamState,
    PathChooser,
    check_choice,
    support_and_query,
)
from .options import INNER_OPTIMIZERS, VIRTUAL_BATCHING, VirtualOptions

__all__ = ["VirtualModelDIL", "INNER_OPTIMIZERS"]


class VirtualModelDIL(MetaAlgorithm):
    """Shared plumbing: meta Adam, inner optimizer state, query construction, path choice.

    The keyword arguments and defaults of ``__init__`` are those every variant below takes
    (documented on :class:`SerialSecondOrder`); the variants add their own."""

    ddp_task_model = False  # the meta-gradient comes from torch.func, averaged by GradSync
    trains_module_forward = False  # the virtual models are evaluated functionally
    Options = VirtualOptions

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
        backend: str | None = None,
        fused: bool | None = None,
    ):
        super().__init__()
        self.backend = backend
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
        self.fused = fused
        self._use_fused = resolve_fused(fused, model, backend)
        self._meta_opt = make_adam(self._params, meta_lr, self.meta_betas, self._use_fused, backend)
        self._inner_state = InnerAdamState(self.inner_betas) if self.inner_optimizer == "adam" else None
        self._chooser = PathChooser()

    @classmethod
    def from_config(cls, cfg, model, task_model=None, *, fused=None):
        return cls(
            model,
            meta_lr=cfg.meta_lr,
            loss=cfg.loss,
            backend=cfg.backend,
            fused=fused,
            **vars(cls.options_from(cfg.variant_options)),
        )

    def capture_blocker(self) -> str | None:
        if self.inner_optimizer == "adam":
            return "--inner_optimizer adam keeps its step count and bias corrections on the host"
        return super().capture_blocker()

    def use_forward_policy(self, policy=None) -> None:
        super().use_forward_policy(policy)
        self._fmodel.policy = self.forward_policy

    @property
    def meta_optimizer(self) -> torch.optim.Optimizer:
        return self._meta_opt

    @property
    def task_lr(self) -> float:
        return self.alpha

    def hparams(self) -> dict:
        return {
            "alpha": self.alpha,
            "inner_optimizer": self.inner_optimizer,
            "inner_betas": self.inner_betas,
            "meta_lr": self.meta_lr,
            "meta_betas": self.meta_betas,
            "loss": self.loss_name,
            "query": self.query,
            "virtual_batching": self.virtual_batching,
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
            path: (lambda path=path: self.meta_gradient(support, query, path=path)) for path in ("batched", "looped")
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

    def step(self, batches: Sequence[Batch], *, query: Batch | None = None, timer=None) -> torch.Tensor:
        phase = self._phases(timer)
        with phase("other"):
            support, q = support_and_query(batches, self.query, query)
            path, probe = self._resolve_path(support, q)
        with phase("fwd_bwd"):
            grads, inner_losses, moments = self._meta_gradient_on(support, q, path, probe)
        with phase("optimizer"):
            self._apply(grads, inner_losses, moments)
        self.iteration += 1
        return inner_losses

    def _meta_gradient_on(self, support, q, path: str, probe):
        """:meth:`meta_gradient` on the resolved path; "auto" falls back to looping once (a warning)
        when the batched pass cannot run."""
        try:
            grads, inner_losses, moments = self.meta_gradient(support, q, path=path)
        except (RuntimeError, ValueError, NotImplementedError) as exc:
            if probe is not None:  # "auto": the batched pass cannot run this model/input: loop, for good
                if isinstance(exc, torch.cuda.OutOfMemoryError):
                    torch.cuda.empty_cache()
                first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                warnings.warn(
                    f'{self.name}: virtual_batching="auto" runs the K virtual models one at a time for '
                    f"inputs {probe}: the batched pass failed ({type(exc).__name__}: {first_line})",
                    RuntimeWarning,
                    stacklevel=3,
                )
                path, probe = self._chooser.record(probe, "looped"), None
                grads, inner_losses, moments = self.meta_gradient(support, q, path=path)
            elif (
                path != "batched"
                or self.virtual_batching != "batched"
                or not isinstance(exc, RuntimeError)
                or isinstance(exc, torch.cuda.OutOfMemoryError)
            ):
                raise
            else:
                raise RuntimeError(
                    f'virtual_batching="batched" failed for {type(self.meta_model).__name__}: {exc}. If the model '
                    "mutates buffers in its forward (e.g. BatchNorm in training mode) it cannot be vmapped; "
                    'use virtual_batching="looped" or "auto".'
                ) from exc
        if probe is not None:
            self._chooser.record(probe, path)
        return grads, inner_losses, moments

    def _apply(self, grads, inner_losses, moments) -> None:
        """The meta-gradient into the parameters' gradients, the non-finite check, the meta-Adam step
        and the inner-Adam moments (kept when the step is skipped, decided on the device)."""
        for p, g in zip(self._params, grads):
            if p.grad is None:
                p.grad = g.detach().clone()
            else:  # in place: keeps gradient views (e.g. a flat gradient buffer) intact
                p.grad.copy_(g)
        self._sync_grads(self.meta_model)
        bad = self._begin_checks(self._params[0].device)
        self._flag_nonfinite(bad, inner_losses, grads=[p.grad for p in self._params])
        self._optimizer_step(self._meta_opt, self._agree(bad))
        if self._inner_state is not None:  # a skipped step keeps the old moments (decided on the device)
            st, skip = self._inner_state, bad.bool()
            if st.exp_avg is None:
                st.exp_avg, st.exp_avg_sq = moments
            else:
                st.exp_avg = [torch.where(skip, old, new) for old, new in zip(st.exp_avg, moments[0])]
                st.exp_avg_sq = [torch.where(skip, old, new) for old, new in zip(st.exp_avg_sq, moments[1])]
            st.step += 1
