"""SerialFirstOrder and ERM against plain re-statements of the released loop with torch.optim.Adam."""

import copy

import pytest
import torch
from torch import nn

from dil_fast.meta import ERM, SerialFirstOrder
from dil_fast.models import RRDBNet


def _batches(n_iter, k=4, b=2, hw=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_iter):
        it = []
        for _ in range(k):
            y = torch.rand(b, 3, hw, hw, generator=g)
            x = (y + 0.1 * torch.randn(b, 3, hw, hw, generator=g)).clamp(0, 1)
            it.append((x, y))
        out.append(it)
    return out


def _reference_sf(model, data, inner_lr=1e-4, meta_lr=1e-4):
    """The released meta-iteration, re-stated: task <- meta via state_dict, persistent task-Adam
    state via optimizer state_dict, grads = meta - task, meta Adam."""
    meta = copy.deepcopy(model)
    task = copy.deepcopy(model)
    opt_task = torch.optim.Adam(task.parameters(), lr=inner_lr, betas=(0.0, 0.999))
    opt_meta = torch.optim.Adam(meta.parameters(), lr=meta_lr)
    loss_fn = nn.L1Loss()
    state_task = None
    all_losses = []
    for batches in data:
        task.load_state_dict(meta.state_dict())
        if state_task is not None:
            opt_task.load_state_dict(state_task)
        for x, y in batches:
            opt_task.zero_grad()
            loss = loss_fn(task(x), y)
            all_losses.append(loss.item())
            loss.backward()
            opt_task.step()
        state_task = opt_task.state_dict()
        opt_meta.zero_grad()
        for mp, tp in zip(meta.parameters(), task.parameters()):
            if mp.grad is None:
                mp.grad = torch.zeros(mp.size())
            mp.grad.data.add_(mp.data - tp.data)
        opt_meta.step()
    return meta, task, all_losses


def _tiny():
    torch.manual_seed(1)
    return RRDBNet(3, 3, nf=8, nb=1, gc=4)


@pytest.mark.parametrize("fused", [False, pytest.param(True, marks=pytest.mark.ext)], ids=["torch", "fused"])
def test_sf_matches_reference_loop_over_several_iterations(fused):
    model = _tiny()
    data = _batches(5)
    ref_meta, ref_task, ref_losses = _reference_sf(model, data)
    algo = SerialFirstOrder(copy.deepcopy(model), fused=fused)
    assert algo.fused is fused
    losses = [algo.step(b) for b in data]
    assert all(l.shape == (4,) and not l.requires_grad for l in losses)
    tol = dict(rtol=1e-5, atol=1e-6) if fused else dict(rtol=1e-6, atol=1e-8)  # fp32 rounding of a fused pass
    torch.testing.assert_close(torch.cat(losses), torch.tensor(ref_losses), rtol=1e-5 if fused else 1e-6, atol=1e-7)
    for (n, a), b in zip(algo.meta_model.named_parameters(), ref_meta.parameters()):
        torch.testing.assert_close(a, b, **tol, msg=n)
    if not fused:  # the fused meta step already reset the task weights to the new meta weights
        for (n, a), b in zip(algo.task_model.named_parameters(), ref_task.parameters()):
            torch.testing.assert_close(a, b, **tol, msg=n)
    assert algo.iteration == 5
    # the task optimizer's step count persisted across meta-iterations (never reset)
    st = algo.task_optimizer.state_dict()["state"][0]
    assert int(st["step"]) == 5 * 4


def test_sf_order_matters_and_meta_moves_towards_task():
    model = _tiny()
    data = _batches(1)[0]
    a = SerialFirstOrder(copy.deepcopy(model))
    b = SerialFirstOrder(copy.deepcopy(model))
    la = a.step(data)
    lb = b.step(list(reversed(data)))
    assert not torch.equal(la, lb.flip(0))  # a different order gives a different trajectory
    p0 = next(model.parameters())
    pm = next(a.meta_model.parameters())
    pt = next(a.task_model.parameters())
    # the meta model moved in the direction of task - initial
    assert torch.sum((pm - p0) * (pt - p0)) > 0


@pytest.mark.parametrize("fused", [False, pytest.param(True, marks=pytest.mark.ext)], ids=["torch", "fused"])
def test_sf_state_dict_round_trip_continues_identically(fused):
    model = _tiny()
    data = _batches(4)
    a = SerialFirstOrder(copy.deepcopy(model), fused=fused)
    for b in data[:2]:
        a.step(b)
    state = copy.deepcopy(a.state_dict())
    b_algo = SerialFirstOrder(_tiny_other(), fused=fused)
    b_algo.load_state_dict(state)
    for b in data[2:]:
        la = a.step(b)
        lb = b_algo.step(b)
        assert torch.equal(la, lb)
    for p, q in zip(a.meta_model.parameters(), b_algo.meta_model.parameters()):
        assert torch.equal(p, q)
    assert b_algo.iteration == 4
    assert set(state) >= {"meta_model", "task_model", "meta_optimizer", "task_optimizer", "iteration", "hparams"}


def _tiny_other():
    torch.manual_seed(99)
    return RRDBNet(3, 3, nf=8, nb=1, gc=4)


def test_sf_meta_lr_setter_and_betas_accept_ints():
    algo = SerialFirstOrder(_tiny(), inner_betas=(0, 0.999))  # the released spelling, refused by torch>=2
    assert algo.task_optimizer.param_groups[0]["betas"] == (0.0, 0.999)
    algo.meta_lr = 5e-5
    assert algo.meta_lr == 5e-5 and algo.task_lr == 1e-4


def test_any_module_works():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1))
    algo = SerialFirstOrder(net, loss="l2")
    losses = algo.step(_batches(1, k=3)[0])
    assert losses.shape == (3,)


@pytest.mark.ext
def test_fused_and_unfused_states_are_interchangeable():
    model = _tiny()
    data = _batches(4)
    a = SerialFirstOrder(copy.deepcopy(model), fused=True)
    b = SerialFirstOrder(copy.deepcopy(model), fused=False)
    for batch in data[:2]:
        a.step(batch)
    b.load_state_dict(copy.deepcopy(a.state_dict()))  # fused state -> torch.optim.Adam path
    for batch in data[2:]:
        la, lb = a.step(batch), b.step(batch)
        torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-7)
    for p, q in zip(a.meta_model.parameters(), b.meta_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fused", [False, pytest.param(True, marks=pytest.mark.ext)], ids=["torch", "fused"])
def test_erm_matches_plain_adam_on_concatenated_batch(fused):
    model = _tiny()
    data = _batches(3)
    ref = copy.deepcopy(model)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-4)
    algo = ERM(copy.deepcopy(model), fused=fused)
    for batches in data:
        x = torch.cat([b[0] for b in batches])
        y = torch.cat([b[1] for b in batches])
        opt.zero_grad()
        out = ref(x)
        loss = nn.functional.l1_loss(out, y)
        loss.backward()
        opt.step()
        per_pair = algo.step(batches)
        torch.testing.assert_close(per_pair.mean(), loss.detach(), rtol=1e-5, atol=1e-7)
    for a, b in zip(algo.meta_model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5 if fused else 1e-6, atol=1e-6 if fused else 1e-8)
    assert algo.meta_model is algo.task_model


@pytest.mark.parametrize("bad", [dict(loss="huber"), dict(inner_betas=(1.2, 0.9)), dict(inner_betas=("a",))])
def test_bad_hyperparameters(bad):
    with pytest.raises(ValueError):
        SerialFirstOrder(_tiny(), **bad)
