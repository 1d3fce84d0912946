"""The degradation stage of the loop: clean batches -> K pairs, independent or shared, rank-invariant."""

from __future__ import annotations

import pytest
import torch

from dil_fast.degrade import (
    CounterfactualPairs,
    GaussianBlur,
    GaussianNoise,
    counterfactual,
)


def test_independent_pairs_distort_each_confounders_own_batch():
    clean = torch.rand(2, 4, 3, 9, 9)
    stage = CounterfactualPairs([GaussianNoise(10.0), GaussianNoise(30.0)], seed=3)
    pairs = stage(clean, step=5)
    assert len(pairs) == 2 and stage.ops() == ("noise",)
    for k, (noisy, target) in enumerate(pairs):
        assert torch.equal(target, clean[k])
        want = counterfactual(clean[k], [GaussianNoise(10.0), GaussianNoise(30.0)][k : k + 1], seed=3, step=5)
        assert not torch.equal(noisy, target)
        if k == 0:
            assert torch.equal(noisy, want[0])


def test_shared_pairs_show_one_content_under_k_distortions():
    clean = torch.rand(3, 2, 3, 9, 9)
    specs = [GaussianNoise(5.0), GaussianBlur(1.0, kernel_size=5), GaussianNoise(20.0)]
    pairs = CounterfactualPairs(specs, seed=1, pairing="shared")(clean, step=0)
    assert all(torch.equal(t, clean[0]) for _, t in pairs)
    assert CounterfactualPairs(specs, seed=1).ops() == ("noise", "blur_separable")


def test_rank_offsets_make_the_distortions_independent_of_the_rank_count():
    """Rank r's batch b is global sample r*B + b: two ranks of batch 2 equal one rank of batch 4."""
    clean = torch.rand(2, 4, 3, 8, 8)
    specs = [GaussianNoise(15.0), GaussianNoise(25.0)]
    one = CounterfactualPairs(specs, seed=7)(clean, step=3)
    r0 = CounterfactualPairs(specs, seed=7, rank=0)(clean[:, :2], step=3)
    r1 = CounterfactualPairs(specs, seed=7, rank=1)(clean[:, 2:], step=3)
    for k in range(2):
        assert torch.equal(torch.cat([r0[k][0], r1[k][0]]), one[k][0])


def test_bad_arguments():
    with pytest.raises(ValueError, match="pairing"):
        CounterfactualPairs([GaussianNoise(1.0)], seed=0, pairing="mixed")
    with pytest.raises(ValueError, match=r"\[K=1, B, C, H, W\]"):
        CounterfactualPairs([GaussianNoise(1.0)], seed=0)(torch.rand(2, 2, 3, 4, 4), step=0)
