"""dil_fast._C and the dil_fast:: ops: opcheck on every op, argument checks, what the module
reports, and the GPU tier (CUDA kernels vs CPU twin vs torch reference)."""
from __future__ import annotations

import os

import pytest
import torch

import dil_fast
from dil_fast import backends
from dil_fast.ops import optim as ops
from dil_fast.ops import ref_optim as ref
from dil_fast.optim import functional as F


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: intra-op threads only add contention on a busy machine (conftest restores)."""
    torch.set_num_threads(1)

pytestmark = pytest.mark.ext


@pytest.fixture(scope="module")
def native():
    if os.environ.get("DIL_FAST_BUILD_EXT", "1").strip() == "0" or os.environ.get("DIL_FAST_DISABLE_EXT") == "1":
        pytest.skip("tier T2: dil_fast._C not built (DIL_FAST_BUILD_EXT=0 / DIL_FAST_DISABLE_EXT=1)")
    st = backends.native_status()
    assert st.available, st.reason  # CI builds the extension: a missing one is a failure
    return st.module


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


def test_module_reports_its_build(native):
    assert isinstance(native.has_cuda(), bool)
    archs = native.cuda_archs()
    if native.has_cuda():
        assert archs and all(a.startswith(("sm_", "compute_")) for a in archs)
        assert native.cuda_runtime_version_compiled() >= 11000
        assert native.cuda_runtime_version() >= 11000
    else:
        assert archs == [] and native.cuda_runtime_version() == 0
    info = dil_fast.info()
    assert info["native_core"] == "loaded"
    assert "cuda_archs" in info and "cuda_runtime" in info
    from dil_fast._info import format_info

    text = format_info(info)
    assert "native_core" in text and "cuda_archs" in text


def test_info_reports_optional_packages(monkeypatch):
    from dil_fast import _info

    info = dil_fast.info()
    assert {"dali", "scikit_image", "tqdm"} <= set(info)
    tqdm = pytest.importorskip("tqdm")
    assert info["tqdm"] == tqdm.__version__
    monkeypatch.setattr(_info, "_found", lambda module: module != "tqdm")
    assert _info.collect()["tqdm"].startswith("not installed (progress bars")


@pytest.mark.parametrize("shape,k_steps", [((1023,), 1), ((3, 65), 3), ((2, 7), 1)], ids=["flat", "stacked", "stacked-shared-step"])
@pytest.mark.parametrize("flags", ["plain", "found_inf", "grad_scale"])
def test_opcheck_adam(native, shape, k_steps, flags):
    p, g, m, v, step, lr = adam_inputs(shape, k_steps=k_steps)
    found_inf = torch.zeros(1) if flags == "found_inf" else None
    scale = torch.tensor([4.0]) if flags == "grad_scale" else None
    torch.library.opcheck(ops.adam_step_, (p, g, m, v, step, lr, 0.9, 0.999, 1e-8, 0.01, True, found_inf, scale))


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("mode,reset", [(0, False), (0, True), (1, False)], ids=["diff", "diff-reset", "mean"])
def test_opcheck_meta(native, rows, mode, reset):
    meta = torch.randn(257)
    sources = torch.randn(rows, 257) if rows > 1 else torch.randn(257)
    m, v = torch.zeros(257), torch.zeros(257)
    step, lr = torch.zeros(1), torch.tensor([1e-3])
    torch.library.opcheck(ops.meta_step_, (meta, sources, m, v, step, lr, 0.9, 0.999, 1e-8, 0.0, False, mode, reset,
                                           torch.zeros(1)))


@pytest.mark.parametrize("with_base", [False, True])
def test_opcheck_sgd_and_nonfinite(native, with_base):
    p, g = torch.randn(3, 129), torch.randn(3, 129)
    base = torch.randn(129) if with_base else None
    torch.library.opcheck(ops.sgd_step_, (p, g, torch.tensor([0.1, 0.2, 0.3]), 0.01, base, None))
    torch.library.opcheck(ops.nonfinite_check_, (torch.randn(100), torch.zeros(1)))


def test_ops_compile_without_graph_breaks(native, close):
    """The ops are opaque to torch.compile (fake impls) and run through it unchanged."""
    p, g, m, v, step, lr = adam_inputs((1023,))
    p2, m2, v2, step2 = p.clone(), m.clone(), v.clone(), step.clone()

    def fn(p, g, m, v, step, lr):
        ops.adam_step_(p, g, m, v, step, lr, 0.9, 0.999, 1e-8, 0.0, False)

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
        ops.adam_step_(*args, 0.9, 0.999, 1e-8, 0.0, False)


def test_native_layer_validates_too(native):
    with pytest.raises(ValueError, match="betas must lie in"):
        p = torch.zeros(4)
        native.adam_cpu(dtype=0, rows=1, cols=4, param=p.data_ptr(), grad=p.data_ptr(), exp_avg=p.data_ptr(),
                        exp_avg_sq=p.data_ptr(), step=p.data_ptr(), step_numel=1, lr=p.data_ptr(), lr_dtype=0,
                        lr_numel=1, beta1=1.5, beta2=0.9, eps=1e-8, weight_decay=0.0, adamw=False, found_inf=0,
                        grad_scale=0, threads=1)
    if not native.has_cuda():
        with pytest.raises(RuntimeError, match="no CUDA kernels"):
            native.nonfinite_cuda(dtype=0, n=1, data=1, found_inf=1, device=0, stream=0)


def test_forced_backends(native, monkeypatch):
    assert F.choose_backend("cpu") == "cuda"
    assert F.choose_backend("cpu", "torch") == "torch"
    assert F.choose_backend("cpu", "cuda") == "cuda"
    with pytest.raises(backends.BackendError):
        F.choose_backend("cpu", "nonsense")


# ---------------------------------------------------------------------------------- GPU tier
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
        t = [torch.randn(shape, generator=gen, dtype=dtype), torch.randn(shape, generator=gen, dtype=dtype),
             torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype), torch.zeros(rows),
             torch.tensor([1e-3], dtype=torch.float64), torch.zeros(1)]
        t = [x.to(device) for x in t]
        return t[:6] + [0.9, 0.999, 1e-8, 0.01, True, t[6], None]

    tol = dict(atol=1e-6, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-13, rtol=1e-11)
    _three_ways(ops.adam_step_, ref.adam_step_ref_, make, close, **tol)


@pytest.mark.gpu
@pytest.mark.parametrize("offset", [0, 1, 2])  # misaligned views take the scalar path
def test_gpu_meta_and_sgd_cuda_vs_twin_vs_torch(native, offset, close):
    def make_meta(device):
        g = torch.Generator().manual_seed(2)
        meta = torch.randn(4097 + offset, generator=g).to(device)[offset:]  # misaligned on purpose
        tasks = torch.randn(4, 4097, generator=g).to(device)
        z = torch.zeros(4097 + offset, device=device)
        return [meta, tasks, z[offset:], torch.zeros(4097, device=device), torch.zeros(1, device=device),
                torch.tensor([1e-3], device=device), 0.9, 0.999, 1e-8, 0.0, False, 0, True, None]

    _three_ways(ops.meta_step_, ref.meta_step_ref_, make_meta, close, atol=1e-6, rtol=1e-5)

    def make_sgd(device):
        g = torch.Generator().manual_seed(3)
        t = [torch.randn(3, 1031, generator=g), torch.randn(3, 1031, generator=g), torch.tensor([0.1, 0.2, 0.3])]
        return [x.to(device) for x in t] + [0.01, torch.randn(1031, generator=g).to(device), None]

    _three_ways(ops.sgd_step_, ref.sgd_step_ref_, make_sgd, close, atol=1e-6, rtol=1e-6)


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
