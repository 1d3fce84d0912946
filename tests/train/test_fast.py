"""The fast path (dil_fast.train.fast) and --reference_mode (dil_fast.train.reference_mode):
convergence of the fast path against the released computation step by step, the precision /
layout / compile options, the CUDA-graph default and flags, the eager fallback when a step cannot
be captured, and (tier T3) bf16 and graph replay of every variant on CUDA."""

import contextlib
import copy
import re
import warnings

import pytest
import torch

from dil_fast.cli import build_parser, main
from dil_fast.devices import resolve_device
from dil_fast.errors import FlagError
from dil_fast.meta import VARIANTS, SerialFirstOrder
from dil_fast.meta.released import ReleasedSF
from dil_fast.models import RRDBNet
from dil_fast.ops import optim as optim_ops
from dil_fast.train import TrainConfig, Trainer
from dil_fast.train.fast import (
    FastForward,
    FastOptions,
    FastPath,
    GraphedStep,
    LossLog,
    resolve_options,
)
from dil_fast.train.plan import RunPlan
from tests.conftest import make_png_folder
from tests.helpers import train_argv

LOSS_RE = re.compile(r"Task loss: ([0-9.e-]+)")


def _model(seed=0, device="cpu"):
    torch.manual_seed(seed)
    return RRDBNet(3, 3, nf=8, nb=1, gc=4).to(device)


def _batches(n_iter, k=4, b=2, p=16, seed=1, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_iter):
        pairs = []
        for j in range(k):
            clean = torch.rand(b, 3, p, p, generator=g)
            noisy = (clean + torch.randn(b, 3, p, p, generator=g) * (5 * (j + 1) / 255)).clamp(0, 1)
            pairs.append((noisy.to(device), clean.to(device)))
        out.append(pairs)
    return out


def _max_rel_update_err(a: torch.nn.Module, b: torch.nn.Module, w0: dict) -> float:
    """max |a - b| over max |b - w0|: disagreement relative to how far training moved the weights."""
    num = max((pa.detach() - pb.detach()).abs().max().item() for pa, pb in zip(a.parameters(), b.parameters()))
    den = max((pb.detach() - w0[n]).abs().max().item() for n, pb in b.named_parameters())
    return num / den


# ---------------------------------------------------------------------- convergence (T0)
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "per-tensor"])
def test_fast_sf_matches_reference_mode_step_by_step(fused, close):
    base = _model()
    w0 = {n: p.detach().clone() for n, p in base.named_parameters()}
    ref = ReleasedSF(copy.deepcopy(base))
    fast = SerialFirstOrder(copy.deepcopy(base), fused=fused)
    with FastPath(fast, resolve_options("cpu"), "cpu") as fp:
        for i, pairs in enumerate(_batches(5)):
            lr_ = ref.step(pairs)
            lf = fp.step(pairs)
            close(lf, lr_, atol=1e-6, rtol=1e-5, name=f"losses of meta-iteration {i}")
            assert _max_rel_update_err(fast.meta_model, ref.meta_model, w0) < 1e-3, i
    for n, p in fast.meta_model.named_parameters():
        close(p, dict(ref.meta_model.named_parameters())[n], atol=1e-6, rtol=1e-4, name=n)
    # the two keep the same optimizer state, in the same layout
    sr, sf = ref.state_dict(), fast.state_dict()
    assert int(sf["task_optimizer"]["state"][0]["step"]) == int(sr["task_optimizer"]["state"][0]["step"]) == 20
    close(
        sf["meta_optimizer"]["state"][3]["exp_avg"],
        sr["meta_optimizer"]["state"][3]["exp_avg"],
        atol=1e-9,
        rtol=1e-3,
        name="meta exp_avg",
    )


def test_reference_sf_state_round_trip():
    a = ReleasedSF(_model())
    pairs = _batches(3)
    a.step(pairs[0])
    b = ReleasedSF(_model(seed=5))
    b.load_state_dict(copy.deepcopy(a.state_dict()))  # torch optimizers alias loaded tensors
    la, lb = a.step(pairs[1]), b.step(pairs[1])
    assert torch.equal(la, lb)
    for pa, pb in zip(a.meta_model.parameters(), b.meta_model.parameters()):
        assert torch.equal(pa, pb)
    # a reference state resumes the fast algorithm (same variant name and layout)
    c = SerialFirstOrder(_model(seed=6))
    c.load_state_dict(copy.deepcopy(a.state_dict()))
    torch.testing.assert_close(c.step(pairs[2]), a.step(pairs[2]), rtol=1e-5, atol=1e-6, check_dtype=False)


# ---------------------------------------------------------------------- options (T0)
def test_defaults_by_device_and_refusals():
    cpu = resolve_options("cpu")
    assert (cpu.precision, cpu.channels_last, cpu.compile, cpu.cuda_graphs) == ("fp32", False, False, False)
    assert cpu.graphs_off is None  # graphs are a CUDA matter: nothing to say on the CPU
    gpu = resolve_options("cuda")  # resolving needs no device
    assert (gpu.precision, gpu.channels_last) == ("bf16", True)


@pytest.fixture
def cuda_looks_available(monkeypatch):
    """Only the config and the option resolution are asked (no device is used): CUDA present, and
    the fused optimizer served there unless --backend torch forces the references."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(
        optim_ops,
        "fused_optimizer",
        lambda device, backend=None: torch.device(device).type == "cuda" and backend != "torch",
    )


def _plan(**kw):
    """The run plan of a config (what Trainer.open() resolves before anything is built)."""
    cfg = TrainConfig(**kw).validate()
    return RunPlan.resolve(cfg, resolve_device(cfg.device))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_cuda_graphs_default_on_for_every_variant_on_cuda(cuda_looks_available, tmp_path, variant):
    """The run plan's resolution: on for a one-process CUDA run of any variant; the CPU,
    --no_cuda_graphs and --reference_mode leave it off."""

    def options(**kw):
        return _plan(ckpt_save=str(tmp_path / "run"), variant=variant, **kw).fast

    on = options(device="cuda")
    assert on.cuda_graphs and on.graphs_off is None
    assert not options(device="cpu").cuda_graphs
    off = options(device="cuda", cuda_graphs=False)
    assert not off.cuda_graphs and off.graphs_off == "--no_cuda_graphs"
    assert options(device="cuda", cuda_graphs=True).cuda_graphs
    if variant == "sf":
        ref = options(device="cuda", reference_mode=True)
        assert not ref.cuda_graphs and ref.precision is None


@pytest.mark.parametrize(
    "kw,reason",
    [
        ({"distributed": True}, "--distributed"),
        ({"compile": True}, "--compile"),
        ({"backend": "torch"}, "the fused optimizer is not in use"),
    ],
    ids=["distributed", "compile", "no-fused-optimizer"],
)
def test_cuda_graphs_default_off_and_why(cuda_looks_available, kw, reason):
    opts = resolve_options("cuda", **kw)
    assert not opts.cuda_graphs and reason in opts.graphs_off
    # forcing it is the config's business (validated there); the resolution keeps what was asked
    assert resolve_options("cuda", cuda_graphs=True, **kw).cuda_graphs


def test_cuda_graphs_flags_parse():
    parser = build_parser()

    def parsed(*flags):
        return TrainConfig.from_args(parser.parse_args(["train", "--ckpt_save", "x", *flags])).cuda_graphs

    assert parsed() is None
    assert parsed("--cuda_graphs") is True
    assert parsed("--no_cuda_graphs") is False
    assert parsed("--cuda_graphs", "--no_cuda_graphs") is False  # the last one wins, as for every switch pair


def test_config_refuses_what_the_fast_path_cannot_do(cuda_looks_available, tmp_path):
    """The combinations are refused once: by the config (TrainConfig.validate) or, where the answer
    depends on the optimizer decision, by the run plan (before anything is built or written)."""
    out = str(tmp_path / "run")

    def refused(match, **kw):
        with pytest.raises(FlagError, match=match):
            _plan(ckpt_save=out, **kw)

    refused("--cuda_graphs needs a CUDA device", device="cpu", cuda_graphs=True)
    refused("--precision", precision="fp16")
    refused("--distributed", device="cuda", cuda_graphs=True, distributed=True)
    refused("needs the fused optimizer .*--backend torch", device="cuda", cuda_graphs=True, backend="torch")
    refused(
        "--reference_mode cannot be combined with --cuda_graphs", device="cuda", cuda_graphs=True, reference_mode=True
    )
    for variant in VARIANTS:  # every variant may be captured (ss/ps/ss-fo fall back to eager when they cannot)
        _plan(ckpt_save=out, device="cuda", cuda_graphs=True, variant=variant)
    # off by default with --distributed or --reference_mode: no refusal
    _plan(ckpt_save=out, device="cuda", distributed=True)
    _plan(ckpt_save=out, device="cuda", reference_mode=True, cuda_graphs=False)


def test_config_refuses_graphs_without_the_native_core(cuda_looks_available, monkeypatch, tmp_path):
    monkeypatch.setattr(optim_ops, "fused_optimizer", lambda device, backend=None: False)
    with pytest.raises(FlagError, match="needs the fused optimizer .*dil-fast info"):
        _plan(ckpt_save=str(tmp_path / "run"), device="cuda", cuda_graphs=True)


# ---------------------------------------------------------------------- CUDA-graph fallback (T0)
class _WithBuffer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = _model()
        self.register_buffer("scale", torch.ones(1))

    def forward(self, x):
        return self.net(x) * self.scale


@pytest.mark.ext
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_models_with_buffers_are_captured_too(native, variant):
    """sf/pf copy the buffers beside the fused task reset (one foreach copy, in the graph); the
    other variants have no task network to reset: nothing refuses a buffer any more."""
    algo = VARIANTS[variant](_WithBuffer(), **({"fused": True} if variant in ("sf", "pf", "erm") else {}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        step = GraphedStep(algo)  # builds nothing on the device until the first call
    assert step.fallback_reason is None


class _Stream:
    def wait_stream(self, other):
        pass


class _FailingCapture:
    """``torch.cuda.graph`` as a failing capture behaves, on the CPU: nothing the body does to the
    algorithm's tensors happens (they are put back at the end: a capture records, it does not run),
    and it raises, either at the first optimizer step (``fail_at="op"``: the op that syncs with the
    host, after which ending the capture raises again) or when the capture ends after the whole
    body ran (``"end"``, e.g. a stream forked in the step and never joined)."""

    capturing = False
    fail_at = "op"
    algo = None

    def __init__(self, graph, **kwargs):
        pass

    @staticmethod
    def _tensors(algo) -> list[torch.Tensor]:
        models = {id(m): m for m in (algo.meta_model, algo.task_model)}.values()
        params = [p for m in models for p in m.parameters()]
        states = [
            t
            for o in {id(o): o for o in (algo.meta_optimizer, algo.task_optimizer) if o}.values()
            for st in o.state.values()
            for t in st.values()
            if isinstance(t, torch.Tensor)
        ]
        return params + [p.grad for p in params if p.grad is not None] + states

    def __enter__(self):
        _FailingCapture.capturing = True
        self.saved = [t.detach().clone() for t in self._tensors(self.algo)]

    def __exit__(self, exc_type, exc, tb):
        _FailingCapture.capturing = False
        with torch.no_grad():
            for t, saved in zip(self._tensors(self.algo), self.saved):
                t.copy_(saved)
        if exc is not None:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
        if self.fail_at == "end":
            raise RuntimeError("CUDA error: the capture contains a stream fork that was not joined")
        return False


@pytest.fixture
def failing_capture(monkeypatch):
    """GraphedStep's CUDA calls made harmless on the CPU, with a :class:`_FailingCapture` (the tests
    using it take ``native``: ss/ps/ss-fo get their fused meta optimizer from the native core)."""
    for name, fake in (
        ("Stream", _Stream),
        ("current_stream", lambda *a: _Stream()),
        ("stream", lambda s: contextlib.nullcontext()),
        ("set_stream", lambda s: None),
        ("synchronize", lambda *a: None),
        ("CUDAGraph", object),
        ("graph", _FailingCapture),
    ):
        monkeypatch.setattr(torch.cuda, name, fake)
    from dil_fast.meta.base import MetaAlgorithm

    real_step = MetaAlgorithm._optimizer_step

    def step_that_syncs(opt, flag):
        if _FailingCapture.capturing and _FailingCapture.fail_at == "op":
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        real_step(opt, flag)

    monkeypatch.setattr(MetaAlgorithm, "_optimizer_step", staticmethod(step_that_syncs))
    monkeypatch.setattr(_FailingCapture, "fail_at", "op")
    return _FailingCapture


def _graph_warnings(record) -> list[str]:
    return [
        str(w.message) for w in record if issubclass(w.category, RuntimeWarning) and "CUDA graphs" in str(w.message)
    ]


def _train_side_by_side(make_algo, n=6):
    """(eager losses, graphed losses, eager algo, graphed algo, warnings, description) over ``n`` meta-iterations."""
    base = _model()
    pairs = _batches(n)
    eager, graphed = make_algo(copy.deepcopy(base)), make_algo(copy.deepcopy(base))
    _FailingCapture.algo = graphed
    le = torch.stack([eager.step(p) for p in pairs])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with FastPath(graphed, FastOptions(precision="fp32", cuda_graphs=True), "cpu") as fp:
            assert isinstance(fp.step, GraphedStep)
            lg = torch.stack([fp.step(p) for p in pairs])
            described = fp.describe()
    return le, lg, eager, graphed, _graph_warnings(record), described


@pytest.mark.ext
@pytest.mark.parametrize(
    "fail_at,reason",
    [("op", "operation not permitted when stream is capturing"), ("end", "stream fork that was not joined")],
    ids=["at-an-op", "at-the-end"],
)
@pytest.mark.parametrize("variant", ["ss", "ps", "ss-fo", "sf", "pf", "erm"])
def test_failed_capture_falls_back_to_eager_with_one_warning(native, failing_capture, variant, fail_at, reason):
    failing_capture.fail_at = fail_at
    le, lg, eager, graphed, warned, described = _train_side_by_side(lambda m: VARIANTS[variant](m))
    assert len(warned) == 1, warned
    # the reason is the first error (the op that could not be captured), not the capture's end
    assert f"--variant {variant} runs eagerly" in warned[0] and reason in warned[0], warned[0]
    assert "no CUDA graph: the capture raised RuntimeError: CUDA error: " in described and reason in described
    # the failed capture ran nothing: every meta-iteration happened once, as in the eager run
    assert graphed.iteration == eager.iteration == 6
    assert torch.equal(lg, le)
    for pg, pe in zip(graphed.meta_model.parameters(), eager.meta_model.parameters()):
        assert torch.equal(pg, pe)


@pytest.mark.ext
@pytest.mark.parametrize(
    "make_algo,reason",
    [
        (lambda m: VARIANTS["ss"](m, inner_optimizer="adam"), "--inner_optimizer adam"),
        (lambda m: VARIANTS["ps"](m, inner_optimizer="adam"), "--inner_optimizer adam"),
        (lambda m: SerialFirstOrder(m, fused=False), "its optimizers are not the fused flat-buffer ones"),
    ],
    ids=["ss-inner-adam", "ps-inner-adam", "sf-per-tensor-adam"],
)
def test_step_that_cannot_be_captured_runs_eagerly_after_one_warning(native, failing_capture, make_algo, reason):
    le, lg, eager, graphed, warned, described = _train_side_by_side(make_algo)
    assert len(warned) == 1 and reason in warned[0], warned
    assert f"no CUDA graph: {reason}" in described
    assert torch.equal(lg, le) and graphed.iteration == 6
    for pg, pe in zip(graphed.meta_model.parameters(), eager.meta_model.parameters()):
        assert torch.equal(pg, pe)


@pytest.mark.parametrize(
    "precision,channels_last,tol",
    [
        ("fp32", True, 1e-5),
        ("tf32", False, 1e-5),
        ("bf16", False, 5e-2),
        ("bf16", True, 5e-2),
    ],
    ids=["fp32-channels_last", "tf32", "bf16", "bf16-channels_last"],
)
def test_precision_and_layout_options_train_close_to_fp32(precision, channels_last, tol):
    base = _model()
    pairs = _batches(2)
    ref = SerialFirstOrder(copy.deepcopy(base))
    ref_losses = torch.stack([ref.step(p) for p in pairs])
    algo = SerialFirstOrder(copy.deepcopy(base))
    opts = FastOptions(precision=precision, channels_last=channels_last)
    with FastPath(algo, opts, "cpu") as fp:
        losses = torch.stack([fp.step(p) for p in pairs])
    assert torch.isfinite(losses).all()
    assert ((losses - ref_losses).abs() / ref_losses).max() < tol
    # fp32 master weights: parameters, gradients and optimizer moments stay fp32
    assert all(p.dtype == torch.float32 for p in algo.meta_model.parameters())
    assert all(p.grad.dtype == torch.float32 for p in algo.task_model.parameters())
    if precision == "bf16":
        assert not torch.equal(losses, ref_losses)  # autocast really ran
    # evaluation (no grad) runs the plain fp32 forward
    x = pairs[0][0][0]
    with torch.no_grad():
        assert torch.equal(algo.task_model(x), RRDBNet.forward(algo.task_model, x))


@pytest.mark.parametrize("variant", ["ss", "ss-fo"])
@pytest.mark.parametrize("precision,tol", [("fp32", 1e-6), ("bf16", 2e-2)])
def test_virtual_models_batch_under_the_fast_path(monkeypatch, variant, precision, tol):
    """ss / ss-fo take the batched (vmapped) pass under the fast path's autocast and channels_last
    as "auto" does on CUDA, with no warning, and agree with the looped pass (channels_last inside
    vmap used to raise "querying is_contiguous inside of vmap", and "auto" then looped for good
    after a warning)."""
    from dil_fast.meta.virtual import VirtualModelDIL

    monkeypatch.setattr(VirtualModelDIL, "_auto_prefers_batched", staticmethod(lambda device: True))
    base = _model()
    pairs = _batches(3, k=3, b=2, p=12)
    runs = {}
    for path in ("auto", "looped"):
        algo = VARIANTS[variant](copy.deepcopy(base), virtual_batching=path)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with FastPath(algo, FastOptions(precision=precision, channels_last=True), "cpu") as fp:
                losses = torch.stack([fp.step(p) for p in pairs])
        if path == "auto":
            assert set(algo.state_dict()["path_choices"].values()) == {"batched"}
        runs[path] = losses, torch.cat([p.detach().flatten() for p in algo.meta_model.parameters()])
    (lb, wb), (ll, wl) = runs["auto"], runs["looped"]
    w0 = torch.cat([p.detach().flatten() for p in base.parameters()])
    assert ((lb - ll).abs() / ll).max() < tol
    assert (wb - wl).norm() / (wl - w0).norm() < tol * 10


def test_math_settings_are_restored():
    before = (torch.get_float32_matmul_precision(), torch.are_deterministic_algorithms_enabled())
    algo = SerialFirstOrder(_model())
    with FastPath(algo, FastOptions(precision="tf32", deterministic=True), "cpu"):
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.are_deterministic_algorithms_enabled()
    assert (torch.get_float32_matmul_precision(), torch.are_deterministic_algorithms_enabled()) == before


def test_loss_log_on_cpu_writes_at_once_in_order():
    got = []
    log = LossLog()
    log.submit(torch.tensor([1.0, 2.0]), got.append)
    log.submit(torch.tensor([3.0]), got.append)
    assert got == [[1.0, 2.0], [3.0]] and len(log) == 0
    log.flush()


def _compile_matches_eager(device, opts):
    base = _model(device=device)
    pairs = _batches(2, device=device)
    eager = SerialFirstOrder(copy.deepcopy(base))
    le = torch.stack([eager.step(p) for p in pairs])
    algo = SerialFirstOrder(copy.deepcopy(base))
    with FastPath(algo, opts, device) as fp:
        lc = torch.stack([fp.step(p) for p in pairs])
    torch.testing.assert_close(lc, le, rtol=1e-4, atol=1e-6)
    for pa, pb in zip(algo.meta_model.parameters(), eager.meta_model.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-6)


def test_compile_traces_the_training_forward(monkeypatch):
    """--compile through dynamo + AOT autograd (the 'aot_eager' backend: the same graph capture as
    inductor without its C++ build, which takes minutes on a CPU CI machine), with the numbers of the
    eager path. RRDBNet marks its RRDB as a compiled region: one compilation serves every block (one
    graph for 3 blocks, no recompilation), the layers around them stay eager; a network without
    regions has its whole training forward compiled."""
    import torch._dynamo
    from torch._dynamo.backends.debugging import aot_eager

    from dil_fast.models.rrdb import RRDB

    calls, graphs = [], []
    real = torch.compile

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return aot_eager(gm, example_inputs)

    def compile_counting(fn, **kw):
        calls.append(fn)
        return real(fn, backend=counting_backend, **kw)

    monkeypatch.setattr(torch, "compile", compile_counting)
    torch._dynamo.reset()
    _compile_matches_eager("cpu", FastOptions(precision="fp32", channels_last=True, compile=True))
    assert calls == [RRDB.forward.__wrapped__]
    torch._dynamo.reset()
    calls.clear()
    graphs.clear()
    torch.manual_seed(0)
    model = RRDBNet(3, 3, nf=4, nb=3, gc=2)
    forward = FastForward(FastOptions(precision="fp32", compile=True), "cpu", model)
    forward(model, torch.rand(1, 3, 8, 8)).sum().backward()
    assert len(calls) == 1 and len(graphs) == 1  # three blocks, one compilation

    class Plain(torch.nn.Sequential):
        pass

    calls.clear()
    plain = Plain(torch.nn.Conv2d(3, 3, 3, padding=1))
    FastForward(FastOptions(precision="fp32", compile=True), "cpu", plain)(plain, torch.rand(1, 3, 8, 8))
    assert len(calls) == 1 and calls[0].__name__ == "_forward"


# ---------------------------------------------------------------------- the trainer (T0)
@pytest.fixture
def data(tmp_path):
    make_png_folder(tmp_path / "train", n=8, size=24, seed=1)
    make_png_folder(tmp_path / "test", n=1, size=20, seed=2)
    return tmp_path


def _train(data, out, *extra):
    flags = ("--print_every", "1", "--test_every", "5", "--backend", "torch")
    return main(train_argv(data / "train", data / "test", out, *flags, *extra, tensorboard=True))


def test_trainer_reference_mode_converges_with_default_path(data):
    assert _train(data, data / "fast") == 0
    assert _train(data, data / "ref", "--reference_mode") == 0
    lf = [float(v) for v in LOSS_RE.findall((data / "fast" / "train.log").read_text())]
    lr_ = [float(v) for v in LOSS_RE.findall((data / "ref" / "train.log").read_text())]
    assert len(lf) == len(lr_) == 4 * 4  # 4 meta-iterations x 4 confounders, every one logged
    torch.testing.assert_close(torch.tensor(lf), torch.tensor(lr_), rtol=1e-5, atol=1e-7)
    assert "Reference mode" in (data / "ref" / "train.log").read_text()
    a = torch.load(data / "fast" / "model_1.pt", weights_only=True)
    b = torch.load(data / "ref" / "model_1.pt", weights_only=True)
    assert set(b) == {"model_meta", "model_task"}
    for name in a["model_meta"]:
        torch.testing.assert_close(a["model_meta"][name], b["model_meta"][name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "flags",
    [["--precision", "bf16", "--channels_last"], ["--precision", "tf32", "--deterministic"]],
    ids=["bf16-channels_last", "tf32-deterministic"],
)
def test_trainer_fast_flags_run_on_cpu(data, flags):
    assert _train(data, data / "run", *flags) == 0
    losses = [float(v) for v in LOSS_RE.findall((data / "run" / "train.log").read_text())]
    assert len(losses) == 16 and all(0 < v < 1 for v in losses)
    assert not torch.are_deterministic_algorithms_enabled()


@pytest.mark.ext
def test_trainer_weight_options_train_the_same_numbers(native, data):
    """--channels_last_weights and --weight_shadow change where the weights live and how they reach
    the convolutions, not the arithmetic: on the CPU the run's losses and checkpoints equal the
    plain bf16 channels_last run bit for bit, and a resume of either continues the same."""
    common = ["--precision", "bf16", "--channels_last", "--backend", "cuda"]
    assert _train(data, data / "plain", *common) == 0
    both = [*common, "--channels_last_weights", "--weight_shadow"]
    assert _train(data, data / "both", *both) == 0
    log = (data / "both" / "train.log").read_text()
    assert "channels_last weights" in log and "bf16 weight shadow" in log
    assert LOSS_RE.findall(log) == LOSS_RE.findall((data / "plain" / "train.log").read_text())
    for name in ("model_1.pt", "last.pt"):
        a = torch.load(data / "plain" / name, weights_only=True)
        b = torch.load(data / "both" / name, weights_only=True)
        ma = a["model_meta"] if "model_meta" in a else a["models"]["model_meta"]
        mb = b["model_meta"] if "model_meta" in b else b["models"]["model_meta"]
        assert all(torch.equal(ma[k], mb[k]) for k in ma), name
    # resume: one more epoch from each last.pt gives the same weights
    for run, flags in (("plain", common), ("both", both)):
        assert (
            _train(data, data / f"{run}2", *flags, "--resume", str(data / run / "last.pt"), "--total_epoch", "2") == 0
        )
    a = torch.load(data / "plain2" / "model_2.pt", weights_only=True)["model_meta"]
    b = torch.load(data / "both2" / "model_2.pt", weights_only=True)["model_meta"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_store_crops_reach_a_channels_last_model_without_a_layout_copy(tmp_path):
    """With channels-last activations the PatchStore sampler writes NHWC crops and the fused noise
    keeps them NHWC, so the model's input needs no copy; the numbers are those of the NCHW run."""
    from dil_fast.data.pack import pack_folder

    make_png_folder(tmp_path / "png", n=6, size=24, seed=1)
    store = tmp_path / "store"
    pack_folder(str(tmp_path / "png"), str(store), progress=False)
    runs = {}
    for channels_last in (False, True):
        cfg = TrainConfig(
            trainset=str(store),
            loader="store",
            ckpt_save=str(tmp_path / f"run{channels_last}"),
            device="cpu",
            batch_size=2,
            patch_size=16,
            nf=8,
            nb=1,
            gc=4,
            seed=3,
            progress=False,
            backend="torch",
            precision="bf16",
            channels_last=channels_last,
            confounders="noise:5,10,15,20",
        )
        trainer = Trainer(cfg).open()
        seen, step = [], trainer.fast.step

        def recording_step(batches, step=step, seen=seen, **kw):
            seen.extend(
                x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() for x, _ in batches
            )
            return step(batches, **kw)

        trainer.fast.step = recording_step
        try:
            iterations = trainer.meta_iterations()
            runs[channels_last] = torch.stack([next(iterations) for _ in range(3)])
            iterations.close()
        finally:
            trainer.close()
        assert seen and all(v == channels_last for v in seen), (channels_last, seen)
    # the same numbers up to the summation order of the loss over NHWC memory
    torch.testing.assert_close(runs[True], runs[False], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--channels_last_weights"], "add --channels_last"),
        (["--weight_shadow", "--channels_last"], "needs --precision bf16"),
        (["--weight_shadow", "--precision", "bf16", "--variant", "ss"], "--variant ss"),
        (["--weight_shadow", "--precision", "bf16"], "fused optimizer"),
        (["--reference_mode", "--weight_shadow"], "--weight_shadow"),
    ],
    ids=["cl-weights-nchw", "shadow-fp32", "shadow-ss", "shadow-torch-backend", "reference-shadow"],
)
def test_trainer_refuses_weight_options_that_cannot_apply(data, capsys, flags, needle):
    assert _train(data, data / "bad", *flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not (data / "bad").exists()


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--cuda_graphs"], "--cuda_graphs needs a CUDA device"),
        (["--reference_mode", "--variant", "pf"], "--variant pf"),
        (["--reference_mode", "--precision", "bf16"], "--precision bf16"),
        (["--reference_mode", "--loader", "store"], "--loader store"),
    ],
    ids=["graphs-on-cpu", "reference-pf", "reference-bf16", "reference-store"],
)
def test_trainer_refuses_clearly(data, capsys, flags, needle):
    assert _train(data, data / "bad", *flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err


# ---------------------------------------------------------------------- profiling (T0)
def test_profile_one_meta_iteration_on_cpu(tmp_path):
    from dil_fast.train.profile import format_table, profile_meta_iteration

    algo = SerialFirstOrder(_model())
    pairs = _batches(1)[0]
    result = profile_meta_iteration(
        lambda: algo.step(pairs),
        "cpu",
        str(tmp_path),
        warmup=1,
        ceilings={"bytes_per_s": 1e10, "flops_per_s": {"fp32": 1e11}},
        precision="fp32",
    )
    assert (tmp_path / "trace_meta_iteration.json").stat().st_size > 0
    rows = result["rows"]
    assert rows and abs(sum(r["share"] for r in rows) - 1.0) < 1e-6
    conv = [r for r in rows if "conv" in r["op"]]
    assert conv and all(r["tflops"] is not None and r["tflops"] > 0 for r in conv)
    text = format_table(result)
    assert "share" in text and "TFLOP/s" in text


# ---------------------------------------------------------------------- CUDA (T3)
def _cuda_pair(precision="fp32", graphs=False, seed=0):
    base = _model(seed, "cuda")
    algo = SerialFirstOrder(copy.deepcopy(base), fused=True)
    opts = resolve_options("cuda", precision=precision, channels_last=True, cuda_graphs=graphs, deterministic=True)
    return base, algo, opts


@pytest.mark.gpu
def test_cuda_bf16_fast_path_tracks_reference_mode():
    base = _model(0, "cuda")
    w0 = {n: p.detach().clone() for n, p in base.named_parameters()}
    ref = ReleasedSF(copy.deepcopy(base))
    algo = SerialFirstOrder(copy.deepcopy(base), fused=True)
    pairs = _batches(4, device="cuda")
    with FastPath(algo, resolve_options("cuda"), "cuda") as fp:
        for p in pairs:
            lr_, lf = ref.step(p), fp.step(p).cpu()
            assert ((lf - lr_).abs() / lr_).max() < 5e-2
    da = torch.cat([(p.detach() - w0[n]).flatten() for n, p in algo.meta_model.named_parameters()])
    db = torch.cat([(p.detach() - w0[n]).flatten() for n, p in ref.meta_model.named_parameters()])
    assert torch.nn.functional.cosine_similarity(da, db, dim=0) > 0.9


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graph_replay_equals_eager(precision):
    pairs = _batches(7, device="cuda")
    base, eager, opts = _cuda_pair(precision)
    graphed = SerialFirstOrder(copy.deepcopy(base), fused=True)
    with FastPath(eager, opts, "cuda") as fe:
        le = [fe.step(p).clone() for p in pairs[:4]]
        eager.meta_lr = eager.meta_lr * 0.5  # a mid-run LR change must reach the replays
        le += [fe.step(p).clone() for p in pairs[4:]]
    gopts = resolve_options("cuda", precision=precision, channels_last=True, cuda_graphs=True, deterministic=True)
    with FastPath(graphed, gopts, "cuda") as fg:
        assert isinstance(fg.step, GraphedStep)
        lg = [fg.step(p).clone() for p in pairs[:4]]
        graphed.meta_lr = graphed.meta_lr * 0.5
        lg += [fg.step(p).clone() for p in pairs[4:]]
        assert fg.step.graph is not None and graphed.iteration == 7
    for a, b in zip(lg, le):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for pa, pb in zip(graphed.meta_model.parameters(), eager.meta_model.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-7)


_GRAPHED_VARIANTS = {
    "pf": lambda m: VARIANTS["pf"](m, fused=True),
    "erm": lambda m: VARIANTS["erm"](m, fused=True),
    "ss": lambda m: VARIANTS["ss"](m),
    "ps": lambda m: VARIANTS["ps"](m),
    "ss-fo": lambda m: VARIANTS["ss-fo"](m, fused=True),
    "sf-keep": lambda m: SerialFirstOrder(m, fused=True),
}


@pytest.mark.gpu
@pytest.mark.parametrize("case", sorted(_GRAPHED_VARIANTS))
def test_cuda_graph_replay_of_every_variant_equals_eager(case):
    """Each variant captured (no fallback) and replayed equals its eager run; an epoch's last step
    (keep_task_weights, set before meta-iteration 5, after the capture) runs eagerly and the replays
    after it start again from the meta weights."""
    make = _GRAPHED_VARIANTS[case]
    pairs = _batches(8, device="cuda")
    base = _model(0, "cuda")
    runs = {}
    for graphs in (False, True):
        algo = make(copy.deepcopy(base))
        opts = resolve_options("cuda", precision="fp32", channels_last=True, cuda_graphs=graphs, deterministic=True)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            with FastPath(algo, opts, "cuda") as fp:
                losses = []
                for i, p in enumerate(pairs):
                    if i == 5:
                        algo.keep_task_weights = True
                    losses.append(fp.step(p).clone())
                if graphs:
                    assert fp.step.fallback_reason is None and fp.step.graph is not None
        assert not _graph_warnings(record)
        runs[graphs] = (losses, algo)
    (le, eager), (lg, graphed) = runs[False], runs[True]
    assert graphed.iteration == eager.iteration == 8
    for a, b in zip(lg, le):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for pa, pb in zip(graphed.meta_model.parameters(), eager.meta_model.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-7)


@pytest.mark.gpu
def test_cuda_fast_step_makes_no_host_sync():
    _, algo, opts = _cuda_pair("bf16", graphs=True)
    pairs = _batches(6, device="cuda")
    with FastPath(algo, opts, "cuda") as fp:
        for p in pairs[:5]:  # warm-up and capture
            fp.step(p)
        torch.cuda.synchronize()
        log = LossLog()
        torch.cuda.set_sync_debug_mode("error")
        try:
            losses = fp.step(pairs[5])
            log.submit(losses, lambda v: None)
            log.poll()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        log.flush()


@pytest.mark.gpu
def test_cuda_compile_with_inductor_matches_eager():
    _compile_matches_eager("cuda", FastOptions(precision="fp32", compile=True, deterministic=True))


@pytest.mark.gpu
@pytest.mark.parametrize(
    "flags,note",
    [([], "CUDA graph (after"), (["--no_cuda_graphs"], "no CUDA graph: --no_cuda_graphs")],
    ids=["default", "no_cuda_graphs"],
)
def test_cuda_trainer_graphs_default_and_flag(tmp_path, flags, note):
    make_png_folder(tmp_path / "train", n=16, size=24, seed=1)
    make_png_folder(tmp_path / "test", n=1, size=20, seed=2)
    run, extra = tmp_path / "run", ("--print_every", "2", *flags)
    argv = train_argv(tmp_path / "train", tmp_path / "test", run, *extra, epochs=2, device="cuda", tensorboard=True)
    assert main(argv) == 0
    log = (tmp_path / "run" / "train.log").read_text()
    assert note in log and len(LOSS_RE.findall(log)) == 2 * 4 * 4


def test_math_settings_follow_the_new_tf32_api_when_the_process_uses_it(monkeypatch):
    # once a program sets torch's newer fp32_precision switches, the legacy getters raise
    matmul = torch.backends.cuda.matmul
    if not hasattr(matmul, "fp32_precision"):
        pytest.skip("this torch has only the legacy TF32 switches")
    old = matmul.fp32_precision
    matmul.fp32_precision = "tf32"
    try:
        with FastPath(SerialFirstOrder(_model()), FastOptions(precision="fp32"), "cpu"):
            assert matmul.fp32_precision == "ieee"
        assert matmul.fp32_precision == "tf32"
    finally:
        matmul.fp32_precision = old
    torch.get_float32_matmul_precision()  # the legacy view works again
