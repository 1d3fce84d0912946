"""dil_fast.rng: Philox-4x32 known answers, the normal and uniform streams, the crop hash."""

from __future__ import annotations

import math

import torch

from dil_fast import rng


def test_philox_known_answers():
    """Random123's known-answer vectors for Philox-4x32-10, both int64 multiplication variants."""
    M = rng.M32
    for mul in (rng._mulhilo, rng._mulhilo_split):
        zero = [int(v) for v in rng.philox4x32(torch.tensor([0]), 0, 0, 0, 0, 0, mulhilo=mul)]
        ones = [int(v) for v in rng.philox4x32(torch.tensor([M]), M, M, M, M, M, mulhilo=mul)]
        assert zero == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
        assert ones == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]


def test_normals_statistics_per_sample():
    """Per-sample mean and std of the noise field within 5-sigma bounds; samples/confounders/steps
    draw different fields."""
    B, n = 6, 3 * 32 * 32
    idx = torch.arange(B)
    z = rng.philox_normal(n, idx, seed=3, step=11, k=1)
    mean, std = z.double().mean(1), z.double().std(1)
    assert (mean.abs() < 5 / math.sqrt(n)).all(), mean
    assert ((std - 1).abs() < 5 / math.sqrt(2 * n)).all(), std
    others = [
        rng.philox_normal(n, idx, seed=3, step=12, k=1),
        rng.philox_normal(n, idx, seed=3, step=11, k=2),
        rng.philox_normal(n, idx + 1, seed=3, step=11, k=1),
        rng.philox_normal(n, idx, seed=4, step=11, k=1),
    ]
    for o in others:
        corr = torch.corrcoef(torch.stack([z.flatten(), o.flatten()]))[0, 1]
        assert abs(float(corr)) < 5 / math.sqrt(z.numel()), corr
