"""Where a spec's random numbers come from: a :class:`Ctx` names (seed, step, confounder k, global
sample offset, stage) and draws from the Philox counter scheme of :mod:`dil_fast.rng`."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .. import rng

FIELD, SAMPLE_PARAMS, BATCH_PARAMS, AUX_FIELD = 0, 1, 2, 3
BATCH_INDEX = 0xFFFFFFFF  # counter word c1 of per-batch draws (no real sample has this index)


@dataclass(frozen=True)
class Ctx:
    """Randomness address of one confounder applied to one batch ``[B, ...]``.

    ``sample_offset`` is the global index of the batch's first sample; ``stage`` separates the
    streams of the stages of a Compose (child ``i`` of stage ``s`` is ``(32 s + i + 1) mod 8192``).
    ``orig_size`` is the (H, W) the whole confounder started from (for final resizes).
    """

    seed: int
    step: int
    k: int = 0
    sample_offset: int = 0
    batch: int = 1
    stage: int = 0
    device: torch.device | str = "cpu"
    orig_size: tuple[int, int] | None = None

    def stream(self, purpose: int) -> int:
        return ((self.stage & 0x1FFF) << 3) | purpose

    def child(self, i: int) -> "Ctx":
        return replace(self, stage=(self.stage * 32 + i + 1) & 0x1FFF)

    def sample_index(self, device="cpu") -> torch.Tensor:
        return torch.arange(self.batch, dtype=torch.int64, device=device) + int(self.sample_offset)

    def sample_uniform(self, n: int) -> torch.Tensor:
        """``[B, n]`` uniforms in (0, 1), a function of each sample's global index only (on the CPU:
        parameters are a few numbers per sample; ``ops._common.to_device`` moves them without a sync)."""
        return rng.philox_uniform(
            n, self.sample_index(), seed=self.seed, step=self.step, k=self.k, stream=self.stream(SAMPLE_PARAMS)
        )

    def batch_uniform(self, n: int) -> list[float]:
        """``n`` uniforms shared by the whole batch (per-batch choices such as a resize scale)."""
        idx = torch.full((1,), BATCH_INDEX, dtype=torch.int64)
        u = rng.philox_uniform(n, idx, seed=self.seed, step=self.step, k=self.k, stream=self.stream(BATCH_PARAMS))
        return u[0].tolist()

    def field_uniform(self, n: int) -> torch.Tensor:
        """``[B, n]`` uniforms of the auxiliary pixel field (rain drops, Poisson inversion)."""
        return rng.philox_uniform(
            n, self.sample_index(self.device), seed=self.seed, step=self.step, k=self.k, stream=self.stream(AUX_FIELD)
        )

    def field_normal(self, n: int) -> torch.Tensor:
        """``[B, n]`` normals of the pixel field (the stream the noise kernel uses)."""
        return rng.philox_normal(
            n, self.sample_index(self.device), seed=self.seed, step=self.step, k=self.k, stream=self.stream(FIELD)
        )


def spread(u: torch.Tensor, value) -> torch.Tensor:
    """A fixed value or a (lo, hi) range -> per-sample values from uniforms ``u`` ``[B]`` (float64)."""
    if isinstance(value, (tuple, list)):
        lo, hi = float(value[0]), float(value[1])
        return lo + (hi - lo) * u.double()
    return torch.full_like(u, float(value), dtype=torch.float64)
