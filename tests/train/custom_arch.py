"""A user's own architecture for the --arch package.module:Class tests (imported by name)."""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, width: int = 4):
        super().__init__()
        self.a = nn.Conv2d(3, width, 3, padding=1)
        self.b = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, x):
        return x + self.b(torch.relu(self.a(x)))
