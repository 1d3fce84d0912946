"""Camera-pipeline noise: the reference's pieces (camera response, mosaic, demosaic), the noise
statistics at each stage, the spatial correlation demosaicking gives raw noise, clipping, odd
sizes, and the public op against the reference."""

from __future__ import annotations

import pytest
import torch

from dil_fast import rng
from dil_fast.ops.isp import camera_noise
from dil_fast.ops.reference import isp as ref
from tests.conftest import assert_close_verbose


def _normals(stage, b, h, w, seed=0):
    return rng.philox_normal(ref.normal_count(stage, h, w), torch.arange(b), seed=seed, step=0, k=0)


def _flat(levels, h, w):
    return torch.tensor(levels, dtype=torch.float32).reshape(-1, 1, 1, 1).expand(-1, 3, h, w).contiguous()


def _full(b, v):
    return torch.full((b,), float(v))


def test_camera_response_inverts_exactly():
    x = torch.rand(3, 3, 17, 23, dtype=torch.float64)
    gamma = torch.tensor([1.8, 2.2, 2.6], dtype=torch.float64)
    linear = ref.inverse_camera_response(x, gamma)
    assert_close_verbose(linear[1], x[1] ** 2.2, atol=1e-15, rtol=1e-14, name="inverse response")
    assert_close_verbose(ref.camera_response(linear, gamma), x, atol=1e-14, rtol=1e-13, name="f(f^-1(x))")
    x32 = x.float()
    assert_close_verbose(
        ref.camera_response(ref.inverse_camera_response(x32, gamma), gamma),
        x32,
        atol=2e-6,
        rtol=0,
        name="f(f^-1(x)) float32",
    )


@pytest.mark.parametrize("h,w", [(16, 16), (17, 23), (2, 3)], ids=lambda v: str(v))
def test_mosaic_keeps_the_filter_channel_and_constant_images_demosaic_exactly(h, w):
    colour = torch.tensor([[0.2, 0.7, 0.4], [0.9, 0.1, 0.55]]).reshape(2, 3, 1, 1)
    x = colour.expand(2, 3, h, w).contiguous()
    m = ref.mosaic(torch.rand(2, 3, h, w))
    assert m.shape == (2, 1, h, w)
    img = torch.rand(1, 3, h, w)
    m = ref.mosaic(img)
    assert m[0, 0, 0, 0] == img[0, 0, 0, 0] and m[0, 0, 0, 1] == img[0, 1, 0, 1]  # R G
    assert m[0, 0, 1, 0] == img[0, 1, 1, 0] and m[0, 0, 1, 1] == img[0, 2, 1, 1]  # G B
    assert_close_verbose(ref.demosaic_bilinear(ref.mosaic(x)), x, atol=1e-6, name="demosaic of a constant")
    # a measured sample survives demosaicking at its own site
    assert_close_verbose(ref.mosaic(ref.demosaic_bilinear(m)), m, atol=1e-6, name="sites kept")


def test_demosaic_of_a_smooth_ramp_is_close():
    h, w = 17, 23
    rows = torch.arange(h, dtype=torch.float64).reshape(-1, 1)
    cols = torch.arange(w, dtype=torch.float64).reshape(1, -1)
    slopes = ((0.010, 0.020), (0.015, -0.010), (-0.012, 0.008))  # (per row, per column) of R, G, B
    x = torch.stack([0.5 + a * (rows - h / 2) + b * (cols - w / 2) for a, b in slopes])[None]
    y = ref.demosaic_bilinear(ref.mosaic(x))
    # bilinear interpolation is exact on a linear ramp wherever the full 3x3 neighbourhood exists
    assert_close_verbose(y[..., 1:-1, 1:-1], x[..., 1:-1, 1:-1], atol=1e-12, name="ramp interior")
    # at the border a one-sided mean is off by at most one step of the ramp
    assert (y - x).abs().max() <= max(abs(a) + abs(b) for a, b in slopes) + 1e-12


@pytest.mark.parametrize("stage", ["raw", "linear", "srgb"])
def test_noise_is_zero_mean_with_the_heteroscedastic_variance(stage):
    """Flat gray patches at two signal levels: variance sigma_s**2 * x + sigma_c**2 at the stage."""
    h = w = 64
    levels = (0.2, 0.6)
    x = _flat(levels, h, w)
    sigma_s, sigma_c = 0.1, 0.03
    # gamma 1 makes linear and sRGB values equal, so the raw and linear noise is read at the output;
    # the srgb stage adds its noise after the response, so any gamma leaves the formula unchanged
    gamma = _full(2, 1.0 if stage != "srgb" else 2.2)
    y = ref.camera_pipeline_ref(x, stage, gamma, _full(2, sigma_s), _full(2, sigma_c), _normals(stage, 2, h, w))
    # raw noise sits on the mosaic: each pixel's own filter channel carries the measured sample
    samples = ref.mosaic(y) if stage == "raw" else y
    for b, level in enumerate(levels):
        noise = (samples[b] - level).double().flatten()
        want = sigma_s**2 * level + sigma_c**2
        assert abs(noise.mean()) < 4 * (want / noise.numel()) ** 0.5, (level, noise.mean())
        assert abs(noise.var() / want - 1) < 0.1, (level, noise.var().item(), want)


def _neighbour_correlation(noise):
    a, b = noise[..., :, :-1].flatten().double(), noise[..., :, 1:].flatten().double()
    return torch.corrcoef(torch.stack([a, b]))[0, 1].item()


def test_raw_noise_is_spatially_correlated_after_demosaic_and_srgb_noise_is_not():
    h = w = 64
    x = _flat((0.5,), h, w)
    corr = {}
    for stage in ("raw", "srgb"):
        y = ref.camera_pipeline_ref(x, stage, _full(1, 1.0), _full(1, 0.1), _full(1, 0.03), _normals(stage, 1, h, w))
        corr[stage] = _neighbour_correlation(y - 0.5)
    # interpolated pixels are means of their neighbours' samples (correlation 0.5 to 0.7 each)
    assert corr["raw"] > 0.4, corr
    assert abs(corr["srgb"]) < 0.05, corr


@pytest.mark.parametrize("stage", ref.ISP_STAGES)
def test_output_is_clipped_to_the_unit_interval(stage):
    h, w = 17, 23
    x = torch.zeros(2, 3, h, w)
    x[..., :, w // 2 :] = 1.0
    y = ref.camera_noise_ref(
        x, stage, _full(2, 2.2), _full(2, 0.5), _full(2, 0.5), _normals(stage, 2, h, w), quality=torch.tensor([60, 90])
    )
    assert y.min() >= 0 and y.max() <= 1
    assert (y == 0).any() and (y == 1).any()


@pytest.mark.parametrize("stage", ref.ISP_STAGES)
def test_odd_sizes_and_the_op_match_the_reference(stage):
    b, h, w = 2, 17, 23
    x = torch.rand(b, 3, h, w)
    gamma, sigma_s, sigma_c = torch.tensor([1.8, 2.6]), torch.tensor([0.05, 0.16]), torch.tensor([0.01, 0.06])
    normal, quality = _normals(stage, b, h, w), torch.tensor([60, 95])
    want = ref.camera_noise_ref(x, stage, gamma, sigma_s, sigma_c, normal, quality=quality)
    assert want.shape == x.shape and want.dtype == torch.float32 and torch.isfinite(want).all()
    assert (want - x).abs().mean() > 0.01  # the noise and the pipeline changed the image
    got = camera_noise(x, stage, gamma, sigma_s, sigma_c, normal, quality=quality)
    assert_close_verbose(got, want, atol=0, rtol=0, name=f"op vs reference ({stage})")


def test_bad_arguments_are_refused_with_one_line():
    x = torch.rand(1, 3, 8, 8)
    one = _full(1, 0.1)
    cases = [
        (dict(stage="sensor", normal=torch.zeros(1, 64)), "stage must be one of raw, linear, srgb, jpeg, mixed"),
        (dict(stage="raw", normal=torch.zeros(1, 65)), r"takes normals \[1, 64\]"),
        (dict(stage="jpeg", normal=torch.zeros(1, 192)), "needs a JPEG quality"),
    ]
    for kw, match in cases:
        with pytest.raises(ValueError, match=match) as exc:
            camera_noise(x, kw["stage"], one, one, one, kw["normal"])
        assert "\n" not in str(exc.value)
    with pytest.raises(ValueError, match="at least 2x2"):
        ref.demosaic_bilinear(torch.rand(1, 1, 1, 5))
