"""ERM: the plain baseline - one model, one optimizer step on the union of the confounder batches."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .base import Batch, MetaAlgorithm, as_float_betas, get_loss, make_adam, register_variant, resolve_fused


@register_variant
class ERM(MetaAlgorithm):
    """``step(batches)`` concatenates the pairs into one batch (the uniform mixture of the
    confounders) and takes one forward/backward/Adam step. ``meta_model`` is ``task_model`` is the
    trained model. Returns the per-pair mean losses (of that one forward). ``fused`` as in
    :class:`~dil_fast.meta.SerialFirstOrder`: :class:`~dil_fast.optim.FusedAdam` on a flat buffer;
    ``backend`` forces the optimizer ops' implementation."""

    name = "erm"
    summary = "the plain baseline: one step on the union of the confounder batches"
    ops = ("adam_step",)

    def __init__(
        self,
        model: nn.Module,
        *,
        lr: float = 1e-4,
        betas=(0.9, 0.999),
        loss: str = "l1",
        fused: bool | None = None,
        backend: str | None = None,
    ):
        super().__init__()
        self.fused = resolve_fused(fused, model, backend)
        self.backend = backend
        self.loss_name = loss
        self.loss_fn = get_loss(loss)
        self.betas = as_float_betas(betas, "betas")
        self.meta_model = model
        self.task_model = model
        self._opt = make_adam(model.parameters(), lr, self.betas, self.fused, backend)

    @property
    def meta_optimizer(self) -> torch.optim.Optimizer:
        return self._opt

    def hparams(self) -> dict:
        return {"lr": self.meta_lr, "betas": self.betas, "loss": self.loss_name}

    def state_dict(self) -> dict:
        state = super().state_dict()
        del state["task_model"]  # the same network as meta_model
        return state

    @classmethod
    def from_config(cls, cfg, model, task_model=None, *, fused=None):
        return cls(
            model,
            lr=cfg.lr,
            loss=cfg.loss,
            backend=cfg.backend,
            fused=fused,
            **vars(cls.options_from(cfg.variant_options)),
        )

    def step(self, batches: Sequence[Batch], *, query: Batch | None = None, timer=None) -> torch.Tensor:
        if len(batches) == 0:
            raise ValueError("step() needs at least one (input, target) pair")
        self._no_query(query)
        phase = self._phases(timer)
        with phase("fwd_bwd"):
            inp = torch.cat([b[0] for b in batches])
            target = torch.cat([b[1] for b in batches])
            self._opt.zero_grad(set_to_none=False)
            out = self.train_forward(inp)  # task_model is meta_model
            per_elem = self.loss_fn(out, target, reduction="none")
            sizes = [b[0].shape[0] for b in batches]
            per_pair = torch.stack([chunk.mean() for chunk in per_elem.split(sizes)])
            loss = per_elem.mean()
            loss.backward()
        with phase("optimizer"):
            bad = self._begin_checks(inp.device)
            if self.fused:
                self._flag_nonfinite(bad, loss, flat_grad=self._opt.flat_params().grad)
            else:
                self._flag_nonfinite(
                    bad, loss, grads=[p.grad for p in self.meta_model.parameters() if p.grad is not None]
                )
            self._optimizer_step(self._opt, self._agree(bad))
        self.iteration += 1
        return per_pair.detach()
