"""Restore test images with a network and score them: PSNR / SSIM per image (:mod:`dil_fast.metrics`,
BasicSR conventions, RGB images so ``color_order="rgb"``) at one level or on given degraded images."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..data.images import image_to_tensor, tensor_to_uint8
from ..errors import InputError
from ..metrics import calculate_psnr, calculate_ssim
from ..models.registry import model_scale
from .levels import as_level
from .synthesis import degrade_image, mod_crop

__all__ = ["ImageResult", "restore", "score", "iter_evaluate", "iter_evaluate_pairs", "evaluate", "evaluate_model"]


@dataclass
class ImageResult:
    """One test image scored: ``clean`` the ground truth (``HxWx3`` uint8, cropped to a multiple of
    the scale), ``degraded`` the network input (float32 ``[1, 3, H/s, W/s]`` on the device),
    ``restored`` the output (``HxWx3`` uint8)."""

    name: str
    psnr: float
    ssim: float
    restored: np.ndarray
    degraded: torch.Tensor
    clean: np.ndarray


def restore(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """``model(x)`` under ``torch.no_grad`` for one input ``[1, 3, h, w]`` -> ``HxWx3`` uint8
    (x 255, round half to even, clip)."""
    with torch.no_grad():
        out = model(x)
    return tensor_to_uint8(out.float().cpu())


def score(
    clean: np.ndarray, restored: np.ndarray, *, name: str, y: bool = False, crop_border: int = 0
) -> tuple[float, float]:
    """(PSNR, SSIM) of ``restored`` against ``clean`` (both ``HxWx3`` uint8 RGB); :class:`InputError`
    naming the image when it is too small for SSIM after ``crop_border``."""
    try:
        psnr = calculate_psnr(clean, restored, crop_border, test_y_channel=y, color_order="rgb")
        ssim = calculate_ssim(clean, restored, crop_border, test_y_channel=y, color_order="rgb")
    except ValueError as exc:
        raise InputError(f"{name}: {exc}") from None
    return psnr, ssim


def _scored(model, name: str, clean: np.ndarray, x: torch.Tensor, scale: int, y: bool, crop_border: int) -> ImageResult:
    restored = restore(model, x)
    if restored.shape != clean.shape:
        out, truth = restored.shape, clean.shape
        raise InputError(
            f"{name}: the network turned a {x.shape[2]}x{x.shape[3]} input into {out[0]}x{out[1]}, "
            f"the ground truth is {truth[0]}x{truth[1]} (a x{scale} evaluation)"
        )
    psnr, ssim = score(clean, restored, name=name, y=y, crop_border=crop_border)
    return ImageResult(name, psnr, ssim, restored, x, clean)


def iter_evaluate(
    model: torch.nn.Module,
    images: Iterable[tuple[str, np.ndarray]],
    level,
    *,
    seed: int = 0,
    device="cpu",
    y: bool = False,
    crop_border: int = 0,
    scale: int | None = None,
) -> Iterator[ImageResult]:
    """:class:`ImageResult` of each ``(name, HxWx3 uint8)`` of ``images`` in order, image ``i``
    degraded at ``level`` (:func:`dil_fast.eval.levels.as_level`) by
    :func:`dil_fast.eval.synthesis.degrade_image` with ``(seed, i)``. ``scale`` defaults to the
    network's (``upscale``). The caller puts the model in eval mode."""
    level = as_level(level)
    scale = model_scale(model) if scale is None else int(scale)
    device = torch.device(device)
    for index, (name, img) in enumerate(images):
        clean = mod_crop(img, scale)
        try:
            x = degrade_image(clean, level, seed=seed, index=index, scale=scale, device=device)
        except ValueError as exc:
            raise InputError(f"{name}: {exc}") from None
        yield _scored(model, name, clean, x, scale, y, crop_border)


def iter_evaluate_pairs(
    model: torch.nn.Module,
    pairs: Iterable[tuple[str, np.ndarray, np.ndarray]],
    *,
    device="cpu",
    y: bool = False,
    crop_border: int = 0,
    scale: int | None = None,
) -> Iterator[ImageResult]:
    """:class:`ImageResult` of each ``(name, GT HxWx3 uint8, LQ hxwx3 uint8)`` of a paired test set
    (:func:`dil_fast.eval.testsets.load_paired_images`): the network restores the given LQ."""
    scale = model_scale(model) if scale is None else int(scale)
    device = torch.device(device)
    for name, clean, degraded in pairs:
        yield _scored(model, name, clean, image_to_tensor(degraded)[None].to(device), scale, y, crop_border)


def evaluate(
    model: torch.nn.Module,
    images,
    level,
    *,
    seed: int = 0,
    device="cpu",
    y: bool = False,
    crop_border: int = 0,
    scale: int | None = None,
) -> list[tuple[str, float, float, np.ndarray]]:
    """Degrade ``images`` (``[(name, HxWx3 uint8)]``) at ``level``, restore and score them:
    ``[(name, psnr, ssim, restored HxWx3 uint8)]`` in the order given.

    ``level``: a number (Gaussian noise sigma, the released numpy path), a string naming one level
    (``"noise:50"``, ``"blur:5"``, ``"bicubic:4"``), a :mod:`dil_fast.degrade` spec or an
    :class:`~dil_fast.eval.levels.EvalLevel`; image ``i`` is degraded with ``(seed, i)``. The model
    runs in eval mode under ``torch.no_grad`` on ``device`` with float32 inputs ``[1, 3, h, w]``;
    its training mode is restored afterwards. For ``scale > 1`` (default: the network's) the
    input is ``1/scale`` of the ground truth and the metrics compare the output with it.
    Raises :class:`InputError` naming an image too small for SSIM or of the wrong output size.
    """
    was_training = model.training
    model.eval()
    try:
        return [
            (r.name, r.psnr, r.ssim, r.restored)
            for r in iter_evaluate(
                model, images, level, seed=seed, device=device, y=y, crop_border=crop_border, scale=scale
            )
        ]
    finally:
        model.train(was_training)


def evaluate_model(
    model: torch.nn.Module, images, level: float, seed: int, device, y: bool = False, crop_border: int = 0
) -> list[tuple[str, float, float, np.ndarray]]:
    """Gaussian noise of ``level`` (0..255 scale), image ``i`` drawing from
    :func:`~dil_fast.eval.synthesis.noise_rng` ``(seed, i)``: :func:`evaluate` with a number."""
    return evaluate(model, images, float(level), seed=seed, device=device, y=y, crop_border=crop_border)
