"""DIL_sf: serial first-order DIL (Reptile over the confounders), the released variant."""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from .base import (
    Batch,
    MetaAlgorithm,
    as_float_betas,
    copy_weights_,
    get_loss,
    make_adam,
    register_variant,
    resolve_fused,
)
from .released import ReleasedSF


@register_variant
class SerialFirstOrder(MetaAlgorithm):
    """One meta-iteration (docs/released-trainer.md, 'One meta-iteration'):

    1. task <- meta (weights); the task Adam keeps its moments and step count across iterations;
    2. for each (input, target) in the given order: one forward/backward and one task-Adam step,
       each starting where the previous ended;
    3. meta gradient = meta - task; one meta-Adam step.

    ``fused`` (default: the rule of :func:`dil_fast.ops.optim.fused_optimizer`: the native core
    serves the optimizer ops on the model's device) keeps both networks' parameters in flat buffers
    (:class:`~dil_fast.optim.FusedAdam`): each task-Adam step is one
    launch, and the meta gradient, the meta-Adam step and the task <- meta reset of the next
    iteration are one fused pass. Results equal the unfused path (``torch.optim.Adam``) to fp32
    rounding, and the state_dict is the same in both modes. The fused path assumes the task weights
    still equal the meta weights it reset them to; after changing ``meta_model``'s weights by hand,
    call :meth:`sync_task`. ``backend`` forces the optimizer ops' implementation (:mod:`dil_fast.backends`).
    ``task_model``: the task network (same architecture; default a copy of ``model``); its weights
    are replaced by the meta weights at the first step, as released.
    """

    name = "sf"
    summary = "serial first-order (the released trainer's)"
    ops = ("adam_step", "meta_step")
    released = ReleasedSF

    def __init__(
        self,
        model: nn.Module,
        *,
        inner_lr: float = 1e-4,
        inner_betas=(0.0, 0.999),
        meta_lr: float = 1e-4,
        meta_betas=(0.9, 0.999),
        loss: str = "l1",
        fused: bool | None = None,
        backend: str | None = None,
        task_model: nn.Module | None = None,
    ):
        super().__init__()
        self.fused = resolve_fused(fused, model, backend)
        self.backend = backend
        self.loss_name = loss
        self.loss_fn = get_loss(loss)
        self.inner_betas = as_float_betas(inner_betas, "inner_betas")
        self.meta_betas = as_float_betas(meta_betas, "meta_betas")
        self.meta_model = model
        # the task network: a copy of the model, or one built apart (the released construction order)
        self.task_model = copy.deepcopy(model) if task_model is None else task_model.to(next(model.parameters()).device)
        self._task_opt = make_adam(self.task_model.parameters(), inner_lr, self.inner_betas, self.fused, backend)
        self._meta_opt = make_adam(self.meta_model.parameters(), meta_lr, self.meta_betas, self.fused, backend)
        self._meta_params = [p for p in self.meta_model.parameters()]
        self._task_params = [p for p in self.task_model.parameters()]
        # listed once: walking the module tree costs ~0.4 ms per meta-iteration on RRDB-23 (bench_host)
        self._meta_buffers = [b for b in self.meta_model.buffers()]
        self._task_buffers = [b for b in self.task_model.buffers()]
        self._task_in_sync = False  # fused path: task weights == meta weights (reset by the meta step)

    @property
    def meta_optimizer(self) -> torch.optim.Optimizer:
        return self._meta_opt

    @property
    def task_optimizer(self) -> torch.optim.Optimizer:
        return self._task_opt

    def hparams(self) -> dict:
        return {
            "inner_lr": self.task_lr,
            "inner_betas": self.inner_betas,
            "meta_lr": self.meta_lr,
            "meta_betas": self.meta_betas,
            "loss": self.loss_name,
        }

    @classmethod
    def from_config(cls, cfg, model, task_model=None, *, fused=None):
        if cfg.reference_mode:
            return cls.released(model, inner_lr=cfg.lr, meta_lr=cfg.meta_lr, loss=cfg.loss, task_model=task_model)
        return cls(
            model,
            inner_lr=cfg.lr,
            meta_lr=cfg.meta_lr,
            loss=cfg.loss,
            backend=cfg.backend,
            fused=fused,
            task_model=task_model,
            **vars(cls.options_from(cfg.variant_options)),
        )

    def step(self, batches: Sequence[Batch], *, query: Batch | None = None, timer=None) -> torch.Tensor:
        """One meta-iteration. ``timer`` (optional): ``timer(phase)`` returns a context manager
        around each phase ("other", "fwd_bwd", "optimizer"), for a benchmark's time split.

        A non-finite loss or gradient (checked on the device) skips that inner step, the ones after
        it and the meta step (:attr:`last_skipped` is 1); the task network restarts from the meta
        weights at the next meta-iteration."""
        if len(batches) == 0:
            raise ValueError("step() needs at least one (input, target) pair")
        self._no_query(query)
        phase = self._phases(timer)
        with phase("other"):
            if not (self.fused and self._task_in_sync):
                self.sync_task()
            bad = self._begin_checks(batches[0][0].device)
        losses = []
        for inp, target in batches:
            with phase("fwd_bwd"):
                self._task_opt.zero_grad(set_to_none=False)
                loss = self.loss_fn(self.train_forward(inp), target)
                loss.backward()
            with phase("optimizer"):
                self._inner_update(loss, bad)
            losses.append(loss.detach())
        with phase("optimizer"):
            self.meta_step(bad)
        self.iteration += 1
        return torch.stack(losses)

    def _inner_update(self, loss: torch.Tensor, bad: torch.Tensor) -> None:
        """Check the loss and the gradients, then one task-optimizer step unless something is non-finite."""
        if self.fused:
            self._flag_nonfinite(bad, loss, flat_grad=self._task_opt.flat_params().grad)
        else:
            self._flag_nonfinite(bad, loss, grads=[p.grad for p in self._task_params if p.grad is not None])
        self._optimizer_step(self._task_opt, bad)

    def sync_task(self) -> None:
        """task <- meta (weights and buffers)."""
        copy_weights_(self.task_model, self.meta_model)
        self._task_in_sync = True

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._task_in_sync = False

    @torch.no_grad()
    def meta_step(self, bad: torch.Tensor | None = None) -> None:
        """meta.grad <- meta - task, then one meta-Adam step (fused: one pass that also resets
        task <- meta; buffers are copied beside it). ``bad``: the step's non-finite flag (skip when
        set). With :attr:`keep_task_weights` set (once) the task network keeps the inner steps'
        weights (a checkpoint's ``model_task``), and the next step starts with a copy."""
        keep = self.keep_task_weights
        self.keep_task_weights = False
        if bad is not None:
            self._agree(bad)  # every rank skips, or none (the task networks may differ until the reset)
        if self.fused:
            self._meta_opt.meta_step_(self._task_opt.flat_params(), reset_task=not keep, found_inf=bad)
            if not keep and self._meta_buffers:
                torch._foreach_copy_(self._task_buffers, self._meta_buffers)
            self._task_in_sync = not keep
            return
        self._task_in_sync = False
        for mp in self._meta_params:
            if mp.grad is None:
                mp.grad = torch.zeros_like(mp)
        grads = [mp.grad for mp in self._meta_params]
        torch._foreach_copy_(grads, self._meta_params)
        torch._foreach_sub_(grads, self._task_params)
        if bad is None:
            self._meta_opt.step()
        else:
            self._optimizer_step(self._meta_opt, bad)
