"""Poisson noise: the reference's statistics."""

from __future__ import annotations

import torch

from dil_fast import rng


def test_poisson_noise_statistics():
    lam = torch.tensor([0.5, 3.0, 10.0, 23.0, 40.0, 200.0]).repeat_interleave(4000).reshape(1, -1)
    n = lam.numel()
    u = rng.philox_uniform(n, torch.tensor([0]), seed=1, step=0, k=0, stream=3)
    z = rng.philox_normal(n, torch.tensor([0]), seed=1, step=0, k=0, stream=0)
    from dil_fast.ops.reference.poisson import poisson_counts_ref as _poisson

    counts = _poisson(lam, u, z).reshape(6, 4000).double()
    lam6 = lam.reshape(6, 4000)[:, 0].double()
    assert ((counts.mean(1) - lam6).abs() < 5 * torch.sqrt(lam6 / 4000)).all(), counts.mean(1)
    assert ((counts.var(1) / lam6 - 1).abs() < 0.12).all(), counts.var(1)
    assert torch.equal(counts, counts.round())
