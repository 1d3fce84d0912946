"""A contributor's new architecture in one file: ``--plugin tests.plugins.toy_arch`` makes
``--arch toynet`` exist, with its size in ``--arch_kwargs '{"width": 6}'``, and lets ``eval``,
``convert`` and ``--resume`` recognise its checkpoints from their keys."""

from __future__ import annotations

import torch
from torch import nn

from dil_fast.models import register_arch


class ToyNet(nn.Module):
    def __init__(self, width: int = 4):
        super().__init__()
        self.head = nn.Conv2d(3, width, 3, padding=1)
        self.tail = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, x):
        return x + self.tail(torch.relu(self.head(x)))


def _recognise(sd):
    if set(sd) != {"head.weight", "head.bias", "tail.weight", "tail.bias"}:
        return None
    return {"width": int(sd["head.weight"].shape[0])}, sd


register_arch("toynet", ToyNet, defaults={"width": 4}, recognise=_recognise, keys_hint="head.weight, tail.weight")
