"""The counterfactual batch builder: one clean batch (or K) -> K distorted batches."""
from __future__ import annotations

import torch

from ..ops.blur import blur_separable
from ..ops._common import samples_channels_last
from ..ops.noise import gaussian_noise
from .base import Confounder
from .blur import GaussianBlur
from .ctx import FIELD, Ctx
from .noise import GaussianNoise

__all__ = ["counterfactual", "confounder_ops"]


def _as_float_nchw(x: torch.Tensor) -> torch.Tensor:
    if x.dtype == torch.uint8:
        return x.contiguous().float().div_(255.0)
    if not x.dtype.is_floating_point:
        raise TypeError(f"clean images must be uint8 or float, got {x.dtype}")
    return x.float().contiguous()


def _as_kernel_input(x: torch.Tensor, keep_channels_last: bool = False) -> torch.Tensor:
    # the fused kernels read uint8 / fp16 / bf16 / fp32 directly (no conversion pass); the fused
    # noise keeps channels-last samples channels-last (the crops of a channels-last run)
    if x.dtype in (torch.uint8, torch.float16, torch.bfloat16, torch.float32):
        return x if keep_channels_last and samples_channels_last(x) else x.contiguous()
    return _as_float_nchw(x)


def _fused_noise(specs) -> bool:
    s0 = specs[0]
    return all(isinstance(s, GaussianNoise) and not s.reference_numpy and s.gray_prob == 0
               and s.clip == s0.clip and s.round8 == s0.round8 for s in specs)


def _fused_blur(specs) -> bool:
    return all(isinstance(s, GaussianBlur) and s.isotropic and s.kernel_size == specs[0].kernel_size for s in specs)


def confounder_ops(confounders) -> tuple[str, ...]:
    """The dispatcher ops :func:`counterfactual` runs for ``confounders`` (a forced backend must
    serve all of them; :func:`dil_fast.backends.check_forced`)."""
    confounders = list(confounders)
    if _fused_noise(confounders):
        return ("noise",)
    if _fused_blur(confounders):
        return ("blur_separable",)
    return tuple(dict.fromkeys(op for c in confounders for op in c.ops()))


def counterfactual(clean: torch.Tensor, confounders: list[Confounder], *, seed: int, step: int, mode: str = "shared",
                   sample_offset: int = 0, out_dtype: torch.dtype = torch.float32,
                   backend: str | None = None) -> torch.Tensor:
    """K distorted versions of clean images -> ``[K, B, C, H', W']`` float on [0, 1].

    clean: ``[B, C, H, W]`` (``mode='shared'``: every confounder sees the same batch, the paper's
    ideal) or ``[K, B, C, H, W]`` (``mode='independent'``: confounder k its own batch, as the
    released code), uint8 (0..255) or float (0..1), any memory layout (channels-last included).
    Confounder k draws from (seed, step, k, sample_offset + b): a sample's distortion does not
    depend on the batch split. A list of Gaussian noises (same clip/round8) or of isotropic
    Gaussian blurs (same size) runs as one fused launch that reads the clean batch once; the result
    equals the K separate applications.
    """
    if mode not in ("shared", "independent"):
        raise ValueError(f"mode must be 'shared' or 'independent', got {mode!r}")
    confounders = list(confounders)
    K = len(confounders)
    if K == 0:
        raise ValueError("counterfactual needs at least one confounder")
    if not all(isinstance(c, Confounder) for c in confounders):
        raise TypeError("confounders must be dil_fast.degrade specs (see parse_confounders)")
    want = 4 if mode == "shared" else 5
    if clean.dim() != want or (mode == "independent" and clean.shape[0] != K):
        shape = "[B, C, H, W]" if mode == "shared" else f"[K={K}, B, C, H, W]"
        raise ValueError(f"mode={mode!r} takes clean images {shape}, got {tuple(clean.shape)}")
    B = clean.shape[-4]
    device = clean.device
    ctxs = [Ctx(seed=int(seed), step=int(step), k=k, sample_offset=int(sample_offset), batch=B, device=device)
            for k in range(K)]

    if _fused_noise(confounders):
        sigma = torch.stack([c.params(ctx)[0] for c, ctx in zip(confounders, ctxs)])
        return gaussian_noise(_as_kernel_input(clean, keep_channels_last=True), sigma, seed=seed, step=step, k_base=0, sample_offset=sample_offset,
                                  stream=ctxs[0].stream(FIELD), clip=confounders[0].clip,
                                  round8=confounders[0].round8, out_dtype=out_dtype, backend=backend)
    if _fused_blur(confounders):
        weights = torch.stack([c.weights_1d(ctx) for c, ctx in zip(confounders, ctxs)])
        return blur_separable(_as_kernel_input(clean), weights, out_dtype=out_dtype, backend=backend)

    x = _as_float_nchw(clean)
    outs = []
    for k, (c, ctx) in enumerate(zip(confounders, ctxs)):
        xk = x if mode == "shared" else x[k]
        outs.append(c.apply(xk, ctx, backend=backend).to(out_dtype))
    sizes = {tuple(o.shape) for o in outs}
    if len(sizes) != 1:
        raise ValueError(f"confounders give different output shapes {sorted(sizes)}; they must agree to stack")
    return torch.stack(outs)
