"""The patch sampler op: the reference's dihedral numbering and distribution, the Triton kernel against it (T1)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from dil_fast import rng
from dil_fast.ops import reference as ref
from dil_fast.ops.sample_crops import sample_crops

needs_interpreter = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="tier T1: set TRITON_INTERPRET=1 before the run"
)


def test_dihedral_bits_match_reference_numbering():
    """The 3-bit form (transpose, flip rows, flip cols) equals the released trainer's literal modes."""
    img = np.arange(5 * 5).reshape(5, 5)
    literal = {
        0: img,
        1: np.flipud(np.rot90(img)),
        2: np.flipud(img),
        3: np.rot90(img, 3),
        4: np.flipud(np.rot90(img, 2)),
        5: np.rot90(img),
        6: np.rot90(img, 2),
        7: np.flipud(np.rot90(img, 3)),
    }
    for mode, want in literal.items():
        got = ref.dihedral_ref(torch.from_numpy(img.copy()), mode).numpy()
        assert np.array_equal(got, want), mode
        a = img[::-1] if mode >> 1 & 1 else img  # out[r, c] = crop[FR(a), FC(b)], (a, b) = T(r, c)
        a = a[:, ::-1] if mode >> 2 & 1 else a
        a = a.T if mode & 1 else a
        assert np.array_equal(a, want), mode


def _literal_crops(store, perm, start, batch, patch, key, counter_base):
    """Per sample, literally: the patch, the crop at the hashed offset, the released mode by rot90/flip."""
    _, height, width, _ = store.shape
    out = torch.empty(perm.shape[0], batch, 3, patch, patch, dtype=torch.uint8)
    for k in range(perm.shape[0]):
        ys, xs, modes = rng.crop_params(key, k, torch.arange(batch) + counter_base, height, width, patch)
        for j in range(batch):
            y, x = int(ys[j]), int(xs[j])
            crop = store[int(perm[k, start + j]), y : y + patch, x : x + patch].permute(2, 0, 1)
            out[k, j] = ref.dihedral_ref(crop, int(modes[j]))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8, torch.float16], ids=["f32", "u8", "f16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_torch_backend_is_the_reference_and_matches_the_literal_modes(dtype, channels_last):
    store = torch.randint(0, 256, (7, 17, 23, 3), dtype=torch.uint8)
    perm = torch.stack([torch.randperm(7) for _ in range(3)])
    key = rng.stream_key(5, 2)
    want = ref.sample_crops_ref(store, perm, 1, 5, 9, key, 11, dtype=dtype, channels_last=channels_last)
    got = sample_crops(store, perm, 1, 5, 9, key, 11, dtype=dtype, channels_last=channels_last, backend="torch")
    assert got.shape == (3, 5, 3, 9, 9) and got.dtype == dtype and got.stride() == want.stride()
    assert torch.equal(got, want)
    literal = _literal_crops(store, perm, 1, 5, 9, key, 11)
    assert torch.equal(want, (literal.float() / 255).to(dtype) if dtype.is_floating_point else literal)


@pytest.mark.triton
@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8, torch.float16], ids=["f32", "u8", "f16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_triton_sampler_matches_reference(dtype, channels_last, nan_like):
    from dil_fast.backends import triton_kernels

    store = torch.randint(0, 256, (6, 19, 17, 3), dtype=torch.uint8)
    perm = torch.stack([torch.randperm(6) for _ in range(2)])
    key = rng.stream_key(3, 1)
    want = ref.sample_crops_ref(store, perm, 2, 3, 7, key, 9, dtype=dtype, channels_last=channels_last)
    got = sample_crops(store, perm, 2, 3, 7, key, 9, dtype=dtype, channels_last=channels_last, backend="triton")
    assert got.stride() == want.stride() and torch.equal(got, want)
    if dtype.is_floating_point:  # every element written (NaN-filled output)
        out = nan_like(2, 3, 3, 7, 7, dtype=dtype)
        triton_kernels("sample_crops").sample_crops_fwd(store, perm, 2, 3, 7, key, 9, out)
        assert torch.equal(out, ref.sample_crops_ref(store, perm, 2, 3, 7, key, 9, dtype=dtype))


@pytest.mark.triton
@needs_interpreter
def test_triton_sampler_bf16_within_one_ulp(close):
    """bf16: the interpreter truncates fp32 -> bf16 (a GPU rounds to nearest), so one ulp apart."""
    store = torch.randint(0, 256, (4, 11, 11, 3), dtype=torch.uint8)
    perm = torch.stack([torch.randperm(4) for _ in range(2)])
    key = rng.stream_key(3, 1)
    want = ref.sample_crops_ref(store, perm, 0, 4, 5, key, dtype=torch.float32)
    got = sample_crops(store, perm, 0, 4, 5, key, dtype=torch.bfloat16, backend="triton")
    close(got, want, atol=0, rtol=2.0**-7, name="bf16 crops")


def _chi2(counts):
    counts = np.asarray(counts, dtype=np.float64)
    exp = counts.sum() / len(counts)
    return float(((counts - exp) ** 2 / exp).sum())


def test_crop_distribution_uniform_and_complete():
    """Every offset 0..H-p (inclusive) and every mode reachable, uniform within chi-square bounds."""
    n, height, width, patch = 20000, 14, 12, 5
    pos = torch.arange(n)
    ys, xs, modes = [], [], []
    for k in range(2):
        y, x, m = rng.crop_params(rng.stream_key(1, 0), k, pos, height, width, patch)
        ys.append(y), xs.append(x), modes.append(m)
    y, x, m = torch.cat(ys), torch.cat(xs), torch.cat(modes)
    cy = torch.bincount(y, minlength=height - patch + 1)
    cx = torch.bincount(x, minlength=width - patch + 1)
    cm = torch.bincount(m, minlength=8)
    assert len(cy) == height - patch + 1 and len(cx) == width - patch + 1 and len(cm) == 8
    assert (cy > 0).all() and (cx > 0).all() and (cm > 0).all()
    # 99.99 % quantiles of chi-square with 9, 7, 7 degrees of freedom: 33.7, 29.9, 29.9
    assert _chi2(cy) < 33.7 and _chi2(cx) < 29.9 and _chi2(cm) < 29.9
    # joint (mode, y) independence, loosely: every pair appears
    assert (torch.bincount(m * 16 + y, minlength=8 * 16).view(8, 16)[:, : height - patch + 1] > 0).all()
