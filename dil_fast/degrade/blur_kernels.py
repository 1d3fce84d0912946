"""Per-sample blur kernels (float32, normalised to sum 1): Gaussian (isotropic, anisotropic),
generalized and plateau Gaussian, circular sinc (low-pass), motion lines. Shapes ``[B, T, T]`` or
``[B, T]`` (1-D); T odd. Grids are pixel offsets from the centre."""

from __future__ import annotations

import math

import torch


def _grid(T: int, device=None):
    r = torch.arange(T, dtype=torch.float64, device=device) - T // 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    return yy, xx


def _norm(k: torch.Tensor) -> torch.Tensor:
    return (k / k.sum(dim=(-2, -1), keepdim=True)).float()


def gaussian_1d(sigma: torch.Tensor, T: int) -> torch.Tensor:
    """``[B, T]``: exp(-t^2 / (2 sigma^2)) normalised (sigma ``[B]`` in pixels)."""
    t = torch.arange(T, dtype=torch.float64, device=sigma.device) - T // 2
    s = sigma.double().clamp_min(1e-3)[:, None]
    g = torch.exp(-(t[None, :] ** 2) / (2 * s * s))
    return (g / g.sum(-1, keepdim=True)).float()


def _quad_form(sx, sy, theta, T):
    """x^T Sigma^-1 x on the grid for Sigma = R diag(sx^2, sy^2) R^T (theta in radians)."""
    yy, xx = _grid(T, sx.device)
    c, s = torch.cos(theta.double())[:, None, None], torch.sin(theta.double())[:, None, None]
    u = c * xx + s * yy  # coordinate along the rotated x axis
    v = -s * xx + c * yy
    sx = sx.double().clamp_min(1e-3)[:, None, None]
    sy = sy.double().clamp_min(1e-3)[:, None, None]
    return (u / sx) ** 2 + (v / sy) ** 2


def gaussian_2d(sx, sy, theta, T: int) -> torch.Tensor:
    return _norm(torch.exp(-0.5 * _quad_form(sx, sy, theta, T)))


def generalized_gaussian_2d(sx, sy, theta, beta, T: int) -> torch.Tensor:
    """exp(-0.5 (x^T Sigma^-1 x)^beta) (Real-ESRGAN's 'generalized' family)."""
    return _norm(torch.exp(-0.5 * _quad_form(sx, sy, theta, T) ** beta.double()[:, None, None]))


def plateau_2d(sx, sy, theta, beta, T: int) -> torch.Tensor:
    """1 / (1 + (x^T Sigma^-1 x)^beta) (the 'plateau' family)."""
    return _norm(1.0 / (1.0 + _quad_form(sx, sy, theta, T) ** beta.double()[:, None, None]))


def sinc_2d(omega: torch.Tensor, T: int) -> torch.Tensor:
    """Circular low-pass: omega J1(omega r) / (2 pi r), centre omega^2 / (4 pi) (omega ``[B]``)."""
    yy, xx = _grid(T, omega.device)
    r = torch.sqrt(yy * yy + xx * xx)[None]
    w = omega.double()[:, None, None]
    safe = torch.where(r > 0, r, torch.ones_like(r))
    k = w * torch.special.bessel_j1(w * safe) / (2 * math.pi * safe)
    k = torch.where(r > 0, k, (w * w / (4 * math.pi)).expand_as(k))
    return _norm(k)


def motion_line_2d(length: torch.Tensor, angle_deg: torch.Tensor, T: int) -> torch.Tensor:
    """Anti-aliased line segments of ``length`` pixels through the centre, ``angle`` from vertical."""
    yy, xx = _grid(T, length.device)
    a = torch.deg2rad(angle_deg.double())[:, None, None]
    along = yy * torch.cos(a) + xx * torch.sin(a)
    across = -yy * torch.sin(a) + xx * torch.cos(a)
    half = length.double()[:, None, None] / 2
    k = (1 - across.abs()).clamp_min(0) * (half + 0.5 - along.abs()).clamp(0, 1)
    return _norm(k + 1e-12)


def delta_2d(B: int, T: int, device=None) -> torch.Tensor:
    k = torch.zeros(B, T, T, device=device)
    k[:, T // 2, T // 2] = 1.0
    return k
