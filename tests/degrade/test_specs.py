"""Confounder specs: parameters, names, serialisation, validation, presets, the CLI parser, blur kernels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dil_fast.degrade import (
    JPEG,
    Compose,
    Ctx,
    GaussianBlur,
    GaussianNoise,
    PoissonNoise,
    Rain,
    RandomKernelBlur,
    Resize,
    counterfactual,
    deblur_levels,
    denoise_levels,
    hybrid,
    parse_confounders,
    realesrgan_first_order,
    realesrgan_second_order,
    spec_from_dict,
)
from dil_fast.degrade import blur_kernels as bk


def test_reference_numpy_matches_released_arithmetic():
    """reference_numpy: float64 normals from the seeded per-image numpy Generator, clip, float32."""
    x = torch.rand(2, 3, 8, 9)
    ctx = Ctx(seed=5, step=2, k=1, sample_offset=10, batch=2)
    y = GaussianNoise(25, reference_numpy=True).apply(x, ctx)
    for b in range(2):
        rng = np.random.default_rng([5, 2, 1, 10 + b, 0])
        expect = np.clip(x[b].numpy().astype(np.float64) + rng.standard_normal((3, 8, 9)) * (25 / 255), 0, 1)
        np.testing.assert_array_equal(y[b].numpy(), expect.astype(np.float32))


def test_blur_kernel_families_normalised_and_shaped():
    B = 5
    kern = RandomKernelBlur().kernels(Ctx(seed=0, step=0, batch=B))
    assert kern.shape == (B, 21, 21)
    torch.testing.assert_close(kern.sum((1, 2)), torch.ones(B), atol=1e-5, rtol=0)
    s = bk.sinc_2d(torch.tensor([math.pi / 2]), 21)
    assert abs(float(s.sum()) - 1) < 1e-5 and float(s[0, 10, 10]) == float(s.max())


def test_realesrgan_presets_shapes_and_range():
    clean = torch.rand(2, 3, 32, 48)
    for preset in (realesrgan_first_order(), realesrgan_second_order()):
        out = counterfactual(clean, [preset, preset], seed=0, step=0, backend="torch")
        assert out.shape == (2, 2, 3, 8, 12) and out.min() >= 0 and out.max() <= 1
        assert preset.output_size(32, 48) == (8, 12)
        assert spec_from_dict(preset.to_dict()) == preset


def test_spec_names_and_round_trip():
    specs = [
        GaussianNoise(15),
        GaussianNoise((5, 20), round8=True),
        GaussianBlur(2),
        GaussianBlur(2, sigma_y=1, angle=30),
        JPEG(30),
        Resize(0.5),
        Resize(size=(8, 9), mode="area"),
        Rain(),
        PoissonNoise(2),
        hybrid("mild"),
        Compose((GaussianBlur(1), GaussianNoise(5))),
    ]
    names = [s.name for s in specs]
    assert names[:3] == ["noise15", "noise5-20", "blur2"] and names[4] == "jpeg30"
    assert len(set(names)) == len(names)
    for s in specs:
        assert spec_from_dict(s.to_dict()) == s


def test_parse_confounders():
    assert parse_confounders("noise:5,10,15,20") == denoise_levels((5, 10, 15, 20))
    assert parse_confounders("5,10,15,20") == denoise_levels((5, 10, 15, 20))
    assert parse_confounders("blur:1,2,3,4") == deblur_levels((1, 2, 3, 4))
    assert [s.name for s in parse_confounders("noise:15; jpeg:30;hybrid:severe")] == [
        "noise15",
        "jpeg30",
        "hybrid-severe",
    ]
    for bad in ["", "noise:", "foo:1", "noise:a", "jpeg:0", "hybrid:x", "1,,2", "noise:-3"]:
        with pytest.raises(ValueError) as info:
            parse_confounders(bad)
        assert "\n" not in str(info.value)


def test_spec_validation():
    with pytest.raises(ValueError):
        GaussianBlur(2, kernel_size=4)
    with pytest.raises(ValueError):
        JPEG(0)
    with pytest.raises(ValueError):
        GaussianNoise((20, 5))
    with pytest.raises(ValueError):
        Resize(scale=0.5, size=(3, 3))
