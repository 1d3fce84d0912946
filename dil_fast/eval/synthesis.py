"""The degraded input of one test image at one level, seeded by (seed, image index) only.

Two paths:

* **plain Gaussian noise** (``--level``, ``noise:S``): the released ``eval_noise.py`` arithmetic,
  ``HxWx3`` uint8 -> float32 / 255 -> + float64 standard normals x S / 255 -> clip to [0, 1] ->
  float32, the normals drawn by ``numpy.random.default_rng(SeedSequence([seed, i]))`` for image
  ``i`` (:func:`noise_rng`, :func:`add_noise`);
* **every other spec**: :func:`dil_fast.degrade.counterfactual` of the one image
  (``[1, 3, H, W]`` uint8) with ``seed`` and ``step = i``, so image ``i``'s degradation does not
  depend on the other images.

For an x``s`` super-resolution network (``s > 1``) the input must be ``1/s`` of the ground
truth: a level that keeps the size is followed by a bicubic resize to ``1/s``
(:func:`dil_fast.degrade.bicubic`; ``bicubic:s`` is that resize alone); the ground truth is first
cropped to a multiple of ``s`` (:func:`mod_crop`, BasicSR's convention).
"""

from __future__ import annotations

import numpy as np
import torch

from ..degrade import bicubic, counterfactual
from .levels import EvalLevel

__all__ = ["noise_rng", "add_noise", "mod_crop", "needs_final_resize", "degrade_image"]


def noise_rng(seed: int, index: int) -> np.random.Generator:
    """The generator that draws the noise of test image ``index`` (0-based, sorted order)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def add_noise(img: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """``HxWx3`` uint8 -> float32 ``HxWx3`` in [0, 1]: x / 255 + N(0, 1) x level / 255, clipped."""
    clean = img.astype(np.float32) / 255.0
    noisy = clean + rng.standard_normal(img.shape) * level / 255.0  # float64, the reference's order
    return np.clip(noisy, 0.0, 1.0).astype(np.float32)


def mod_crop(img: np.ndarray, scale: int) -> np.ndarray:
    """``img`` cropped at the bottom and right to a multiple of ``scale`` in both dimensions."""
    if scale <= 1:
        return img
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def needs_final_resize(level: EvalLevel, scale: int, h: int, w: int) -> bool:
    """Whether ``level`` on an ``h x w`` ground truth (a multiple of ``scale``) needs the final
    resize to ``1/scale``: True when it keeps the size, False when it already gives
    ``h/scale x w/scale``. ValueError (one line) for any other output size."""
    out = level.spec.output_size(h, w, (h, w))
    if out == (h, w):
        return scale > 1
    if scale > 1 and out == (h // scale, w // scale):
        return False
    got = "a random size" if None in out else f"{out[0]}x{out[1]}"
    want = f"{h // scale}x{w // scale} or {h}x{w}" if scale > 1 else f"{h}x{w}"
    raise ValueError(f"{level.name} turns a {h}x{w} image into {got}; a x{scale} network needs {want} inputs")


def degrade_image(
    clean: np.ndarray, level: EvalLevel, *, seed: int, index: int, scale: int = 1, device="cpu"
) -> torch.Tensor:
    """The network input of test image ``index`` at ``level``: float32 ``[1, 3, H/s, W/s]`` on
    ``device`` with values in [0, 1] (see the module docstring; ``clean`` is ``HxWx3`` uint8, its
    sides multiples of ``scale``)."""
    h, w = clean.shape[:2]
    final_resize = needs_final_resize(level, scale, h, w)
    sigma = level.numpy_sigma
    if sigma is not None:
        noisy = add_noise(clean, sigma, noise_rng(seed, index))
        x = torch.from_numpy(np.ascontiguousarray(noisy.transpose(2, 0, 1)))[None].to(device)
    else:
        chw = torch.from_numpy(np.ascontiguousarray(clean.transpose(2, 0, 1)))[None].to(device)
        x = counterfactual(chw, [level.spec], seed=seed, step=index, mode="shared")[0]
    if final_resize:  # its own call, so the level draws exactly what it draws at scale 1
        x = counterfactual(x, [bicubic(scale)], seed=seed, step=index, mode="shared")[0]
    return x
