"""PSNR / SSIM against hand-computed values, a re-statement of BasicSR's float32 Y path and an
independent loop re-statement of BasicSR's SSIM."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dil_fast.metrics import bgr2y, calculate_psnr, calculate_ssim, psnr_torch, rgb2y, ssim_torch


def _rand(h, w, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def _noisy(img, sigma=12, seed=1):
    rng = np.random.default_rng(seed)
    return np.clip(np.round(img + rng.normal(0, sigma, img.shape)), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------ PSNR


def test_psnr_constant_images():
    a = np.full((8, 8, 3), 10, np.uint8)
    b = np.full((8, 8, 3), 12, np.uint8)  # MSE = 4
    assert calculate_psnr(a, b, 0) == pytest.approx(20 * math.log10(255 / 2), abs=1e-12)


def test_psnr_identical_is_inf():
    a = _rand(5, 6)
    assert calculate_psnr(a, a.copy(), 0) == math.inf
    assert calculate_psnr(a, a, 0, test_y_channel=True) == math.inf


def test_psnr_2x2_by_hand():
    a = np.zeros((2, 2, 1), np.uint8)
    b = np.array([[1, 2], [3, 4]], np.uint8)[..., None]  # MSE = (1 + 4 + 9 + 16) / 4 = 7.5
    assert calculate_psnr(a, b, 0) == pytest.approx(20 * math.log10(255 / math.sqrt(7.5)), abs=1e-12)
    assert calculate_psnr(a[..., 0], b[..., 0], 0) == pytest.approx(calculate_psnr(a, b, 0), abs=0)


def test_psnr_no_uint8_wraparound():
    a = np.zeros((3, 3, 3), np.uint8)
    b = np.full((3, 3, 3), 255, np.uint8)  # uint8 a - b would wrap to 1; float64 gives 255
    assert calculate_psnr(a, b, 0) == pytest.approx(0.0, abs=1e-12)


def test_psnr_crop_border():
    a = _rand(10, 12)
    b = a.copy()
    b[0, :, :] = 0
    b[:, -2:, :] = 255 - b[:, -2:, :]
    assert calculate_psnr(a, b, 2) == math.inf
    assert calculate_psnr(a, b, 1) < math.inf
    c = a.copy()
    c[4, 5, 1] = int(a[4, 5, 1]) ^ 0x10  # one sample differs by 16 among 6*8*3 remaining
    mse = 16.0**2 / (6 * 8 * 3)
    assert calculate_psnr(a, c, 2) == pytest.approx(20 * math.log10(255 / math.sqrt(mse)), abs=1e-12)


def test_psnr_chw_order():
    a, b = _rand(9, 7, seed=3), _rand(9, 7, seed=4)
    hwc = calculate_psnr(a, b, 1)
    chw = calculate_psnr(a.transpose(2, 0, 1), b.transpose(2, 0, 1), 1, input_order="CHW")
    assert chw == hwc
    with pytest.raises(ValueError, match="input_order"):
        calculate_psnr(a, b, 0, input_order="WHC")


def _y_float32_by_hand(dot_value: float) -> float:
    """BasicSR's Y of one pixel whose [0, 1] BGR values dot the weights to ``dot_value``."""
    return float(np.float32((dot_value + 16.0) / 255.0) * np.float32(255.0))


def test_y_channel_by_hand():
    one = float(np.float32(255.0) / np.float32(255.0))
    assert bgr2y(np.array([255.0, 255.0, 255.0])) == _y_float32_by_hand(24.966 * one + 128.553 * one + 65.481 * one)
    assert bgr2y(np.array([255.0, 255.0, 255.0])) == pytest.approx(235.0, abs=1e-4)  # float32 Y, not exactly 235
    assert bgr2y(np.array([0, 0, 0], np.uint8)) == _y_float32_by_hand(0.0)
    assert bgr2y(np.zeros((2, 2, 3))).dtype == np.float32
    y_black = _y_float32_by_hand(0.0)
    # BGR by default: channel 2 is red, Y differs by ~65.481 (float32 path, not rounded)
    a = np.zeros((4, 4, 3), np.uint8)
    red = a.copy()
    red[..., 2] = 255
    dy = _y_float32_by_hand(65.481) - y_black
    assert calculate_psnr(a, red, 0, test_y_channel=True) == pytest.approx(10 * math.log10(255**2 / dy**2), abs=1e-10)
    # channel 0 is blue in BGR (24.966) and red in RGB (65.481)
    blue = a.copy()
    blue[..., 0] = 255
    dy = _y_float32_by_hand(24.966) - y_black
    assert calculate_psnr(a, blue, 0, test_y_channel=True) == pytest.approx(10 * math.log10(255**2 / dy**2), abs=1e-10)
    dy = _y_float32_by_hand(65.481) - y_black
    assert calculate_psnr(a, blue, 0, test_y_channel=True, color_order="rgb") == pytest.approx(
        10 * math.log10(255**2 / dy**2), abs=1e-10
    )
    # a 1-level change of green: Y moves by about 128.553/255, no rounding to integers
    green = a.copy()
    green[..., 1] = 1
    dy = _y_float32_by_hand(128.553 * float(np.float32(1.0) / np.float32(255.0))) - y_black
    assert abs(dy - 128.553 / 255) < 1e-5
    assert calculate_psnr(a, green, 0, test_y_channel=True) == pytest.approx(10 * math.log10(255**2 / dy**2), abs=1e-10)


def _to_y_channel_basicsr(img):
    """Re-statement of BasicSR's ``to_y_channel`` + ``bgr2ycbcr(y_only=True)`` on a BGR ``HxWx3`` image."""
    u = img.astype(np.float32) / 255.0  # float32
    y = np.dot(u, [24.966, 128.553, 65.481]) + 16.0  # float64
    y = (y / 255.0).astype(np.float32)
    return (y * 255.0)[..., None]  # float32 again


@pytest.mark.parametrize("crop", [0, 3])
def test_y_channel_matches_basicsr_bgr(crop):
    bgr = _rand(29, 31, seed=11)
    out = _noisy(bgr, 14, seed=12)
    a, b = bgr[crop : 29 - crop, crop : 31 - crop], out[crop : 29 - crop, crop : 31 - crop]
    ya = _to_y_channel_basicsr(a).astype(np.float64)
    yb = _to_y_channel_basicsr(b).astype(np.float64)
    assert _to_y_channel_basicsr(a).dtype == np.float32
    np.testing.assert_array_equal(bgr2y(a), _to_y_channel_basicsr(a)[..., 0])
    mse = float(np.sum((ya - yb) ** 2)) / ya.size
    expected = 10 * math.log10(255.0**2 / mse)
    assert calculate_psnr(bgr, out, crop, test_y_channel=True) == pytest.approx(expected, abs=1e-10)
    assert calculate_ssim(bgr, out, crop, test_y_channel=True) == pytest.approx(_ssim_loops(ya, yb), abs=1e-10)
    # the same pixels read as RGB give another luma: the channel order is not ignored
    assert abs(calculate_psnr(bgr, out, crop, test_y_channel=True, color_order="rgb") - expected) > 1e-3


@pytest.mark.parametrize("metric", [calculate_psnr, calculate_ssim], ids=["psnr", "ssim"])
def test_color_order_rgb_is_the_reversed_bgr(metric):
    bgr = _rand(23, 19, seed=21)
    out = _noisy(bgr, 20, seed=22)
    rgb, rgb_out = bgr[..., ::-1], out[..., ::-1]
    for crop in (0, 2):
        expected = metric(bgr, out, crop, test_y_channel=True)
        assert metric(rgb, rgb_out, crop, test_y_channel=True, color_order="rgb") == expected
        chw = metric(
            rgb.transpose(2, 0, 1),
            rgb_out.transpose(2, 0, 1),
            crop,
            input_order="CHW",
            test_y_channel=True,
            color_order="rgb",
        )
        assert chw == expected
    # without the Y channel the order changes nothing
    assert metric(bgr, out, 1, color_order="rgb") == metric(bgr, out, 1)
    np.testing.assert_array_equal(rgb2y(rgb), bgr2y(bgr))


def test_color_order_rejected():
    a = _rand(12, 12)
    for fn in (calculate_psnr, calculate_ssim):
        with pytest.raises(ValueError, match="color_order must be 'bgr' or 'rgb', got 'RGB'") as info:
            fn(a, a, 0, test_y_channel=True, color_order="RGB")
        assert "\n" not in str(info.value)
    x = torch.rand(1, 3, 12, 12)
    for fn in (psnr_torch, ssim_torch):
        with pytest.raises(ValueError, match="color_order must be 'bgr' or 'rgb', got 'yuv'"):
            fn(x, x, color_order="yuv")


def test_shape_mismatch():
    with pytest.raises(ValueError, match="shapes differ"):
        calculate_psnr(_rand(4, 4), _rand(4, 5), 0)


# ------------------------------------------------------------------------------------------ SSIM


def _ssim_loops(img1, img2):
    """Straight re-statement: Gaussian weights from the formula, window sums by explicit offsets."""
    img1 = img1.astype(np.float64)
    img2 = img2.astype(np.float64)
    g = np.array([math.exp(-((i - 5) ** 2) / (2 * 1.5**2)) for i in range(11)])
    g /= g.sum()
    h, w = img1.shape[:2]
    oh, ow = h - 10, w - 10
    scores = []
    for ch in range(img1.shape[2]):
        x, y = img1[..., ch], img2[..., ch]
        mx = np.zeros((oh, ow))
        my = np.zeros((oh, ow))
        sxx = np.zeros((oh, ow))
        syy = np.zeros((oh, ow))
        sxy = np.zeros((oh, ow))
        for i in range(11):
            for j in range(11):
                wt = g[i] * g[j]
                xs, ys = x[i : i + oh, j : j + ow], y[i : i + oh, j : j + ow]
                mx += wt * xs
                my += wt * ys
                sxx += wt * xs * xs
                syy += wt * ys * ys
                sxy += wt * xs * ys
        vx, vy, cxy = sxx - mx**2, syy - my**2, sxy - mx * my
        c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
        m = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
        scores.append(m.mean())
    return float(np.mean(scores))


@pytest.mark.parametrize("shape", [(11, 11), (17, 23), (32, 19)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_ssim_against_loops(shape):
    a = _rand(*shape, seed=5)
    b = _noisy(a, 25)
    assert calculate_ssim(a, b, 0) == pytest.approx(_ssim_loops(a, b), abs=1e-9)


def test_ssim_identical_is_one():
    a = _rand(20, 20)
    assert calculate_ssim(a, a.copy(), 0) == pytest.approx(1.0, abs=1e-12)


def test_ssim_constant_images_by_hand():
    a = np.full((16, 16, 3), 100, np.uint8)
    b = np.full((16, 16, 3), 140, np.uint8)
    c1 = (0.01 * 255) ** 2
    expected = (2 * 100 * 140 + c1) / (100**2 + 140**2 + c1)  # variances are 0: contrast term is 1
    assert calculate_ssim(a, b, 0) == pytest.approx(expected, abs=1e-12)


def test_ssim_crop_y_chw():
    a = _rand(30, 26, seed=7)
    b = _noisy(a, 15)
    expected = _ssim_loops(a[3:-3, 3:-3], b[3:-3, 3:-3])
    assert calculate_ssim(a, b, 3) == pytest.approx(expected, abs=1e-9)
    assert calculate_ssim(a.transpose(2, 0, 1), b.transpose(2, 0, 1), 3, input_order="CHW") == pytest.approx(
        expected, abs=1e-12
    )
    ya, yb = bgr2y(a)[..., None], bgr2y(b)[..., None]
    assert calculate_ssim(a, b, 0, test_y_channel=True) == pytest.approx(_ssim_loops(ya, yb), abs=1e-9)
    ya, yb = rgb2y(a)[..., None], rgb2y(b)[..., None]
    assert calculate_ssim(a, b, 0, test_y_channel=True, color_order="rgb") == pytest.approx(
        _ssim_loops(ya, yb), abs=1e-9
    )


def test_ssim_too_small():
    with pytest.raises(ValueError, match="at least 11x11"):
        calculate_ssim(_rand(12, 12), _rand(12, 12), 1)


# ------------------------------------------------------------------------------------------ torch


@pytest.mark.parametrize("color_order", ["rgb", "bgr"])
def test_torch_versions_match_numpy(color_order):
    imgs = [_rand(21, 18, seed=s) for s in range(3)]
    outs = [_noisy(im, 10 + 5 * s, seed=s + 10) for s, im in enumerate(imgs)]
    outs[1] = imgs[1].copy()  # identical -> inf PSNR, SSIM 1

    def batch(lst):
        return torch.from_numpy(np.stack(lst).transpose(0, 3, 1, 2).copy()).float() / 255

    x, y = batch(outs), batch(imgs)
    for crop, ych in [(0, False), (2, False), (0, True), (3, True)]:
        p = psnr_torch(x, y, crop_border=crop, test_y_channel=ych, color_order=color_order)
        s = ssim_torch(x, y, crop_border=crop, test_y_channel=ych, color_order=color_order)
        assert p.shape == (3,) and p.dtype == torch.float64
        for i in range(3):
            ep = calculate_psnr(outs[i], imgs[i], crop, test_y_channel=ych, color_order=color_order)
            es = calculate_ssim(outs[i], imgs[i], crop, test_y_channel=ych, color_order=color_order)
            if math.isinf(ep):
                assert math.isinf(p[i].item()) and p[i].item() > 0
            else:
                # the Y path is the same float32 one: only float64 summation order differs
                assert p[i].item() == pytest.approx(ep, abs=1e-10 if ych else 1e-6), (crop, ych, i)
            assert s[i].item() == pytest.approx(es, abs=1e-10 if ych else 1e-6), (crop, ych, i)
    # data_range 255 on the 0..255 scale gives the same
    assert torch.allclose(psnr_torch(x * 255, y * 255, data_range=255.0)[[0, 2]], psnr_torch(x, y)[[0, 2]])
    assert torch.allclose(
        psnr_torch(x * 255, y * 255, data_range=255.0, test_y_channel=True, color_order=color_order)[[0, 2]],
        psnr_torch(x, y, test_y_channel=True, color_order=color_order)[[0, 2]],
    )


def test_torch_default_order_is_rgb():
    rgb = [_rand(16, 17, seed=31)]
    out = [_noisy(rgb[0], 18, seed=32)]
    x = torch.from_numpy(np.stack(out).transpose(0, 3, 1, 2).copy()).float() / 255
    y = torch.from_numpy(np.stack(rgb).transpose(0, 3, 1, 2).copy()).float() / 255
    expected = calculate_psnr(out[0], rgb[0], 0, test_y_channel=True, color_order="rgb")
    assert psnr_torch(x, y, test_y_channel=True).item() == pytest.approx(expected, abs=1e-10)
    assert abs(psnr_torch(x, y, test_y_channel=True, color_order="bgr").item() - expected) > 1e-3
