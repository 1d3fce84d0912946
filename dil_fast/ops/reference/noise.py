"""Pure-torch reference of the fused Gaussian-noise op (:mod:`dil_fast.ops.noise`): the oracle of
``kernels/noise.py`` and its CPU path. The noise field is Philox normals (:mod:`dil_fast.rng`); the
Triton kernel draws the same uint32 words, so values agree up to the float rounding of log/cos/sin
(compiled for CUDA, its field equals this one run on CUDA bit for bit), and its arithmetic after the
draw equals this one's on either device: the divisions by 255 divide by a 255 held in a device
tensor (:func:`div255`), because torch turns a division by a Python number on CUDA into a
multiplication by its reciprocal, which differs from the division in the last bit for about half
of the byte values."""

from __future__ import annotations

import torch

from ...rng import philox_normal

__all__ = ["gaussian_noise_ref", "div255"]


def div255(t: torch.Tensor) -> torch.Tensor:
    """``t / 255`` rounded as IEEE division on every device (a 0-dim tensor divisor on ``t``'s device
    is a true elementwise division on CUDA; a Python number would be a reciprocal multiply)."""
    return t / t.new_full((), 255.0)


def gaussian_noise_ref(
    x: torch.Tensor,
    sigma: torch.Tensor,
    *,
    seed: int,
    step: int,
    k: int = 0,
    sample_offset: int = 0,
    stream: int = 0,
    clip: bool = True,
    round8: bool = False,
    gray: torch.Tensor | None = None,
    normal: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x + sigma[b] * n`` (then clip to [0, 1], then round to multiples of 1/255), in float32.

    x ``[B, C, H, W]`` on [0, 1]; sigma ``[B]`` on the [0, 1] scale (sigma_255 / 255); gray ``[B]``
    bool: one field for all channels. The field element of pixel (c, h, w) is normal number
    ``c*H*W + h*W + w`` of the sample's stream (``h*W + w`` when gray); ``normal`` ``[B, C*H*W]``
    replaces the drawn field (to test a kernel's arithmetic apart from its random numbers).
    """
    B, C, H, W = x.shape
    xf = x.float()
    if normal is None:
        idx = torch.arange(B, device=x.device, dtype=torch.int64) + int(sample_offset)
        normal = philox_normal(C * H * W, idx, seed=seed, step=step, k=k, stream=stream)
    n = normal.reshape(B, C, H, W).float()
    if gray is not None:
        n = torch.where(gray.reshape(B, 1, 1, 1).bool(), n[:, :1].expand(B, C, H, W), n)
    y = xf + sigma.float().reshape(B, 1, 1, 1) * n
    if clip:
        y = y.clamp(0.0, 1.0)
    if round8:
        y = div255(torch.floor(y * 255.0 + 0.5))
    return y
