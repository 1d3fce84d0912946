"""The counterfactual batch builder: one clean batch (or K) -> K distorted batches."""

from __future__ import annotations

import torch

from .base import FAMILIES, Confounder, Fused, as_float_nchw
from .ctx import Ctx

__all__ = ["counterfactual", "confounder_ops"]


def _fused(confounders) -> Fused | None:
    """The fused K-way launch a family registered for these confounders, if any."""
    for entry in FAMILIES.entries():
        if entry.fused is not None and entry.fused.applies(confounders):
            return entry.fused
    return None


def confounder_ops(confounders) -> tuple[str, ...]:
    """The dispatcher ops :func:`counterfactual` runs for ``confounders`` (a forced backend must
    serve all of them; :func:`dil_fast.backends.check_forced`)."""
    confounders = list(confounders)
    fused = _fused(confounders)
    if fused is not None:
        return (fused.op,)
    return tuple(dict.fromkeys(op for c in confounders for op in c.ops()))


def counterfactual(
    clean: torch.Tensor,
    confounders: list[Confounder],
    *,
    seed: int,
    step: int,
    mode: str = "shared",
    sample_offset: int = 0,
    out_dtype: torch.dtype = torch.float32,
    backend: str | None = None,
) -> torch.Tensor:
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
    ctxs = [
        Ctx(seed=int(seed), step=int(step), k=k, sample_offset=int(sample_offset), batch=B, device=device)
        for k in range(K)
    ]

    fused = _fused(confounders)
    if fused is not None:
        return fused.run(
            clean,
            confounders,
            ctxs,
            seed=seed,
            step=step,
            sample_offset=sample_offset,
            out_dtype=out_dtype,
            backend=backend,
        )

    x = as_float_nchw(clean)
    outs = []
    for k, (c, ctx) in enumerate(zip(confounders, ctxs)):
        xk = x if mode == "shared" else x[k]
        outs.append(c.apply(xk, ctx, backend=backend).to(out_dtype))
    sizes = {tuple(o.shape) for o in outs}
    if len(sizes) != 1:
        raise ValueError(f"confounders give different output shapes {sorted(sizes)}; they must agree to stack")
    return torch.stack(outs)
