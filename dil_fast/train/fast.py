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
``--channels_last_weights`` / ``--no_channels_last_weights``
    Default off (the GPU check compares it): the 4-D weights are stored NHWC inside the flat
    parameter buffers (:mod:`dil_fast.optim.flat`), so a convolution fed channels-last
    activations copies no weight into NHWC. Needs ``--channels_last``. The flat optimizers are
    elementwise, so the numbers are those of the NCHW layout; checkpoints hold the same values.
``--weight_shadow`` / ``--no_weight_shadow``
    Default off (the GPU check compares it); bf16 only, for the variants that train through the
    module's forward with the fused optimizer (sf, pf, erm). Each training forward casts the flat
    fp32 weights to one bf16 buffer (one cast) and runs the module on views of it, so autocast casts
    no weight; backward gathers the bf16 weight gradients into one flat tensor (autograd's ``split``
    backward: a few ``cat`` launches), casts it once and adds it into the flat fp32 gradient the
    fused Adam reads. Per inner step that replaces one cast per weight in the forward, one cast per
    weight gradient and one gradient add per weight by about ten launches over the whole buffer
    (counted in ``bench/bench_host.py`` part e).
``--compile``
    ``torch.compile`` the training forward of the task network (default mode; compiled once per
    input shape, the evaluation forward stays eager). A network that marks its repeated block as a
    compiled region (:mod:`dil_fast.models.regions`: RRDBNet's RRDB) is compiled by region: one
    compilation of the block serves all of them, which cuts the cold compile of RRDB-23 by about the
    block count; the layers around the blocks run eagerly. Works on CPU when a C++ compiler is present.
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

Weight casts (bf16): autocast casts each weight to bf16 in every forward and each weight gradient
back in the backward, and cuDNN copies NCHW weights to NHWC for channels-last activations; the
counts per inner step and what ``--channels_last_weights`` and ``--weight_shadow`` remove are in
bench/RESULTS.md ("What one inner step launches").

Losses never force a host sync in the loop: :class:`LossLog` copies the per-step losses of a
``--print_every`` iteration asynchronously into pinned host memory and writes the log lines once
the copy has landed (checked without blocking every iteration; flushed at epoch ends). On CPU
the lines are written at once, as before.

All global torch settings changed here are restored when the run ends (:meth:`FastPath.close`).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections import deque
from dataclasses import dataclass

import torch
from torch import nn

from ..backends import BackendError
from ..models.regions import compiling_regions, has_regions
from ..ops import optim as optim_ops
from ..optim.flat import adjacent_views, dense_layout, segment_view
from .graphs import GRAPH_WARMUP, GraphedStep


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
    channels_last_weights: bool = False
    weight_shadow: bool = False

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.precision == "bf16" else None


def default_cuda_graphs(
    device: torch.device,
    *,
    compile: bool = False,
    distributed: bool = False,
    backend: str | None = None,
    fused: bool | None = None,
) -> tuple[bool, str | None]:
    """The ``--cuda_graphs`` default: ``(on, why not)``. On for a CUDA run in one process with the
    fused optimizer (``fused``: the run plan's decision; None: :func:`dil_fast.ops.optim.fused_optimizer`
    with ``backend`` forced) and without ``--compile``; the reason is None on CPU (graphs are a CUDA matter)."""
    if torch.device(device).type != "cuda":
        return False, None
    if distributed:
        return False, "--distributed: DDP's gradient all-reduce runs eagerly"
    if compile:
        return False, "--compile; add --cuda_graphs to capture the compiled step"
    if fused is None:
        try:
            fused = optim_ops.fused_optimizer(device, backend)
        except BackendError:  # a forced backend that cannot serve the optimizer ops: the run is refused later
            fused = False
    if not fused:
        return False, "the fused optimizer is not in use (--backend torch, or `dil-fast info` says why not)"
    return True, None


def resolve_options(
    device: torch.device,
    *,
    precision: str | None = None,
    channels_last: bool | None = None,
    compile: bool = False,
    cuda_graphs: bool | None = None,
    deterministic: bool = False,
    distributed: bool = False,
    backend: str | None = None,
    channels_last_weights: bool | None = None,
    weight_shadow: bool | None = None,
    fused: bool | None = None,
) -> FastOptions:
    """Fill the device-dependent defaults (the explicit combinations were validated with the config);
    ``cuda_graphs=None``: :func:`default_cuda_graphs` (``distributed``: ``--distributed``, ``backend``:
    the forced ``--backend``)."""
    on_cuda = torch.device(device).type == "cuda"
    graphs_off = None
    if cuda_graphs is None:
        cuda_graphs, graphs_off = default_cuda_graphs(
            device, compile=compile, distributed=distributed, backend=backend, fused=fused
        )
    elif not cuda_graphs and on_cuda:
        graphs_off = "--no_cuda_graphs"
    return FastOptions(
        precision=precision or ("bf16" if on_cuda else "fp32"),
        channels_last=on_cuda if channels_last is None else bool(channels_last),
        compile=bool(compile),
        cuda_graphs=bool(cuda_graphs),
        deterministic=bool(deterministic),
        graphs_off=graphs_off,
        channels_last_weights=bool(channels_last_weights),
        weight_shadow=bool(weight_shadow),
    )


def prepare_model(model: nn.Module, opts: FastOptions) -> nn.Module:
    """Put ``model``'s weights in the layout ``opts`` asks for (``--channels_last_weights``: 4-D
    weights NHWC). Call before the algorithm builds its optimizers: they flatten the weights in the
    layout they find. Returns ``model`` (changed in place)."""
    if opts.channels_last_weights:
        model.to(memory_format=torch.channels_last)
    return model


def check_weight_layout(model: nn.Module, opts: FastOptions) -> None:
    """Refuse a model whose 4-D weights are not in the layout ``opts`` asks for."""
    if not opts.channels_last_weights:
        return
    for name, p in model.named_parameters():
        if p.dim() == 4 and not p.is_contiguous(memory_format=torch.channels_last):
            raise ValueError(
                f"--channels_last_weights: parameter {name!r} is not channels_last; call "
                "dil_fast.train.fast.prepare_model on the model before building the algorithm"
            )


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
        "cudnn_bench": cudnn.benchmark,
        "cudnn_det": cudnn.deterministic,
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
class WeightShadow:
    """``--weight_shadow``: the module's weights for one training forward as views of one bf16 cast
    of its flat fp32 buffer, with the weight gradients flowing back into the flat fp32 gradient.

    The module's parameters must tile one flat buffer (the fused optimizer flattens them) and keep
    a flat gradient (:class:`~dil_fast.optim.flat.FlatParams` with gradients)."""

    def __init__(self, module: nn.Module, dtype: torch.dtype = torch.bfloat16):
        named = list(module.named_parameters())
        self.module, self.dtype = module, dtype
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.shapes = [p.shape for p in self.params]
        self.sizes = [p.numel() for p in self.params]
        self.layouts = [dense_layout(p) for p in self.params]
        if not self.params or adjacent_views([p.data for p in self.params], self.layouts) is None:
            raise ValueError(
                "--weight_shadow needs the parameters in one flat buffer (the fused optimizer keeps "
                "them so; `dil-fast info` says why it is not in use)"
            )
        self.total = sum(self.sizes)

    def _flat(self, tensors) -> torch.Tensor:
        """The [P] buffer ``tensors`` tile. O(1): the first and the last are checked (as
        :meth:`dil_fast.optim.flat.FlatParams.refresh` does; the optimizer step repairs the views)."""
        first, last = tensors[0], tensors[-1]
        if first is None or last is None:
            raise RuntimeError("--weight_shadow: a parameter has no gradient view (use zero_grad(set_to_none=False))")
        end = first.data_ptr() + (self.total - self.sizes[-1]) * first.element_size()
        if last.data_ptr() != end:
            raise RuntimeError("--weight_shadow: the parameters or gradients no longer tile one flat buffer")
        return first.new_empty(0).set_(first.untyped_storage(), first.storage_offset(), (self.total,), (1,))

    def weights(self) -> dict[str, torch.Tensor]:
        """Name -> bf16 view, for one forward; backward accumulates into the flat fp32 gradient."""
        master = self._flat([p.data for p in self.params]).detach().requires_grad_()
        master.grad = self._flat([p.grad for p in self.params])  # AccumulateGrad adds into it in place
        pieces = torch.split_with_sizes(master.to(self.dtype), self.sizes)
        return {
            n: segment_view(t, shape, layout)
            for n, t, shape, layout in zip(self.names, pieces, self.shapes, self.layouts)
        }


def _is_batched(x: torch.Tensor) -> bool:
    """True for a tensor seen inside ``torch.func.vmap`` (a functorch batched tensor)."""
    return torch._C._functorch.is_batchedtensor(x)


class FastForward:
    """The training forward of the fast path (the algorithm's ``forward_policy``): channels-last
    input, bf16 autocast with the output cast back to fp32 for the loss, the bf16 weight shadow, and
    ``torch.compile`` of the whole forward. The module is never patched: the algorithm calls
    ``policy(module, x)``, and functional forwards (the virtual-model variants) run inside
    :meth:`functional` with :meth:`prepare` / :meth:`finish` around them. Evaluation calls the module
    itself: fp32, eager.

    ``--compile`` compiles this forward whole, or, for a network that marks the forward of its
    repeated block as a compiled region (:mod:`dil_fast.models.regions`: RRDBNet's RRDB), runs the
    forward with that block compiled once for all its copies and the rest eager, which cuts the cold
    compile of RRDB-23 by about the block count."""

    def __init__(self, opts: FastOptions, device, module: nn.Module | None = None):
        self.device_type = torch.device(device).type
        self.dtype = opts.autocast_dtype
        self.channels_last = opts.channels_last
        # autocast's weight-cast cache must not outlive a captured graph's replays
        self.cache = not opts.cuda_graphs
        self.shadow = None
        if opts.weight_shadow:
            if self.dtype is None or module is None:
                raise ValueError("--weight_shadow needs --precision bf16 and the task network")
            self.shadow = WeightShadow(module, self.dtype)
        self._regions: dict | None = None
        self._run = self._forward
        if opts.compile:
            if module is not None and has_regions(module):
                self._regions = {}  # region forward -> its compiled function, kept for the run
            else:
                self._run = torch.compile(self._forward)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        # under vmap (the batched virtual models of ss/ss-fo) x is a batched tensor whose layout the
        # convolution's batching rule decides; a memory-format query there is not implemented
        if self.channels_last and x.dim() == 4 and not _is_batched(x):
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def functional(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype, cache_enabled=self.cache)

    def finish(self, out: torch.Tensor) -> torch.Tensor:
        return out if self.dtype is None else out.float()  # the loss is computed in fp32

    def _forward(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        x = self.prepare(x)
        with self.functional():
            if self.shadow is not None and self.shadow.module is module:
                out = torch.func.functional_call(module, self.shadow.weights(), (x,), strict=False)
            else:
                out = module(x)
        return self.finish(out)

    def __call__(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self._regions is None:
            return self._run(module, x)
        with compiling_regions(self._regions):
            return self._run(module, x)


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
def describe_options(o: FastOptions, fallback: str | None = None) -> str:
    """The fast path in words (the ``Fast path:`` line); ``fallback``: why a capture that failed
    left the step eager."""
    parts = [f"precision {o.precision or 'torch defaults'}"]
    parts.append("channels_last" if o.channels_last else "NCHW")
    if o.channels_last_weights:
        parts.append("channels_last weights")
    if o.weight_shadow:
        parts.append("bf16 weight shadow")
    if o.compile:
        parts.append("torch.compile")
    if o.cuda_graphs and fallback is None:
        parts.append(f"CUDA graph (after {GRAPH_WARMUP} eager meta-iterations)")
    elif o.cuda_graphs or o.graphs_off:
        parts.append(f"eager launches (no CUDA graph: {fallback or o.graphs_off})")
    if o.deterministic:
        parts.append("deterministic")
    return ", ".join(parts)


class FastPath:
    """Applies :class:`FastOptions` to an algorithm: the global math settings, its training forward
    (:class:`FastForward`, installed with ``algo.use_forward_policy``; the modules are not touched)
    and, with ``cuda_graphs``, the captured step; ``step(batches, *, query=None, timer=None)`` is the
    meta-iteration to call.

    Use as a context manager (or call :meth:`close`) so the global math settings and the
    algorithm's plain forward are restored.
    """

    def __init__(self, algo, opts: FastOptions, device):
        self.algo, self.opts, self.device = algo, opts, torch.device(device)
        self._settings = math_settings(opts, self.device)
        self._settings.__enter__()
        self._open = True
        try:
            check_weight_layout(algo.task_model, opts)
            algo.use_forward_policy(FastForward(opts, self.device, algo.task_model))
            self.step = GraphedStep(algo) if opts.cuda_graphs else algo.step
        except BaseException:
            self.close()
            raise

    @property
    def fallback_reason(self) -> str | None:
        """Why a captured step runs eagerly (None when it is captured, or not asked to be)."""
        return getattr(self.step, "fallback_reason", None)

    def describe(self) -> str:
        return describe_options(self.opts, self.fallback_reason)

    def close(self) -> None:
        if self._open:
            self._open = False
            self.algo.use_forward_policy(None)
            self._settings.__exit__(None, None, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
