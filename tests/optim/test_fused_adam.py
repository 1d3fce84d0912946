"""FusedAdam: torch.optim.Adam's results, state_dict interchange in both directions, partial
gradients, the non-finite check and GradScaler-style skipping."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dil_fast.optim import FusedAdam
from tests.helpers import BACKENDS, require

TOL = dict(atol=3e-7, rtol=3e-6)


def net():
    return nn.Sequential(nn.Linear(7, 33), nn.Tanh(), nn.Linear(33, 3), nn.Linear(3, 1))


def train(model, opt, steps, seed=0, zero_to_none=True):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        opt.zero_grad(set_to_none=zero_to_none)
        model(torch.randn(5, 7, generator=g)).square().mean().backward()
        opt.step()


def assert_models_close(a, b, close):
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        close(p, q, name=n, **TOL)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(weight_decay=0.01),
        dict(betas=(0.0, 0.999), lr=1e-4),
        dict(weight_decay=0.1, decoupled_weight_decay=True),
    ],
    ids=["adam", "l2", "beta1-0", "adamw"],
)
@pytest.mark.parametrize("zero_to_none", [True, False], ids=["none", "zero"])
def test_fused_adam_matches_torch(backend, kw, zero_to_none, close):
    require(backend)
    a, b = net(), None
    b = copy.deepcopy(a)
    fused = FusedAdam(a.parameters(), backend=backend, **{"lr": 1e-2, **kw})
    ref = torch.optim.Adam(b.parameters(), foreach=False, **{"lr": 1e-2, **kw})
    train(a, fused, 7, zero_to_none=zero_to_none)
    train(b, ref, 7, zero_to_none=zero_to_none)
    assert_models_close(a, b, close)


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_dict_interchange_both_ways(backend, close):
    require(backend)
    a = net()
    b, c, d = copy.deepcopy(a), copy.deepcopy(a), copy.deepcopy(a)
    fused = FusedAdam(a.parameters(), lr=1e-2, backend=backend)
    ref = torch.optim.Adam(b.parameters(), lr=1e-2)
    train(a, fused, 4)
    train(b, ref, 4)
    sd_f, sd_t = fused.state_dict(), ref.state_dict()
    assert sd_f["param_groups"] == sd_t["param_groups"]
    for i, s in sd_t["state"].items():
        assert set(sd_f["state"][i]) == set(s)
        assert sd_f["state"][i]["step"].device.type == "cpu" and sd_f["state"][i]["step"].dtype == torch.float32
        for key in s:
            close(sd_f["state"][i][key], s[key], name=f"{i}.{key}", **TOL)
    # torch Adam continues from FusedAdam's state, FusedAdam continues from torch Adam's
    c.load_state_dict(a.state_dict())
    d.load_state_dict(b.state_dict())
    ref_from_fused = torch.optim.Adam(c.parameters(), lr=1e-2)
    ref_from_fused.load_state_dict(sd_f)
    fused_from_ref = FusedAdam(d.parameters(), lr=1e-3, backend=backend)
    fused_from_ref.load_state_dict(sd_t)
    assert fused_from_ref.param_groups[0]["lr"] == 1e-2
    for m, o in ((a, fused), (b, ref), (c, ref_from_fused), (d, fused_from_ref)):
        train(m, o, 3, seed=1)
    assert_models_close(a, b, close)
    assert_models_close(c, b, close)
    assert_models_close(d, b, close)
    assert fused_from_ref.state_dict()["state"][0]["step"].item() == 7


@pytest.mark.parametrize("backend", BACKENDS)
def test_params_without_grad_step_with_a_zero_gradient(backend, close):
    """Every parameter steps together: one without a gradient is stepped with a zero one (torch
    would skip it), never per-tensor launches."""
    require(backend)
    a = net()
    b = copy.deepcopy(a)
    fused = FusedAdam(a.parameters(), lr=1e-2, backend=backend)
    ref = torch.optim.Adam(b.parameters(), lr=1e-2)
    train(a, fused, 2)
    train(b, ref, 2)
    for _ in range(3):  # only the first layer gets gradients now
        fused.zero_grad(set_to_none=True)
        a[0](torch.ones(2, 7)).sum().backward()
        fused.step()
        ref.zero_grad()
        b[0](torch.ones(2, 7)).sum().backward()
        for p in b.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        ref.step()
    train(a, fused, 2, seed=2)
    train(b, ref, 2, seed=2)
    assert_models_close(a, b, close)
    steps = {s["step"].item() for s in fused.state_dict()["state"].values()}
    assert steps == {7.0}


@pytest.mark.parametrize("backend", BACKENDS)
def test_check_finite_and_found_inf_skip_the_step(backend):
    require(backend)
    a = net()
    fused = FusedAdam(a.parameters(), lr=1e-2, check_finite=True, backend=backend)
    train(a, fused, 1)
    before = copy.deepcopy(a.state_dict())
    fused.zero_grad()
    a(torch.randn(2, 7)).sum().backward()
    a[2].weight.grad[0, 0] = float("inf")
    fused.step()
    for k, v in a.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert fused.state_dict()["state"][0]["step"].item() == 1
    # an external flag (as GradScaler passes it) skips too, and a clear flag steps
    fused.check_finite = False
    fused.zero_grad()
    a(torch.randn(2, 7)).sum().backward()
    fused.step(found_inf=torch.ones(1))
    assert fused.state_dict()["state"][0]["step"].item() == 1
    fused.step(found_inf=torch.zeros(1), grad_scale=torch.tensor(2.0))
    assert fused.state_dict()["state"][0]["step"].item() == 2


def test_flat_layout_and_single_bucket():
    a = net()
    fused = FusedAdam(a.parameters())
    flat = fused.flat_params()
    assert len(flat.buckets) == 1 and flat.data.numel() == sum(p.numel() for p in a.parameters())
    assert fused.state[a[0].weight]["exp_avg"].shape == a[0].weight.shape
    with pytest.raises(ValueError):
        FusedAdam(a.parameters(), betas=(1.0, 0.9))


@pytest.mark.parametrize("backend", BACKENDS)
def test_groups_mixed_dtypes_and_lr_schedule(backend, close):
    """Two param groups (one with a float64 tensor), and the lr halved mid-run as DIL's meta
    optimizer does at epoch boundaries (StepLR on both optimizers)."""
    require(backend)
    torch.manual_seed(5)
    mk = lambda: [
        nn.Parameter(torch.randn(1023)),
        nn.Parameter(torch.randn(3, dtype=torch.float64)),  # noqa: E731
        nn.Parameter(torch.randn(65537)),
    ]
    ours = mk()
    ref = [nn.Parameter(p.detach().clone()) for p in ours]
    groups = lambda ps: [{"params": ps[:2]}, {"params": ps[2:], "lr": 3e-3, "weight_decay": 0.01}]  # noqa: E731
    fused = FusedAdam(groups(ours), lr=1e-3, backend=backend)
    opt = torch.optim.Adam(groups(ref), lr=1e-3, foreach=False)
    scheds = [torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5) for o in (fused, opt)]
    assert len(fused.flat_params(0).buckets) == 2
    for _ in range(7):
        grads = [torch.randn_like(p) for p in ours]
        for p, q, g in zip(ours, ref, grads):
            p.grad, q.grad = g.clone(), g.clone()
        fused.step()
        opt.step()
        for s in scheds:
            s.step()
    assert fused.param_groups[1]["lr"] == opt.param_groups[1]["lr"] == 3e-3 * 0.25
    for i, (p, q) in enumerate(zip(ours, ref)):
        close(p, q, name=f"p{i}", atol=3e-7 if p.dtype == torch.float32 else 1e-14, rtol=3e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "torch"])
def test_gpu_fused_adam_matches_torch_on_cuda(backend, close):
    require("cuda")
    a = net().cuda()
    b = copy.deepcopy(a)
    fused = FusedAdam(a.parameters(), lr=1e-2, weight_decay=0.01, backend=backend)
    ref = torch.optim.Adam(b.parameters(), lr=1e-2, weight_decay=0.01)
    g = torch.Generator(device="cuda").manual_seed(0)
    for _ in range(7):
        x = torch.randn(5, 7, device="cuda", generator=g)
        for m, o in ((a, fused), (b, ref)):
            o.zero_grad()
            m(x).square().mean().backward()
            o.step()
    for p, q in zip(a.parameters(), b.parameters()):
        close(p, q, atol=1e-6, rtol=1e-5)
    assert fused.state_dict()["state"][0]["step"].item() == 7


@pytest.mark.parametrize("backend", BACKENDS)
def test_channels_last_weights_step_the_same_numbers(backend, close):
    """FusedAdam over a model with channels_last 4-D weights steps as torch.optim.Adam does on that
    model (the flat update is elementwise, whatever the layout), and its state_dict loads into it."""
    require(backend)
    torch.manual_seed(0)
    a = nn.Sequential(nn.Conv2d(3, 6, 3), nn.Tanh(), nn.Conv2d(6, 2, 1)).to(memory_format=torch.channels_last)
    b = copy.deepcopy(a)
    fused, ref = FusedAdam(a.parameters(), lr=1e-2, backend=backend), torch.optim.Adam(b.parameters(), lr=1e-2)
    assert fused.flat_params().buckets[0].layouts[0] == "channels_last"
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        x = torch.randn(2, 3, 7, 7, generator=g).contiguous(memory_format=torch.channels_last)
        for m, opt in ((a, fused), (b, ref)):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    assert_models_close(a, b, close)
    sf, sr = fused.state_dict(), ref.state_dict()
    for i in sr["state"]:
        close(sf["state"][i]["exp_avg_sq"], sr["state"][i]["exp_avg_sq"], name=f"exp_avg_sq {i}", **TOL)
    torch.optim.Adam(copy.deepcopy(b).parameters(), lr=1e-2).load_state_dict(sf)
