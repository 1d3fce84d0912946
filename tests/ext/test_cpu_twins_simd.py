"""The vectorised C++ CPU twins (csrc/optim_cpu.cpp) against the element math of optim_math.h.

Three claims, each checked at odd sizes (1, 3, 17, 1023, 65537) so that vector bodies, their
scalar tails and the split over helper threads are all exercised:

* Bitwise: the twin equals the formulas of optim_math.h evaluated one IEEE operation at a time
  in the buffer's dtype (float32 or float64), in the order written there. This holds because the
  twins are built without FMA contraction (-ffp-contract=off): it fails if a compiler fuses,
  reorders or mixes precisions. It also makes the result independent of the thread count and of
  the ISA the twin picked (AVX2 or the baseline), which both tests below check directly.
* Tolerance to the math: a float32 step is within, per element, with u = 2**-24,
      |dm| <= (8 + K) u (|m| + |g|)          (K source rows of the meta step; 0 for plain Adam)
      |dv| <= 8 u v'
      |dp| <= 2 u |p'| + 2 u |p| [AdamW] + (|lr / bc1| / denom') (bound of |dm|) + 12 u |update|
  of the same step evaluated in float64 (|g| includes the L2 term; ' is the updated value).
* CPU twin vs CUDA kernel: nvcc contracts some of the same operations into FMAs, and an FMA only
  removes a rounding, so the CUDA kernel is within the same bound of the float64 math and the two
  twins differ by at most twice the bound (checked on a GPU by the last test).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import dil_fast.ops  # noqa: F401 - defines the dil_fast:: optimizer ops

pytestmark = pytest.mark.ext

SIZES = (1, 3, 17, 1023, 65537)
DTYPES = {"float32": torch.float32, "float64": torch.float64}
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.float64: 2.0**-53}
LR, BETA2, EPS, STEP_BEFORE = 1e-3, 0.999, 1e-8, 4.0
# Adam forms: (beta1, weight_decay, adamw, grad_scale); beta1 = 0 and 0.4 take torch's lerp from g.
ADAM_FORMS = {
    "plain": (0.9, 0.0, False, None),
    "l2": (0.9, 0.01, False, None),
    "adamw": (0.9, 0.01, True, None),
    "beta1-0": (0.0, 0.0, False, None),
    "beta1-0.4-adamw": (0.4, 0.05, True, None),
    "grad-scale": (0.9, 0.0, False, 3.0),
}


@pytest.fixture(autouse=True)
def _native(native):
    """Every test here runs the native core (tier T2)."""


def adam_state(n, dtype, seed, rows=None, device="cpu"):
    """Random (p, g, m, v) of shape [n] (or [rows, n]); v >= 0 as Adam keeps it."""
    gen = torch.Generator().manual_seed(seed)
    shape = (n,) if rows is None else (rows, n)
    p, g = torch.randn(shape, generator=gen, dtype=dtype), torch.randn(shape, generator=gen, dtype=dtype)
    m = torch.randn(shape, generator=gen, dtype=dtype) * 0.1
    v = torch.rand(shape, generator=gen, dtype=dtype) * 0.01
    return [t.to(device) for t in (p, g, m, v)]


class Coef:
    """The per-step coefficients of adam_coef (optim_math.h): formed in double, used in dtype."""

    def __init__(self, step_before, lr, beta1, beta2, eps, weight_decay, adamw, like):
        s = step_before + 1.0
        bc1, bc2 = 1.0 - beta1**s, 1.0 - beta2**s
        full = lambda x: torch.full_like(like, x)  # noqa: E731 - rounds once, as static_cast<T>
        self.neg_step_size, self.bc2_sqrt = full(-(lr / bc1)), full(math.sqrt(bc2))
        self.w, self.one = full(1.0 - beta1), full(1.0)
        self.beta2, self.one_minus_beta2, self.eps = full(beta2), full(1.0 - beta2), full(eps)
        self.wd, self.decay = full(weight_decay), full(1.0 - lr * weight_decay)
        self.has_wd, self.adamw = weight_decay != 0.0, adamw
        self.lerp_from_m = bool(self.w.flatten()[0] < 0.5)


def ieee_sqrt(x):
    """Correctly rounded sqrt (numpy's; torch's CPU sqrt can be one ulp off in float32)."""
    return torch.from_numpy(np.sqrt(x.numpy()))


def adam_update_restated(p, g, m, v, c: Coef):
    """optim_math.h's adam_update_form, one operation at a time in p's dtype: (p', m', v', update)."""
    if c.has_wd and c.adamw:
        p = p * c.decay
    if c.has_wd and not c.adamw:
        g = g + c.wd * p
    m = m + c.w * (g - m) if c.lerp_from_m else g - (g - m) * (c.one - c.w)
    v = v * c.beta2 + c.one_minus_beta2 * g * g
    denom = ieee_sqrt(v) / c.bc2_sqrt + c.eps
    update = c.neg_step_size * m / denom
    return p + update, m, v, update


def adam_restated(p, g, m, v, beta1, weight_decay, adamw, grad_scale):
    c = Coef(STEP_BEFORE, LR, beta1, BETA2, EPS, weight_decay, adamw, p)
    if grad_scale is not None:
        g = g / torch.full_like(g, grad_scale)
    return adam_update_restated(p, g, m, v, c)[:3]


def meta_grad_restated(meta, sources, reduction):
    """mean_k(meta - sources[k]) (0) or mean_k(sources[k]) (1), rows added in order."""
    term = (lambda s: meta - s) if reduction == 0 else (lambda s: s)  # noqa: E731
    g = term(sources[0])
    for k in range(1, sources.shape[0]):
        g = g + term(sources[k])
    return g / torch.full_like(g, float(sources.shape[0])) if sources.shape[0] > 1 else g


def run_adam(p, g, m, v, beta1, weight_decay, adamw, grad_scale):
    step = torch.full((1,), STEP_BEFORE, device=p.device)
    lr = torch.tensor([LR], dtype=torch.float64, device=p.device)
    scale = None if grad_scale is None else torch.tensor([grad_scale], device=p.device)
    torch.ops.dil_fast.adam_step_(p, g, m, v, step, lr, beta1, BETA2, EPS, weight_decay, adamw, None, scale)
    assert step.item() == STEP_BEFORE + 1


def run_meta(meta, sources, m, v, reduction, reset):
    step = torch.full((1,), STEP_BEFORE, device=meta.device)
    lr = torch.tensor([LR], dtype=torch.float64, device=meta.device)
    torch.ops.dil_fast.meta_step_(meta, sources, m, v, step, lr, 0.9, BETA2, EPS, 0.0, False, reduction, reset, None)


def assert_bitwise(actual, expected, name):
    differ = actual != expected
    assert not differ.any(), (
        f"{name}: {int(differ.sum())}/{differ.numel()} elements differ bitwise, first at "
        f"{int(differ.flatten().nonzero()[0])}: {actual.flatten()[differ.flatten()][0].item()!r} vs "
        f"{expected.flatten()[differ.flatten()][0].item()!r}"
    )


def assert_within(actual, exact, bound, name):
    err = (actual.double() - exact).abs()
    over = err > bound
    assert not over.any(), (
        f"{name}: {int(over.sum())}/{over.numel()} elements exceed the stated bound; worst error "
        f"{err.max().item():.3e} (bound there {bound.flatten()[int(torch.argmax(err))].item():.3e})"
    )


def float32_bounds(p, g, m, v, c64: Coef, rows_reduced=0, g_magnitude=None):
    """(p', m', v') of one step in float64 and the stated bounds of a float32 step's error on them.

    All inputs are float64; ``g_magnitude`` (default |g + L2 term|) is what the gradient's own
    rounding scales with: mean_k |meta - sources[k]| for the meta step's reduction."""
    u = UNIT_ROUNDOFF[torch.float32]
    p_new, m_new, v_new, update = adam_update_restated(p, g, m, v, c64)
    if g_magnitude is None:
        g_magnitude = (g + c64.wd * p if c64.has_wd and not c64.adamw else g).abs()
    bound_m = (8 + rows_reduced) * u * (m.abs() + g_magnitude)
    bound_v = 8 * u * v_new
    denom = ieee_sqrt(v_new) / c64.bc2_sqrt + c64.eps
    bound_p = 2 * u * p_new.abs() + c64.neg_step_size.abs() / denom * bound_m + 12 * u * update.abs()
    if c64.has_wd and c64.adamw:
        bound_p = bound_p + 2 * u * p.abs()
    return (p_new, m_new, v_new), (bound_p, bound_m, bound_v)


def float32_adam_bounds(state, beta1, weight_decay, adamw, grad_scale):
    p64, g64, m64, v64 = (t.double() for t in state)
    if grad_scale is not None:
        g64 = g64 / grad_scale
    return float32_bounds(p64, g64, m64, v64, Coef(STEP_BEFORE, LR, beta1, BETA2, EPS, weight_decay, adamw, p64))


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("form", ADAM_FORMS)
def test_adam_equals_the_ieee_restatement(size, dtype, form):
    beta1, wd, adamw, scale = ADAM_FORMS[form]
    p, g, m, v = adam_state(size, DTYPES[dtype], seed=size)
    expected = adam_restated(p, g, m, v, beta1, wd, adamw, scale)
    run_adam(p, g, m, v, beta1, wd, adamw, scale)
    for name, a, e in zip(("param", "exp_avg", "exp_avg_sq"), (p, m, v), expected):
        assert_bitwise(a, e, f"{form}/{dtype}/{size}: {name}")


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("form", ADAM_FORMS)
def test_adam_float32_within_stated_bound_of_float64_math(size, form):
    beta1, wd, adamw, scale = ADAM_FORMS[form]
    p, g, m, v = adam_state(size, torch.float32, seed=size + 1)
    exact, bounds = float32_adam_bounds((p, g, m, v), beta1, wd, adamw, scale)
    run_adam(p, g, m, v, beta1, wd, adamw, scale)
    for name, a, e, b in zip(("param", "exp_avg", "exp_avg_sq"), (p, m, v), exact, bounds):
        assert_within(a, e, b, f"{form}/{size}: {name}")


@pytest.mark.parametrize("size", (1, 17, 1023, 65537))
@pytest.mark.parametrize("rows", (1, 3))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction,reset", [(0, False), (0, True), (1, False)], ids=["diff", "diff-reset", "mean"])
def test_meta_step_equals_the_ieee_restatement(size, rows, dtype, reduction, reset):
    meta, _, m, v = adam_state(size, DTYPES[dtype], seed=size)
    sources = adam_state(size, DTYPES[dtype], seed=size + 7, rows=rows)[0]
    g = meta_grad_restated(meta, sources, reduction)
    c = Coef(STEP_BEFORE, LR, 0.9, BETA2, EPS, 0.0, False, meta)
    p_new, m_new, v_new, _ = adam_update_restated(meta, g, m, v, c)
    sources_expected = p_new.expand_as(sources) if reset else sources.clone()
    run_meta(meta, sources, m, v, reduction, reset)
    for name, a, e in zip(
        ("meta", "exp_avg", "exp_avg_sq", "sources"), (meta, m, v, sources), (p_new, m_new, v_new, sources_expected)
    ):
        assert_bitwise(a, e, f"meta {dtype}/{rows}x{size}: {name}")


@pytest.mark.parametrize("size", (17, 65537))
@pytest.mark.parametrize("rows", (1, 3))
def test_meta_step_float32_within_stated_bound_of_float64_math(size, rows):
    meta, _, m, v = adam_state(size, torch.float32, seed=size + 2)
    sources = adam_state(size, torch.float32, seed=size + 9, rows=rows)[0]
    meta64, sources64 = meta.double(), sources.double()
    exact, bounds = float32_bounds(
        meta64,
        (meta64 - sources64).mean(0),
        m.double(),
        v.double(),
        Coef(STEP_BEFORE, LR, 0.9, BETA2, EPS, 0.0, False, meta64),
        rows_reduced=rows,
        g_magnitude=(meta64 - sources64).abs().mean(0),
    )
    run_meta(meta, sources, m, v, 0, False)
    for name, a, e, b in zip(("meta", "exp_avg", "exp_avg_sq"), (meta, m, v), exact, bounds):
        assert_within(a, e, b, f"meta {rows}x{size}: {name}")


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "rows,weight_decay,broadcast",
    [(1, 0.0, False), (3, 0.01, False), (3, 0.0, True), (2, 0.01, True)],
    ids=["one-row", "stacked-wd", "virtual", "virtual-wd"],
)
def test_sgd_equals_the_ieee_restatement(size, dtype, rows, weight_decay, broadcast):
    p, g, base, _ = adam_state(size, DTYPES[dtype], seed=size, rows=rows)
    base = base[0].clone() if broadcast else None
    lr = torch.tensor([1e-2, 2e-2, 3e-2][:rows], dtype=torch.float64)
    x = base.expand_as(p) if broadcast else p
    grad = g + torch.full_like(g, weight_decay) * x if weight_decay else g
    expected = x + torch.stack([torch.full_like(p[0], -lr_k) for lr_k in lr.tolist()]) * grad
    torch.ops.dil_fast.sgd_step_(p, g, lr, weight_decay, base, None)
    assert_bitwise(p, expected, f"sgd {dtype}/{rows}x{size}")


@pytest.mark.parametrize("size", (1, 17, 4097, 65537))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "bad",
    [float("nan"), float("inf"), -float("inf"), -(2.0**63), 1e30],
    ids=["nan", "inf", "-inf", "beyond-bound", "1e30"],
)
def test_nonfinite_check_finds_one_bad_value_anywhere(size, dtype, bad):
    # large values up to the gradient bound (2^62: larger squares overflow Adam's float32 moment) pass;
    # NaN, inf and anything beyond the bound trip it
    x = (torch.rand(size, dtype=DTYPES[dtype]) * 2 - 1) * 2.0**62
    found = torch.zeros(1)
    torch.ops.dil_fast.nonfinite_check_(x, found)
    assert found.item() == 0.0
    for at in sorted({0, size // 2, size - 1, min(size - 1, 4096)}):
        y, found = x.clone(), torch.zeros(1)
        y[at] = bad
        torch.ops.dil_fast.nonfinite_check_(y, found)
        assert found.item() == 1.0, f"{bad} at {at} of {size} was missed"


# ---------------------------------------------------------------------------------------------
def twin_workload(device="cpu"):
    """Every twin on seeded odd-sized inputs; returns the buffers they wrote."""
    out = {}
    for form, (beta1, wd, adamw, scale) in ADAM_FORMS.items():
        for dtype in DTYPES.values():
            p, g, m, v = adam_state(65537, dtype, seed=11, device=device)
            run_adam(p, g, m, v, beta1, wd, adamw, scale)
            out[f"adam/{form}/{dtype}"] = (p, m, v)
    p, g, m, v = adam_state(40001, torch.float32, seed=12, rows=3, device=device)
    run_adam(p, g, m, v, 0.9, 0.0, False, None)
    out["adam/stacked"] = (p, m, v)
    meta, _, m, v = adam_state(65537, torch.float32, seed=13, device=device)
    sources = adam_state(65537, torch.float32, seed=14, rows=3, device=device)[0]
    run_meta(meta, sources, m, v, 0, True)
    out["meta/diff-reset"] = (meta, m, v, sources)
    p, g, base, _ = adam_state(33001, torch.float32, seed=15, rows=4, device=device)
    torch.ops.dil_fast.sgd_step_(
        p, g, torch.tensor([1e-2] * 4, dtype=torch.float64, device=device), 0.01, base[0].clone(), None
    )
    out["sgd/virtual-wd"] = (p,)
    return out


def assert_same_workload(a, b, what):
    assert a.keys() == b.keys()
    for key in a:
        for i, (x, y) in enumerate(zip(a[key], b[key])):
            assert_bitwise(x, y, f"{what}: {key}[{i}]")


def test_results_do_not_depend_on_the_thread_count():
    """Resuming a run on another thread count must give the same bits (the pool splits the work)."""
    torch.set_num_threads(1)  # the conftest fixture restores the caller's count
    one = twin_workload()
    for threads in (2, 4):
        torch.set_num_threads(threads)
        assert_same_workload(twin_workload(), one, f"{threads} threads vs 1")


def test_generic_isa_gives_the_same_bits_and_bad_isa_names_are_refused(tmp_path):
    """The baseline-ISA loops (forced with DIL_FAST_CPU_ISA=generic in a fresh process: the variable
    is read once, when dil_fast loads the native core) equal the ones this process picked; an
    unknown name makes the native core unavailable, saying why."""
    out = tmp_path / "generic.pt"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    def child(isa, script):
        env = dict(os.environ, DIL_FAST_CPU_ISA=isa)
        return subprocess.run(
            [sys.executable, "-c", script, str(out)], cwd=root, env=env, capture_output=True, text=True, timeout=300
        )

    bad = child("sse9", "from dil_fast import backends; print(backends.native_status().reason)")
    assert bad.returncode == 0 and "DIL_FAST_CPU_ISA=sse9 is not an ISA of the CPU twins" in bad.stdout, bad.stderr
    good = child(
        "generic",
        "import sys, torch\nfrom dil_fast import backends\n"
        "assert backends.native_status().module.cpu_isa() == 'generic'\n"
        "from tests.ext import test_cpu_twins_simd as t\n"
        "torch.set_num_threads(2)\ntorch.save(t.twin_workload(), sys.argv[1])\n",
    )
    assert good.returncode == 0, good.stderr[-2000:]
    assert_same_workload(torch.load(out), twin_workload(), "generic ISA vs this process's ISA")


@pytest.mark.gpu
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("form", ADAM_FORMS)
def test_cuda_kernel_within_stated_bound_of_float64_math_and_of_the_cpu_twin(size, form):
    beta1, wd, adamw, scale = ADAM_FORMS[form]
    cpu = adam_state(size, torch.float32, seed=size + 3)
    cuda = [t.cuda() for t in cpu]
    exact, bounds = float32_adam_bounds(cpu, beta1, wd, adamw, scale)
    run_adam(*cpu, beta1, wd, adamw, scale)
    run_adam(*cuda, beta1, wd, adamw, scale)
    for name, i, e, b in zip(("param", "exp_avg", "exp_avg_sq"), (0, 2, 3), exact, bounds):
        assert_within(cuda[i].cpu(), e, b, f"cuda {form}/{size}: {name}")
        assert_within(cuda[i].cpu(), cpu[i].double(), 2 * b, f"cuda vs cpu twin {form}/{size}: {name}")
