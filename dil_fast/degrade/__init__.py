"""Counterfactual degradation synthesis: confounder specs, presets and the K-way batch builder.

    from dil_fast.degrade import GaussianNoise, counterfactual, denoise_levels, parse_confounders
    noisy = counterfactual(clean, denoise_levels((5, 10, 15, 20)), seed=1, step=it)  # [K, B, C, H, W]
    noisy = counterfactual(clean_k, parse_confounders("noise:5,10,15,20"), seed=1, step=it,
                           mode="independent")                                      # clean_k [K, B, C, H, W]

One module per family of specs (noise, blur, resize, jpeg, rain, compose), the spec base and
the registries in :mod:`.base` (spec kinds; :data:`FAMILIES`, the names ``--confounders`` writes,
each registered by its module with :func:`register_family`), the randomness address in :mod:`.ctx`. Randomness is
Philox keyed by
(seed, step, confounder k, global sample index, stage) (:mod:`dil_fast.rng`), so outputs do not
depend on batch split, GPU count or workers. The math of every distortion is an op of
:mod:`dil_fast.ops` (Triton kernels on CUDA, the pure-torch references on the CPU).
"""

from .base import FAMILIES, SPEC_TYPES, Confounder, Fused, register, register_family, spec_from_dict
from .blur import GaussianBlur, RandomKernelBlur
from .compose import Choice, Compose
from .counterfactual import confounder_ops, counterfactual
from .ctx import Ctx
from .jpeg import JPEG
from .noise import GaussianNoise, PoissonNoise, RandomNoise
from .pairs import CounterfactualPairs
from .presets import (
    HYBRID_LEVELS,
    PAPER_DEBLUR_TRAIN,
    PAPER_DEBLUR_UNSEEN,
    PAPER_DENOISE_TRAIN,
    PAPER_DENOISE_UNSEEN,
    RAIN_LEVELS,
    bicubic,
    deblur_levels,
    denoise_levels,
    hybrid,
    parse_confounders,
    rain,
    realesrgan_first_order,
    realesrgan_second_order,
    realsr_confounders,
)
from .rain import Rain
from .realnoise import CameraNoise
from .resize import RandomResize, Resize

__all__ = [
    "Ctx",
    "counterfactual",
    "confounder_ops",
    "CounterfactualPairs",
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
    "HYBRID_LEVELS",
    "PAPER_DENOISE_TRAIN",
    "PAPER_DENOISE_UNSEEN",
    "PAPER_DEBLUR_TRAIN",
    "PAPER_DEBLUR_UNSEEN",
    "hybrid",
    "realesrgan_first_order",
    "realesrgan_second_order",
    "denoise_levels",
    "deblur_levels",
    "parse_confounders",
    "RAIN_LEVELS",
    "rain",
    "realsr_confounders",
    "bicubic",
    "CameraNoise",
    "FAMILIES",
    "Fused",
    "register",
    "register_family",
]
