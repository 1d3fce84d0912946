"""Degradation library, tier T0: references against OpenCV / torch / libjpeg, randomness, specs.

Everything here runs the pure-torch path on the CPU (the Triton kernels: test_degrade_triton.py).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dil_fast.degrade import (JPEG, Compose, Ctx, GaussianBlur, GaussianNoise, PoissonNoise, Rain, RandomKernelBlur,
                              Resize, counterfactual, deblur_levels, denoise_levels, hybrid, parse_confounders,
                              realesrgan_first_order, realesrgan_second_order, spec_from_dict)
from dil_fast.degrade import blur_kernels as bk
from dil_fast.ops import degrade as ops
from dil_fast.ops import ref_degrade as ref

cv2 = pytest.importorskip("cv2")



@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one intra-op thread avoids oversubscribing a shared CI box (restored by
    conftest's state fixture)."""
    torch.set_num_threads(1)
    yield

def natural_crops(h=64, w=80):
    """Crops of scikit-image's public-domain sample images, uint8 RGB [N, h, w, 3]."""
    data = pytest.importorskip("skimage.data")
    crops = []
    for name, (y, x) in (("astronaut", (40, 150)), ("coffee", (120, 200)), ("chelsea", (60, 120)),
                         ("rocket", (250, 300)), ("hubble_deep_field", (100, 300))):
        img = getattr(data, name)()
        crops.append(np.ascontiguousarray(img[y:y + h, x:x + w, :3]))
    return np.stack(crops)


# ---------------------------------------------------------------------------------- randomness --

def test_philox_known_answers():
    """Random123's known-answer vectors for Philox-4x32-10, both int64 multiplication variants."""
    M = ref.M32
    for mul in (ref._mulhilo, ref._mulhilo_split):
        zero = [int(v) for v in ref.philox4x32_ref(torch.tensor([0]), 0, 0, 0, 0, 0, mulhilo=mul)]
        ones = [int(v) for v in ref.philox4x32_ref(torch.tensor([M]), M, M, M, M, M, mulhilo=mul)]
        assert zero == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
        assert ones == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]


def test_normals_statistics_per_sample():
    """Per-sample mean and std of the noise field within 5-sigma bounds; samples/confounders/steps
    draw different fields."""
    B, n = 6, 3 * 32 * 32
    idx = torch.arange(B)
    z = ref.philox_normal_ref(n, idx, seed=3, step=11, k=1)
    mean, std = z.double().mean(1), z.double().std(1)
    assert (mean.abs() < 5 / math.sqrt(n)).all(), mean
    assert ((std - 1).abs() < 5 / math.sqrt(2 * n)).all(), std
    others = [ref.philox_normal_ref(n, idx, seed=3, step=12, k=1), ref.philox_normal_ref(n, idx, seed=3, step=11, k=2),
              ref.philox_normal_ref(n, idx + 1, seed=3, step=11, k=1), ref.philox_normal_ref(n, idx, seed=4, step=11, k=1)]
    for o in others:
        corr = torch.corrcoef(torch.stack([z.flatten(), o.flatten()]))[0, 1]
        assert abs(float(corr)) < 5 / math.sqrt(z.numel()), corr


def test_gaussian_noise_statistics_and_clip_round():
    x = torch.full((4, 3, 24, 24), 0.5)
    sigma = torch.tensor([5.0, 10.0, 20.0, 30.0]) / 255
    y = ref.gaussian_noise_ref(x, sigma, seed=0, step=0, clip=False)
    z = (y - x) / sigma.reshape(-1, 1, 1, 1)
    n = z[0].numel()
    assert (z.reshape(4, -1).mean(1).abs() < 5 / math.sqrt(n)).all()
    assert ((z.reshape(4, -1).std(1) - 1).abs() < 5 / math.sqrt(2 * n)).all()
    y8 = ref.gaussian_noise_ref(torch.rand(2, 3, 9, 7), torch.tensor([0.3, 0.3]), seed=0, step=0, round8=True)
    assert y8.min() >= 0 and y8.max() <= 1
    assert torch.equal(y8 * 255, (y8 * 255).round())


def test_reference_numpy_matches_released_arithmetic():
    """reference_numpy: float64 normals from the seeded per-image numpy Generator, clip, float32."""
    x = torch.rand(2, 3, 8, 9)
    ctx = Ctx(seed=5, step=2, k=1, sample_offset=10, batch=2)
    y = GaussianNoise(25, reference_numpy=True).apply(x, ctx)
    for b in range(2):
        rng = np.random.default_rng([5, 2, 1, 10 + b, 0])
        expect = np.clip(x[b].numpy().astype(np.float64) + rng.standard_normal((3, 8, 9)) * (25 / 255), 0, 1)
        np.testing.assert_array_equal(y[b].numpy(), expect.astype(np.float32))


def test_poisson_noise_statistics():
    lam = torch.tensor([0.5, 3.0, 10.0, 23.0, 40.0, 200.0]).repeat_interleave(4000).reshape(1, -1)
    n = lam.numel()
    u = ref.philox_uniform_ref(n, torch.tensor([0]), seed=1, step=0, k=0, stream=3)
    z = ref.philox_normal_ref(n, torch.tensor([0]), seed=1, step=0, k=0, stream=0)
    from dil_fast.degrade.specs import _poisson
    counts = _poisson(lam, u, z).reshape(6, 4000).double()
    lam6 = lam.reshape(6, 4000)[:, 0].double()
    assert ((counts.mean(1) - lam6).abs() < 5 * torch.sqrt(lam6 / 4000)).all(), counts.mean(1)
    assert ((counts.var(1) / lam6 - 1).abs() < 0.12).all(), counts.var(1)
    assert torch.equal(counts, counts.round())


# ------------------------------------------------------------------------------ blur vs OpenCV --

@pytest.mark.parametrize("shape", [(17, 23), (33, 65)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_separable_blur_matches_opencv(shape, close):
    img = np.random.default_rng(0).random((*shape, 3), dtype=np.float32)
    sigma = torch.tensor([1.7])
    w = bk.gaussian_1d(sigma, 13)
    expect = cv2.sepFilter2D(img, -1, w[0].numpy(), w[0].numpy(), borderType=cv2.BORDER_REFLECT_101)
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    got = ops.blur_separable(x, w[None], backend="torch")[0, 0].permute(1, 2, 0)
    close(got, expect, atol=2e-6, rtol=1e-5, name="sepFilter2D")


def test_2d_blur_matches_opencv(close):
    img = np.random.default_rng(1).random((19, 29, 3), dtype=np.float32)
    k = bk.gaussian_2d(torch.tensor([2.5]), torch.tensor([0.8]), torch.tensor([0.6]), 15)
    expect = cv2.filter2D(img, -1, k[0].numpy(), borderType=cv2.BORDER_REFLECT_101)
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    got = ops.blur2d(x, k, backend="torch")[0].permute(1, 2, 0)
    close(got, expect, atol=1e-5, rtol=1e-4, name="filter2D")


def test_reflect_padding_folds_like_opencv():
    for n in (1, 2, 5):
        got = ref.reflect101_index(4 * n + 6, n, -(2 * n + 3)).tolist()
        exp = [cv2.borderInterpolate(i, n, cv2.BORDER_REFLECT_101) for i in range(-(2 * n + 3), 2 * n + 3)]
        assert got == exp, (n, got, exp)


def test_blur_kernel_families_normalised_and_shaped():
    B = 5
    kern = RandomKernelBlur().kernels(Ctx(seed=0, step=0, batch=B))
    assert kern.shape == (B, 21, 21)
    torch.testing.assert_close(kern.sum((1, 2)), torch.ones(B), atol=1e-5, rtol=0)
    s = bk.sinc_2d(torch.tensor([math.pi / 2]), 21)
    assert abs(float(s.sum()) - 1) < 1e-5 and float(s[0, 10, 10]) == float(s.max())


# ------------------------------------------------------------------------------------- resize --

@pytest.mark.parametrize("mode", ["bilinear", "bicubic", "area"])
@pytest.mark.parametrize("size", [(9, 11), (40, 70)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_resize_matches_torch_interpolate(mode, size, close):
    x = torch.rand(3, 3, 17, 23)
    got = ops.resize(x, size, mode, backend="torch")
    kw = {} if mode == "area" else {"antialias": True, "align_corners": False}
    close(got, F.interpolate(x, size=size, mode=mode, **kw), atol=3e-6, rtol=1e-5, name=f"resize {mode}")


# --------------------------------------------------------------------------------------- JPEG --

def _psnr(a, b):
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def test_jpeg_simulation_matches_libjpeg(capsys):
    """Simulation vs cv2.imencode/imdecode on natural crops at qualities 10..95: mean PSNR >= 40 dB."""
    crops = natural_crops()
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255
    table = []
    for q in (10, 20, 30, 50, 75, 90, 95):
        sim = ops.jpeg(x, torch.full((len(crops),), q), backend="torch")
        sim = (sim * 255).round().byte().permute(0, 2, 3, 1).numpy()
        for i, img in enumerate(crops):
            ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
            dec = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
            table.append((q, i, _psnr(sim[i], dec), _psnr(img, dec)))
    psnrs = np.minimum(np.array([t[2] for t in table]), 100.0)  # identical pairs count as 100 dB
    with capsys.disabled():
        print(f"\n[jpeg] simulation vs OpenCV/libjpeg: mean PSNR {psnrs.mean():.2f} dB, min {psnrs.min():.2f} dB "
              f"over {len(psnrs)} (image, quality) pairs; JPEG itself vs original: mean "
              f"{np.mean([t[3] for t in table]):.2f} dB")
    assert psnrs.mean() >= 40.0
    assert psnrs.min() >= 33.0


def test_jpeg_odd_sizes_and_quality_tables():
    x = torch.rand(2, 3, 17, 23)
    y = ops.jpeg(x, torch.tensor([10, 95]), backend="torch")
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert torch.equal(y * 255, (y * 255).round())
    ql, qc = ref.jpeg_quant_tables(torch.tensor([50, 100, 1]))
    assert ql[0].tolist() == [float(v) for v in ref.JPEG_LUMA_TABLE]
    assert (ql[1] == 1).all() and (ql[2] == 255).all() == (qc[2] == 255).all()
    D = ref.dct8_matrix().double()
    torch.testing.assert_close(D @ D.T, torch.eye(64, dtype=torch.float64), atol=1e-6, rtol=0)


def test_jpeg_differentiable_has_gradient():
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    y = JPEG(50, differentiable=True).apply(x, Ctx(seed=0, step=0))
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# ------------------------------------------------------------------------ counterfactual batches --

PRESET_SETS = {
    "denoise": lambda: denoise_levels((5, 10, 15, 20)),
    "deblur": lambda: deblur_levels((1, 2, 3, 4), kernel_size=9),
    "mixed": lambda: [GaussianNoise((5, 30)), GaussianBlur((0.5, 2), kernel_size=7, sigma_y=(0.5, 2), angle=(-45, 45)),
                      JPEG((20, 80)), PoissonNoise(1.0, gray_prob=0.5), Rain(length=(3, 6)), hybrid("moderate", 7)],
}


@pytest.mark.parametrize("which", list(PRESET_SETS))
def test_counterfactual_reproducible_and_split_invariant(which):
    specs = PRESET_SETS[which]()
    clean = torch.rand(8, 3, 17, 23)
    a = counterfactual(clean, specs, seed=7, step=3, backend="torch")
    b = counterfactual(clean, specs, seed=7, step=3, backend="torch")
    assert a.shape == (len(specs), 8, 3, 17, 23) and torch.equal(a, b)
    halves = torch.cat([counterfactual(clean[:4], specs, seed=7, step=3, backend="torch"),
                        counterfactual(clean[4:], specs, seed=7, step=3, sample_offset=4, backend="torch")], dim=1)
    torch.testing.assert_close(halves, a, atol=1e-6, rtol=0)
    if which != "deblur":  # fixed blurs draw nothing
        c = counterfactual(clean, specs, seed=7, step=4, backend="torch")
        assert not torch.equal(a, c)


@pytest.mark.parametrize("which", ["denoise", "deblur"])
def test_fused_k_way_equals_separate_calls(which):
    specs = PRESET_SETS[which]()
    clean = torch.rand(3, 3, 17, 23)
    fused = counterfactual(clean, specs, seed=1, step=9, sample_offset=5, backend="torch")
    sep = torch.stack([s.apply(clean, Ctx(seed=1, step=9, k=k, sample_offset=5, batch=3), backend="torch")
                       for k, s in enumerate(specs)])
    assert torch.equal(fused, sep)


def test_independent_mode_and_input_layouts():
    specs = denoise_levels((5, 15))
    clean = torch.randint(0, 256, (2, 4, 3, 9, 13), dtype=torch.uint8)
    ind = counterfactual(clean, specs, seed=2, step=1, mode="independent", backend="torch")
    for k in range(2):
        one = counterfactual(clean[k], specs, seed=2, step=1, backend="torch")[k]
        torch.testing.assert_close(ind[k], one, atol=1e-6, rtol=0)
    f = clean[0].float() / 255
    torch.testing.assert_close(counterfactual(clean[0], specs, seed=2, step=1, backend="torch"),
                               counterfactual(f.to(memory_format=torch.channels_last), specs, seed=2, step=1, backend="torch"),
                               atol=1e-6, rtol=0)
    with pytest.raises(ValueError):
        counterfactual(clean, specs, seed=2, step=1, mode="shared")
    with pytest.raises(ValueError):
        counterfactual(clean[0], specs, seed=2, step=1, mode="independent")


def test_realesrgan_presets_shapes_and_range():
    clean = torch.rand(2, 3, 32, 48)
    for preset in (realesrgan_first_order(), realesrgan_second_order()):
        out = counterfactual(clean, [preset, preset], seed=0, step=0, backend="torch")
        assert out.shape == (2, 2, 3, 8, 12) and out.min() >= 0 and out.max() <= 1
        assert preset.output_size(32, 48) == (8, 12)
        assert spec_from_dict(preset.to_dict()) == preset


# -------------------------------------------------------------------------------- specs & CLI --

def test_spec_names_and_round_trip():
    specs = [GaussianNoise(15), GaussianNoise((5, 20), round8=True), GaussianBlur(2), GaussianBlur(2, sigma_y=1, angle=30),
             JPEG(30), Resize(0.5), Resize(size=(8, 9), mode="area"), Rain(), PoissonNoise(2), hybrid("mild"),
             Compose((GaussianBlur(1), GaussianNoise(5)))]
    names = [s.name for s in specs]
    assert names[:3] == ["noise15", "noise5-20", "blur2"] and names[4] == "jpeg30"
    assert len(set(names)) == len(names)
    for s in specs:
        assert spec_from_dict(s.to_dict()) == s


def test_parse_confounders():
    assert parse_confounders("noise:5,10,15,20") == denoise_levels((5, 10, 15, 20))
    assert parse_confounders("5,10,15,20") == denoise_levels((5, 10, 15, 20))
    assert parse_confounders("blur:1,2,3,4") == deblur_levels((1, 2, 3, 4))
    assert [s.name for s in parse_confounders("noise:15; jpeg:30;hybrid:severe")] == ["noise15", "jpeg30", "hybrid-severe"]
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


def test_custom_ops_opcheck():
    x = torch.rand(2, 3, 9, 11)
    torch.library.opcheck(ops._noise_op, (x, torch.rand(2, 2) * 0.1, None, 1, 2, 0, 0, 0, True, False, torch.float32, "torch"))
    torch.library.opcheck(ops._blur_sep_op, (x, torch.rand(2, 2, 5), torch.float32, "torch"))
    torch.library.opcheck(ops._blur2d_op, (x, torch.rand(2, 5, 5), torch.float32, "torch"))
    torch.library.opcheck(ops._jpeg_blocks_op, ((torch.rand(2, 16, 24) * 255).round(), torch.ones(2, 64) * 8, "torch"))
    ql, qc = ref.jpeg_quant_tables(torch.tensor([30, 80]))
    torch.library.opcheck(ops._jpeg_op, (torch.rand(2, 3, 9, 11), ql, qc, torch.float32, "torch"))
