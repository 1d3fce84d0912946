"""The fast path of ``dil-fast train``: precision, memory layout, compilation, CUDA graphs and
asynchronous loss logging around a :class:`~dil_fast.meta.MetaAlgorithm`.

Flags (``dil-fast train``; defaults depend on the device, so the CPU path stays the reference
fp32 path and CUDA gets the fast one):

``--precision {fp32,tf32,bf16}``
    Default ``bf16`` on CUDA, ``fp32`` on CPU. ``fp32``: strict fp32 math (cuDNN and matmul TF32
    off). ``tf32``: fp32 storage, TF32 tensor-core math for convolutions and matmuls. ``bf16``:
    the training forwards run under ``torch.autocast(dtype=bfloat16)`` while the weights, their
    gradients and the optimizer moments stay fp32 in the flat buffers (fp32 master weights; the
    fused Adam/meta steps read and write fp32); the model output is cast back to fp32 before the
    loss. Evaluation (``torch.no_grad``) always runs in fp32.
``--channels_last`` / ``--no_channels_last``
    Default on for CUDA, off for CPU: training inputs are made channels-last so every activation
    of the network is NHWC (cuDNN picks the NHWC kernels from the input layout; the weights keep
    their flat NCHW buffers, which the fused optimizer needs).
``--compile``
    ``torch.compile`` the training forward of the task network (default mode; compiled once per
    input shape, the evaluation forward stays eager). Works on CPU when a C++ compiler is present.
``--cuda_graphs``
    CUDA only, one process, ``--variant sf`` or ``erm`` with the fused optimizer (the native core). The first
    :data:`GRAPH_WARMUP` meta-iterations run eagerly on a side stream (they are real training
    steps); the next one captures the whole meta-iteration (every inner forward/backward and fused
    task-Adam step, the fused meta step with task reset) into one CUDA graph on static input
    buffers; every later meta-iteration copies its K degraded batches into those buffers and
    replays the graph: one launch, no host synchronisation. Learning-rate changes (the meta LR
    halving) are written into the optimizers' device-side LR tensors before each replay.
``--deterministic``
    ``torch.use_deterministic_algorithms(True)``, cuDNN deterministic and no cuDNN autotuning
    (``CUBLAS_WORKSPACE_CONFIG=:4096:8`` is set when unset). Without it, CUDA runs autotune
    convolutions (``cudnn.benchmark``; the shapes are static).

Losses never force a host sync in the loop: :class:`LossLog` copies the per-step losses of a
``--print_every`` iteration asynchronously into pinned host memory and writes the log lines once
the copy has landed (checked without blocking every iteration; flushed at epoch ends). On CPU
the lines are written at once, as before.

All global torch settings changed here are restored when the run ends (:meth:`FastPath.close`).
"""
from __future__ import annotations

import contextlib
import os
import types
import warnings
from collections import deque
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import FlagError
from .config import GRAPH_VARIANTS

GRAPH_WARMUP = 3  # eager meta-iterations before capture (cuDNN autotuning, allocator, lr tensors)


@dataclass
class FastOptions:
    """The fast-path settings of one run (``precision=None``: leave torch's math settings alone,
    the reference mode)."""

    precision: str | None = "fp32"
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = False
    deterministic: bool = False

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.precision == "bf16" else None


def resolve_options(device: torch.device, *, precision: str | None = None, channels_last: bool | None = None,
                    compile: bool = False, cuda_graphs: bool = False, deterministic: bool = False) -> FastOptions:
    """Fill the device-dependent defaults (the combinations were validated with the config)."""
    on_cuda = torch.device(device).type == "cuda"
    return FastOptions(precision=precision or ("bf16" if on_cuda else "fp32"),
                       channels_last=on_cuda if channels_last is None else bool(channels_last),
                       compile=bool(compile), cuda_graphs=bool(cuda_graphs), deterministic=bool(deterministic))


# ---------------------------------------------------------------------- global math settings
def _tf32_state(cuda: bool) -> tuple:
    """The TF32 switches as set now, through whichever API the process uses: torch refuses to read
    the legacy switches once the newer ``fp32_precision`` ones were set (and the other way round)."""
    cudnn = torch.backends.cudnn
    try:
        return ("legacy", torch.get_float32_matmul_precision(), cudnn.allow_tf32 if cuda else None)
    except RuntimeError:
        return ("new", torch.backends.cuda.matmul.fp32_precision, cudnn.conv.fp32_precision if cuda else None)


def _set_tf32(api: str, tf32: bool, cuda: bool) -> None:
    if api == "legacy":
        torch.set_float32_matmul_precision("high" if tf32 else "highest")
        if cuda:
            torch.backends.cudnn.allow_tf32 = tf32
    else:
        torch.backends.cuda.matmul.fp32_precision = "tf32" if tf32 else "ieee"
        if cuda:
            torch.backends.cudnn.conv.fp32_precision = "tf32" if tf32 else "ieee"


def _restore_tf32(state: tuple, cuda: bool) -> None:
    api, matmul, conv = state
    if api == "legacy":
        torch.set_float32_matmul_precision(matmul)
        if cuda:
            torch.backends.cudnn.allow_tf32 = conv
    else:
        torch.backends.cuda.matmul.fp32_precision = matmul
        if cuda:
            torch.backends.cudnn.conv.fp32_precision = conv


@contextlib.contextmanager
def math_settings(opts: FastOptions, device: torch.device):
    """Set matmul/cuDNN precision, autotuning and determinism for the run; restore on exit."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    cudnn = torch.backends.cudnn
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch >= 2.9 suggests the fp32_precision API for the same switches
        tf32_state = _tf32_state(cuda)
    saved = {
        "det": torch.are_deterministic_algorithms_enabled(),
        "det_warn": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_bench": cudnn.benchmark, "cudnn_det": cudnn.deterministic,
        "cublas_env": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }
    try:
        if opts.precision is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _set_tf32(tf32_state[0], opts.precision in ("tf32", "bf16"), cuda)
            if cuda:
                cudnn.benchmark = not opts.deterministic
        if opts.deterministic:
            if saved["cublas_env"] is None:
                os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"  # cuBLAS refuses determinism without it
            torch.use_deterministic_algorithms(True)
            cudnn.deterministic = True
            cudnn.benchmark = False
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _restore_tf32(tf32_state, cuda)
        cudnn.benchmark = saved["cudnn_bench"]
        cudnn.deterministic = saved["cudnn_det"]
        torch.use_deterministic_algorithms(saved["det"], warn_only=saved["det_warn"])
        if opts.deterministic and saved["cublas_env"] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


# ---------------------------------------------------------------------- the training forward
def install_training_forward(module: nn.Module, opts: FastOptions, device: torch.device) -> nn.Module:
    """Make ``module``'s forward apply the fast-path options when autograd is on (training).

    The class's forward is wrapped per instance, so parameter names, ``state_dict`` and the
    optimizers are untouched; with grad disabled (evaluation) the plain fp32 forward runs.
    Call after any ``copy.deepcopy`` of the module (a deep copy would share the wrapper).
    """
    device = torch.device(device)
    if opts.autocast_dtype is None and not opts.channels_last and not opts.compile:
        return module
    plain = type(module).forward
    dtype = opts.autocast_dtype
    # autocast's weight-cast cache must not outlive a captured graph's replays
    cache = not opts.cuda_graphs

    def training_forward(x, *args, **kwargs):
        if opts.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if dtype is None:
            return plain(module, x, *args, **kwargs)
        with torch.autocast(device.type, dtype=dtype, cache_enabled=cache):
            out = plain(module, x, *args, **kwargs)
        return out.float()  # the loss is computed in fp32, as autocast does for its losses

    run = torch.compile(training_forward) if opts.compile else training_forward

    def forward(self, x, *args, **kwargs):
        if torch.is_grad_enabled():
            return run(x, *args, **kwargs)
        return plain(self, x, *args, **kwargs)

    module.forward = types.MethodType(forward, module)
    return module


# ---------------------------------------------------------------------- CUDA graphs
class GraphedStep:
    """``algo.step`` captured as one CUDA graph (see ``--cuda_graphs`` in the module doc).

    ``__call__(batches)`` returns the per-pair losses: a static device tensor that the next call
    overwrites (copy it before then; :class:`LossLog` does). Input shapes must stay fixed.
    """

    def __init__(self, algo, warmup: int = GRAPH_WARMUP):
        from ..optim import FusedAdam

        opts = [algo.meta_optimizer] + ([algo.task_optimizer] if algo.task_optimizer is not None
                                        and algo.task_optimizer is not algo.meta_optimizer else [])
        if algo.name not in GRAPH_VARIANTS:
            raise FlagError(f"--cuda_graphs supports --variant {' or '.join(GRAPH_VARIANTS)}, not {algo.name}")
        if not all(isinstance(o, FusedAdam) for o in opts):
            raise FlagError("--cuda_graphs needs the fused optimizer (the native core dil_fast._C with CUDA "
                            "kernels); `dil-fast info` says why it is not loaded")
        if any(True for _ in algo.meta_model.buffers()):
            raise FlagError("--cuda_graphs: models with buffers are not supported (the task reset is not fused)")
        self.algo = algo
        self.optimizers = opts
        self.warmup = max(int(warmup), 1)
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_inputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.static_losses: torch.Tensor | None = None
        self._side = None

    def _eager(self, batches):
        if self._side is None:
            self._side = torch.cuda.Stream()
        cur = torch.cuda.current_stream()
        self._side.wait_stream(cur)
        with torch.cuda.stream(self._side):
            losses = self.algo.step(batches)
        cur.wait_stream(self._side)
        return losses

    def _capture(self, batches) -> None:
        self.static_inputs = [(inp.clone(), tgt.clone()) for inp, tgt in batches]
        torch.cuda.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        it = self.algo.iteration
        with torch.cuda.graph(self.graph):
            self.static_losses = self.algo.step(self.static_inputs)
        self.algo.iteration = it  # capture records the work; the replay below does it

    def __call__(self, batches):
        self.calls += 1
        if self.calls <= self.warmup or self.algo.keep_task_weights:
            # the captured meta step resets the task network: an epoch's last step (which keeps it
            # for model_N.pt) runs eagerly on the same buffers
            return self._eager(batches)
        # before a capture too: an LR tensor filled inside the capture would be a constant of the graph
        for o in self.optimizers:
            o.sync_lr()  # outside the graph: a replay reads the device lr tensors
        if self.graph is None:
            self._capture(batches)
        elif len(batches) != len(self.static_inputs) or any(
                b[0].shape != s[0].shape or b[1].shape != s[1].shape for b, s in zip(batches, self.static_inputs)):
            raise RuntimeError("--cuda_graphs: the batch shapes changed after capture "
                               f"({[tuple(b[0].shape) for b in batches]} vs "
                               f"{[tuple(s[0].shape) for s in self.static_inputs]})")
        else:
            for (inp, tgt), (s_inp, s_tgt) in zip(batches, self.static_inputs):
                s_inp.copy_(inp, non_blocking=True)
                s_tgt.copy_(tgt, non_blocking=True)
        self.graph.replay()
        self.algo.iteration += 1
        return self.static_losses


# ---------------------------------------------------------------------- loss logging
class LossLog:
    """Deferred, sync-free loss logging: ``submit(losses, emit)`` calls ``emit(list_of_floats)``
    once the values are on the host. CPU tensors are emitted at once; CUDA tensors are copied
    (non-blocking) into pinned memory and emitted by :meth:`poll` (no blocking) or :meth:`flush`
    (blocks), in submission order."""

    def __init__(self):
        self._pending: deque = deque()

    def submit(self, losses: torch.Tensor, emit) -> None:
        if losses.device.type != "cuda":
            self.flush()
            emit(losses.tolist())
            return
        host = torch.empty(losses.shape, dtype=losses.dtype, pin_memory=True)
        host.copy_(losses, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        self._pending.append((done, host, emit))

    def poll(self) -> None:
        while self._pending and self._pending[0][0].query():
            _, host, emit = self._pending.popleft()
            emit(host.tolist())

    def flush(self) -> None:
        while self._pending:
            done, host, emit = self._pending.popleft()
            done.synchronize()
            emit(host.tolist())

    def __len__(self) -> int:
        return len(self._pending)


# ---------------------------------------------------------------------- the whole fast path
class FastPath:
    """Applies :class:`FastOptions` to an algorithm; ``step(batches)`` is the meta-iteration to call.

    Use as a context manager (or call :meth:`close`) so the global math settings are restored.
    """

    def __init__(self, algo, opts: FastOptions, device):
        self.algo, self.opts, self.device = algo, opts, torch.device(device)
        self._settings = math_settings(opts, self.device)
        self._settings.__enter__()
        self._open = True
        try:
            install_training_forward(algo.task_model, opts, self.device)
            self.step = GraphedStep(algo) if opts.cuda_graphs else algo.step
        except BaseException:
            self.close()
            raise

    def describe(self) -> str:
        o = self.opts
        parts = [f"precision {o.precision or 'torch defaults'}"]
        parts.append("channels_last" if o.channels_last else "NCHW")
        if o.compile:
            parts.append("torch.compile")
        if o.cuda_graphs:
            parts.append(f"CUDA graph (after {GRAPH_WARMUP} eager meta-iterations)")
        if o.deterministic:
            parts.append("deterministic")
        return ", ".join(parts)

    def close(self) -> None:
        if self._open:
            self._open = False
            self._settings.__exit__(None, None, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
