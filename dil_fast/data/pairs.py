"""Clean batches -> (distorted, clean) pairs: a :class:`CleanLoader` plus the degradation library
is a :class:`PairLoader`."""
from __future__ import annotations

import torch

from ..degrade import counterfactual


class DegradedPairs:
    """Wraps a clean loader (``[K, B, 3, p, p]`` per meta-iteration) and distorts batch k with
    confounder k on the training device (one fused launch for noise/blur sets).

    ``pairing="independent"`` (the released behaviour): confounder k distorts its own clean batch.
    ``pairing="shared"`` (the paper's stated ideal): every confounder distorts the same clean batch
    (the loader's first), so the K pairs show the same content under K distortions.
    Randomness is keyed by (seed, global meta-iteration, k, global sample index), so it does not
    depend on the number of ranks.
    """

    def __init__(self, clean_loader, confounders, *, seed: int, rank: int = 0, pairing: str = "independent",
                 backend: str | None = None):
        if pairing not in ("independent", "shared"):
            raise ValueError(f"pairing must be 'independent' or 'shared', got {pairing!r}")
        self.inner = clean_loader
        self.confounders = list(confounders)
        if len(self.confounders) != clean_loader.num_confounders:
            raise ValueError(f"{len(self.confounders)} confounders for a loader drawing "
                             f"{clean_loader.num_confounders} clean batches")
        self.num_confounders = len(self.confounders)
        self.seed, self.rank, self.pairing, self.backend = int(seed), int(rank), pairing, backend

    def __len__(self) -> int:
        return len(self.inner)

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)

    def __iter__(self):
        n = len(self.inner)
        for clean in self.inner:
            it = self.inner.position - 1  # the meta-iteration this batch belongs to
            step = self.inner.epoch * n + it
            batch = clean.shape[1]
            offset = self.rank * batch
            if self.pairing == "shared":
                clean = clean[0]
                noisy = counterfactual(clean, self.confounders, seed=self.seed, step=step, mode="shared",
                                       sample_offset=offset, backend=self.backend)
                yield [(noisy[k], clean) for k in range(self.num_confounders)]
            else:
                noisy = counterfactual(clean, self.confounders, seed=self.seed, step=step, mode="independent",
                                       sample_offset=offset, backend=self.backend)
                yield [(noisy[k], clean[k].to(noisy.dtype)) for k in range(self.num_confounders)]


