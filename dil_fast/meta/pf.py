"""DIL_pf: parallel first-order DIL (Reptile on the averaged confounder loss)."""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
from torch import nn

from .base import Batch, register_variant
from .batched import QUERY_MODES, check_choice, concatenable, support_and_query
from .options import VIRTUAL_BATCHING, QueryOptions
from .sf import SerialFirstOrder


@register_variant
class ParallelFirstOrder(SerialFirstOrder):
    """One meta-iteration (docs/released-trainer.md, 'The variants': the dil_fast reading of ``pf``):

    1. task <- meta (weights); the task Adam keeps its moments and step count across iterations
       (as in ``sf``);
    2. inner step 1: one forward/backward on the union of the K support batches (the mean over all
       their samples) and one task-Adam step;
    3. inner step 2: one forward/backward on the query batch (a batch from the mixture) and one
       task-Adam step;
    4. meta gradient = meta − task (θ − φ); one meta-Adam step.

    Arguments (keyword-only after ``model``): ``inner_lr=1e-4``, ``inner_betas=(0.0, 0.999)`` (the
    task Adam, as ``sf``), ``meta_lr=1e-4``, ``meta_betas=(0.9, 0.999)``, ``loss="l1"``,
    ``query="mixture"`` (the second batch is built from the given batches, sample j from confounder
    ``j mod K``; ``"split"`` holds out the second half of every batch for it; ``"explicit"`` requires
    ``step(batches, query=(x, y))``), ``virtual_batching="auto"``: there are no K virtual models, so
    this only decides how step 1's union loss is evaluated: ``"batched"`` one forward over the
    concatenated batches, ``"looped"`` one forward per confounder (gradients accumulated with weights
    ``n_k / N``); ``"auto"`` = batched whenever the batches concatenate (no timing).

    ``fused`` as in :class:`SerialFirstOrder` (whose optimizers, meta step and state this class
    shares): flat buffers, fused Adam steps and the fused meta step with task reset.

    ``step(batches, query=None)`` returns the per-confounder losses of inner step 1, detached.
    """

    name = "pf"
    summary = "parallel first-order"
    Options = QueryOptions
    released = None

    def __init__(self, model: nn.Module, *, query: str = "mixture", virtual_batching: str = "auto", **sf_options):
        """``sf_options``: the keyword arguments of :class:`SerialFirstOrder` (same defaults)."""
        super().__init__(model, **sf_options)
        self.query = check_choice(query, QUERY_MODES, "query")
        self.virtual_batching = check_choice(virtual_batching, VIRTUAL_BATCHING, "virtual_batching")

    def hparams(self) -> dict:
        return {**super().hparams(), "query": self.query, "virtual_batching": self.virtual_batching}

    def _union_backward(self, support: Sequence[Batch]) -> torch.Tensor:
        """Backward of the mean loss over the union of the support batches; returns per-pair losses."""
        sizes = [b[0].shape[0] for b in support]
        batched = self.virtual_batching != "looped" and concatenable(support)
        if self.virtual_batching == "batched" and not batched:
            raise ValueError('virtual_batching="batched" needs batches that concatenate (same C, H, W)')
        if batched:
            x = torch.cat([b[0] for b in support])
            y = torch.cat([b[1] for b in support])
            per_elem = self.loss_fn(self.train_forward(x), y, reduction="none")
            per_elem.mean().backward()
            return torch.stack([c.mean() for c in per_elem.detach().split(sizes)])
        total = float(sum(sizes))
        losses = []
        for i, ((x, y), n) in enumerate(zip(support, sizes)):
            # distributed: accumulate locally, average once with the last backward
            with self.no_grad_sync() if i + 1 < len(support) else contextlib.nullcontext():
                loss = self.loss_fn(self.train_forward(x), y)
                (loss * (n / total)).backward()
            losses.append(loss.detach())
        return torch.stack(losses)

    def step(self, batches: Sequence[Batch], *, query: Batch | None = None, timer=None) -> torch.Tensor:
        phase = self._phases(timer)
        with phase("other"):
            support, (xq, yq) = support_and_query(batches, self.query, query)
            if not (self.fused and self._task_in_sync):
                self.sync_task()
            bad = self._begin_checks(xq.device)
        with phase("fwd_bwd"):
            self._task_opt.zero_grad(set_to_none=False)
            losses = self._union_backward(support)
        with phase("optimizer"):
            self._inner_update(losses, bad)
        with phase("fwd_bwd"):
            self._task_opt.zero_grad(set_to_none=False)
            loss_q = self.loss_fn(self.train_forward(xq), yq)
            loss_q.backward()
        with phase("optimizer"):
            self._inner_update(loss_q, bad)
            self.meta_step(bad)
        self.iteration += 1
        return losses
