"""The one iterator interface every training data source implements.

A *loader* serves one meta-iteration at a time. Two kinds exist:

* :class:`PairLoader` yields ``list[(input, target)]``, one pair per confounder, already on the
  training device: this is what the DIL algorithms consume (``meta.step(batches)``).
* :class:`CleanLoader` yields clean batches ``[K, B, 3, p, p]`` float in [0, 1] on the training
  device (K independent clean batches, one per confounder, as the released trainer draws them);
  :class:`dil_fast.data.pairs.DegradedPairs` turns one into a :class:`PairLoader` with the
  degradation library.

Both have epoch semantics (``set_epoch``), a length in meta-iterations per epoch, and a position
that can be saved and restored (``state_dict``/``load_state_dict``) for exact resume.
"""
from __future__ import annotations

from typing import Iterator, Protocol, runtime_checkable

import torch


@runtime_checkable
class PairLoader(Protocol):
    num_confounders: int

    def __len__(self) -> int: ...  # meta-iterations per epoch (per rank)

    def set_epoch(self, epoch: int) -> None: ...

    def __iter__(self) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@runtime_checkable
class CleanLoader(Protocol):
    num_confounders: int

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...

    def __iter__(self) -> Iterator[torch.Tensor]: ...  # [K, B, 3, p, p] float32 in [0, 1]

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...
