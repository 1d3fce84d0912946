"""The fused meta step and the K-stacked SGD: native twins and references against torch, and the
DIL_sf optimizer flow."""

from __future__ import annotations

import pytest
import torch

from dil_fast.ops import optim as F
from tests.helpers import BACKENDS, require

SIZES = (1, 3, 1023, 65537)


TOL = dict(atol=2e-7, rtol=2e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reset", [False, True], ids=["keep", "reset"])
def test_meta_step_matches_torch(backend, reset, close):
    """DIL_sf's meta update: meta.grad = meta - task, meta Adam step, task <- meta; 7 iterations
    on several tensors laid out flat (1 + 3 + 1023 + 65537 elements)."""
    require(backend)
    n = sum(SIZES)
    meta = torch.randn(n)
    task = meta + 0.01 * torch.randn(n)
    m, v, step = torch.zeros(n), torch.zeros(n), F.new_step("cpu")
    ref_params = [torch.nn.Parameter(t.clone()) for t in meta.split(SIZES)]
    ref_task = task.clone()
    opt = torch.optim.Adam(ref_params, lr=1e-4, betas=(0.9, 0.999), foreach=False)
    for it in range(7):
        drift = 0.01 * torch.randn(n)
        F.meta_step_(meta, task, m, v, step, 1e-4, 0.9, 0.999, 1e-8, reset=reset, backend=backend)
        for p, mt, tk in zip(
            ref_params, torch.cat([p.detach() for p in ref_params]).split(SIZES), ref_task.split(SIZES)
        ):
            p.grad = mt - tk
        opt.step()
        ref_meta = torch.cat([p.detach() for p in ref_params])
        close(meta, ref_meta, name=f"meta@{it}", **TOL)
        if reset:
            assert torch.equal(task, meta), "the reset must copy the updated meta weights"
            ref_task = ref_meta.clone()
        # the inner loop moves the task weights before the next meta step
        task += drift
        ref_task += drift
    assert step.item() == 7


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["diff", "mean"])
@pytest.mark.parametrize("size", SIZES)
def test_meta_step_stacked_matches_loop(backend, reduction, size, close):
    require(backend)
    k = 4
    meta = torch.randn(size)
    tasks = meta + 0.05 * torch.randn(k, size)
    m, v, step = torch.zeros(size), torch.zeros(size), F.new_step("cpu")
    ref = torch.nn.Parameter(meta.clone())
    ref_tasks = tasks.clone()
    opt = torch.optim.Adam([ref], lr=1e-3, foreach=False)
    reset = reduction == "diff"
    for _ in range(7):
        F.meta_step_(meta, tasks, m, v, step, 1e-3, reduction=reduction, reset=reset, backend=backend)
        g = torch.zeros(size)
        for j in range(k):
            g += (ref.detach() - ref_tasks[j]) if reduction == "diff" else ref_tasks[j]
        ref.grad = g / k
        opt.step()
        if reset:
            ref_tasks = ref.detach().expand(k, size).clone()
            assert torch.equal(tasks, meta.expand(k, size))
        noise = 0.05 * torch.randn(k, size)
        tasks += noise
        ref_tasks += noise
    close(meta, ref, name="meta", **TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_meta_step_found_inf_skips_the_update_but_still_resets(backend):
    """A skipped meta step changes nothing but the sources, which restart from the unchanged meta
    (the task weights of the next meta-iteration must equal meta on the fused path)."""
    require(backend)
    meta, task = torch.randn(1023), torch.randn(2, 1023)
    m, v, step = torch.rand(1023), torch.rand(1023), torch.tensor([3.0])
    before = [t.clone() for t in (meta, task, m, v, step)]
    F.meta_step_(meta, task, m, v, step, 1e-3, reset=False, found_inf=torch.ones(1), backend=backend)
    for a, b in zip((meta, task, m, v, step), before):
        assert torch.equal(a, b)
    F.meta_step_(meta, task, m, v, step, 1e-3, reset=True, found_inf=torch.ones(1), backend=backend)
    for a, b in zip((meta, m, v, step), (before[0], *before[2:])):
        assert torch.equal(a, b)
    assert torch.equal(task, meta.expand(2, -1))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("wd", [0.0, 0.01], ids=["wd0", "wd"])
def test_sgd_stacked_matches_torch_sgd(backend, size, wd, close):
    """K = 3 SGD steps in one call (lr per row) against torch.optim.SGD per row, 7 steps."""
    require(backend)
    k = 3
    data = torch.randn(k, size)
    lrs = torch.tensor([0.1, 0.01, 0.5], dtype=torch.float64)
    refs = [torch.nn.Parameter(data[i].clone()) for i in range(k)]
    opts = [torch.optim.SGD([refs[i]], lr=float(lrs[i]), weight_decay=wd, foreach=False) for i in range(k)]
    for _ in range(7):
        grad = torch.randn(k, size)
        F.sgd_step_(data, grad, lrs, weight_decay=wd, backend=backend)
        for i in range(k):
            refs[i].grad = grad[i].clone()
            opts[i].step()
    for i in range(k):
        close(data[i], refs[i], name=f"row{i}", atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sgd_virtual_updates_from_base(backend, close):
    """phi_k = theta - lr * g_k for K confounders in one launch (the ss/ps virtual step)."""
    require(backend)
    theta = torch.randn(1023)
    grads = torch.randn(4, 1023)
    phi = torch.full((4, 1023), float("nan"))  # every element must be written
    F.sgd_step_(phi, grads, 0.1, base=theta, backend=backend)
    close(phi, theta - 0.1 * grads, atol=1e-7, rtol=1e-6)


@pytest.mark.ext
def test_native_meta_matches_reference_float64(close):
    require("cuda")
    meta = torch.randn(3001, dtype=torch.float64)
    tasks = meta + torch.randn(3, 3001, dtype=torch.float64)
    state = [t.clone() for t in (meta, tasks)]
    mv = [torch.zeros(3001, dtype=torch.float64) for _ in range(4)]
    s1, s2 = F.new_step("cpu"), F.new_step("cpu")
    for _ in range(7):
        F.meta_step_(meta, tasks, mv[0], mv[1], s1, 1e-3, 0.9, 0.999, 1e-8, 0.01, True, backend="cuda")
        F.meta_step_(state[0], state[1], mv[2], mv[3], s2, 1e-3, 0.9, 0.999, 1e-8, 0.01, True, backend="torch")
    close(meta, state[0], atol=1e-14, rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dil_sf_optimizer_flow_matches_reference_trainer(backend, close):
    """Three DIL_sf meta-iterations of a tiny conv net: the reference trainer's way (per-tensor
    Adam, task <- meta by load_state_dict, task optimizer state restored from a deep copy) against
    FlatParams + adam_step_ (task, betas (0, 0.999)) + meta_step_(reset=True)."""
    require(backend)
    import copy

    from torch import nn

    from dil_fast.optim import FlatParams

    def make():
        torch.manual_seed(11)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(8, 3, 3, padding=1))

    gen = torch.Generator().manual_seed(4)
    batches = [
        [(torch.rand(2, 3, 9, 9, generator=gen), torch.rand(2, 3, 9, 9, generator=gen)) for _ in range(4)]
        for _ in range(3)
    ]
    lr = 1e-2
    # reference trainer
    meta, task = make(), make()
    task_opt = torch.optim.Adam(task.parameters(), lr=lr, betas=(0.0, 0.999), foreach=False)
    meta_opt = torch.optim.Adam(meta.parameters(), lr=lr, foreach=False)
    saved = None
    for it in range(3):
        task.load_state_dict(meta.state_dict())
        if saved is not None:
            task_opt.load_state_dict(saved)
        for x, y in batches[it]:
            task_opt.zero_grad()
            nn.functional.l1_loss(task(x), y).backward()
            task_opt.step()
        for mp, tp in zip(meta.parameters(), task.parameters()):
            mp.grad = mp.detach() - tp.detach()
        meta_opt.step()
        saved = copy.deepcopy(task_opt.state_dict())
    # flat buffers + fused steps
    meta2, task2 = make(), make()
    mflat, tflat = FlatParams(meta2), FlatParams(task2)
    tflat.copy_from(mflat)
    tm, tv, ts = torch.zeros_like(tflat.data), torch.zeros_like(tflat.data), F.new_step("cpu")
    mm, mv, ms = torch.zeros_like(mflat.data), torch.zeros_like(mflat.data), F.new_step("cpu")
    lr_t = F.as_lr(lr, "cpu")
    for it in range(3):
        for x, y in batches[it]:
            tflat.zero_grad()
            nn.functional.l1_loss(task2(x), y).backward()
            F.adam_step_(tflat.data, tflat.grad, tm, tv, ts, lr_t, 0.0, 0.999, backend=backend)
        F.meta_step_(mflat.data, tflat.data, mm, mv, ms, lr_t, 0.9, 0.999, reset=True, backend=backend)
    assert ts.item() == 12 and ms.item() == 3
    for (n, a), b in zip(meta2.named_parameters(), meta.parameters()):
        close(a, b, name=n, atol=1e-6, rtol=1e-5)
    assert torch.equal(tflat.data, mflat.data)
