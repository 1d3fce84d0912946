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
    their flat NCHW buffers, which the fused optimizer needs, so cuDNN copies each bf16 weight to
    NHWC inside every convolution forward and backward-input: see "Weight casts" below).
``--compile``
    ``torch.compile`` the training forward of the task network (default mode; compiled once per
    input shape, the evaluation forward stays eager). Works on CPU when a C++ compiler is present.
``--cuda_graphs`` / ``--no_cuda_graphs``
    Default (neither flag): on when the run trains on CUDA in one process with the fused optimizer
    (the native core serves the optimizer ops) and without ``--compile`` or ``--reference_mode``
    (:func:`default_cuda_graphs`); ``--distributed`` runs stay eager (DDP's gradient all-reduce is
    not captured). ``--cuda_graphs`` forces it on and is refused where it cannot work (CPU,
    ``--distributed``, no fused optimizer, ``--reference_mode``); with ``--compile`` it captures the
    compiled step. ``--no_cuda_graphs`` turns it off. Every variant is captured: the first
    :data:`GRAPH_WARMUP` meta-iterations run eagerly on a side stream (they are real training
    steps: cuDNN autotuning, the allocator, the path choices of ss/ss-fo); the next one captures
    the whole meta-iteration (sf/pf: every inner forward/backward and fused task-Adam step, the
    fused meta step with task reset; erm: its one step; ss/ps/ss-fo: the virtual steps, the outer
    gradient and the fused meta-Adam step) into one CUDA graph on static input buffers; every later
    meta-iteration copies its K degraded batches into those buffers (one device copy per tensor:
    the degradation stays outside the graph) and replays it: one launch, no host synchronisation.
    Learning-rate changes (the meta LR halving) are written into the optimizers' device-side LR
    tensors before each replay. A step that cannot be captured runs eagerly for the rest of the
    run, after one ``RuntimeWarning`` naming the reason: ``--inner_optimizer adam`` of ss/ps/ss-fo
    (its bias corrections come from a host step count), optimizers that are not the fused ones
    (their skip decision is a host sync), or a capture that raised (a model with a host sync in
    its forward, say).
``--deterministic``
    ``torch.use_deterministic_algorithms(True)``, cuDNN deterministic and no cuDNN autotuning
    (``CUBLAS_WORKSPACE_CONFIG=:4096:8`` is set when unset). Without it, CUDA runs autotune
    convolutions (``cudnn.benchmark``; the shapes are static).

Weight casts (bf16), measured on the CPU (torch 2.13, ``bench/bench_host.py``'s dispatcher-op
counter, one sf inner step of RRDB-23 with channels_last inputs): 5677 aten ops, 1396 of them
(24.6 %) weight casts: 698 fp32 -> bf16 casts of the parameters in the forward and 698 bf16 -> fp32
casts of their gradients in the backward, 95.1 MiB each way; dispatching them takes 4.0-4.6 ms of
host time per inner step (698 tensors, one thread). The CUDA graph removes that host time, leaving
their memory traffic and one small kernel each, so the casts are left to the graph: bf16 shadow
weights written by the optimizer pass would remove only the 698 forward casts (the gradient casts
are autocast's backward), saving about 4 B per parameter per inner step against a 2 B write in
every optimizer step and a bf16 output in every native optimizer op; autocast's weight cache
saves nothing (it lives for one forward, which uses each weight once). cuDNN, given channels_last
inputs and NCHW weights, also copies every bf16 weight to NHWC in each convolution forward and
backward-input (``weight.contiguous(channels_last)`` in ATen, read from the source): 698 copies,
126.7 MiB per inner step, below the dispatcher; NHWC-strided weights in the flat buffers would
remove them. Their device time waits for a GPU measurement.

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

from ..backends import BackendError
from ..ops import optim as optim_ops

GRAPH_WARMUP = 3  # eager meta-iterations before capture (cuDNN autotuning, allocator, lr tensors)


@dataclass
class FastOptions:
    """The fast-path settings of one run (``precision=None``: leave torch's math settings alone,
    the reference mode). ``graphs_off``: why the default left CUDA graphs off on CUDA (for the log)."""

    precision: str | None = "fp32"
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = False
    deterministic: bool = False
    graphs_off: str | None = None

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.precision == "bf16" else None


def default_cuda_graphs(device: torch.device, *, compile: bool = False, distributed: bool = False,
                        backend: str | None = None) -> tuple[bool, str | None]:
    """The ``--cuda_graphs`` default: ``(on, why not)``. On for a CUDA run in one process with the
    fused optimizer (:func:`dil_fast.ops.optim.fused_optimizer`, ``backend`` forced) and without
    ``--compile``; the reason is None on CPU (graphs are a CUDA matter)."""
    if torch.device(device).type != "cuda":
        return False, None
    if distributed:
        return False, "--distributed: DDP's gradient all-reduce runs eagerly"
    if compile:
        return False, "--compile; add --cuda_graphs to capture the compiled step"
    try:
        fused = optim_ops.fused_optimizer(device, backend)
    except BackendError:  # a forced backend that cannot serve the optimizer ops: the run is refused later
        fused = False
    if not fused:
        return False, "the fused optimizer is not in use (--backend torch, or `dil-fast info` says why not)"
    return True, None


def resolve_options(device: torch.device, *, precision: str | None = None, channels_last: bool | None = None,
                    compile: bool = False, cuda_graphs: bool | None = None, deterministic: bool = False,
                    distributed: bool = False, backend: str | None = None) -> FastOptions:
    """Fill the device-dependent defaults (the explicit combinations were validated with the config);
    ``cuda_graphs=None``: :func:`default_cuda_graphs` (``distributed``: ``--distributed``, ``backend``:
    the forced ``--backend``)."""
    on_cuda = torch.device(device).type == "cuda"
    graphs_off = None
    if cuda_graphs is None:
        cuda_graphs, graphs_off = default_cuda_graphs(device, compile=compile, distributed=distributed,
                                                      backend=backend)
    elif not cuda_graphs and on_cuda:
        graphs_off = "--no_cuda_graphs"
    return FastOptions(precision=precision or ("bf16" if on_cuda else "fp32"),
                       channels_last=on_cuda if channels_last is None else bool(channels_last),
                       compile=bool(compile), cuda_graphs=bool(cuda_graphs), deterministic=bool(deterministic),
                       graphs_off=graphs_off)


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
def capture_blocker(algo) -> str | None:
    """Why ``algo``'s meta-iteration cannot be captured as it is written, or None.

    Read from the code of the variants: every step is device work on fixed buffers except the
    optimizer step of a ``torch.optim`` optimizer (its non-finite skip reads the flag on the host)
    and the inner Adam of ss/ps/ss-fo (its step count and bias corrections are host numbers that a
    graph would freeze, and its moments are new tensors every step)."""
    from ..optim import FusedAdam

    if not all(isinstance(o, FusedAdam) for o in _optimizers(algo)):
        return ("its optimizers are not the fused flat-buffer ones (a torch.optim step decides on the host "
                "whether to skip); `dil-fast info` says why the native core is not in use")
    if getattr(algo, "inner_optimizer", "sgd") == "adam":
        return "--inner_optimizer adam keeps its step count and bias corrections on the host"
    return None


def _optimizers(algo) -> list:
    opts = [algo.meta_optimizer]
    task = algo.task_optimizer
    return opts + ([task] if task is not None and task is not algo.meta_optimizer else [])


def _root_cause(exc: BaseException) -> str:
    """The first exception of a chain (a failed capture raises again when it ends), in one line."""
    while (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class GraphedStep:
    """``algo.step`` captured as one CUDA graph (see ``--cuda_graphs`` in the module doc).

    ``__call__(batches, query=None)`` returns the per-pair losses: a static device tensor that the
    next call overwrites (copy it before then; :class:`LossLog` does). Input shapes must stay fixed.
    When the step cannot be captured (:func:`capture_blocker`, or the capture raised) it warns once
    (``RuntimeWarning``, :attr:`fallback_reason` says why) and every call runs ``algo.step`` eagerly.
    """

    def __init__(self, algo, warmup: int = GRAPH_WARMUP):
        self.algo = algo
        self.optimizers = _optimizers(algo)
        self.warmup = max(int(warmup), 1)
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_inputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.static_query: tuple[torch.Tensor, torch.Tensor] | None = None
        self.static_losses: torch.Tensor | None = None
        self.fallback_reason: str | None = None
        self._side = None
        self._resync_task = False  # an eager step kept the task weights; the graph starts from task == meta
        reason = capture_blocker(algo)
        if reason is not None:
            self._fall_back(reason)

    def _fall_back(self, reason: str) -> None:
        self.fallback_reason = reason
        warnings.warn(f"CUDA graphs: the meta-iteration of --variant {self.algo.name} runs eagerly: {reason}",
                      RuntimeWarning, stacklevel=3)

    def _step(self, batches, query):
        return self.algo.step(batches) if query is None else self.algo.step(batches, query=query)

    def _eager(self, batches, query):
        if self._side is None:
            self._side = torch.cuda.Stream()
        cur = torch.cuda.current_stream()
        self._side.wait_stream(cur)
        with torch.cuda.stream(self._side):
            losses = self._step(batches, query)
        cur.wait_stream(self._side)
        return losses

    def _capture(self, batches, query) -> bool:
        """Capture one meta-iteration on clones of its inputs; False (after the warning) when the
        capture raised. A capture records without running, so the Python-side state the step
        changed is put back and the meta-iteration is still to run."""
        self.static_inputs = [(inp.clone(), tgt.clone()) for inp, tgt in batches]
        self.static_query = None if query is None else (query[0].clone(), query[1].clone())
        before = dict(vars(self.algo))
        stream = torch.cuda.current_stream()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: a loader's own threads (DALI) may use CUDA while the step is captured
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.static_losses = self._step(self.static_inputs, self.static_query)
        except RuntimeError as exc:
            torch.cuda.set_stream(stream)  # a failed capture_end leaves the capture stream current
            vars(self.algo).clear()
            vars(self.algo).update(before)
            self.static_inputs, self.static_query, self.static_losses = [], None, None
            self._fall_back(f"the capture raised {_root_cause(exc)}")
            return False
        self.algo.iteration = before["iteration"]  # capture records the work; the replay does it
        self.graph = graph
        return True

    def _load_inputs(self, batches, query) -> None:
        if (len(batches) != len(self.static_inputs) or (query is None) != (self.static_query is None) or any(
                b[0].shape != s[0].shape or b[1].shape != s[1].shape for b, s in zip(batches, self.static_inputs))):
            raise RuntimeError("--cuda_graphs: the batch shapes changed after capture "
                               f"({[tuple(b[0].shape) for b in batches]} vs "
                               f"{[tuple(s[0].shape) for s in self.static_inputs]})")
        pairs = list(zip(batches, self.static_inputs))
        if query is not None:
            pairs.append((query, self.static_query))
        for (inp, tgt), (s_inp, s_tgt) in pairs:
            s_inp.copy_(inp, non_blocking=True)
            s_tgt.copy_(tgt, non_blocking=True)

    def __call__(self, batches, query=None):
        if self.fallback_reason is not None:
            return self._step(batches, query)
        self.calls += 1
        keep = self.algo.keep_task_weights
        if keep and self.algo.task_model is self.algo.meta_model:
            self.algo.keep_task_weights = keep = False  # no separate task network to keep (erm, ss, ps, ss-fo)
        if self.calls <= self.warmup or keep:
            # the captured meta step resets the task network: an epoch's last step (which keeps it
            # for model_N.pt) runs eagerly on the same buffers
            losses = self._eager(batches, query)
            self._resync_task = keep
            return losses
        # before a capture too: an LR tensor filled inside the capture would be a constant of the graph
        for o in self.optimizers:
            o.sync_lr()  # outside the graph: a replay reads the device lr tensors
        if self._resync_task:
            self.algo.sync_task()
            self._resync_task = False
        if self.graph is None:
            if not self._capture(batches, query):
                return self._step(batches, query)
        else:
            self._load_inputs(batches, query)
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
        fallback = getattr(self.step, "fallback_reason", None)
        if o.cuda_graphs and fallback is None:
            parts.append(f"CUDA graph (after {GRAPH_WARMUP} eager meta-iterations)")
        elif o.cuda_graphs or o.graphs_off:
            parts.append(f"eager launches (no CUDA graph: {fallback or o.graphs_off})")
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
