"""The virtual-update DIL variants (pf, ss, ps, ss-fo): batched vs looped, second-order gradients
against an independent double backward and gradcheck, ss-fo vs ss without the Hessian term, pf
against a plain torch.optim.Adam re-statement, exact resume, and a convergence smoke."""

from __future__ import annotations

import contextlib
import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dil_fast.meta import (
    VARIANTS,
    ParallelFirstOrder,
    ParallelSecondOrder,
    SerialFirstOrderApprox,
    SerialSecondOrder,
)
from dil_fast.meta.batched import mixture_batch, support_and_query
from dil_fast.models import RRDBNet


class TinyConvNet(nn.Module):
    """3 -> c -> c -> 3 convs with a nonlinearity; ``[N, 3, H, W] -> [N, 3, H, W]``."""

    def __init__(self, c: int = 4, act=nn.LeakyReLU(0.2)):
        super().__init__()
        self.c1 = nn.Conv2d(3, c, 3, padding=1)
        self.c2 = nn.Conv2d(c, c, 3, padding=1)
        self.c3 = nn.Conv2d(c, 3, 3, padding=1)
        self.act = act

    def forward(self, x):
        return self.c3(self.act(self.c2(self.act(self.c1(x))))) + x


def conv_net_fn(params, x, act=lambda t: F.leaky_relu(t, 0.2)):
    """TinyConvNet written out with F.conv2d: an independent functional form for the oracle."""
    w1, b1, w2, b2, w3, b3 = params
    h = act(F.conv2d(x, w1, b1, padding=1))
    h = act(F.conv2d(h, w2, b2, padding=1))
    return F.conv2d(h, w3, b3, padding=1) + x


MODELS = {
    "conv": lambda: TinyConvNet(),
    "rrdb": lambda: RRDBNet(nf=8, nb=1, gc=4),
}


def make_batches(k, n=2, size=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(k):
        clean = torch.rand(n, 3, size, size, generator=g, dtype=dtype)
        noisy = (clean + torch.randn(clean.shape, generator=g, dtype=dtype) * (0.05 * (i + 1))).clamp(0, 1)
        out.append((noisy, clean))
    return out


def build(variant, model, **kw):
    base = {"meta_lr": 1e-3}
    if variant == "pf":
        base["inner_lr"] = 1e-3
    else:
        base["alpha"] = 0.1
    base.update(kw)
    return VARIANTS[variant](model, **base)


def params_of(algo):
    return [p.detach().clone() for p in algo.meta_model.parameters()]


# ------------------------------------------------------------------------------- batched == looped
@pytest.mark.parametrize("k", [2, 3, 4], ids=lambda k: f"K{k}")
@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("variant", ["pf", "ss", "ps", "ss-fo"])
def test_batched_equals_looped(variant, arch, k, close):
    torch.manual_seed(1)
    model = MODELS[arch]()
    a_b = build(variant, copy.deepcopy(model), virtual_batching="batched")
    a_l = build(variant, copy.deepcopy(model), virtual_batching="looped")
    for it in range(2):
        batches = make_batches(k, seed=it)
        if variant != "pf":
            sup, q = support_and_query(batches, "mixture", None)
            g_b, l_b, _ = a_b.meta_gradient(sup, q, path="batched")
            g_l, l_l, _ = a_l.meta_gradient(sup, q, path="looped")
            close(l_b, l_l, atol=1e-6, rtol=1e-5, name=f"inner losses it{it}")
            scale = max(g.abs().max().item() for g in g_l)
            for i, (gb, gl) in enumerate(zip(g_b, g_l)):
                close(gb, gl, atol=1e-5 * scale, rtol=1e-4, name=f"meta grad {i} it{it}")
        close(a_b.step(batches), a_l.step(batches), atol=1e-6, rtol=1e-5, name=f"step losses it{it}")
    # Adam normalises tiny rounding differences up to ~lr per element at worst; typical far less
    for pb, pl in zip(params_of(a_b), params_of(a_l)):
        close(pb, pl, atol=2e-5, rtol=1e-4, name="params after 2 iterations")


@pytest.mark.parametrize("variant", ["ss", "ps", "ss-fo"])
def test_batched_equals_looped_inner_adam(variant, close):
    torch.manual_seed(2)
    model = MODELS["conv"]()
    a_b = build(variant, copy.deepcopy(model), virtual_batching="batched", inner_optimizer="adam", alpha=1e-2)
    a_l = build(variant, copy.deepcopy(model), virtual_batching="looped", inner_optimizer="adam", alpha=1e-2)
    for it in range(2):
        batches = make_batches(3, seed=it)
        close(a_b.step(batches), a_l.step(batches), atol=1e-6, rtol=1e-5, name=f"losses it{it}")
    for mb, ml in zip(a_b._inner_state.exp_avg_sq, a_l._inner_state.exp_avg_sq):
        close(mb, ml, atol=1e-9, rtol=1e-4, name="inner exp_avg_sq")
    for pb, pl in zip(params_of(a_b), params_of(a_l)):
        close(pb, pl, atol=2e-5, rtol=1e-4, name="params")


# ------------------------------------------------------------------- second-order gradient oracles
def independent_ss_grad(params, support, query, alpha, *, hessian=True, act=None):
    """Eq. 4 meta-gradient by plain double backward on the unbatched graph, one model at a time."""
    fn = conv_net_fn if act is None else (lambda p, x: conv_net_fn(p, x, act))
    theta = [p.detach().clone().requires_grad_() for p in params]
    total = 0.0
    for x, y in support:
        g = torch.autograd.grad(F.l1_loss(fn(theta, x), y), theta, create_graph=hessian)
        phi = [t - alpha * (gi if hessian else gi.detach()) for t, gi in zip(theta, g)]
        total = total + F.l1_loss(fn(phi, query[0]), query[1])
    return torch.autograd.grad(total, theta)


def independent_ps_grad(params, support, query, alpha):
    theta = [p.detach().clone().requires_grad_() for p in params]
    inner = sum(F.l1_loss(conv_net_fn(theta, x), y) for x, y in support) / len(support)
    g = torch.autograd.grad(inner, theta, create_graph=True)
    phi = [t - alpha * gi for t, gi in zip(theta, g)]
    return torch.autograd.grad(F.l1_loss(conv_net_fn(phi, query[0]), query[1]), theta)


@pytest.mark.parametrize("path", ["batched", "looped"])
@pytest.mark.parametrize("variant", ["ss", "ps"])
def test_second_order_matches_double_backward(variant, path, close):
    torch.manual_seed(3)
    model = TinyConvNet().double()
    algo = build(variant, model)
    sup, q = support_and_query(make_batches(3, dtype=torch.float64), "mixture", None)
    params = list(model.parameters())
    grads, _, _ = algo.meta_gradient(sup, q, path=path)
    ref = (independent_ss_grad if variant == "ss" else independent_ps_grad)(params, sup, q, algo.alpha)
    for i, (g, r) in enumerate(zip(grads, ref)):
        close(g, r, atol=1e-12, rtol=1e-9, name=f"{variant} meta grad {i}")
    if variant == "ss":  # the Hessian term is really there
        no_h = independent_ss_grad(params, sup, q, algo.alpha, hessian=False)
        assert max((g - r).abs().max().item() for g, r in zip(grads, no_h)) > 1e-6


@pytest.mark.parametrize("variant", ["ss", "ps"])
def test_meta_objective_gradcheck(variant):
    torch.manual_seed(4)
    model = TinyConvNet(c=2, act=nn.Tanh()).double()
    algo = build(variant, model, loss="mse", alpha=0.5)
    sup, q = support_and_query(make_batches(2, n=2, size=4, dtype=torch.float64), "mixture", None)
    params = tuple(p.detach().clone().requires_grad_() for p in model.parameters())
    fn = lambda *ps: algo.outer_objective(list(ps), sup, q, path="batched")[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, params, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("path", ["batched", "looped"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_ss_fo_is_ss_without_hessian(reduction, path, close):
    torch.manual_seed(5)
    model = TinyConvNet().double()
    algo = SerialFirstOrderApprox(model, alpha=0.1, outer_reduction=reduction)
    sup, q = support_and_query(make_batches(4, dtype=torch.float64), "mixture", None)
    grads, _, _ = algo.meta_gradient(sup, q, path=path)
    ref = independent_ss_grad(list(model.parameters()), sup, q, 0.1, hessian=False)
    div = 1.0 if reduction == "sum" else len(sup)
    for i, (g, r) in enumerate(zip(grads, ref)):
        close(g, r / div, atol=1e-12, rtol=1e-9, name=f"ss-fo grad {i}")
    full = SerialSecondOrder(copy.deepcopy(model), alpha=0.1, outer_reduction=reduction)
    g_ss, _, _ = full.meta_gradient(sup, q, path=path)
    assert max((a - b).abs().max().item() for a, b in zip(grads, g_ss)) > 1e-6


# ------------------------------------------------------------------------------------ pf re-stated
@pytest.mark.parametrize("query", ["mixture", "split", "explicit"])
@pytest.mark.parametrize("fused", [False, pytest.param(True, marks=pytest.mark.ext)], ids=["torch", "fused"])
def test_pf_matches_plain_adam(query, fused, close):
    torch.manual_seed(6)
    meta = TinyConvNet()
    algo = ParallelFirstOrder(copy.deepcopy(meta), inner_lr=1e-3, meta_lr=2e-3, query=query, fused=fused)
    task = copy.deepcopy(meta)
    task_opt = torch.optim.Adam(task.parameters(), lr=1e-3, betas=(0.0, 0.999))
    meta_opt = torch.optim.Adam(meta.parameters(), lr=2e-3, betas=(0.9, 0.999))
    for it in range(3):
        batches = make_batches(3, n=4, seed=it)
        xq_explicit = make_batches(1, n=3, seed=100 + it)[0]
        if query == "mixture":
            sup = batches
            j = torch.arange(4)
            xq = torch.stack([b[0] for b in batches])[j % 3, j]
            yq = torch.stack([b[1] for b in batches])[j % 3, j]
        elif query == "split":
            sup = [(x[:2], y[:2]) for x, y in batches]
            xq, yq = torch.cat([x[2:] for x, _ in batches]), torch.cat([y[2:] for _, y in batches])
        else:
            sup, (xq, yq) = batches, xq_explicit
        task.load_state_dict(meta.state_dict())
        for x, y in [(torch.cat([s[0] for s in sup]), torch.cat([s[1] for s in sup])), (xq, yq)]:
            task_opt.zero_grad()
            F.l1_loss(task(x), y).backward()
            task_opt.step()
        meta_opt.zero_grad()
        for mp, tp in zip(meta.parameters(), task.parameters()):
            mp.grad = (mp - tp).detach()
        meta_opt.step()
        algo.step(batches, query=xq_explicit if query == "explicit" else None)
    for i, (a, b) in enumerate(zip(algo.meta_model.parameters(), meta.parameters())):
        close(a, b, atol=1e-6, rtol=1e-5, name=f"pf meta param {i}")
    # the fused meta step resets the task weights to the new meta weights in the same pass
    expected_task = meta if fused else task
    for i, (a, b) in enumerate(zip(algo.task_model.parameters(), expected_task.parameters())):
        close(a, b, atol=1e-6, rtol=1e-5, name=f"pf task param {i}")


# ---------------------------------------------------------------------------------------- resume
RESUME_CASES = [
    ("pf", {}),
    ("ss", {}),
    ("ps", {}),
    ("ss-fo", {}),
    ("ss", {"inner_optimizer": "adam"}),
    ("ps", {"inner_optimizer": "adam"}),
    ("ss-fo", {"virtual_batching": "auto", "inner_optimizer": "adam"}),
]


RESUME_IDS = [f"{v}-{'-'.join(kw.values()) or 'default'}" for v, kw in RESUME_CASES]


@pytest.mark.parametrize("variant,kw", RESUME_CASES, ids=RESUME_IDS)
def test_state_dict_round_trip(variant, kw):
    torch.manual_seed(7)
    algo = build(variant, TinyConvNet(), **kw)
    for it in range(2):
        algo.step(make_batches(3, seed=it))
    buf = io.BytesIO()
    torch.save(algo.state_dict(), buf)
    buf.seek(0)
    fresh = build(variant, TinyConvNet(), **kw)  # different initial weights
    fresh.load_state_dict(torch.load(buf, weights_only=False))
    assert fresh.iteration == 2
    for it in range(2, 4):
        la = algo.step(make_batches(3, seed=it))
        lb = fresh.step(make_batches(3, seed=it))
        assert torch.equal(la, lb)
    for a, b in zip(algo.meta_model.parameters(), fresh.meta_model.parameters()):
        assert torch.equal(a, b)
    sa, sb = algo.state_dict(), fresh.state_dict()
    assert sa["iteration"] == sb["iteration"] == 4
    assert sa["hparams"] == sb["hparams"]


def test_load_rejects_other_variant():
    a = build("ss", TinyConvNet())
    with pytest.raises(ValueError, match="variant"):
        build("ps", TinyConvNet()).load_state_dict(a.state_dict())


# ------------------------------------------------------------------------------- convergence smoke
@pytest.mark.parametrize("variant", ["pf", "ss", "ps", "ss-fo"])
def test_convergence_smoke(variant):
    torch.manual_seed(8)
    model = TinyConvNet(c=8)
    kw = {"inner_lr": 3e-3} if variant == "pf" else {"alpha": 0.05}
    algo = VARIANTS[variant](model, meta_lr=3e-3, **kw)
    batches = make_batches(4, n=2, size=12, seed=11)
    x_all = torch.cat([b[0] for b in batches])
    y_all = torch.cat([b[1] for b in batches])
    with torch.no_grad():
        before = F.l1_loss(model(x_all), y_all).item()
    history = []
    for _ in range(20):
        losses = algo.step(batches)
        assert losses.shape == (4,) and not losses.requires_grad and torch.isfinite(losses).all()
        history.append(losses.mean().item())
    with torch.no_grad():
        after = F.l1_loss(model(x_all), y_all).item()
    assert after < 0.95 * before, (before, after)  # ~0.87-0.89 for every variant
    assert sum(history[-5:]) < sum(history[:5])


# -------------------------------------------------------------------------------- options, errors
def test_mixture_batch_takes_sample_j_from_confounder_j_mod_k():
    batches = [(torch.full((3, 1, 2, 2), float(k)), torch.full((3, 1, 2, 2), 10.0 + k)) for k in range(2)]
    x, y = mixture_batch(batches)
    assert x[:, 0, 0, 0].tolist() == [0.0, 1.0, 0.0]
    assert y[:, 0, 0, 0].tolist() == [10.0, 11.0, 10.0]


def test_split_query_holds_out_second_halves():
    batches = make_batches(2, n=5)
    sup, (xq, yq) = support_and_query(batches, "split", None)
    assert [s[0].shape[0] for s in sup] == [3, 3] and xq.shape[0] == 4
    assert torch.equal(xq[:2], batches[0][0][3:])


@pytest.mark.parametrize("variant", ["pf", "ss", "ps", "ss-fo"])
def test_query_modes_and_errors(variant):
    algo = build(variant, TinyConvNet(), query="explicit")
    with pytest.raises(ValueError, match="explicit"):
        algo.step(make_batches(2))
    assert algo.step(make_batches(2), query=make_batches(1, n=3)[0]).shape == (2,)
    assert build(variant, TinyConvNet(), query="split").step(make_batches(2, n=4)).shape == (2,)
    with pytest.raises(ValueError, match="query"):
        build(variant, TinyConvNet(), query="held-out")
    with pytest.raises(ValueError, match="virtual_batching"):
        build(variant, TinyConvNet(), virtual_batching="fast")
    with pytest.raises(TypeError):
        VARIANTS[variant](TinyConvNet(), 1e-4)  # keyword-only


def test_unequal_batches_batched_raises_auto_loops():
    batches = [make_batches(1, n=2)[0], make_batches(1, n=3)[0]]
    with pytest.raises(ValueError, match="batched"):
        SerialSecondOrder(TinyConvNet(), virtual_batching="batched").step(batches)
    assert SerialSecondOrder(TinyConvNet(), virtual_batching="auto").step(batches).shape == (2,)


def test_auto_records_its_choice():
    algo = SerialFirstOrderApprox(TinyConvNet())
    before = params_of(algo)
    algo.step(make_batches(2))
    assert list(algo._chooser.choices.values()) == ["looped"]  # the CPU rule
    assert algo.state_dict()["path_choices"] == algo._chooser.choices
    assert algo.iteration == 1 and any(not torch.equal(a, b) for a, b in zip(before, params_of(algo)))


@pytest.mark.parametrize("variant", ["ss", "ss-fo"])
def test_auto_is_deterministic_across_runs(variant, monkeypatch):
    """Two runs from the same seed take the same path and agree bitwise, also where "auto" batches."""
    for batched in (False, True):
        monkeypatch.setattr(SerialSecondOrder, "_auto_prefers_batched", staticmethod(lambda d: batched))
        runs = []
        for _ in range(2):
            torch.manual_seed(3)
            algo = build(variant, TinyConvNet())
            for it in range(3):
                algo.step(make_batches(2, seed=it))
            runs.append((params_of(algo), dict(algo._chooser.choices)))
        (pa, ca), (pb, cb) = runs
        assert ca == cb and set(ca.values()) == {"batched" if batched else "looped"}
        assert all(torch.equal(a, b) for a, b in zip(pa, pb))


def test_auto_falls_back_to_looped_where_batching_fails(monkeypatch):
    monkeypatch.setattr(SerialSecondOrder, "_auto_prefers_batched", staticmethod(lambda d: True))
    algo = SerialSecondOrder(BatchNormNet(), virtual_batching="auto")
    with pytest.warns(RuntimeWarning, match="one at a time"):
        assert algo.step(make_batches(2)).shape == (2,)
    assert list(algo._chooser.choices.values()) == ["looped"] and algo.iteration == 1
    calls = []
    real = algo.meta_gradient
    monkeypatch.setattr(algo, "meta_gradient", lambda *a, **k: calls.append(k["path"]) or real(*a, **k))
    algo.step(make_batches(2))
    assert calls == ["looped"]  # the failed batched attempt is not repeated


def test_tune_times_both_paths_and_keeps_the_faster():
    algo = SerialSecondOrder(TinyConvNet(), virtual_batching="tune")
    algo.step(make_batches(2))
    ((key, choice),) = algo._chooser.choices.items()
    times = algo._chooser.timings[key]
    assert set(times) == {"batched", "looped"} and choice == min(times, key=times.get)


@pytest.mark.parametrize("variant", ["ss", "ps", "ss-fo"])
def test_virtual_variants_average_their_meta_gradient_with_grad_sync(variant):
    algo = build(variant, TinyConvNet())
    seen, flags = [], []
    algo.distribute(
        lambda m: pytest.fail("no DDP around a virtual model"),
        lambda m: seen.append(all(p.grad is not None for p in m.parameters())),
        flags.append,
    )
    algo.step(make_batches(2))
    assert seen == [True] and len(flags) == 1


class _CountingWrapper(nn.Module):
    """Stands in for DistributedDataParallel: counts forwards and no_sync scopes."""

    def __init__(self, module):
        super().__init__()
        self.module, self.forwards, self.no_sync_scopes = module, 0, 0

    def forward(self, x):
        self.forwards += 1
        return self.module(x)

    @contextlib.contextmanager
    def no_sync(self):
        self.no_sync_scopes += 1
        yield


@pytest.mark.parametrize("variant,forwards,no_sync", [("sf", 3, 0), ("erm", 1, 0), ("pf", 2, 0)])
def test_task_network_variants_run_their_inner_steps_through_the_ddp_wrapper(variant, forwards, no_sync):
    kw = {"lr": 1e-3} if variant == "erm" else {"inner_lr": 1e-3, "meta_lr": 1e-3}
    algo = VARIANTS[variant](TinyConvNet(), **kw)
    wrapped, flags = [], []

    def wrap(m):
        assert m is algo.task_model
        wrapped.append(_CountingWrapper(m))
        return wrapped[-1]

    algo.distribute(wrap, lambda m: pytest.fail("DDP variants do not use GradSync"), flags.append)
    algo.step(make_batches(3))
    assert wrapped[0].forwards == forwards and wrapped[0].no_sync_scopes == no_sync
    assert len(flags) == 1  # the skip flag agreed across ranks once, before the step that must match


def test_pf_looped_union_averages_once_with_the_last_backward():
    algo = build("pf", TinyConvNet(), virtual_batching="looped")
    box = []
    algo.distribute(lambda m: box.append(_CountingWrapper(m)) or box[-1], None, lambda f: None)
    algo.step(make_batches(3))
    # 3 support forwards (the first two inside no_sync) + the query
    assert box[0].forwards == 4 and box[0].no_sync_scopes == 2


def test_interface_defaults():
    assert VARIANTS["pf"].obj is ParallelFirstOrder and VARIANTS["ss"].obj is SerialSecondOrder
    assert VARIANTS["ps"].obj is ParallelSecondOrder and VARIANTS["ss-fo"].obj is SerialFirstOrderApprox
    assert VARIANTS.names() == ("sf", "pf", "ss", "ss-fo", "ps", "erm")
    for name in ("ss", "ps", "ss-fo"):
        algo = VARIANTS[name](TinyConvNet())
        hp = algo.hparams()
        assert hp["alpha"] == 1e-4 and hp["meta_lr"] == 1e-4 and hp["inner_optimizer"] == "sgd"
        assert hp["query"] == "mixture" and hp["virtual_batching"] == "auto" and algo.task_optimizer is None
    assert SerialSecondOrder(TinyConvNet()).outer_reduction == "sum"
    assert SerialFirstOrderApprox(TinyConvNet()).outer_reduction == "mean"
    pf = ParallelFirstOrder(TinyConvNet())
    assert pf.task_lr == 1e-4 and pf.task_optimizer.param_groups[0]["betas"] == (0.0, 0.999)


class BatchNormNet(nn.Module):
    """Mutates its running stats in forward: vmap cannot batch it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(self.conv(x))


def test_unvmappable_model_auto_loops_batched_explains():
    with pytest.raises(RuntimeError, match="looped"):
        SerialSecondOrder(BatchNormNet(), virtual_batching="batched").step(make_batches(2))
    algo = SerialSecondOrder(BatchNormNet(), virtual_batching="auto")
    assert algo.step(make_batches(2)).shape == (2,)
    assert list(algo._chooser.choices.values()) == ["looped"]


@pytest.mark.parametrize("arch", list(MODELS))
def test_ss_fo_fused_virtual_step_matches_torch(arch, close):
    torch.manual_seed(9)
    model = MODELS[arch]()
    sup, q = support_and_query(make_batches(3), "mixture", None)
    out = {}
    for fused in (True, False):
        algo = SerialFirstOrderApprox(copy.deepcopy(model), alpha=0.1, fused=fused)
        out[fused], _, _ = algo.meta_gradient(sup, q, path="batched")
    ref, _, _ = SerialFirstOrderApprox(copy.deepcopy(model), alpha=0.1).meta_gradient(sup, q, path="looped")
    scale = max(g.abs().max().item() for g in ref)
    for i, (a, b, r) in enumerate(zip(out[True], out[False], ref)):
        close(a, b, atol=1e-6 * scale, rtol=1e-5, name=f"fused vs torch {i}")
        close(b, r, atol=1e-5 * scale, rtol=1e-4, name=f"flat vs looped {i}")
