"""The optimizer ops (Adam, SGD, non-finite check): the native twins and the references against
torch.optim, opcheck, argument validation, forced backends, CUDA (T3)."""

from __future__ import annotations

import pytest
import torch

from dil_fast import backends
from dil_fast.ops import optim as F
from dil_fast.ops import reference as ref
from dil_fast.optim import FlatParams
from tests.helpers import BACKENDS, require

SIZES = (1, 3, 1023, 65537)


STEPS = 7


CONFIGS = {
    "adam": dict(lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0, adamw=False),
    "adam-l2": dict(lr=3e-3, betas=(0.9, 0.999), weight_decay=0.05, adamw=False),
    "adamw": dict(lr=3e-3, betas=(0.8, 0.99), weight_decay=0.1, adamw=True),
    "beta1-0": dict(lr=1e-4, betas=(0.0, 0.999), weight_decay=0.0, adamw=False),  # the DIL task optimizer
}


def tol(dtype):
    # A few fp32 ulps after 7 steps (FMA/ordering differences against torch's vectorised CPU ops).
    return dict(atol=2e-7, rtol=2e-6) if dtype == torch.float32 else dict(atol=1e-14, rtol=1e-12)


def torch_adam(params, cfg):
    return torch.optim.Adam(
        params,
        lr=cfg["lr"],
        betas=cfg["betas"],
        weight_decay=cfg["weight_decay"],
        decoupled_weight_decay=cfg["adamw"],
        eps=1e-8,
        foreach=False,
    )


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
        F.adam_step_(
            flat.data,
            flat.grad,
            m,
            v,
            step,
            lr,
            *cfg["betas"],
            1e-8,
            cfg["weight_decay"],
            cfg["adamw"],
            backend=backend,
        )
        opt.step()
    assert step.item() == STEPS
    for i, (a, b) in enumerate(zip(ours, ref)):
        close(a, b, name=f"param{i}", **tol(dtype))
        close(m[flat.buckets[0].offsets[i] :][: SIZES[i]], opt.state[b]["exp_avg"], name=f"exp_avg{i}", **tol(dtype))
        close(
            v[flat.buckets[0].offsets[i] :][: SIZES[i]], opt.state[b]["exp_avg_sq"], name=f"exp_avg_sq{i}", **tol(dtype)
        )


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
        F.adam_step_(data, grad, m, v, step, lrs, backend=backend)
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
    F.adam_step_(
        p, g, torch.zeros_like(p), torch.zeros_like(p), F.new_step("cpu"), 1e-3, found_inf=flag, backend=backend
    )
    assert torch.equal(p, p0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_scale_divides_gradients(backend, close):
    require(backend)
    p = torch.randn(1023)
    g = torch.randn(1023)
    p2 = p.clone()
    st = [torch.zeros(1023) for _ in range(4)]
    F.adam_step_(p, g * 1024, st[0], st[1], F.new_step("cpu"), 1e-3, grad_scale=torch.tensor([1024.0]), backend=backend)
    F.adam_step_(p2, g, st[2], st[3], F.new_step("cpu"), 1e-3, backend=backend)
    close(p, p2, atol=1e-7, rtol=1e-6)


@pytest.mark.ext
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


def adam_inputs(shape, device="cpu", dtype=torch.float32, k_steps=1):
    rows = 1 if len(shape) == 1 else shape[0]
    return (
        torch.randn(shape, dtype=dtype, device=device),
        torch.randn(shape, dtype=dtype, device=device),
        torch.rand(shape, dtype=dtype, device=device) * 0.1,
        torch.rand(shape, dtype=dtype, device=device) * 0.01,
        torch.arange(k_steps if rows > 1 else 1, dtype=torch.float32, device=device) + 2,
        torch.tensor([1e-3], dtype=torch.float64, device=device),
    )


@pytest.mark.parametrize(
    "shape,k_steps", [((1023,), 1), ((3, 65), 3), ((2, 7), 1)], ids=["flat", "stacked", "stacked-shared-step"]
)
@pytest.mark.parametrize("flags", ["plain", "found_inf", "grad_scale"])
def test_opcheck_adam(native, shape, k_steps, flags):
    p, g, m, v, step, lr = adam_inputs(shape, k_steps=k_steps)
    found_inf = torch.zeros(1) if flags == "found_inf" else None
    scale = torch.tensor([4.0]) if flags == "grad_scale" else None
    torch.library.opcheck(
        torch.ops.dil_fast.adam_step_, (p, g, m, v, step, lr, 0.9, 0.999, 1e-8, 0.01, True, found_inf, scale)
    )


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("mode,reset", [(0, False), (0, True), (1, False)], ids=["diff", "diff-reset", "mean"])
def test_opcheck_meta(native, rows, mode, reset):
    meta = torch.randn(257)
    sources = torch.randn(rows, 257) if rows > 1 else torch.randn(257)
    m, v = torch.zeros(257), torch.zeros(257)
    step, lr = torch.zeros(1), torch.tensor([1e-3])
    torch.library.opcheck(
        torch.ops.dil_fast.meta_step_,
        (meta, sources, m, v, step, lr, 0.9, 0.999, 1e-8, 0.0, False, mode, reset, torch.zeros(1)),
    )


@pytest.mark.parametrize("with_base", [False, True])
def test_opcheck_sgd_and_nonfinite(native, with_base):
    p, g = torch.randn(3, 129), torch.randn(3, 129)
    base = torch.randn(129) if with_base else None
    torch.library.opcheck(torch.ops.dil_fast.sgd_step_, (p, g, torch.tensor([0.1, 0.2, 0.3]), 0.01, base, None))
    torch.library.opcheck(torch.ops.dil_fast.nonfinite_check_, (torch.randn(100), torch.zeros(1)))


def test_ops_compile_without_graph_breaks(native, close):
    """The ops are opaque to torch.compile (fake impls) and run through it unchanged."""
    p, g, m, v, step, lr = adam_inputs((1023,))
    p2, m2, v2, step2 = p.clone(), m.clone(), v.clone(), step.clone()

    def fn(p, g, m, v, step, lr):
        torch.ops.dil_fast.adam_step_(p, g, m, v, step, lr, 0.9, 0.999, 1e-8, 0.0, False)

    torch.compile(fn, backend="eager", fullgraph=True)(p, g, m, v, step, lr)
    fn(p2, g, m2, v2, step2, lr)
    close(p, p2, atol=0, rtol=0)


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda a: a.__setitem__(1, a[1].double()), "shape|dtype"),
        (lambda a: a.__setitem__(0, a[0][::2]), "contiguous|shape"),
        (lambda a: a.__setitem__(4, a[4].double()), "step must be a float32"),
        (lambda a: a.__setitem__(5, a[5].int()), "lr must be float32 or float64"),
        (lambda a: a.__setitem__(0, a[0].half()), "float32 or float64|shape|dtype"),
    ],
    ids=["grad-dtype", "strided", "step-dtype", "lr-dtype", "half"],
)
def test_bad_arguments_raise_with_a_sentence(native, mutate, match):
    args = list(adam_inputs((64,)))
    mutate(args)
    with pytest.raises((ValueError, TypeError), match=match):
        torch.ops.dil_fast.adam_step_(*args, 0.9, 0.999, 1e-8, 0.0, False)


def test_native_layer_validates_too(native):
    p = torch.zeros(4)
    a = F.adam_args(p, p, p.clone(), p.clone(), torch.zeros(1), torch.tensor(1e-3), 0.9, 0.999, 1e-8, 0.0, False)
    a.beta1 = 1.5  # past the Python checks: the native layer refuses it itself
    with pytest.raises(ValueError, match="betas must lie in"):
        native.adam_cpu(a, 1)
    a.beta1, a.step = 0.9, 0
    with pytest.raises(ValueError, match="step tensor"):
        native.adam_cpu(a, 1)
    if not native.has_cuda():
        with pytest.raises(RuntimeError, match="no CUDA kernels"):
            native.nonfinite_cuda(dtype=0, n=1, data=1, found_inf=1, device=0, stream=0)


def test_forced_backends(native, monkeypatch):
    assert backends.backend_for("adam_step", "cpu") == "cuda"
    assert backends.backend_for("adam_step", "cpu", None, "torch") == "torch"
    assert backends.backend_for("adam_step", "cpu", None, "cuda") == "cuda"
    with pytest.raises(backends.BackendError):
        backends.backend_for("adam_step", "cpu", None, "nonsense")


def _three_ways(fn_native, fn_ref, make, close, **tol):
    """Run an op as CUDA kernel, CPU twin and torch reference on the same inputs; compare."""
    cuda_in, cpu_in, ref_in = make("cuda"), make("cpu"), make("cpu")
    for _ in range(7):
        fn_native(*cuda_in)
        fn_native(*cpu_in)
        fn_ref(*ref_in)
    torch.cuda.synchronize()
    for i, (a, b, c) in enumerate(zip(cuda_in, cpu_in, ref_in)):
        if isinstance(a, torch.Tensor):
            close(a.cpu(), b, name=f"cuda-vs-twin[{i}]", **tol)
            close(b, c, name=f"twin-vs-torch[{i}]", **tol)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1,), (3,), (1023,), (65537,), (4, 1024), (3, 1023)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gpu_adam_cuda_vs_twin_vs_torch(native, shape, dtype, close):
    assert native.has_cuda(), "the GPU tier needs a build with CUDA kernels"
    gen = torch.Generator().manual_seed(1)

    def make(device):
        gen.manual_seed(1)
        rows = 1 if len(shape) == 1 else shape[0]
        t = [
            torch.randn(shape, generator=gen, dtype=dtype),
            torch.randn(shape, generator=gen, dtype=dtype),
            torch.zeros(shape, dtype=dtype),
            torch.zeros(shape, dtype=dtype),
            torch.zeros(rows),
            torch.tensor([1e-3], dtype=torch.float64),
            torch.zeros(1),
        ]
        t = [x.to(device) for x in t]
        return t[:6] + [0.9, 0.999, 1e-8, 0.01, True, t[6], None]

    tol = dict(atol=1e-6, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-13, rtol=1e-11)
    _three_ways(torch.ops.dil_fast.adam_step_, ref.adam_step_ref_, make, close, **tol)


@pytest.mark.gpu
@pytest.mark.parametrize("offset", [0, 1, 2])  # misaligned views take the scalar path
def test_gpu_meta_and_sgd_cuda_vs_twin_vs_torch(native, offset, close):
    def make_meta(device):
        g = torch.Generator().manual_seed(2)
        meta = torch.randn(4097 + offset, generator=g).to(device)[offset:]  # misaligned on purpose
        tasks = torch.randn(4, 4097, generator=g).to(device)
        z = torch.zeros(4097 + offset, device=device)
        return [
            meta,
            tasks,
            z[offset:],
            torch.zeros(4097, device=device),
            torch.zeros(1, device=device),
            torch.tensor([1e-3], device=device),
            0.9,
            0.999,
            1e-8,
            0.0,
            False,
            0,
            True,
            None,
        ]

    _three_ways(torch.ops.dil_fast.meta_step_, ref.meta_step_ref_, make_meta, close, atol=1e-6, rtol=1e-5)

    def make_sgd(device):
        g = torch.Generator().manual_seed(3)
        t = [torch.randn(3, 1031, generator=g), torch.randn(3, 1031, generator=g), torch.tensor([0.1, 0.2, 0.3])]
        return [x.to(device) for x in t] + [0.01, torch.randn(1031, generator=g).to(device), None]

    _three_ways(torch.ops.dil_fast.sgd_step_, ref.sgd_step_ref_, make_sgd, close, atol=1e-6, rtol=1e-6)


@pytest.mark.gpu
def test_gpu_nonfinite_flag_without_sync_and_graph_capture(native, close):
    p, g, m, v, step, lr = adam_inputs((1 << 20,), device="cuda")
    flag = torch.zeros(1, device="cuda")
    p0 = p.clone()
    g[12345] = float("nan")
    F.nonfinite_check_(g, flag)
    F.adam_step_(p, g, m, v, step, lr, found_inf=flag)
    assert torch.equal(p, p0) and flag.item() == 1.0
    # capture one step (flag check + update + step advance) in a CUDA graph and replay it
    g[12345] = 0.0
    flag.zero_()
    q, mq, vq, sq = p.clone(), m.clone(), v.clone(), step.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        F.adam_step_(p, g, m, v, step, lr, found_inf=flag)  # warm-up outside capture
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        flag.zero_()
        F.nonfinite_check_(g, flag)
        F.adam_step_(p, g, m, v, step, lr, found_inf=flag)
    for _ in range(3):
        graph.replay()
    for _ in range(4):  # the warm-up step + 3 replays (capturing executes nothing)
        ref.adam_step_ref_(q, g, mq, vq, sq, lr)
    torch.cuda.synchronize()
    assert step.item() == sq.item()
    close(p, q, atol=1e-6, rtol=1e-5)


def test_reference_steps_make_no_tensor_from_host_data():
    """The torch references make no tensor from a Python number (``torch.tensor``: on CUDA a pageable
    host-to-device copy at every step, which a CUDA graph cannot capture): every scalar is a
    wrapped number inside the op."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(str(func))
            return func(*args, **(kwargs or {}))

    p, g = torch.rand(2, 7, dtype=torch.float64), torch.rand(2, 7, dtype=torch.float64)
    m, v, step = torch.zeros_like(p), torch.zeros_like(p), torch.zeros(2, dtype=torch.float32)
    lr, flag = torch.full((1,), 1e-3, dtype=torch.float64), torch.zeros(1)
    with Ops() as ops:
        ref.adam_step_ref_(p, g, m, v, step, lr, 0.9, 0.999, 1e-8, 0.01, True, flag)
        ref.meta_step_ref_(p[0], p, m[0], v[0], step[:1], lr, 0.9, 0.999, 1e-8, 0.0, False, 1, True, flag)
        ref.sgd_step_ref_(p, g, lr, 0.0, p[0], flag)
    assert ops.names and not [n for n in ops.names if "lift_fresh" in n or n.startswith("aten.scalar_tensor")]
