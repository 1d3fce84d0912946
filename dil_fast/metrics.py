"""PSNR and SSIM with the BasicSR conventions the reference evaluation uses.

NumPy versions (the reported numbers) take two uint8 (or float in [0, 255]) images, ``HWC`` or
``CHW``, and compute in float64:

* ``crop_border`` pixels are removed on each side first;
* PSNR = 20 log10(255 / sqrt(MSE)) over all remaining samples, ``+inf`` when MSE is 0;
* SSIM: 11x11 Gaussian window (sigma 1.5, ``cv2.getGaussianKernel``) applied with
  ``cv2.filter2D``, statistics kept only where the window fits ("valid": 5 pixels dropped per
  side), C1 = (0.01*255)^2, C2 = (0.03*255)^2, mean of the SSIM map per channel, then the mean
  over channels;
* ``test_y_channel``: both images are reduced to BT.601 luma first,
  ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` on RGB in [0, 1], giving Y in [16, 235] on the
  0..255 scale, *not* rounded. Inputs are RGB (dil_fast's convention; BasicSR's own images are
  BGR, hence its ``bgr2ycbcr``). BasicSR does this step in float32; we do it in float64, which
  moves PSNR by about 1e-6 dB (measured on noisy 64x64 images).

A dataset score is the mean of the per-image scores.

Torch versions (:func:`psnr_torch`, :func:`ssim_torch`) take batches ``[N, C, H, W]`` of floats
on any device with values in ``[0, data_range]``, compute in float64 and return one score per
image (a tensor ``[N]``, no host sync). On inputs quantised to k/255 with ``data_range=1`` they
match the NumPy versions on the corresponding uint8 images.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "calculate_psnr",
    "calculate_ssim",
    "reorder_image",
    "rgb2y",
    "bgr2y",
    "psnr_torch",
    "ssim_torch",
]

# BT.601 luma weights for RGB in [0, 1] -> Y in [16, 235]
_Y_WEIGHTS_RGB = (65.481, 128.553, 24.966)
_SSIM_KSIZE = 11
_SSIM_SIGMA = 1.5
_SSIM_PAD = _SSIM_KSIZE // 2


def reorder_image(img: np.ndarray, input_order: str = "HWC") -> np.ndarray:
    """Return ``img`` as ``HWC`` (a 2-D image becomes ``HxWx1``)."""
    if input_order not in ("HWC", "CHW"):
        raise ValueError(f"input_order must be 'HWC' or 'CHW', got {input_order!r}")
    img = np.asarray(img)
    if img.ndim == 2:
        return img[..., None]
    if img.ndim != 3:
        raise ValueError(f"expected a 2-D or 3-D image, got shape {img.shape}")
    return img.transpose(1, 2, 0) if input_order == "CHW" else img


def rgb2y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma of an ``HxWx3`` RGB image on the 0..255 scale -> ``HxW`` float64 in [16, 235]."""
    x = np.asarray(img, dtype=np.float64) / 255.0
    r, g, b = _Y_WEIGHTS_RGB
    return 16.0 + r * x[..., 0] + g * x[..., 1] + b * x[..., 2]


def bgr2y(img: np.ndarray) -> np.ndarray:
    """As :func:`rgb2y` for BGR channel order (BasicSR's images)."""
    return rgb2y(np.asarray(img)[..., ::-1])


def _prepare(img1, img2, crop_border: int, input_order: str, test_y_channel: bool):
    if np.shape(img1) != np.shape(img2):
        raise ValueError(f"image shapes differ: {np.shape(img1)} vs {np.shape(img2)}")
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    a = reorder_image(img1, input_order).astype(np.float64)
    b = reorder_image(img2, input_order).astype(np.float64)
    if crop_border:
        a = a[crop_border:-crop_border, crop_border:-crop_border, :]
        b = b[crop_border:-crop_border, crop_border:-crop_border, :]
    if a.size == 0:
        raise ValueError(f"nothing left after removing crop_border={crop_border} from a {np.shape(img1)} image")
    if test_y_channel:
        if a.shape[2] != 3:
            raise ValueError(f"test_y_channel needs 3-channel RGB images, got {a.shape[2]} channels")
        a = rgb2y(a)[..., None]
        b = rgb2y(b)[..., None]
    return a, b


def calculate_psnr(img1, img2, crop_border: int, input_order: str = "HWC", test_y_channel: bool = False) -> float:
    """PSNR in dB between two images on the 0..255 scale (see the module docstring)."""
    a, b = _prepare(img1, img2, crop_border, input_order, test_y_channel)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0:
        return float("inf")
    return 20.0 * math.log10(255.0 / math.sqrt(mse))


def _gaussian_window() -> np.ndarray:
    k = cv2.getGaussianKernel(_SSIM_KSIZE, _SSIM_SIGMA)
    return np.outer(k, k.transpose())


def _ssim_channel(a: np.ndarray, b: np.ndarray, window: np.ndarray) -> float:
    c1 = (0.01 * 255) ** 2
    c2 = (0.03 * 255) ** 2
    p = _SSIM_PAD

    def filt(x):
        return cv2.filter2D(x, -1, window)[p:-p, p:-p]

    mu1, mu2 = filt(a), filt(b)
    mu1_sq, mu2_sq, mu1_mu2 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma1_sq = filt(a * a) - mu1_sq
    sigma2_sq = filt(b * b) - mu2_sq
    sigma12 = filt(a * b) - mu1_mu2
    ssim_map = ((2 * mu1_mu2 + c1) * (2 * sigma12 + c2)) / ((mu1_sq + mu2_sq + c1) * (sigma1_sq + sigma2_sq + c2))
    return float(ssim_map.mean())


def calculate_ssim(img1, img2, crop_border: int, input_order: str = "HWC", test_y_channel: bool = False) -> float:
    """SSIM between two images on the 0..255 scale (see the module docstring).

    Raises ``ValueError`` when the (cropped) image is smaller than the 11x11 window.
    """
    a, b = _prepare(img1, img2, crop_border, input_order, test_y_channel)
    if a.shape[0] < _SSIM_KSIZE or a.shape[1] < _SSIM_KSIZE:
        raise ValueError(
            f"SSIM needs images of at least {_SSIM_KSIZE}x{_SSIM_KSIZE} pixels after cropping, "
            f"got {a.shape[0]}x{a.shape[1]}"
        )
    window = _gaussian_window()
    return float(np.mean([_ssim_channel(a[..., c], b[..., c], window) for c in range(a.shape[2])]))


# ----------------------------------------------------------------------------- torch, batched


def _prepare_torch(x: torch.Tensor, y: torch.Tensor, data_range: float, crop_border: int, test_y_channel: bool):
    if x.shape != y.shape:
        raise ValueError(f"tensor shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.dim() != 4:
        raise ValueError(f"expected [N, C, H, W] tensors, got shape {tuple(x.shape)}")
    # work on the 0..255 scale in float64 so the numbers are the NumPy versions'
    scale = 255.0 / float(data_range)
    a = x.detach().to(torch.float64) * scale
    b = y.detach().to(torch.float64) * scale
    if crop_border:
        a = a[..., crop_border:-crop_border, crop_border:-crop_border]
        b = b[..., crop_border:-crop_border, crop_border:-crop_border]
    if a.numel() == 0:
        raise ValueError(f"nothing left after removing crop_border={crop_border}")
    if test_y_channel:
        if a.shape[1] != 3:
            raise ValueError(f"test_y_channel needs 3-channel RGB tensors, got {a.shape[1]} channels")
        w = torch.tensor(_Y_WEIGHTS_RGB, dtype=torch.float64, device=a.device).view(1, 3, 1, 1)
        a = 16.0 + (a / 255.0 * w).sum(1, keepdim=True)
        b = 16.0 + (b / 255.0 * w).sum(1, keepdim=True)
    return a, b


def psnr_torch(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, crop_border: int = 0,
               test_y_channel: bool = False) -> torch.Tensor:
    """Per-image PSNR ``[N]`` (float64, ``+inf`` where identical) of batches ``[N, C, H, W]``."""
    a, b = _prepare_torch(x, y, data_range, crop_border, test_y_channel)
    mse = (a - b).pow(2).flatten(1).mean(1)
    return 20.0 * torch.log10(255.0 / torch.sqrt(mse))  # mse 0 -> 255/0 = inf -> +inf dB


def _gaussian_window_torch(device) -> torch.Tensor:
    coords = torch.arange(_SSIM_KSIZE, dtype=torch.float64, device=device) - _SSIM_PAD
    g = torch.exp(-(coords**2) / (2 * _SSIM_SIGMA**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim_torch(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, crop_border: int = 0,
               test_y_channel: bool = False) -> torch.Tensor:
    """Per-image SSIM ``[N]`` (float64) of batches ``[N, C, H, W]``: per-channel mean SSIM, averaged."""
    a, b = _prepare_torch(x, y, data_range, crop_border, test_y_channel)
    n, c, h, w = a.shape
    if h < _SSIM_KSIZE or w < _SSIM_KSIZE:
        raise ValueError(f"SSIM needs images of at least {_SSIM_KSIZE}x{_SSIM_KSIZE} pixels, got {h}x{w}")
    c1 = (0.01 * 255) ** 2
    c2 = (0.03 * 255) ** 2
    win = _gaussian_window_torch(a.device).expand(c, 1, _SSIM_KSIZE, _SSIM_KSIZE)

    def filt(t):
        return F.conv2d(t, win, groups=c)  # no padding: only where the window fits ("valid")

    mu1, mu2 = filt(a), filt(b)
    mu1_sq, mu2_sq, mu1_mu2 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma1_sq = filt(a * a) - mu1_sq
    sigma2_sq = filt(b * b) - mu2_sq
    sigma12 = filt(a * b) - mu1_mu2
    ssim_map = ((2 * mu1_mu2 + c1) * (2 * sigma12 + c2)) / ((mu1_sq + mu2_sq + c1) * (sigma1_sq + sigma2_sq + c2))
    return ssim_map.flatten(2).mean(2).mean(1)
