"""The loader protocol: the one interface every training data source implements, and the checks
the sharded loaders share.

A *loader* serves one meta-iteration at a time. It declares what it yields in ``yields``:

* ``"clean"`` (:class:`CleanLoader`: the store, DALI): clean batches ``[K, B, 3, p, p]`` float in
  [0, 1] on the training device (K independent clean batches, one per confounder, as the released
  trainer draws them); the degradation stage (:class:`dil_fast.degrade.CounterfactualPairs`) turns
  them into pairs;
* ``"pairs"`` (:class:`PairLoader`: the released trainer's path): ``list[(input,
  target)]``, one pair per confounder, already degraded and on the training device.

Either way it has epoch semantics (``set_epoch``), a length in meta-iterations per epoch (per
rank), ``epoch`` and ``position`` (meta-iterations of the epoch already served: the trainer keys
the degradation's randomness with them) and a state that restores the position exactly
(``state_dict``/``load_state_dict``). A user's own loader only needs these members.
"""

from __future__ import annotations

from typing import Iterator, Literal, Protocol, runtime_checkable

from ..errors import CheckpointError, FlagError

YIELDS = ("clean", "pairs")


@runtime_checkable
class Loader(Protocol):
    """What the trainer uses of a loader (every member is used)."""

    yields: Literal["clean", "pairs"]
    num_confounders: int
    epoch: int  # the epoch being served (set by set_epoch)
    position: int  # meta-iterations of this epoch already yielded (0 after set_epoch to a new epoch)

    def __len__(self) -> int: ...  # meta-iterations per epoch (per rank)

    def set_epoch(self, epoch: int) -> None: ...  # to the current epoch: keep the position

    def __iter__(self) -> Iterator: ...  # from ``position`` to the end of the epoch

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@runtime_checkable
class CleanLoader(Loader, Protocol):
    """``yields = "clean"``: ``__iter__`` gives ``[K, B, 3, p, p]`` float tensors in [0, 1]."""


@runtime_checkable
class PairLoader(Loader, Protocol):
    """``yields = "pairs"``: ``__iter__`` gives ``list[(input [B, C, H, W], target)]`` of length K."""


# -- argument and resume checks shared by the sharded CleanLoaders (StoreLoader, DaliLoader) --------
class EpochCursor:
    """The epoch/position bookkeeping the loaders share: :meth:`set_epoch` to another epoch restarts
    at position 0 (to the current one keeps it, as a resume needs); the plain resume state is
    ``{"epoch", "position"}``."""

    epoch: int = 0
    position: int = 0

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch:
            self.position = 0
        self.epoch = int(epoch)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])


def check_shard_args(
    batch_size: int, rank: int, world_size: int, *, patch_size: int | None = None, num_confounders: int | None = None
) -> None:
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
    return {
        "loader": kind,
        "epoch": loader.epoch,
        "position": loader.position,
        **{key: getattr(loader, key) for key in keys},
    }


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


def check_loader(loader) -> None:
    """A user's loader must declare every member of :class:`Loader` (TypeError naming the missing ones)."""
    missing = [
        m
        for m in (
            "yields",
            "num_confounders",
            "epoch",
            "position",
            "__len__",
            "__iter__",
            "set_epoch",
            "state_dict",
            "load_state_dict",
        )
        if not hasattr(loader, m)
    ]
    if missing:
        raise TypeError(f"the loader {type(loader).__name__} lacks {', '.join(missing)} of dil_fast.data.base.Loader")
    if loader.yields not in YIELDS:
        raise TypeError(f"loader.yields must be one of {YIELDS}, got {loader.yields!r}")
