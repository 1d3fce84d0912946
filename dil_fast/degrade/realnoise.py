"""The real-noise confounder: CBDNet's camera-pipeline noise with the noise injected at one stage.

**Decision** (the DIL paper's real-image denoising trains on "four synthesized distortions based on
four categories of colour space among the camera ISP process", after CBDNet, without naming
them): one camera pipeline, sRGB -> linear (inverse camera response) -> RGGB Bayer mosaic ->
bilinear demosaic -> camera response -> optional JPEG, and one confounder per place the
heteroscedastic noise enters: ``raw`` (the mosaic), ``linear`` (demosaiced linear RGB), ``srgb``
(after the camera response), ``jpeg`` (sRGB noise, then JPEG); ``mixed`` (every point at once,
1/sqrt(3) of the standard deviation each, then JPEG) is the unseen test variant. The math and
its docstrings: :mod:`dil_fast.ops.reference.isp`.

**Decision**, the default ranges (drawn uniformly per sample):

- ``shot`` sigma_s in [0, 0.16] and ``read`` sigma_c in [0, 0.06], noise variance
  ``sigma_s**2 * s + sigma_c**2`` of the signal s: CBDNet's Eq. 1 and its ranges (Guo et al.,
  CVPR 2019, Sec. 3.1; also the defaults of ``utils/AddNoiseMosai.m`` and the recommendations of
  ``Test_Realistic_Noise_Model.m`` in github.com/GuoShi28/CBDNet). CBDNet's released MATLAB draws
  one pair per channel and scales its shot normals by ``sigma_s * L`` (a standard deviation, not
  a variance, proportional to the signal); here the paper's Eq. 1 holds, with one pair per sample
  for every channel.
- ``jpeg_quality`` in 60..100: CBDNet's JPEG quality range (same sources).
- ``gamma`` in [1.8, 2.6] for the camera response ``x = L ** (1 / gamma)``: a spread of display
  gammas around sRGB's 2.2, standing in for CBDNet's 201 measured response curves (DoRF,
  Grossberg and Nayar), which are data this package does not carry.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ops._common import to_device
from ..ops.isp import camera_noise
from ..ops.reference.isp import ISP_STAGES, normal_count, stage_has_jpeg
from .base import Confounder, check_range, register, register_family
from .ctx import spread
from .jpeg import JPEG

__all__ = ["CameraNoise"]


@register("camera_noise")
@dataclass(frozen=True)
class CameraNoise(Confounder):
    """Camera-pipeline noise with the noise at ``stage`` (one of raw, linear, srgb, jpeg, mixed).

    ``shot`` (sigma_s), ``read`` (sigma_c), ``gamma`` and ``jpeg_quality`` are numbers or (lo, hi)
    ranges drawn per sample from the sample's counter stream; the noise field is the spec's Philox
    normal field (``ctx.field_normal``), so a sample's output depends on (seed, step, k, its global
    index) only. ``jpeg_quality`` is used by the ``jpeg`` and ``mixed`` stages. Valid values:
    shot and read in [0, 1], gamma in [1, 4] (1: linear response), jpeg_quality in 1..100.
    """

    stage: str = "srgb"
    shot: float | tuple[float, float] = (0.0, 0.16)
    read: float | tuple[float, float] = (0.0, 0.06)
    gamma: float | tuple[float, float] = (1.8, 2.6)
    jpeg_quality: int | tuple[int, int] = (60, 100)

    def __post_init__(self):
        if self.stage not in ISP_STAGES:
            raise ValueError(f"CameraNoise.stage must be one of {', '.join(ISP_STAGES)}, got {self.stage!r}")
        check_range("CameraNoise.shot", self.shot, 0.0, 1.0)
        check_range("CameraNoise.read", self.read, 0.0, 1.0)
        check_range("CameraNoise.gamma", self.gamma, 1.0, 4.0)
        check_range("CameraNoise.jpeg_quality", self.jpeg_quality, 1, 100)

    @property
    def name(self) -> str:
        return f"isp-{self.stage}"

    def ops(self):
        return ("isp", "jpeg") if stage_has_jpeg(self.stage) else ("isp",)

    def apply(self, x, ctx, *, backend=None):
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"CameraNoise needs RGB images [B, 3, H, W], got {tuple(x.shape)}")
        _, _, H, W = x.shape
        u = ctx.sample_uniform(3)
        gamma, sigma_s, sigma_c = (
            to_device(spread(u[:, i], v).float(), x.device) for i, v in enumerate((self.gamma, self.shot, self.read))
        )
        # the qualities come from a child stream so they do not reuse the uniforms drawn above
        quality = JPEG(self.jpeg_quality).qualities(ctx.child(0)) if stage_has_jpeg(self.stage) else None
        normal = ctx.field_normal(normal_count(self.stage, H, W))
        return camera_noise(x, self.stage, gamma, sigma_s, sigma_c, normal, quality=quality, backend=backend)


register_family("isp", lambda v: CameraNoise(v.lower()))
