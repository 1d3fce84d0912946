"""The K-way counterfactual builder: reproducibility, split invariance, fused paths, layouts; through Triton (T1)."""

from __future__ import annotations

import pytest
import torch

from dil_fast.degrade import (
    JPEG,
    Ctx,
    GaussianBlur,
    GaussianNoise,
    PoissonNoise,
    Rain,
    Resize,
    counterfactual,
    deblur_levels,
    denoise_levels,
    hybrid,
)

PRESET_SETS = {
    "denoise": lambda: denoise_levels((5, 10, 15, 20)),
    "deblur": lambda: deblur_levels((1, 2, 3, 4), kernel_size=9),
    "mixed": lambda: [
        GaussianNoise((5, 30)),
        GaussianBlur((0.5, 2), kernel_size=7, sigma_y=(0.5, 2), angle=(-45, 45)),
        JPEG((20, 80)),
        PoissonNoise(1.0, gray_prob=0.5),
        Rain(length=(3, 6)),
        hybrid("moderate", 7),
    ],
}


@pytest.mark.parametrize("which", list(PRESET_SETS))
def test_counterfactual_reproducible_and_split_invariant(which):
    specs = PRESET_SETS[which]()
    clean = torch.rand(8, 3, 17, 23)
    a = counterfactual(clean, specs, seed=7, step=3, backend="torch")
    b = counterfactual(clean, specs, seed=7, step=3, backend="torch")
    assert a.shape == (len(specs), 8, 3, 17, 23) and torch.equal(a, b)
    halves = torch.cat(
        [
            counterfactual(clean[:4], specs, seed=7, step=3, backend="torch"),
            counterfactual(clean[4:], specs, seed=7, step=3, sample_offset=4, backend="torch"),
        ],
        dim=1,
    )
    torch.testing.assert_close(halves, a, atol=1e-6, rtol=0)
    if which != "deblur":  # fixed blurs draw nothing
        c = counterfactual(clean, specs, seed=7, step=4, backend="torch")
        assert not torch.equal(a, c)


@pytest.mark.parametrize("which", ["denoise", "deblur"])
def test_fused_k_way_equals_separate_calls(which):
    specs = PRESET_SETS[which]()
    clean = torch.rand(3, 3, 17, 23)
    fused = counterfactual(clean, specs, seed=1, step=9, sample_offset=5, backend="torch")
    sep = torch.stack(
        [
            s.apply(clean, Ctx(seed=1, step=9, k=k, sample_offset=5, batch=3), backend="torch")
            for k, s in enumerate(specs)
        ]
    )
    assert torch.equal(fused, sep)


def test_independent_mode_and_input_layouts():
    specs = denoise_levels((5, 15))
    clean = torch.randint(0, 256, (2, 4, 3, 9, 13), dtype=torch.uint8)
    ind = counterfactual(clean, specs, seed=2, step=1, mode="independent", backend="torch")
    for k in range(2):
        one = counterfactual(clean[k], specs, seed=2, step=1, backend="torch")[k]
        torch.testing.assert_close(ind[k], one, atol=1e-6, rtol=0)
    f = clean[0].float() / 255
    torch.testing.assert_close(
        counterfactual(clean[0], specs, seed=2, step=1, backend="torch"),
        counterfactual(f.to(memory_format=torch.channels_last), specs, seed=2, step=1, backend="torch"),
        atol=1e-6,
        rtol=0,
    )
    with pytest.raises(ValueError):
        counterfactual(clean, specs, seed=2, step=1, mode="shared")
    with pytest.raises(ValueError):
        counterfactual(clean[0], specs, seed=2, step=1, mode="independent")


@pytest.mark.triton
@pytest.mark.parametrize("which", ["noise", "blur"])
def test_fused_k_way_equals_separate_calls_through_triton(dev, which):
    specs = denoise_levels((5, 10, 20)) if which == "noise" else deblur_levels((1, 2, 3), kernel_size=5)
    clean = torch.rand(3, 3, 17, 23, device=dev)
    fused = counterfactual(clean, specs, seed=4, step=2, sample_offset=1, backend="triton")
    sep = torch.stack(
        [
            s.apply(clean, Ctx(seed=4, step=2, k=k, sample_offset=1, batch=3, device=dev), backend="triton")
            for k, s in enumerate(specs)
        ]
    )
    assert torch.equal(fused, sep)
    ref_out = counterfactual(clean.cpu(), specs, seed=4, step=2, sample_offset=1, backend="torch")
    torch.testing.assert_close(fused.cpu(), ref_out, atol=1e-6, rtol=1e-5)


@pytest.mark.triton
def test_split_invariance_and_independent_mode(dev):
    specs = [GaussianNoise(15), GaussianNoise((5, 25))]
    clean = torch.rand(8, 3, 9, 11, device=dev)
    full = counterfactual(clean, specs, seed=11, step=6, backend="triton")
    halves = torch.cat(
        [
            counterfactual(clean[:4], specs, seed=11, step=6, backend="triton"),
            counterfactual(clean[4:], specs, seed=11, step=6, sample_offset=4, backend="triton"),
        ],
        dim=1,
    )
    assert torch.equal(full, halves)
    assert torch.equal(full, counterfactual(clean, specs, seed=11, step=6, backend="triton"))
    ind = counterfactual(
        torch.stack([clean, clean.flip(0)]), specs, seed=11, step=6, mode="independent", backend="triton"
    )
    assert torch.equal(ind[0], full[0])


@pytest.mark.triton
def test_mixed_confounders_through_triton(dev, close):
    specs = [
        GaussianBlur(1.5, kernel_size=5, sigma_y=0.7, angle=20),
        JPEG(40),
        Resize(size=(17, 23), mode="bilinear"),
        Rain(length=(2.0, 4.0)),
    ]
    clean = torch.rand(2, 3, 17, 23, device=dev)
    got = counterfactual(clean, specs, seed=0, step=1, backend="triton").cpu()
    exp = counterfactual(clean.cpu(), specs, seed=0, step=1, backend="torch")
    for k in (0, 2, 3):
        close(got[k], exp[k], atol=1e-5, rtol=1e-5, name=specs[k].name)
    assert float((got[1] - exp[1]).abs().mean()) < 1e-3
