"""``dil-fast train --reference_mode``: the released trainer's DIL_sf, re-created for comparison
(``--variant sf`` names this class as its ``released`` computation).

What it re-creates (docs/released-trainer.md), deliberately including the released script's costs:

* the data path: one shuffled DataLoader per confounder with ``--num_workers`` worker processes,
  OpenCV PNG reads, numpy crops/flips and float64 numpy noise (:class:`~dil_fast.data.released.
  ReleasedPairLoader`; per-sample seeding is the one deliberate difference, see that module);
* two networks and per-tensor ``torch.optim.Adam`` (``foreach=False, fused=False``): task Adam
  ``betas=(0.0, 0.999)``, meta Adam ``betas=(0.9, 0.999)``;
* every meta-iteration: ``task.load_state_dict(meta.state_dict())`` and
  ``optimizer_task.load_state_dict(state_task)``; per confounder a forward, ``loss.item()``,
  ``zero_grad``, backward and task step; then ``state_task = optimizer_task.state_dict()``; the meta
  gradient ``p.grad = p.data - task_p.data`` (fresh tensors) and one meta Adam step;
* fp32 with torch's default math settings (nothing is switched, as the released script switched
  nothing), no channels_last, no compilation, no graphs.

The arithmetic is the same as ``--variant sf`` (checkpoints and training states are
interchangeable); only the way it is computed differs. ``--reference_mode`` needs ``--variant sf``,
a PNG folder as ``--trainset`` (``--loader auto`` or ``reference``) and no fast-path flags
(checked with the config: :meth:`dil_fast.train.config.TrainConfig.validate`).
"""

from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
from torch import nn

from .base import Batch, MetaAlgorithm, as_float_betas, get_loss


class ReleasedSF(MetaAlgorithm):
    """DIL_sf computed the released way (see the module doc). ``step`` returns the losses as a float64 CPU
    tensor (they were read with ``loss.item()`` at every inner step)."""

    name = "sf"

    def __init__(
        self,
        model: nn.Module,
        *,
        inner_lr: float = 1e-4,
        inner_betas=(0.0, 0.999),
        meta_lr: float = 1e-4,
        meta_betas=(0.9, 0.999),
        loss: str = "l1",
        task_model: nn.Module | None = None,
    ):
        super().__init__()
        self.loss_name = loss
        self.loss_fn = get_loss(loss)
        self.inner_betas = as_float_betas(inner_betas, "inner_betas")
        self.meta_betas = as_float_betas(meta_betas, "meta_betas")
        self.meta_model = model
        self.task_model = copy.deepcopy(model) if task_model is None else task_model.to(next(model.parameters()).device)
        self._task_opt = torch.optim.Adam(
            self.task_model.parameters(), lr=inner_lr, betas=self.inner_betas, foreach=False, fused=False
        )
        self._meta_opt = torch.optim.Adam(
            self.meta_model.parameters(), lr=meta_lr, betas=self.meta_betas, foreach=False, fused=False
        )
        self._state_task = self._task_opt.state_dict()

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

    def capture_blocker(self) -> str | None:
        return "--reference_mode reads every loss on the host, as released"

    def step(self, batches: Sequence[Batch], *, query: Batch | None = None, timer=None) -> torch.Tensor:
        """One meta-iteration. ``timer`` (optional): ``timer(phase)`` returns a context manager
        around each phase ("fwd_bwd", "optimizer", "other"), for the benchmark's time split."""
        if len(batches) == 0:
            raise ValueError("step() needs at least one (input, target) pair")
        self._no_query(query)
        phase = self._phases(timer)
        with phase("other"):
            self.task_model.load_state_dict(self.meta_model.state_dict())
            self._task_opt.load_state_dict(self._state_task)
        losses = []
        finite = True  # the loss is on the host anyway (as released): a non-finite one skips the rest
        for inp, target in batches:
            with phase("fwd_bwd"):
                loss = self.loss_fn(self.train_forward(inp), target)
                losses.append(loss.item())
                finite = finite and math.isfinite(losses[-1])
                if self._flag_sync is not None:  # all ranks skip or none (a lone backward would wait forever)
                    finite = not bool(self._agree(torch.tensor([0.0 if finite else 1.0], device=loss.device)).item())
                if not finite:
                    continue
                self._task_opt.zero_grad()
                loss.backward()
            with phase("optimizer"):
                self._task_opt.step()
        self.last_skipped = torch.tensor([0.0 if finite else 1.0])
        if not finite:
            self.iteration += 1
            return torch.tensor(losses, dtype=torch.float64)
        with phase("other"):
            self._state_task = self._task_opt.state_dict()
        with phase("optimizer"):
            for p, tp in zip(self.meta_model.parameters(), self.task_model.parameters()):
                p.grad = p.data - tp.data
            self._meta_opt.step()
        self.iteration += 1
        return torch.tensor(losses, dtype=torch.float64)  # exact: the values of loss.item()

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._state_task = self._task_opt.state_dict()
