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

from ..errors import CheckpointError, FlagError


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


# -- argument and resume checks shared by the sharded CleanLoaders (StoreLoader, DaliLoader) --------
def check_shard_args(batch_size: int, rank: int, world_size: int, *, patch_size: int | None = None,
                     num_confounders: int | None = None) -> None:
    """:class:`FlagError` unless ``batch_size``, ``patch_size`` and ``num_confounders`` (each checked
    when given) are at least 1 and ``rank`` is in ``0..world_size-1``; checked in that order."""
    if batch_size < 1:
        raise FlagError(f"--batch_size {batch_size}: must be at least 1")
    if patch_size is not None and patch_size < 1:
        raise FlagError(f"--patch_size {patch_size}: must be at least 1")
    if num_confounders is not None and num_confounders < 1:
        raise FlagError(f"num_confounders {num_confounders}: must be at least 1")
    if world_size < 1 or not 0 <= rank < world_size:
        raise FlagError(f"rank {rank} / world size {world_size}: rank must be in 0..world_size-1")


def check_shard_count(count: int, batch_size: int, world_size: int, noun: str, source: str) -> None:
    """:class:`FlagError` unless ``count`` items (``noun``, e.g. ``"images"``, held by ``source``)
    fill one batch on every rank."""
    if count < batch_size * world_size:
        raise FlagError(
            f"--batch_size {batch_size} x {world_size} rank(s) needs at least {batch_size * world_size} "
            f"{noun}; {source} has {count}"
        )


def loader_state(loader, kind: str, keys) -> dict:
    """The resume state common to the sharded loaders: ``kind``, the loader's epoch and position, and
    the attributes named in ``keys`` (the settings the state is only valid for)."""
    return {"loader": kind, "epoch": loader.epoch, "position": loader.position,
            **{key: getattr(loader, key) for key in keys}}


def check_loader_state(loader, state: dict, kind: str, keys) -> None:
    """:class:`CheckpointError` unless ``state`` was saved by a ``kind`` loader with the same value of
    every attribute named in ``keys`` as ``loader`` (exact resume needs them)."""
    if state.get("loader") != kind:
        raise CheckpointError(f"loader state is for the {state.get('loader')!r} loader, not {kind!r}")
    for key in keys:
        if state[key] != getattr(loader, key):
            raise CheckpointError(
                f"loader state was saved with {key}={state[key]}, this run has {getattr(loader, key)}; "
                "exact resume needs the same value"
            )
