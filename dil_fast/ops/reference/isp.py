"""Pure-torch reference of the camera-pipeline noise model (:mod:`dil_fast.ops.isp`), after CBDNet
(Guo et al., "Toward Convolutional Blind Denoising of Real Photographs", CVPR 2019, Sec. 3.1).

**Decision** (the DIL paper trains real-image denoising on "four synthesized distortions based on
four categories of colour space among the camera ISP process" and does not say which): one camera
pipeline on images ``[B, 3, H, W]`` on [0, 1],

    sRGB x -> linear L = f^-1(x) -> Bayer mosaic m = M(L) (RGGB, one sample per pixel)
           -> demosaic DM(m) (bilinear) -> camera response y = f(DM(m)) -> (JPEG),

with heteroscedastic Gaussian noise injected at one stage, one confounder per stage:

========= ================================================================================
stage     where the noise enters
========= ================================================================================
raw       on the mosaic m, before demosaicking (it becomes spatially correlated by DM)
linear    on the demosaiced linear RGB DM(m), independent per pixel and channel
srgb      on the sRGB image f(DM(m)), after the camera response
jpeg      as srgb, then baseline JPEG (:func:`dil_fast.ops.reference.jpeg.jpeg_ref`)
mixed     at raw, linear and srgb at once, each with 1/sqrt(3) of the standard deviation,
          then JPEG (the unseen test variant)
========= ================================================================================

Every stage runs the whole pipeline (mosaic and demosaic included), so the confounders differ
only in where the noise enters. Heteroscedastic noise of a signal s (CBDNet's Eq. 1, a Gaussian
stand-in for Poisson shot noise plus read noise):

    n(s) ~ N(0, sigma_s**2 * s + sigma_c**2),    per sample sigma_s, sigma_c (scalars),

after which the signal is clipped to [0, 1] (sensor non-negativity and saturation). Camera
response: a power curve ``f(L) = L ** (1 / gamma)``, ``f^-1(x) = x ** gamma`` with a per-sample
gamma, exactly invertible on [0, 1] (CBDNet draws one of 201 measured curves of Grossberg and
Nayar's DoRF database instead; a gamma in a range stands in for that family).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from .jpeg import jpeg_ref

__all__ = [
    "ISP_STAGES",
    "stage_noise_weights",
    "stage_has_jpeg",
    "normal_count",
    "inverse_camera_response",
    "camera_response",
    "bayer_masks",
    "mosaic",
    "demosaic_bilinear",
    "heteroscedastic_noise",
    "camera_pipeline_ref",
    "camera_noise_ref",
]

ISP_STAGES = ("raw", "linear", "srgb", "jpeg", "mixed")

# std multipliers of the noise at (raw, linear, srgb): 1/sqrt(3) each keeps the mixed variant's
# summed variance near one stage's
_NOISE_WEIGHTS = {
    "raw": (1.0, 0.0, 0.0),
    "linear": (0.0, 1.0, 0.0),
    "srgb": (0.0, 0.0, 1.0),
    "jpeg": (0.0, 0.0, 1.0),
    "mixed": (1.0 / math.sqrt(3.0),) * 3,
}

# bilinear demosaic kernels: green from its 4-neighbourhood, red/blue from 2 or 4 neighbours
_GREEN_KERNEL = ((0.0, 0.25, 0.0), (0.25, 1.0, 0.25), (0.0, 0.25, 0.0))
_RED_BLUE_KERNEL = ((0.25, 0.5, 0.25), (0.5, 1.0, 0.5), (0.25, 0.5, 0.25))


def _check_stage(stage: str) -> None:
    if stage not in ISP_STAGES:
        raise ValueError(f"camera noise stage must be one of {', '.join(ISP_STAGES)}, got {stage!r}")


def stage_noise_weights(stage: str) -> tuple[float, float, float]:
    """Standard-deviation multipliers of the noise at the (raw, linear, srgb) points of ``stage``."""
    _check_stage(stage)
    return _NOISE_WEIGHTS[stage]


def stage_has_jpeg(stage: str) -> bool:
    """True where ``stage`` ends with JPEG compression (``jpeg``, ``mixed``)."""
    _check_stage(stage)
    return stage in ("jpeg", "mixed")


def normal_count(stage: str, h: int, w: int) -> int:
    """Normals per sample the pipeline consumes: ``h*w`` for the mosaic, ``3*h*w`` for each of the
    linear and sRGB points, laid out in that order and only for the points ``stage`` uses."""
    w_raw, w_lin, w_srgb = stage_noise_weights(stage)
    return h * w * ((1 if w_raw else 0) + (3 if w_lin else 0) + (3 if w_srgb else 0))


def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(device=x.device, dtype=x.dtype).reshape(-1, 1, 1, 1)


def inverse_camera_response(x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """sRGB -> linear: ``L = clip(x, 0, 1) ** gamma``; x ``[B, C, H, W]``, gamma ``[B]``."""
    return x.clamp(0.0, 1.0) ** _per_sample(gamma, x)


def camera_response(linear: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """linear -> sRGB: ``x = clip(L, 0, 1) ** (1 / gamma)``; L ``[B, C, H, W]``, gamma ``[B]``."""
    return linear.clamp(0.0, 1.0) ** (1.0 / _per_sample(gamma, linear))


def bayer_masks(h: int, w: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """RGGB colour filter ``[3, h, w]`` of 0/1: red at (even row, even column), green at (even, odd)
    and (odd, even), blue at (odd, odd); any h, w (odd sizes end on a partial 2x2 cell)."""
    rows = torch.arange(h, device=device).reshape(-1, 1) % 2
    cols = torch.arange(w, device=device).reshape(1, -1) % 2
    red = (rows == 0) & (cols == 0)
    blue = (rows == 1) & (cols == 1)
    return torch.stack([red, ~(red | blue), blue]).to(dtype)


def mosaic(linear: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` -> Bayer mosaic ``[B, 1, H, W]``: each pixel keeps its filter's channel."""
    _, _, h, w = linear.shape
    return (linear * bayer_masks(h, w, device=linear.device, dtype=linear.dtype)).sum(1, keepdim=True)


def demosaic_bilinear(raw: torch.Tensor) -> torch.Tensor:
    """Bayer mosaic ``[B, 1, H, W]`` (H, W >= 2) -> ``[B, 3, H, W]`` by normalised bilinear
    interpolation: channel c is ``conv(m * mask_c, K_c) / conv(mask_c, K_c)`` (3x3 kernels, zero
    padding). Inside the image the denominator is 1 and this is plain bilinear demosaicking (a
    measured sample is kept; a missing one is the mean of its 2 or 4 nearest same-colour samples);
    at the border it is the weighted mean of the samples present, so a constant image is exact."""
    _, _, h, w = raw.shape
    if h < 2 or w < 2:
        raise ValueError(f"demosaicking needs images of at least 2x2 pixels, got {h}x{w}")
    masks, kernels, inv_den = _demosaic_weights(h, w, raw.device, raw.dtype)
    return F.conv2d(raw * masks, kernels, padding=1, groups=3) * inv_den


@functools.lru_cache(maxsize=32)
def _demosaic_weights(h: int, w: int, device: torch.device, dtype: torch.dtype):
    """(masks ``[3, h, w]``, kernels ``[3, 1, 3, 3]``, 1 / conv(masks, kernels) ``[1, 3, h, w]``),
    built once per size and device (read-only)."""
    masks = bayer_masks(h, w, dtype=torch.float64)
    kernels = torch.tensor((_RED_BLUE_KERNEL, _GREEN_KERNEL, _RED_BLUE_KERNEL), dtype=torch.float64).unsqueeze(1)
    inv_den = 1.0 / F.conv2d(masks[None], kernels, padding=1, groups=3)
    return tuple(t.to(device=device, dtype=dtype) for t in (masks, kernels, inv_den))


def heteroscedastic_noise(
    signal: torch.Tensor, sigma_s: torch.Tensor, sigma_c: torch.Tensor, normal: torch.Tensor
) -> torch.Tensor:
    """``s + sqrt(sigma_s**2 * max(s, 0) + sigma_c**2) * z`` (not clipped): signal s ``[B, C, H, W]``,
    sigma_s, sigma_c ``[B]``, standard normals z of the shape of s."""
    var = _per_sample(sigma_s, signal) ** 2 * signal.clamp_min(0.0) + _per_sample(sigma_c, signal) ** 2
    return signal + var.sqrt() * normal.reshape(signal.shape).to(signal.dtype)


def camera_pipeline_ref(
    x: torch.Tensor, stage: str, gamma: torch.Tensor, sigma_s: torch.Tensor, sigma_c: torch.Tensor, normal: torch.Tensor
) -> torch.Tensor:
    """The pipeline up to the sRGB image (no JPEG): x ``[B, 3, H, W]`` on [0, 1] (H, W >= 2),
    ``stage`` in :data:`ISP_STAGES` (``jpeg`` adds its noise as ``srgb``), per-sample gamma,
    sigma_s, sigma_c ``[B]``, normals ``[B, normal_count(stage, H, W)]`` -> ``[B, 3, H, W]`` float32
    on [0, 1]. The signal is clipped to [0, 1] after every noise injection."""
    w_raw, w_lin, w_srgb = stage_noise_weights(stage)
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"camera noise takes RGB images [B, 3, H, W], got {tuple(x.shape)}")
    B, _, H, W = x.shape
    want = (B, normal_count(stage, H, W))
    if tuple(normal.shape) != want:
        raise ValueError(f"camera noise stage {stage!r} takes normals {list(want)}, got {list(normal.shape)}")
    gamma, sigma_s, sigma_c = gamma.float(), sigma_s.float(), sigma_c.float()
    sizes = [n for n, weight in ((H * W, w_raw), (3 * H * W, w_lin), (3 * H * W, w_srgb)) if weight]
    fields = iter(normal.float().split(sizes, dim=1))

    raw = mosaic(inverse_camera_response(x.float(), gamma))
    if w_raw:
        raw = heteroscedastic_noise(raw, w_raw * sigma_s, w_raw * sigma_c, next(fields)).clamp(0.0, 1.0)
    linear = demosaic_bilinear(raw)
    if w_lin:
        linear = heteroscedastic_noise(linear, w_lin * sigma_s, w_lin * sigma_c, next(fields)).clamp(0.0, 1.0)
    srgb = camera_response(linear, gamma)
    if w_srgb:
        srgb = heteroscedastic_noise(srgb, w_srgb * sigma_s, w_srgb * sigma_c, next(fields))
    return srgb.clamp(0.0, 1.0)


def camera_noise_ref(
    x: torch.Tensor,
    stage: str,
    gamma: torch.Tensor,
    sigma_s: torch.Tensor,
    sigma_c: torch.Tensor,
    normal: torch.Tensor,
    quality: torch.Tensor | None = None,
) -> torch.Tensor:
    """The whole model: :func:`camera_pipeline_ref`, then baseline JPEG at ``quality`` ``[B]`` (ints
    1..100) for the stages that compress (``jpeg``, ``mixed``) -> ``[B, 3, H, W]`` float32 on [0, 1]."""
    y = camera_pipeline_ref(x, stage, gamma, sigma_s, sigma_c, normal)
    if not stage_has_jpeg(stage):
        return y
    if quality is None:
        raise ValueError(f"camera noise stage {stage!r} compresses: it needs a JPEG quality per sample")
    return jpeg_ref(y, torch.as_tensor(quality).cpu().reshape(-1).expand(x.shape[0]))
