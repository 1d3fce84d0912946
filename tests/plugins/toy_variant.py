"""A contributor's new DIL variant in one file: ``--plugin tests.plugins.toy_variant`` makes
``--variant toy`` (and its option ``--toy_momentum``) exist for ``dil-fast train``."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dil_fast.meta import MetaAlgorithm, get_loss, register_variant
from dil_fast.meta.options import option


@dataclass(frozen=True)
class ToyOptions:
    toy_momentum: float = option(0.0, "momentum of the toy variant's SGD")


@register_variant
class ToyVariant(MetaAlgorithm):
    """ERM with plain SGD on the union of the confounder batches."""

    name = "toy"
    summary = "a test's toy: ERM with SGD"
    Options = ToyOptions

    def __init__(self, model, *, lr: float = 1e-3, loss: str = "l1", toy_momentum: float = 0.0):
        super().__init__()
        self.meta_model = self.task_model = model
        self.loss_fn = get_loss(loss)
        self._opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=toy_momentum)

    @classmethod
    def from_config(cls, cfg, model, task_model=None, *, fused=None):
        return cls(model, lr=cfg.lr, loss=cfg.loss, **vars(cls.options_from(cfg.variant_options)))

    @property
    def meta_optimizer(self):
        return self._opt

    def state_dict(self) -> dict:
        state = super().state_dict()
        del state["task_model"]
        return state

    def step(self, batches, *, query=None, timer=None):
        self._no_query(query)
        with self._phases(timer)("fwd_bwd"):
            x = torch.cat([b[0] for b in batches])
            y = torch.cat([b[1] for b in batches])
            self._opt.zero_grad()
            per_elem = self.loss_fn(self.train_forward(x), y, reduction="none")
            per_elem.mean().backward()
        with self._phases(timer)("optimizer"):
            bad = self._begin_checks(x.device)
            self._flag_nonfinite(bad, per_elem.mean())
            self._optimizer_step(self._opt, bad)
        self.iteration += 1
        return torch.stack([c.mean() for c in per_elem.detach().split([b[0].shape[0] for b in batches])])
