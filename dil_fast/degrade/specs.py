"""Confounder specs: small frozen dataclasses, each a distortion ``apply(x, ctx) -> y`` on float
images ``[B, C, H, W]`` on [0, 1], with a short ``name`` and ``to_dict()`` / ``from_dict()``.

A field given as ``(lo, hi)`` is drawn per sample (uniform) from the counter stream of the
sample's global index, so a sample's parameters do not depend on the batch it is in; per-batch
choices (resize scale and mode, which branch of a :class:`Choice`) are drawn once per
(seed, step, confounder, stage). Noise levels are on the 0..255 scale, as in the paper.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ..ops import degrade as ops
from . import blur_kernels as bk
from ._rng import FIELD, Ctx, spread, to_device

__all__ = [
    "Confounder",
    "GaussianNoise",
    "PoissonNoise",
    "GaussianBlur",
    "JPEG",
    "Resize",
    "Rain",
    "Compose",
    "Choice",
    "RandomKernelBlur",
    "RandomResize",
    "RandomNoise",
    "SPEC_TYPES",
    "spec_from_dict",
]

SPEC_TYPES: dict[str, type] = {}


def _register(kind: str):
    def deco(cls):
        cls.kind = kind
        SPEC_TYPES[kind] = cls
        return cls
    return deco


def _fmt(v) -> str:
    if isinstance(v, (tuple, list)):
        return "-".join(_fmt(x) for x in v)
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _is_range(v) -> bool:
    return isinstance(v, (tuple, list))


def _check_range(name: str, v, lo: float, hi: float) -> None:
    vals = list(v) if _is_range(v) else [v]
    if _is_range(v) and (len(vals) != 2 or vals[0] > vals[1]):
        raise ValueError(f"{name} must be a number or a (lo, hi) pair with lo <= hi, got {v!r}")
    for x in vals:
        if not isinstance(x, (int, float)) or not (lo <= x <= hi):
            raise ValueError(f"{name} must lie in [{lo}, {hi}], got {v!r}")


class Confounder:
    """Base of every spec. Subclasses are frozen dataclasses registered by kind."""

    kind: ClassVar[str] = ""

    @property
    def name(self) -> str:  # pragma: no cover - every spec overrides
        return self.kind

    def apply(self, x: torch.Tensor, ctx: Ctx, *, backend: str | None = None) -> torch.Tensor:
        raise NotImplementedError

    def output_size(self, h: int, w: int, orig: tuple[int, int] | None = None) -> tuple[int | None, int | None]:
        """(H', W') of an (h, w) input; None where it is drawn at random."""
        return h, w

    def to_dict(self) -> dict:
        d = {"type": self.kind}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, tuple) and v and isinstance(v[0], Confounder):
                v = [s.to_dict() for s in v]
            elif isinstance(v, tuple):
                v = list(v)
            d[f.name] = v
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Confounder":
        return spec_from_dict(d)


@functools.lru_cache(maxsize=256)
def _constant(values: tuple, batch: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    """``[batch, len(values)]`` read-only device tensor of per-sample parameters that draw nothing."""
    t = torch.tensor(values, dtype=torch.float64).to(dtype).reshape(1, -1).expand(batch, -1).contiguous()
    return to_device(t, device)


def _tuplify(v):
    if isinstance(v, list):
        if v and isinstance(v[0], dict):
            return tuple(spec_from_dict(s) for s in v)
        return tuple(_tuplify(x) for x in v)
    return v


def spec_from_dict(d: dict) -> Confounder:
    """Inverse of ``to_dict`` for every registered spec (Compose and Choice nest)."""
    d = dict(d)
    kind = d.pop("type", None)
    if kind not in SPEC_TYPES:
        raise ValueError(f"unknown confounder type {kind!r}; known: {', '.join(sorted(SPEC_TYPES))}")
    return SPEC_TYPES[kind](**{k: _tuplify(v) for k, v in d.items()})


# ----------------------------------------------------------------------------------------------


@_register("noise")
@dataclass(frozen=True)
class GaussianNoise(Confounder):
    """Additive white Gaussian noise of level ``sigma`` (0..255 scale; a (lo, hi) pair draws one per
    sample), then clip to [0, 1] (``clip``), then 8-bit rounding (``round8``). ``gray_prob``: the
    probability that a sample gets one noise field for all channels.

    Noise field: Philox normals of (seed, step, k, global sample index) (ops/ref_degrade.py); the
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
        _check_range("GaussianNoise.sigma", self.sigma, 0.0, 1e4)
        _check_range("GaussianNoise.gray_prob", self.gray_prob, 0.0, 1.0)

    @property
    def name(self) -> str:
        return f"noise{_fmt(self.sigma)}" + ("g" if self.gray_prob else "") + ("np" if self.reference_numpy else "")

    def params(self, ctx: Ctx, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-sample sigma ``[B]`` on the [0, 1] scale and gray flags ``[B]`` (or None)."""
        if not _is_range(self.sigma) and self.gray_prob == 0:  # nothing to draw: cached device constant
            return _constant((float(self.sigma) / 255.0,), ctx.batch, str(ctx.device), dtype)[:, 0], None
        u = ctx.sample_uniform(2)
        sigma = (spread(u[:, 0], self.sigma) / 255.0).to(dtype)
        gray = (u[:, 1] < self.gray_prob) if self.gray_prob > 0 else None
        return to_device(sigma, ctx.device), None if gray is None else to_device(gray, ctx.device)

    def apply(self, x, ctx, *, backend=None):
        if self.reference_numpy:
            return self._apply_numpy(x, self.params(ctx, torch.float64)[0], ctx)
        sigma, gray = self.params(ctx)
        return ops.gaussian_noise(x, sigma[None], seed=ctx.seed, step=ctx.step, k_base=ctx.k,
                                  sample_offset=ctx.sample_offset, stream=ctx.stream(FIELD), clip=self.clip,
                                  round8=self.round8, gray=None if gray is None else gray[None], backend=backend)[0]

    def _apply_numpy(self, x, sigma, ctx):
        imgs = x.detach().cpu().float().numpy()
        out = np.empty_like(imgs)
        for b in range(imgs.shape[0]):
            rng = np.random.default_rng([ctx.seed & 0xFFFFFFFFFFFFFFFF, ctx.step, ctx.k, ctx.sample_offset + b, ctx.stage])
            noisy = imgs[b].astype(np.float64) + rng.standard_normal(imgs[b].shape) * float(sigma[b])
            out[b] = np.clip(noisy, 0.0, 1.0) if self.clip else noisy
        return torch.from_numpy(out).to(x.device)


@_register("poisson")
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
        _check_range("PoissonNoise.scale", self.scale, 0.0, 1e3)

    @property
    def name(self) -> str:
        return f"poisson{_fmt(self.scale)}" + ("g" if self.gray_prob else "")

    def apply(self, x, ctx, *, backend=None):
        B, C, H, W = x.shape
        u = ctx.sample_uniform(2)
        scale = to_device(spread(u[:, 0], self.scale).float(), x.device)
        gray = to_device(u[:, 1] < self.gray_prob, x.device)
        xf = x.float()
        lam_c = xf.reshape(B, -1) * self.levels
        lam_g = (0.299 * xf[:, 0] + 0.587 * xf[:, 1] + 0.114 * xf[:, 2]).reshape(B, -1) * self.levels if C == 3 else lam_c[:, : H * W]
        uni = ctx.field_uniform(C * H * W)
        z = ctx.field_normal(C * H * W)
        counts_c = _poisson(lam_c, uni, z).reshape(B, C, H, W) / self.levels
        counts_g = _poisson(lam_g, uni[:, : H * W], z[:, : H * W]).reshape(B, 1, H, W) / self.levels
        noise_c = counts_c - xf
        noise_g = counts_g - lam_g.reshape(B, 1, H, W) / self.levels
        noise = torch.where(gray.reshape(B, 1, 1, 1), noise_g.expand(B, C, H, W), noise_c)
        y = xf + scale.reshape(B, 1, 1, 1) * noise
        return y.clamp(0, 1) if self.clip else y


def _poisson(lam: torch.Tensor, u: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    lam64 = lam.double()
    p = torch.exp(-lam64)
    cdf = p.clone()
    n = torch.zeros_like(lam64)
    u64 = u.double()
    for i in range(1, 60):
        n = n + (u64 > cdf).double()
        p = p * lam64 / i
        cdf = cdf + p
    big = torch.floor(lam64 + torch.sqrt(lam64) * z.double() + 0.5).clamp_min(0)
    return torch.where(lam64 < 24, n, big).float()


@_register("blur")
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
        _check_range("GaussianBlur.sigma", self.sigma, 0.0, 100.0)
        if self.sigma_y is not None:
            _check_range("GaussianBlur.sigma_y", self.sigma_y, 0.0, 100.0)
        if not isinstance(self.kernel_size, int) or self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"GaussianBlur.kernel_size must be a positive odd int, got {self.kernel_size!r}")

    @property
    def isotropic(self) -> bool:
        return self.sigma_y is None and not _is_range(self.angle) and float(self.angle) == 0.0

    @property
    def name(self) -> str:
        if self.isotropic:
            return f"blur{_fmt(self.sigma)}"
        return f"blur{_fmt(self.sigma)}x{_fmt(self.sigma if self.sigma_y is None else self.sigma_y)}r{_fmt(self.angle)}"

    def weights_1d(self, ctx: Ctx) -> torch.Tensor:
        """Per-sample 1-D kernels ``[B, kernel_size]`` (isotropic blur)."""
        if not _is_range(self.sigma):  # nothing to draw: cached device constant
            row = bk.gaussian_1d(torch.tensor([float(self.sigma)]), self.kernel_size)[0]
            return _constant(tuple(row.tolist()), ctx.batch, str(ctx.device), torch.float32)
        u = ctx.sample_uniform(3)
        return to_device(bk.gaussian_1d(spread(u[:, 0], self.sigma), self.kernel_size), ctx.device)

    def kernels_2d(self, ctx: Ctx) -> torch.Tensor:
        u = ctx.sample_uniform(3)
        sx = spread(u[:, 0], self.sigma)
        sy = spread(u[:, 1], self.sigma if self.sigma_y is None else self.sigma_y)
        theta = torch.deg2rad(spread(u[:, 2], self.angle).double())
        return to_device(bk.gaussian_2d(sx, sy, theta, self.kernel_size), ctx.device)

    def apply(self, x, ctx, *, backend=None):
        if self.isotropic:
            return ops.blur_separable(x, self.weights_1d(ctx)[None], backend=backend)[0]
        return ops.blur2d(x, self.kernels_2d(ctx), backend=backend)


@_register("jpeg")
@dataclass(frozen=True)
class JPEG(Confounder):
    """Baseline JPEG at ``quality`` (int 1..100, or a (lo, hi) range drawn per sample as an
    integer): see :func:`dil_fast.ops.ref_degrade.jpeg_ref`. ``differentiable`` uses the cubic
    rounding surrogate (torch path)."""

    quality: int | tuple[int, int] = 75
    differentiable: bool = False

    def __post_init__(self):
        _check_range("JPEG.quality", self.quality, 1, 100)

    @property
    def name(self) -> str:
        return f"jpeg{_fmt(self.quality)}"

    def qualities(self, ctx: Ctx) -> torch.Tensor:
        """Per-sample qualities ``[B]`` (int64, on the host)."""
        if not _is_range(self.quality):
            return torch.full((ctx.batch,), int(self.quality), dtype=torch.int64)
        u = ctx.sample_uniform(1)[:, 0]
        lo, hi = int(self.quality[0]), int(self.quality[1])
        return lo + torch.floor(u.double() * (hi - lo + 1)).long().clamp_max(hi - lo)  # stays on the host: ops.jpeg builds its tables there

    def apply(self, x, ctx, *, backend=None):
        if x.shape[1] != 3:
            raise ValueError(f"JPEG needs RGB input, got {x.shape[1]} channels")
        return ops.jpeg(x, self.qualities(ctx), differentiable=self.differentiable, backend=backend)


@_register("resize")
@dataclass(frozen=True)
class Resize(Confounder):
    """Resize by ``scale`` (output ``floor(H * scale)``, at least 1) or to ``size`` (h, w).
    ``relative_to='original'`` scales the size the whole confounder started from (a final
    Real-ESRGAN resize). Convention: torch ``F.interpolate(..., antialias=True)`` for 'bilinear'
    and 'bicubic', ``mode='area'`` for 'area'."""

    scale: float | None = None
    size: tuple[int, int] | None = None
    mode: str = "bicubic"
    relative_to: str = "current"

    def __post_init__(self):
        if self.mode not in ("area", "bilinear", "bicubic"):
            raise ValueError(f"Resize.mode must be 'area', 'bilinear' or 'bicubic', got {self.mode!r}")
        if (self.scale is None) == (self.size is None):
            raise ValueError("Resize takes exactly one of scale and size")
        if self.scale is not None and not (0 < float(self.scale) <= 64):
            raise ValueError(f"Resize.scale must be in (0, 64], got {self.scale!r}")
        if self.relative_to not in ("current", "original"):
            raise ValueError(f"Resize.relative_to must be 'current' or 'original', got {self.relative_to!r}")

    @property
    def name(self) -> str:
        what = f"{_fmt(self.scale)}" if self.scale is not None else f"{self.size[0]}x{self.size[1]}"
        return f"resize{what}{self.mode}"

    def output_size(self, h, w, orig=None):
        if self.size is not None:
            return int(self.size[0]), int(self.size[1])
        bh, bw = orig if (self.relative_to == "original" and orig is not None) else (h, w)
        if bh is None or bw is None:
            return None, None
        return max(1, int(bh * self.scale)), max(1, int(bw * self.scale))

    def apply(self, x, ctx, *, backend=None):
        size = self.output_size(x.shape[2], x.shape[3], ctx.orig_size)
        return ops.resize(x, size, self.mode, backend=backend)


@_register("rain")
@dataclass(frozen=True)
class Rain(Confounder):
    """Synthetic rain streaks: drops at ``density`` (fraction of pixels) drawn from the auxiliary
    Philox field, smeared along a line of ``length`` pixels at ``angle`` degrees from vertical
    (per-sample 2-D blur), added with ``intensity`` to every channel, clipped. Each field may be a
    (lo, hi) range drawn per sample."""

    density: float | tuple[float, float] = (0.002, 0.01)
    length: float | tuple[float, float] = (8.0, 20.0)
    angle: float | tuple[float, float] = (-20.0, 20.0)
    intensity: float | tuple[float, float] = (0.4, 0.9)

    def __post_init__(self):
        _check_range("Rain.density", self.density, 0.0, 1.0)
        _check_range("Rain.length", self.length, 1.0, 63.0)
        _check_range("Rain.angle", self.angle, -90.0, 90.0)
        _check_range("Rain.intensity", self.intensity, 0.0, 1.0)

    @property
    def name(self) -> str:
        return f"rain{_fmt(self.density)}"

    def apply(self, x, ctx, *, backend=None):
        B, C, H, W = x.shape
        u = ctx.sample_uniform(4)
        density = to_device(spread(u[:, 0], self.density).float(), x.device)
        length = spread(u[:, 1], self.length)
        angle = spread(u[:, 2], self.angle)
        intensity = to_device(spread(u[:, 3], self.intensity).float(), x.device)
        lmax = max(self.length) if _is_range(self.length) else self.length
        T = 2 * int(math.ceil(lmax / 2)) + 1
        f = ctx.field_uniform(2 * H * W)
        drops = (f[:, : H * W] < density[:, None]).float() * (0.5 + 0.5 * f[:, H * W:])
        kern = to_device(bk.motion_line_2d(length, angle, T), x.device)
        streak = ops.blur2d(drops.reshape(B, 1, H, W), kern, backend=backend)
        streak = (streak * to_device(length.float(), x.device).reshape(B, 1, 1, 1)).clamp(0, 1)
        return (x.float() + intensity.reshape(B, 1, 1, 1) * streak).clamp(0, 1)


@_register("compose")
@dataclass(frozen=True)
class Compose(Confounder):
    """Stages applied in order; stage i draws from its own streams (``ctx.child(i)``)."""

    stages: tuple = ()
    label: str | None = None

    def __post_init__(self):
        if not self.stages or not all(isinstance(s, Confounder) for s in self.stages):
            raise ValueError("Compose needs a non-empty sequence of confounder specs")
        object.__setattr__(self, "stages", tuple(self.stages))

    @property
    def name(self) -> str:
        return self.label or "+".join(s.name for s in self.stages)

    def output_size(self, h, w, orig=None):
        orig = orig or (h, w)
        for s in self.stages:
            h, w = s.output_size(h, w, orig)
        return h, w

    def apply(self, x, ctx, *, backend=None):
        if ctx.orig_size is None:
            ctx = dataclasses.replace(ctx, orig_size=(x.shape[2], x.shape[3]))
        for i, s in enumerate(self.stages):
            x = s.apply(x, ctx.child(i), backend=backend)
        return x


@_register("choice")
@dataclass(frozen=True)
class Choice(Confounder):
    """One of ``options`` per batch, with probabilities ``probs`` (default uniform)."""

    options: tuple = ()
    probs: tuple | None = None
    label: str | None = None

    def __post_init__(self):
        if not self.options or not all(isinstance(s, Confounder) for s in self.options):
            raise ValueError("Choice needs a non-empty sequence of confounder specs")
        object.__setattr__(self, "options", tuple(self.options))
        if self.probs is not None and (len(self.probs) != len(self.options) or abs(sum(self.probs) - 1) > 1e-6):
            raise ValueError(f"Choice.probs must have one entry per option and sum to 1, got {self.probs!r}")

    @property
    def name(self) -> str:
        return self.label or "(" + "|".join(s.name for s in self.options) + ")"

    def output_size(self, h, w, orig=None):
        sizes = {s.output_size(h, w, orig) for s in self.options}
        if len(sizes) != 1:
            raise ValueError(f"Choice options give different output sizes {sorted(sizes)}")
        return sizes.pop()

    def apply(self, x, ctx, *, backend=None):
        probs = self.probs or [1.0 / len(self.options)] * len(self.options)
        u = ctx.batch_uniform(1)[0]
        i = int(np.searchsorted(np.cumsum(probs), u, side="right"))
        i = min(i, len(self.options) - 1)
        return self.options[i].apply(x, ctx.child(i), backend=backend)


# ---------------------------------------------------------------- Real-ESRGAN building blocks --

_KERNEL_FAMILIES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")


@_register("random_kernel_blur")
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
        return "sinc" if self.sinc_only else f"rkblur{_fmt(self.sigma)}"

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
            bk.gaussian_2d(sx, sx, zero, T), bk.gaussian_2d(sx, sy, theta, T),
            bk.generalized_gaussian_2d(sx, sx, zero, bg, T), bk.generalized_gaussian_2d(sx, sy, theta, bg, T),
            bk.plateau_2d(sx, sx, zero, bp, T), bk.plateau_2d(sx, sy, theta, bp, T),
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
        inside = (r.abs()[None, :] <= (size[:, None] // 2))
        kern = kern.double() * (inside[:, :, None] & inside[:, None, :])
        kern = kern / kern.sum(dim=(1, 2), keepdim=True)
        apply = ctx.sample_uniform(10)[:, 9] < self.prob
        kern = torch.where(apply[:, None, None], kern, bk.delta_2d(B, T).double())
        return to_device(kern.float(), ctx.device)

    def apply(self, x, ctx, *, backend=None):
        return ops.blur2d(x, self.kernels(ctx), backend=backend)


@_register("random_resize")
@dataclass(frozen=True)
class RandomResize(Confounder):
    """Real-ESRGAN's random resize, per batch: up (scale in ``up``) / down (``down``) / keep with
    ``probs``, mode drawn uniformly from ``modes``."""

    probs: tuple = (0.2, 0.7, 0.1)
    up: tuple[float, float] = (1.0, 1.5)
    down: tuple[float, float] = (0.15, 1.0)
    modes: tuple = ("area", "bilinear", "bicubic")

    @property
    def name(self) -> str:
        return f"rresize{_fmt(self.down)}"

    def apply(self, x, ctx, *, backend=None):
        u0, u1, u2 = ctx.batch_uniform(3)
        cum = np.cumsum(self.probs) / np.sum(self.probs)
        which = int(np.searchsorted(cum, u0, side="right"))
        scale = (self.up[0] + (self.up[1] - self.up[0]) * u1 if which == 0
                 else self.down[0] + (self.down[1] - self.down[0]) * u1 if which == 1 else 1.0)
        mode = self.modes[min(int(u2 * len(self.modes)), len(self.modes) - 1)]
        H, W = x.shape[2:]
        size = (max(1, int(H * scale)), max(1, int(W * scale)))
        if size == (H, W):
            return x
        return ops.resize(x, size, mode, backend=backend)

    def output_size(self, h, w, orig=None):
        return None, None  # random: known again after a fixed-size Resize


@_register("random_noise")
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
        return f"rnoise{_fmt(self.sigma)}"

    def apply(self, x, ctx, *, backend=None):
        g = GaussianNoise(self.sigma, clip=True, gray_prob=self.gray_prob).apply(x, ctx.child(0), backend=backend)
        p = PoissonNoise(self.poisson_scale, gray_prob=self.gray_prob).apply(x, ctx.child(1))
        use_g = to_device(ctx.sample_uniform(1)[:, 0] < self.gaussian_prob, x.device)
        return torch.where(use_g.reshape(-1, 1, 1, 1), g, p)
