"""Blur confounders: Gaussian blur (the paper's deblurring levels; isotropic runs separable) and
Real-ESRGAN's random-kernel blur (Gaussian / generalized / plateau families, sinc)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..ops._common import to_device
from ..ops.blur import blur2d, blur_separable
from . import blur_kernels as bk
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
from .ctx import Ctx, spread

__all__ = ["GaussianBlur", "RandomKernelBlur"]


@register("blur")
@dataclass(frozen=True)
class GaussianBlur(Confounder):
    """Gaussian blur, reflect-101 borders (OpenCV's default, torch 'reflect'), correlation.

    Isotropic (``sigma_y`` None, ``angle`` 0): one separable kernel of ``kernel_size`` taps.
    Anisotropic: ``sigma`` along the axis rotated by ``angle`` degrees, ``sigma_y`` across it, one
    2-D kernel. Each of sigma, sigma_y, angle may be a (lo, hi) range drawn per sample. The paper's
    deblurring levels are sigma 1..4 (unseen 4.2..5.0); its kernel size is unstated (21 here).
    """

    sigma: float | tuple[float, float] = 2.0
    kernel_size: int = 21
    sigma_y: float | tuple[float, float] | None = None
    angle: float | tuple[float, float] = 0.0

    def __post_init__(self):
        check_range("GaussianBlur.sigma", self.sigma, 0.0, 100.0)
        if self.sigma_y is not None:
            check_range("GaussianBlur.sigma_y", self.sigma_y, 0.0, 100.0)
        if not isinstance(self.kernel_size, int) or self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"GaussianBlur.kernel_size must be a positive odd int, got {self.kernel_size!r}")

    @property
    def isotropic(self) -> bool:
        return self.sigma_y is None and not is_range(self.angle) and float(self.angle) == 0.0

    @property
    def name(self) -> str:
        if self.isotropic:
            return f"blur{fmt(self.sigma)}"
        return f"blur{fmt(self.sigma)}x{fmt(self.sigma if self.sigma_y is None else self.sigma_y)}r{fmt(self.angle)}"

    def weights_1d(self, ctx: Ctx) -> torch.Tensor:
        """Per-sample 1-D kernels ``[B, kernel_size]`` (isotropic blur)."""
        if not is_range(self.sigma):  # nothing to draw: cached device constant
            row = bk.gaussian_1d(torch.tensor([float(self.sigma)]), self.kernel_size)[0]
            return constant(tuple(row.tolist()), ctx.batch, str(ctx.device), torch.float32)
        u = ctx.sample_uniform(3)
        return to_device(bk.gaussian_1d(spread(u[:, 0], self.sigma), self.kernel_size), ctx.device)

    def kernels_2d(self, ctx: Ctx) -> torch.Tensor:
        u = ctx.sample_uniform(3)
        sx = spread(u[:, 0], self.sigma)
        sy = spread(u[:, 1], self.sigma if self.sigma_y is None else self.sigma_y)
        theta = torch.deg2rad(spread(u[:, 2], self.angle).double())
        return to_device(bk.gaussian_2d(sx, sy, theta, self.kernel_size), ctx.device)

    def ops(self):
        return ("blur_separable",) if self.isotropic else ("blur2d",)

    def apply(self, x, ctx, *, backend=None):
        if self.isotropic:
            return blur_separable(x, self.weights_1d(ctx)[None], backend=backend)[0]
        return blur2d(x, self.kernels_2d(ctx), backend=backend)


@register("random_kernel_blur")
@dataclass(frozen=True)
class RandomKernelBlur(Confounder):
    """Real-ESRGAN's random blur kernel, per sample: a size in ``kernel_range`` (odd), a family
    drawn from ``families`` with ``family_probs`` (Gaussian, generalized Gaussian with beta in
    ``beta_g``, plateau with beta in ``beta_p``; isotropic or anisotropic with sigmas in ``sigma``
    and a rotation in [-pi, pi]), replaced by a circular sinc with probability ``sinc_prob``
    (omega in [pi/3, pi] below size 13, [pi/5, pi] above); applied with probability ``prob``
    (identity otherwise). Kernels are centred in ``[B, 21, 21]`` (reflect borders)."""

    sigma: tuple[float, float] = (0.2, 3.0)
    beta_g: tuple[float, float] = (0.5, 4.0)
    beta_p: tuple[float, float] = (1.0, 2.0)
    family_probs: tuple = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob: float = 0.1
    prob: float = 1.0
    kernel_range: tuple[int, int] = (7, 21)
    sinc_only: bool = False

    @property
    def name(self) -> str:
        return "sinc" if self.sinc_only else f"rkblur{fmt(self.sigma)}"

    def kernels(self, ctx: Ctx) -> torch.Tensor:
        u = ctx.sample_uniform(9).double()
        B = u.shape[0]
        lo, hi = self.kernel_range
        n_sizes = (hi - lo) // 2 + 1
        size = lo + 2 * torch.floor(u[:, 0] * n_sizes).clamp_max(n_sizes - 1)
        T = hi
        sx = spread(u[:, 1], self.sigma).double()
        sy = spread(u[:, 2], self.sigma).double()
        theta = (u[:, 3] * 2 - 1) * math.pi
        bg = spread(u[:, 4], self.beta_g).double()
        bp = spread(u[:, 5], self.beta_p).double()
        zero = torch.zeros_like(theta)
        fams = [
            bk.gaussian_2d(sx, sx, zero, T),
            bk.gaussian_2d(sx, sy, theta, T),
            bk.generalized_gaussian_2d(sx, sx, zero, bg, T),
            bk.generalized_gaussian_2d(sx, sy, theta, bg, T),
            bk.plateau_2d(sx, sx, zero, bp, T),
            bk.plateau_2d(sx, sy, theta, bp, T),
        ]
        cum = torch.tensor(np.cumsum(self.family_probs) / np.sum(self.family_probs))
        fam = torch.searchsorted(cum, u[:, 6].contiguous(), right=True).clamp_max(len(fams) - 1)
        kern = torch.stack(fams)[fam, torch.arange(B)]
        omega_lo = torch.where(size < 13, math.pi / 3, math.pi / 5)
        omega = omega_lo + (math.pi - omega_lo) * u[:, 8]
        sinc = bk.sinc_2d(omega, T)
        use_sinc = torch.ones(B, dtype=torch.bool) if self.sinc_only else (u[:, 7] < self.sinc_prob)
        kern = torch.where(use_sinc[:, None, None], sinc, kern)
        # cut each kernel to its own size (centred), renormalise
        r = torch.arange(T, dtype=torch.float64) - T // 2
        inside = r.abs()[None, :] <= (size[:, None] // 2)
        kern = kern.double() * (inside[:, :, None] & inside[:, None, :])
        kern = kern / kern.sum(dim=(1, 2), keepdim=True)
        apply = ctx.sample_uniform(10)[:, 9] < self.prob
        kern = torch.where(apply[:, None, None], kern, bk.delta_2d(B, T).double())
        return to_device(kern.float(), ctx.device)

    def ops(self):
        return ("blur2d",)

    def apply(self, x, ctx, *, backend=None):
        return blur2d(x, self.kernels(ctx), backend=backend)


# ---------------------------------------------------------------------------------- the family
def _fusable(specs) -> bool:
    """K isotropic Gaussian blurs of one kernel size: one separable launch."""
    return all(isinstance(s, GaussianBlur) and s.isotropic and s.kernel_size == specs[0].kernel_size for s in specs)


def _fused_blur(clean, specs, ctxs, *, seed, step, sample_offset, out_dtype, backend):
    weights = torch.stack([c.weights_1d(ctx) for c, ctx in zip(specs, ctxs)])
    return blur_separable(as_kernel_input(clean), weights, out_dtype=out_dtype, backend=backend)


register_family(
    "blur",
    lambda v: GaussianBlur(non_negative(v)),
    axis="Gaussian blur sigma",
    fused=Fused("blur_separable", _fusable, _fused_blur),
)
