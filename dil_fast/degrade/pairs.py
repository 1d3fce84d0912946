"""The degradation stage of the training loop: one meta-iteration's clean batches -> the K
(distorted, clean) pairs the DIL algorithms consume."""

from __future__ import annotations

import torch

from .base import Confounder
from .counterfactual import confounder_ops, counterfactual

__all__ = ["CounterfactualPairs", "PAIRINGS"]

PAIRINGS = ("independent", "shared")


class CounterfactualPairs:
    """``pairs(clean, step)``: clean ``[K, B, 3, p, p]`` on the training device -> ``[(input_k,
    target_k)] * K``, confounder k distorting its own clean batch (``pairing="independent"``, the
    released behaviour) or every confounder the loader's first batch (``"shared"``, the paper's
    stated ideal: the K pairs show the same content under K distortions). One fused launch for
    noise or blur sets.

    ``step`` is the global meta-iteration (epoch * iterations_per_epoch + iteration): with the
    seed it keys the randomness, together with each sample's global index ``rank * B + b``, so the
    distortions do not depend on the number of ranks.
    """

    def __init__(
        self, confounders, *, seed: int, rank: int = 0, pairing: str = "independent", backend: str | None = None
    ):
        if pairing not in PAIRINGS:
            raise ValueError(f"pairing must be 'independent' or 'shared', got {pairing!r}")
        self.confounders: list[Confounder] = list(confounders)
        if not self.confounders:
            raise ValueError("CounterfactualPairs needs at least one confounder")
        self.num_confounders = len(self.confounders)
        self.seed, self.rank, self.pairing, self.backend = int(seed), int(rank), pairing, backend

    def ops(self) -> tuple[str, ...]:
        """The dispatcher ops this stage runs."""
        return confounder_ops(self.confounders)

    def __call__(self, clean: torch.Tensor, step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if clean.dim() != 5 or clean.shape[0] != self.num_confounders:
            raise ValueError(f"expected clean batches [K={self.num_confounders}, B, C, H, W], got {tuple(clean.shape)}")
        offset = self.rank * clean.shape[1]
        if self.pairing == "shared":
            clean = clean[0]
            noisy = counterfactual(
                clean,
                self.confounders,
                seed=self.seed,
                step=step,
                mode="shared",
                sample_offset=offset,
                backend=self.backend,
            )
            return [(noisy[k], clean) for k in range(self.num_confounders)]
        noisy = counterfactual(
            clean,
            self.confounders,
            seed=self.seed,
            step=step,
            mode="independent",
            sample_offset=offset,
            backend=self.backend,
        )
        return [(noisy[k], clean[k].to(noisy.dtype)) for k in range(self.num_confounders)]
