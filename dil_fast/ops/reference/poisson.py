"""Pure-torch reference of Poisson (shot) noise, Real-ESRGAN's form (:mod:`dil_fast.ops.poisson`).

``y = x + scale * (Poisson(x * levels) / levels - x)`` per sample, from counter-based uniforms and
normals (:mod:`dil_fast.rng`): exact inversion of the CDF for rates below 24 (60 terms, tail
below 1e-9), ``round(lambda + sqrt(lambda) z)`` above. A gray sample draws one field from the
BT.601 luma and adds it to every channel. This is the only implementation (no kernel).
"""

from __future__ import annotations

import torch

__all__ = ["poisson_counts_ref", "poisson_noise_ref"]

_EXACT_BELOW = 24.0
_CDF_TERMS = 60


def poisson_counts_ref(lam: torch.Tensor, u: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Poisson draws of rates ``lam`` from uniforms ``u`` and normals ``z`` (all the same shape)."""
    lam64 = lam.double()
    p = torch.exp(-lam64)
    cdf = p.clone()
    n = torch.zeros_like(lam64)
    u64 = u.double()
    for i in range(1, _CDF_TERMS):
        n = n + (u64 > cdf).double()
        p = p * lam64 / i
        cdf = cdf + p
    big = torch.floor(lam64 + torch.sqrt(lam64) * z.double() + 0.5).clamp_min(0)
    return torch.where(lam64 < _EXACT_BELOW, n, big).float()


def poisson_noise_ref(
    x: torch.Tensor,
    scale: torch.Tensor,
    gray: torch.Tensor,
    uniform: torch.Tensor,
    normal: torch.Tensor,
    *,
    levels: int = 256,
    clip: bool = True,
) -> torch.Tensor:
    """x ``[B, C, H, W]`` on [0, 1]; scale ``[B]``; gray ``[B]`` bool; uniform, normal ``[B, C*H*W]``
    (the sample's field; a gray sample uses its first ``H*W``) -> ``[B, C, H, W]`` float32."""
    B, C, H, W = x.shape
    xf = x.float()
    lam_c = xf.reshape(B, -1) * levels
    lam_g = (
        (0.299 * xf[:, 0] + 0.587 * xf[:, 1] + 0.114 * xf[:, 2]).reshape(B, -1) * levels
        if C == 3
        else lam_c[:, : H * W]
    )
    counts_c = poisson_counts_ref(lam_c, uniform, normal).reshape(B, C, H, W) / levels
    counts_g = poisson_counts_ref(lam_g, uniform[:, : H * W], normal[:, : H * W]).reshape(B, 1, H, W) / levels
    noise_c = counts_c - xf
    noise_g = counts_g - lam_g.reshape(B, 1, H, W) / levels
    noise = torch.where(gray.reshape(B, 1, 1, 1), noise_g.expand(B, C, H, W), noise_c)
    y = xf + scale.float().reshape(B, 1, 1, 1) * noise
    return y.clamp(0, 1) if clip else y
