"""Fused K-way Gaussian noise: the public op, its ``torch.library`` registration and fake.

``gaussian_noise(x, sigma, ...)`` -> ``[K, B, C, H, W]``: one launch writes all K noisy versions of
a shared ``[B, C, H, W]`` (or independent ``[K, B, C, H, W]``) batch, reading the clean batch once.
Implementations: ``triton`` (``kernels/noise.py``: CUDA, or CPU under the interpreter) and
``torch`` (:func:`dil_fast.ops.reference.noise.gaussian_noise_ref`); the dispatcher picks.
"""

from __future__ import annotations

import torch

from .. import backends
from ._common import as_i64, empty_samples, samples_channels_last, seed_u64
from .reference.noise import div255, gaussian_noise_ref

__all__ = ["gaussian_noise"]

OP = "noise"
backends.declare(OP, cuda=("triton", "torch"), cpu=("torch",))


@backends.implement(OP, "triton", dtypes=(torch.uint8, torch.float16, torch.bfloat16, torch.float32))
def _noise_triton(x, sigma, gray, seed, step, k_base, sample_offset, stream, clip, round8, out_dtype):
    return backends.triton_kernels("noise").noise_fwd(
        x,
        sigma,
        seed=seed,
        step=step,
        k_base=k_base,
        sample_offset=sample_offset,
        stream=stream,
        clip=clip,
        round8=round8,
        gray=gray,
        out_dtype=out_dtype,
    )


@backends.implement(OP, "torch")
def _noise_torch(x, sigma, gray, seed, step, k_base, sample_offset, stream, clip, round8, out_dtype):
    xf = div255(x.float()) if x.dtype == torch.uint8 else x
    out = empty_samples((sigma.shape[0],) + tuple(x.shape[-4:]), out_dtype, x.device, samples_channels_last(x))
    for k in range(sigma.shape[0]):
        xk = xf if x.dim() == 4 else xf[k]
        out[k] = gaussian_noise_ref(
            xk,
            sigma[k],
            seed=seed,
            step=step,
            k=k_base + k,
            sample_offset=sample_offset,
            stream=stream,
            clip=clip,
            round8=round8,
            gray=None if gray is None else gray[k],
        )
    return out


@torch.library.custom_op("dil_fast::noise", mutates_args=())
def _noise_op(
    x: torch.Tensor,
    sigma: torch.Tensor,
    gray: torch.Tensor | None,
    seed: int,
    step: int,
    k_base: int,
    sample_offset: int,
    stream: int,
    clip: bool,
    round8: bool,
    out_dtype: torch.dtype,
    backend: str,
) -> torch.Tensor:
    return backends.implementation(OP, backend)(
        x, sigma, gray, seed_u64(seed), step, k_base, sample_offset, stream, clip, round8, out_dtype
    )


@_noise_op.register_fake
def _(x, sigma, gray, seed, step, k_base, sample_offset, stream, clip, round8, out_dtype, backend):
    return empty_samples((sigma.shape[0],) + tuple(x.shape[-4:]), out_dtype, x.device, samples_channels_last(x))


def gaussian_noise(
    x: torch.Tensor,
    sigma: torch.Tensor,
    *,
    seed: int,
    step: int,
    k_base: int = 0,
    sample_offset: int = 0,
    stream: int = 0,
    clip: bool = True,
    round8: bool = False,
    gray: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
    backend: str | None = None,
) -> torch.Tensor:
    """K noisy versions: x ``[B, C, H, W]`` (shared) or ``[K, B, C, H, W]``, uint8 or float on
    [0, 1]; sigma ``[K, B]`` on the [0, 1] scale; gray ``[K, B]`` bool (one field for every channel).
    -> ``[K, B, C, H, W]`` of ``out_dtype``: ``round8(clip(x + sigma * n))``, each sample stored NHWC
    when x's are (channels_last: the same numbers, no layout copy before a channels-last model).
    Confounder k draws
    from counter word ``k_base + k`` of the Philox scheme in :mod:`dil_fast.rng`.

    Example::

        noisy = gaussian_noise(clean, torch.full((4, clean.shape[0]), 15 / 255), seed=1, step=0)
    """
    if sigma.dim() != 2:
        raise ValueError(f"sigma must be [K, B], got shape {tuple(sigma.shape)}")
    if x.dim() not in (4, 5) or (x.dim() == 5 and x.shape[0] != sigma.shape[0]) or x.shape[-4] != sigma.shape[1]:
        raise ValueError(f"x {tuple(x.shape)} does not match sigma [K, B] = {tuple(sigma.shape)}")
    be = backends.backend_for(OP, x.device, x.dtype, backend)
    sigma = sigma.to(device=x.device, dtype=torch.float32)
    if gray is not None:
        gray = gray.to(device=x.device, dtype=torch.bool)
    if not samples_channels_last(x):  # channels_last samples stay so, and so do the K outputs
        x = x.contiguous()
    return _noise_op(
        x,
        sigma,
        gray,
        as_i64(seed),
        int(step),
        int(k_base),
        int(sample_offset),
        int(stream),
        bool(clip),
        bool(round8),
        out_dtype,
        be,
    )
