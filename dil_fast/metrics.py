"""PSNR and SSIM with the BasicSR conventions the reference evaluation uses.

NumPy versions (the reported numbers) take two uint8 (or float in [0, 255]) images, ``HWC`` or
``CHW``, and compute in float64:

* ``crop_border`` pixels are removed on each side first;
* PSNR = 10 log10(255^2 / MSE) over all remaining samples, ``+inf`` when MSE is 0;
* SSIM: 11x11 Gaussian window (sigma 1.5, ``cv2.getGaussianKernel``) applied with
  ``cv2.filter2D``, statistics kept only where the window fits ("valid": 5 pixels dropped per
  side), C1 = (0.01*255)^2, C2 = (0.03*255)^2, mean of the SSIM map per channel, then the mean
  over channels;
* ``test_y_channel``: both images are reduced to BT.601 luma first,
  ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` on [0, 1], giving Y in [16, 235] on the 0..255
  scale, *not* rounded, through BasicSR's own dtype path (``to_y_channel`` in
  ``basicsr/metrics/metric_util.py`` + ``bgr2ycbcr(y_only=True)``): x -> float32, / 255 (float32)
  -> dot with the weights in float64, + 16 -> / 255 -> float32 -> * 255 (float32) -> float64.

  ``color_order`` says how the three channels of a numpy image are ordered: ``"bgr"`` (the
  default, as BasicSR and the released DIL utility, which are fed OpenCV images) or ``"rgb"``
  (dil_fast's own images are RGB: internal callers must pass ``color_order="rgb"``). An ``"rgb"``
  image is channel-reversed and then takes the BGR path, so it scores exactly as its BGR twin
  (BasicSR's ``rgb2ycbcr`` sums the three products in the other order, which can move a Y value
  by one float32 ulp). The order only matters with ``test_y_channel=True``: taking RGB for BGR
  moves Y-PSNR by up to about 0.1 dB on natural images, while the float32 Y path differs from a
  float64 one by about 5e-7 dB.

A dataset score is the mean of the per-image scores.

Torch versions (:func:`psnr_torch`, :func:`ssim_torch`) take batches ``[N, C, H, W]`` of floats
on any device with values in ``[0, data_range]``, compute in float64 (the Y step through the same
float32 path) and return one score per image (a tensor ``[N]``, no host sync). Tensors in dil_fast
are RGB, so their ``color_order`` defaults to ``"rgb"``. On inputs quantised to k/255 with
``data_range=1`` they match the NumPy versions on the corresponding uint8 images given the same
``color_order``.
"""

from __future__ import annotations

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

# BT.601 luma weights for BGR in [0, 1] -> Y in [16, 235] (BasicSR's bgr2ycbcr order)
_Y_WEIGHTS_BGR = (24.966, 128.553, 65.481)
_COLOR_ORDERS = ("bgr", "rgb")
_SSIM_KSIZE = 11
_SSIM_SIGMA = 1.5
_SSIM_PAD = _SSIM_KSIZE // 2


def _check_color_order(color_order: str) -> None:
    if color_order not in _COLOR_ORDERS:
        raise ValueError(f"color_order must be 'bgr' or 'rgb', got {color_order!r}")


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


def bgr2y(img: np.ndarray) -> np.ndarray:
    """BasicSR's BT.601 luma of a ``...x3`` BGR image on the 0..255 scale -> ``...`` float32 in [16, 235].

    The dtype path of BasicSR's ``to_y_channel``: ``u = float32(x) / 255`` (float32);
    ``y = (u . (24.966, 128.553, 65.481) + 16) / 255`` in float64, rounded to float32;
    ``Y = y * 255`` in float32.
    """
    u = np.ascontiguousarray(np.asarray(img).astype(np.float32) / np.float32(255.0))
    y = ((np.dot(u, np.array(_Y_WEIGHTS_BGR)) + 16.0) / 255.0).astype(np.float32)
    return y * np.float32(255.0)


def rgb2y(img: np.ndarray) -> np.ndarray:
    """As :func:`bgr2y` for RGB channel order: the channels are reversed, then the BGR path runs."""
    return bgr2y(np.asarray(img)[..., ::-1])


def _prepare(img1, img2, crop_border: int, input_order: str, test_y_channel: bool, color_order: str):
    _check_color_order(color_order)
    if np.shape(img1) != np.shape(img2):
        raise ValueError(f"image shapes differ: {np.shape(img1)} vs {np.shape(img2)}")
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    a = reorder_image(img1, input_order)
    b = reorder_image(img2, input_order)
    if crop_border:
        a = a[crop_border:-crop_border, crop_border:-crop_border, :]
        b = b[crop_border:-crop_border, crop_border:-crop_border, :]
    if a.size == 0:
        raise ValueError(f"nothing left after removing crop_border={crop_border} from a {np.shape(img1)} image")
    if test_y_channel:
        if a.shape[2] != 3:
            raise ValueError(f"test_y_channel needs 3-channel images, got {a.shape[2]} channels")
        to_y = bgr2y if color_order == "bgr" else rgb2y
        a = to_y(a)[..., None]
        b = to_y(b)[..., None]
    return a.astype(np.float64), b.astype(np.float64)


def calculate_psnr(
    img1, img2, crop_border: int, input_order: str = "HWC", test_y_channel: bool = False, color_order: str = "bgr"
) -> float:
    """PSNR in dB between two images on the 0..255 scale (see the module docstring).

    ``color_order`` (``"bgr"`` as BasicSR, or ``"rgb"``) is the channel order of ``HWC``/``CHW``
    images; it matters only with ``test_y_channel``.
    """
    a, b = _prepare(img1, img2, crop_border, input_order, test_y_channel, color_order)
    mse = np.mean((a - b) ** 2)
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(255.0 * 255.0 / mse))


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


def calculate_ssim(
    img1, img2, crop_border: int, input_order: str = "HWC", test_y_channel: bool = False, color_order: str = "bgr"
) -> float:
    """SSIM between two images on the 0..255 scale (see the module docstring).

    ``color_order`` as in :func:`calculate_psnr`. Raises ``ValueError`` when the (cropped) image
    is smaller than the 11x11 window.
    """
    a, b = _prepare(img1, img2, crop_border, input_order, test_y_channel, color_order)
    if a.shape[0] < _SSIM_KSIZE or a.shape[1] < _SSIM_KSIZE:
        raise ValueError(
            f"SSIM needs images of at least {_SSIM_KSIZE}x{_SSIM_KSIZE} pixels after cropping, "
            f"got {a.shape[0]}x{a.shape[1]}"
        )
    window = _gaussian_window()
    return float(np.mean([_ssim_channel(a[..., c], b[..., c], window) for c in range(a.shape[2])]))


# ----------------------------------------------------------------------------- torch, batched


def _y_channel_torch(x: torch.Tensor, data_range: float, color_order: str) -> torch.Tensor:
    """``[N, 3, H, W]`` in [0, data_range] -> Y ``[N, 1, H, W]`` float64 on 0..255, via :func:`bgr2y`'s float32 path."""
    u = (x.detach().to(torch.float64) / float(data_range)).to(torch.float32)  # exact for float32 input, range 1
    weights = _Y_WEIGHTS_BGR if color_order == "bgr" else _Y_WEIGHTS_BGR[::-1]
    w = torch.tensor(weights, dtype=torch.float64, device=x.device).view(1, 3, 1, 1)
    y = ((u.to(torch.float64) * w).sum(1, keepdim=True) + 16.0) / 255.0
    return (y.to(torch.float32) * 255.0).to(torch.float64)


def _prepare_torch(
    x: torch.Tensor, y: torch.Tensor, data_range: float, crop_border: int, test_y_channel: bool, color_order: str
):
    _check_color_order(color_order)
    if x.shape != y.shape:
        raise ValueError(f"tensor shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.dim() != 4:
        raise ValueError(f"expected [N, C, H, W] tensors, got shape {tuple(x.shape)}")
    if crop_border:
        x = x[..., crop_border:-crop_border, crop_border:-crop_border]
        y = y[..., crop_border:-crop_border, crop_border:-crop_border]
    if x.numel() == 0:
        raise ValueError(f"nothing left after removing crop_border={crop_border}")
    if test_y_channel:
        if x.shape[1] != 3:
            raise ValueError(f"test_y_channel needs 3-channel tensors, got {x.shape[1]} channels")
        return _y_channel_torch(x, data_range, color_order), _y_channel_torch(y, data_range, color_order)
    # work on the 0..255 scale in float64 so the numbers are the NumPy versions'
    scale = 255.0 / float(data_range)
    return x.detach().to(torch.float64) * scale, y.detach().to(torch.float64) * scale


def psnr_torch(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    crop_border: int = 0,
    test_y_channel: bool = False,
    color_order: str = "rgb",
) -> torch.Tensor:
    """Per-image PSNR ``[N]`` (float64, ``+inf`` where identical) of batches ``[N, C, H, W]``.

    ``color_order`` defaults to ``"rgb"`` (dil_fast's tensors); it matters only with ``test_y_channel``.
    """
    a, b = _prepare_torch(x, y, data_range, crop_border, test_y_channel, color_order)
    mse = (a - b).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(255.0 * 255.0 / mse)  # mse 0 -> inf -> +inf dB


def _gaussian_window_torch(device) -> torch.Tensor:
    coords = torch.arange(_SSIM_KSIZE, dtype=torch.float64, device=device) - _SSIM_PAD
    g = torch.exp(-(coords**2) / (2 * _SSIM_SIGMA**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim_torch(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    crop_border: int = 0,
    test_y_channel: bool = False,
    color_order: str = "rgb",
) -> torch.Tensor:
    """Per-image SSIM ``[N]`` (float64) of batches ``[N, C, H, W]``: per-channel mean SSIM, averaged.

    ``color_order`` as in :func:`psnr_torch`.
    """
    a, b = _prepare_torch(x, y, data_range, crop_border, test_y_channel, color_order)
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
