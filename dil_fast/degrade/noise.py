"""Noise confounders: additive Gaussian (the paper's denoising levels), Poisson shot noise, and
Real-ESRGAN's random Gaussian-or-Poisson stage."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..ops._common import to_device
from ..ops.noise import gaussian_noise
from ..ops.poisson import poisson_noise
from .base import (
    Confounder,
    Fused,
    as_kernel_input,
    check_range,
    constant,
    fmt,
    is_range,
    non_negative,
    register,
    register_family,
)
from .ctx import FIELD, Ctx, spread

__all__ = ["GaussianNoise", "PoissonNoise", "RandomNoise"]


@register("noise")
@dataclass(frozen=True)
class GaussianNoise(Confounder):
    """Additive white Gaussian noise of level ``sigma`` (0..255 scale; a (lo, hi) pair draws one per
    sample), then clip to [0, 1] (``clip``), then 8-bit rounding (``round8``). ``gray_prob``: the
    probability that a sample gets one noise field for all channels.

    Noise field: Philox normals of (seed, step, k, global sample index) (:mod:`dil_fast.rng`); the
    Triton kernel and the torch reference draw the same uint32 words and agree to float rounding.
    ``reference_numpy=True`` reproduces the released code's arithmetic instead: float64 numpy
    normals per image on the CPU, clip, float32, no rounding; each image's numpy Generator is
    seeded with (seed, step, k, sample index) (the release used the unseeded global RNG).
    """

    sigma: float | tuple[float, float] = 15.0
    clip: bool = True
    round8: bool = False
    gray_prob: float = 0.0
    reference_numpy: bool = False

    def __post_init__(self):
        check_range("GaussianNoise.sigma", self.sigma, 0.0, 1e4)
        check_range("GaussianNoise.gray_prob", self.gray_prob, 0.0, 1.0)

    @property
    def name(self) -> str:
        return f"noise{fmt(self.sigma)}" + ("g" if self.gray_prob else "") + ("np" if self.reference_numpy else "")

    def params(self, ctx: Ctx, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-sample sigma ``[B]`` on the [0, 1] scale and gray flags ``[B]`` (or None)."""
        if not is_range(self.sigma) and self.gray_prob == 0:  # nothing to draw: cached device constant
            return constant((float(self.sigma) / 255.0,), ctx.batch, str(ctx.device), dtype)[:, 0], None
        u = ctx.sample_uniform(2)
        sigma = (spread(u[:, 0], self.sigma) / 255.0).to(dtype)
        gray = (u[:, 1] < self.gray_prob) if self.gray_prob > 0 else None
        return to_device(sigma, ctx.device), None if gray is None else to_device(gray, ctx.device)

    def apply(self, x, ctx, *, backend=None):
        if self.reference_numpy:
            return self._apply_numpy(x, self.params(ctx, torch.float64)[0], ctx)
        sigma, gray = self.params(ctx)
        return gaussian_noise(
            x,
            sigma[None],
            seed=ctx.seed,
            step=ctx.step,
            k_base=ctx.k,
            sample_offset=ctx.sample_offset,
            stream=ctx.stream(FIELD),
            clip=self.clip,
            round8=self.round8,
            gray=None if gray is None else gray[None],
            backend=backend,
        )[0]

    def ops(self):
        return () if self.reference_numpy else ("noise",)

    def _apply_numpy(self, x, sigma, ctx):
        imgs = x.detach().cpu().float().numpy()
        out = np.empty_like(imgs)
        for b in range(imgs.shape[0]):
            rng = np.random.default_rng(
                [ctx.seed & 0xFFFFFFFFFFFFFFFF, ctx.step, ctx.k, ctx.sample_offset + b, ctx.stage]
            )
            noisy = imgs[b].astype(np.float64) + rng.standard_normal(imgs[b].shape) * float(sigma[b])
            out[b] = np.clip(noisy, 0.0, 1.0) if self.clip else noisy
        return torch.from_numpy(out).to(x.device)


@register("poisson")
@dataclass(frozen=True)
class PoissonNoise(Confounder):
    """Shot noise as Real-ESRGAN: ``x + scale * (Poisson(x * levels) / levels - x)``, clipped.

    Counter-based sampling in torch (no Triton kernel): exact inversion of the CDF for rates below
    24 (60 terms, tail < 1e-9), ``round(lambda + sqrt(lambda) z)`` (z a Philox normal) above.
    ``scale`` (or a (lo, hi) range) per sample; ``levels`` 256 assumes 8-bit sources.
    """

    scale: float | tuple[float, float] = 1.0
    gray_prob: float = 0.0
    clip: bool = True
    levels: int = 256

    def __post_init__(self):
        check_range("PoissonNoise.scale", self.scale, 0.0, 1e3)

    @property
    def name(self) -> str:
        return f"poisson{fmt(self.scale)}" + ("g" if self.gray_prob else "")

    def apply(self, x, ctx, *, backend=None):
        B, C, H, W = x.shape
        u = ctx.sample_uniform(2)
        scale = to_device(spread(u[:, 0], self.scale).float(), x.device)
        gray = to_device(u[:, 1] < self.gray_prob, x.device)
        return poisson_noise(
            x,
            scale,
            gray,
            ctx.field_uniform(C * H * W),
            ctx.field_normal(C * H * W),
            levels=self.levels,
            clip=self.clip,
            backend=backend,
        )

    def ops(self):
        return ("poisson",)


@register("random_noise")
@dataclass(frozen=True)
class RandomNoise(Confounder):
    """Real-ESRGAN's noise stage, per sample: Gaussian (level in ``sigma``) with probability
    ``gaussian_prob``, else Poisson (scale in ``poisson_scale``); gray with ``gray_prob``; clipped."""

    gaussian_prob: float = 0.5
    sigma: tuple[float, float] = (1.0, 30.0)
    poisson_scale: tuple[float, float] = (0.05, 3.0)
    gray_prob: float = 0.4

    @property
    def name(self) -> str:
        return f"rnoise{fmt(self.sigma)}"

    def apply(self, x, ctx, *, backend=None):
        g = GaussianNoise(self.sigma, clip=True, gray_prob=self.gray_prob).apply(x, ctx.child(0), backend=backend)
        p = PoissonNoise(self.poisson_scale, gray_prob=self.gray_prob).apply(x, ctx.child(1))
        use_g = to_device(ctx.sample_uniform(1)[:, 0] < self.gaussian_prob, x.device)
        return torch.where(use_g.reshape(-1, 1, 1, 1), g, p)

    def ops(self):
        return ("noise", "poisson")


# ---------------------------------------------------------------------------------- the families
def _fusable(specs) -> bool:
    """K Gaussian noises the fused kernel serves: drawn in dil_fast's way, no gray fields, one
    clip/round8 setting."""
    s0 = specs[0]
    return all(
        isinstance(s, GaussianNoise)
        and not s.reference_numpy
        and s.gray_prob == 0
        and s.clip == s0.clip
        and s.round8 == s0.round8
        for s in specs
    )


def _fused_noise(clean, specs, ctxs, *, seed, step, sample_offset, out_dtype, backend):
    """One launch for the K noise levels, reading the clean batch once (channels-last kept)."""
    sigma = torch.stack([c.params(ctx)[0] for c, ctx in zip(specs, ctxs)])
    return gaussian_noise(
        as_kernel_input(clean, keep_channels_last=True),
        sigma,
        seed=seed,
        step=step,
        k_base=0,
        sample_offset=sample_offset,
        stream=ctxs[0].stream(FIELD),
        clip=specs[0].clip,
        round8=specs[0].round8,
        out_dtype=out_dtype,
        backend=backend,
    )


register_family(
    "noise",
    lambda v: GaussianNoise(non_negative(v)),
    axis="Gaussian noise sigma (0..255)",
    aliases=("gaussian",),
    fused=Fused("noise", _fusable, _fused_noise),
)
register_family("poisson", lambda v: PoissonNoise(non_negative(v)), axis="Poisson noise scale")
