"""Counterfactual degradation synthesis: confounder specs, presets and the K-way batch builder.

    from dil_fast.degrade import GaussianNoise, counterfactual, denoise_levels, parse_confounders
    noisy = counterfactual(clean, denoise_levels((5, 10, 15, 20)), seed=1, step=it)  # [K, B, C, H, W]
    noisy = counterfactual(clean_k, parse_confounders("noise:5,10,15,20"), seed=1, step=it,
                           mode="independent")                                      # clean_k [K, B, C, H, W]

Randomness is Philox keyed by (seed, step, confounder k, global sample index, stage) (see
dil_fast/ops/ref_degrade.py), so outputs do not depend on batch split, GPU count or workers.
Ops run as Triton kernels on CUDA and as the pure-torch reference on the CPU (dil_fast.ops.degrade).
"""
from ._rng import Ctx
from .counterfactual import counterfactual
from .presets import (HYBRID_LEVELS, PAPER_DEBLUR_TRAIN, PAPER_DEBLUR_UNSEEN, PAPER_DENOISE_TRAIN,
                      PAPER_DENOISE_UNSEEN, deblur_levels, denoise_levels, hybrid, parse_confounders, realesrgan_first_order,
                      realesrgan_second_order)
from .specs import (JPEG, SPEC_TYPES, Choice, Compose, Confounder, GaussianBlur, GaussianNoise, PoissonNoise, Rain,
                    RandomKernelBlur, RandomNoise, RandomResize, Resize, spec_from_dict)

__all__ = [
    "Ctx", "counterfactual", "Confounder", "GaussianNoise", "PoissonNoise", "GaussianBlur", "JPEG", "Resize",
    "Rain", "Compose", "Choice", "RandomKernelBlur", "RandomResize", "RandomNoise", "SPEC_TYPES", "spec_from_dict",
    "HYBRID_LEVELS", "PAPER_DENOISE_TRAIN", "PAPER_DENOISE_UNSEEN", "PAPER_DEBLUR_TRAIN", "PAPER_DEBLUR_UNSEEN", "hybrid", "realesrgan_first_order", "realesrgan_second_order", "denoise_levels",
    "deblur_levels", "parse_confounders",
]
