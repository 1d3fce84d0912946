"""Flat / K-stacked Adam against torch.optim.Adam: the torch reference and the native CPU twin."""
from __future__ import annotations

import os

import pytest
import torch

from dil_fast import backends
from dil_fast.optim import FlatParams
from dil_fast.optim import functional as F


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: intra-op threads only add contention on a busy machine (conftest restores)."""
    torch.set_num_threads(1)

SIZES = (1, 3, 1023, 65537)
STEPS = 7
BACKENDS = [pytest.param("torch", id="torch"), pytest.param("cuda", id="native", marks=pytest.mark.ext)]
CONFIGS = {
    "adam": dict(lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0, adamw=False),
    "adam-l2": dict(lr=3e-3, betas=(0.9, 0.999), weight_decay=0.05, adamw=False),
    "adamw": dict(lr=3e-3, betas=(0.8, 0.99), weight_decay=0.1, adamw=True),
    "beta1-0": dict(lr=1e-4, betas=(0.0, 0.999), weight_decay=0.0, adamw=False),  # the DIL task optimizer
}


def require(backend: str) -> None:
    """The native backend must be there unless the install was pure Python on purpose."""
    if backend != "cuda":
        return
    if os.environ.get("DIL_FAST_BUILD_EXT", "1").strip() == "0" or os.environ.get("DIL_FAST_DISABLE_EXT") == "1":
        pytest.skip("tier T2: dil_fast._C not built (DIL_FAST_BUILD_EXT=0 / DIL_FAST_DISABLE_EXT=1)")
    st = backends.native_status()
    assert st.available, st.reason


def tol(dtype):
    # A few fp32 ulps after 7 steps (FMA/ordering differences against torch's vectorised CPU ops).
    return dict(atol=2e-7, rtol=2e-6) if dtype == torch.float32 else dict(atol=1e-14, rtol=1e-12)


def torch_adam(params, cfg):
    return torch.optim.Adam(params, lr=cfg["lr"], betas=cfg["betas"], weight_decay=cfg["weight_decay"],
                            decoupled_weight_decay=cfg["adamw"], eps=1e-8, foreach=False)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_flat_adam_matches_torch_adam(backend, config, dtype, close):
    """Several tensors (1, 3, 1023, 65537 elements) in one flat buffer, 7 steps, fresh grads."""
    require(backend)
    cfg = CONFIGS[config]
    ours = [torch.nn.Parameter(torch.randn(n, dtype=dtype)) for n in SIZES]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    flat = FlatParams(ours)
    m, v = torch.zeros_like(flat.data), torch.zeros_like(flat.data)
    step = F.new_step("cpu")
    lr = F.as_lr(cfg["lr"], "cpu")
    opt = torch_adam(ref, cfg)
    for _ in range(STEPS):
        grads = [torch.randn(n, dtype=dtype) for n in SIZES]
        for p, g in zip(ours, grads):
            p.grad.copy_(g)
        for p, g in zip(ref, grads):
            p.grad = g.clone()
        F.adam_step_(flat.data, flat.grad, m, v, step, lr, *cfg["betas"], 1e-8, cfg["weight_decay"], cfg["adamw"],
                     backend=backend)
        opt.step()
    assert step.item() == STEPS
    for i, (a, b) in enumerate(zip(ours, ref)):
        close(a, b, name=f"param{i}", **tol(dtype))
        close(m[flat.buckets[0].offsets[i]:][:SIZES[i]], opt.state[b]["exp_avg"], name=f"exp_avg{i}", **tol(dtype))
        close(v[flat.buckets[0].offsets[i]:][:SIZES[i]], opt.state[b]["exp_avg_sq"], name=f"exp_avg_sq{i}",
              **tol(dtype))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", SIZES)
def test_stacked_adam_matches_loop(backend, size, close):
    """K=3 rows with their own step counts and learning rates, one call, against K torch Adams."""
    require(backend)
    k = 3
    data = torch.randn(k, size)
    m, v = torch.zeros_like(data), torch.zeros_like(data)
    step = torch.tensor([0.0, 2.0, 5.0])  # rows start at different counts
    lrs = torch.tensor([1e-3, 2e-3, 5e-4], dtype=torch.float64)
    refs = [torch.nn.Parameter(data[i].clone()) for i in range(k)]
    opts = [torch.optim.Adam([refs[i]], lr=float(lrs[i]), betas=(0.9, 0.999)) for i in range(k)]
    for i, o in enumerate(opts):  # advance the torch step counters to match
        o.state[refs[i]] = {"step": step[i].clone(), "exp_avg": torch.zeros(size), "exp_avg_sq": torch.zeros(size)}
    for _ in range(STEPS):
        grad = torch.randn(k, size)
        F.adam_step_stacked_(data, grad, m, v, step, lrs, backend=backend)
        for i in range(k):
            refs[i].grad = grad[i].clone()
            opts[i].step()
    for i in range(k):
        close(data[i], refs[i], name=f"row{i}", **tol(torch.float32))
        close(step[i], opts[i].state[refs[i]]["step"], name=f"step{i}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_found_inf_skips_update_on_device(backend):
    """A set flag leaves params, moments and the step untouched; no .item() is needed."""
    require(backend)
    p, g = torch.randn(1023), torch.randn(1023)
    m, v = torch.rand(1023), torch.rand(1023)
    step, lr = torch.tensor([4.0]), torch.tensor([1e-3])
    before = [t.clone() for t in (p, m, v, step)]
    flag = torch.ones(1)
    F.adam_step_(p, g, m, v, step, lr, found_inf=flag, backend=backend)
    for a, b in zip((p, m, v, step), before):
        assert torch.equal(a, b)
    flag.zero_()
    F.adam_step_(p, g, m, v, step, lr, found_inf=flag, backend=backend)
    assert step.item() == 5.0 and not torch.equal(p, before[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_nonfinite_check_then_skip(backend):
    require(backend)
    g = torch.randn(65537)
    flag = torch.zeros(1)
    F.nonfinite_check_(g, flag, backend=backend)
    assert flag.item() == 0.0
    g[40000] = float("nan")
    F.nonfinite_check_(g, flag, backend=backend)
    assert flag.item() == 1.0
    g[40000] = 0.0
    g[7] = float("-inf")
    flag.zero_()
    F.nonfinite_check_(g.double(), flag, backend=backend)
    assert flag.item() == 1.0
    p = torch.randn(65537)
    p0 = p.clone()
    F.adam_step_(p, g, torch.zeros_like(p), torch.zeros_like(p), F.new_step("cpu"), 1e-3, found_inf=flag,
                 backend=backend)
    assert torch.equal(p, p0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_scale_divides_gradients(backend, close):
    require(backend)
    p = torch.randn(1023)
    g = torch.randn(1023)
    p2 = p.clone()
    st = [torch.zeros(1023) for _ in range(4)]
    F.adam_step_(p, g * 1024, st[0], st[1], F.new_step("cpu"), 1e-3, grad_scale=torch.tensor([1024.0]),
                 backend=backend)
    F.adam_step_(p2, g, st[2], st[3], F.new_step("cpu"), 1e-3, backend=backend)
    close(p, p2, atol=1e-7, rtol=1e-6)


def test_native_twin_matches_reference_bitwise_close(close):
    """The CPU twin and the torch reference agree on a long run (same math, same order)."""
    require("cuda")
    torch.manual_seed(3)
    a = torch.randn(4097)
    b = a.clone()
    sa = [torch.zeros(4097) for _ in range(2)]
    sb = [torch.zeros(4097) for _ in range(2)]
    s1, s2 = F.new_step("cpu"), F.new_step("cpu")
    for _ in range(20):
        g = torch.randn(4097)
        F.adam_step_(a, g, *sa, s1, 1e-3, 0.9, 0.999, 1e-8, 0.01, True, backend="cuda")
        F.adam_step_(b, g, *sb, s2, 1e-3, 0.9, 0.999, 1e-8, 0.01, True, backend="torch")
    close(a, b, atol=5e-7, rtol=5e-6)


test_native_twin_matches_reference_bitwise_close = pytest.mark.ext(test_native_twin_matches_reference_bitwise_close)
