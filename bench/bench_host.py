"""Host overhead: microseconds of host time per call, on tensors so small that kernel time is negligible.

Parts (on the CPU, and on CUDA when a GPU is there; rows to ``<--out>/host.csv`` as each is measured):

(a) one op call of each kind, on 16-element buffers / a 1x1x2x2 image: ``aten.add_`` (the floor of
    one dispatcher op); the Triton-backed op ``dil_fast.ops.noise.gaussian_noise`` (Triton on CUDA,
    the torch reference on the CPU), its implementation called directly, and the op with its
    implementation stubbed out (``backends.implementation`` patched to return the unwritten output
    while it is timed): the op layer alone (validation, backend choice, ``torch.library.custom_op``);
    the native optimizer op ``torch.ops.dil_fast.adam_step_``; the public
    ``dil_fast.ops.optim.adam_step_``; the prevalidated native launch the flat-buffer optimizers make
    (``ops.optim.NativeLaunch``). Target: <= 30 us per op call (noise: its op layer; adam: each of
    the two calls).
(b) ``FusedAdam.step()`` over 698 parameter tensors (RRDB-23's tensor count) of 4 elements each,
    after a backward has filled the gradients, beside ``torch.optim.Adam`` (fused, foreach, for-loop)
    on the same tensors; then the same over the 698 tensors of RRDBNet(nf=4, nb=23, gc=2) (2 to 432
    elements, 65,931 in all: on a CPU the Adam arithmetic is no longer negligible there). Target:
    <= 50 us per step (the 4-element case).
(c) one DIL_sf meta-iteration (:class:`dil_fast.meta.SerialFirstOrder`, the fused optimizer and, for
    contrast, ``fused=False``) on that model with batch-1 pairs of 4x4 patches, K = 1 and 4
    (``--quick``: 1), minus the same model's bare K forward+backward passes (timed side by side):
    the framework's host time per meta-iteration; beside it, the step's own phases (optimizer,
    other) timed inside it through its ``timer`` hook.
(d) the aten ops one DIL_sf meta-iteration runs for RRDB-23 (nf 64, nb 23, gc 32; ``--quick``: nf 4,
    gc 2, the same graph) on the CPU, batch 1x3x8x8 per confounder, K = 4, counted with a
    ``TorchDispatchMode``: total, per phase of the step (fwd_bwd, optimizer, other) and the top 10 by
    name, for the fused default and ``fused=False`` (per-tensor ``torch.optim.Adam``). Native launches
    of the flat buffers bypass the dispatcher; they are counted apart by wrapping
    ``NativeLaunch.__call__`` during the count.
(e) what one inner step of the fast path launches, per weight option of ``dil-fast train``
    (bf16 autocast + channels_last activations; each option alone and both:
    ``--channels_last_weights`` (a), ``--weight_shadow`` (b)), on the CPU for RRDB-23's graph
    (``--quick``: nf 4, gc 2; 698 weight tensors either way), batch 1x3x8x8. Counted as the
    difference between DIL_sf meta-iterations of K = 2 and K = 1 (so exactly one inner step, no
    meta step): dispatcher ops (a ``TorchDispatchMode``; also without views and allocations, which
    launch nothing), weight casts fp32 -> bf16 (a ``_to_copy``
    reading the flat weight buffer: per tensor, or one over the whole buffer), bf16 -> fp32
    gradient casts (autograd's ``ToCopyBackward0`` nodes), gradient accumulations
    (``AccumulateGrad`` nodes, one add each into the flat gradient) and weight layout copies made
    inside the convolutions, below the dispatcher (``aten::clone`` of a weight-shaped tensor under
    a convolution op, from the profiler: the CPU's oneDNN path copies a weight to NHWC for
    channels-last input as cuDNN does). ``--channels_last_weights`` leaves (b)'s counts alone and
    (a)'s dispatcher ops alone; the counts are the CPU's: cuDNN's own copies and launches wait for
    the GPU (bench_train (e)-(g) time them).

Timing: the wall clock over back-to-back calls (on CUDA the calls only enqueue and a tiny kernel runs
faster than the host issues the next, so this is host time; CUDA is synchronised at both ends of a
sample), a sample lasting at least ``--min-sample-ms``, the per-call median over ``--repeat``
samples (``us_per_call``) beside the median of single calls (``us_single``).

    python bench/bench_host.py            # CPU, and CUDA when present
    python bench/bench_host.py --quick    # fewer samples and cases, a small model for (d): seconds on a CPU
    python bench/bench_host.py --devices cuda --parts a,b,c --repeat 7 --warmup 3   # the GPU check's step
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import statistics
import sys
import time
from unittest import mock

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import add_out_argument, print_table, record, time_fn, time_side_by_side  # noqa: E402
from dil_fast import backends  # noqa: E402
from dil_fast.meta import SerialFirstOrder  # noqa: E402
from dil_fast.models import RRDBNet  # noqa: E402
from dil_fast.ops import optim as optim_ops  # noqa: E402
from dil_fast.ops._common import seed_u64  # noqa: E402
from dil_fast.ops.noise import gaussian_noise  # noqa: E402
from dil_fast.optim import FusedAdam  # noqa: E402

COLUMNS = [
    "part",
    "case",
    "on",
    "tensors",
    "shape",
    "calls",
    "us_per_call",
    "us_single",
    "target_us",
    "within_target",
    "op",
    "count",
    "note",
]
PRINT_KEYS = [
    "part",
    "case",
    "on",
    "tensors",
    "shape",
    "calls",
    "us_per_call",
    "us_single",
    "target_us",
    "within_target",
    "note",
]
TINY_RRDB = {"nf": 4, "nb": 23, "gc": 2}  # 698 parameter tensors, like RRDB-23
RRDB23 = {"nf": 64, "nb": 23, "gc": 32}
OP_TARGET_US, STEP_TARGET_US = 30.0, 50.0


def row(part, case, device, *, timing=None, target=None, **fields) -> dict:
    r = dict.fromkeys(COLUMNS, "")
    r.update(part=part, case=case, on=torch.device(device).type, **fields)
    if timing is not None:
        us = timing * 1e6
        r.update(calls=timing.calls, us_per_call=round(us, 2), us_single=round(timing.single * 1e6, 2))
        if target is not None:
            r.update(target_us=target, within_target=us <= target)
    return r


class Emit:
    """Records rows as soon as they are measured (on ``device``'s conditions) and prints them."""

    def __init__(self, args, device):
        self.args, self.device, self.path = args, device, None

    def __call__(self, rows: list[dict], keys: list[str] = PRINT_KEYS) -> None:
        if not self.args.no_record:
            self.path = record("host", rows, self.device, out=self.args.out, columns=COLUMNS)
        print_table(rows, keys)
        print(flush=True)


def host_time(fn, device, args):
    return time_fn(
        fn, device=device, warmup=args.warmup, repeat=args.repeat, min_sample_s=args.min_sample_ms / 1e3, clock="wall"
    )


def host_side_by_side(providers: dict, device, args) -> dict:
    return time_side_by_side(
        providers, device, warmup=args.warmup, repeat=args.repeat, min_sample_s=args.min_sample_ms / 1e3, clock="wall"
    )


# ------------------------------------------------------------------------------------- (a) op calls
def part_op_calls(device, args, emit) -> None:
    gen = torch.Generator(device=device).manual_seed(0)
    p, g = torch.randn(16, device=device, generator=gen), torch.randn(16, device=device, generator=gen)
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    step, lr = optim_ops.new_step(device), optim_ops.as_lr(1e-3, device)
    shape16 = "[16] float32"
    emit(
        [
            row(
                "a",
                "aten add_ (one dispatcher op: the floor)",
                device,
                tensors=2,
                shape=shape16,
                timing=host_time(lambda: p.add_(g), device, args),
            )
        ]
    )

    x = torch.rand(1, 1, 2, 2, device=device, generator=gen)
    sigma = torch.full((1, 1), 15 / 255, device=device)
    noise_backend = "triton" if device.type == "cuda" else "torch"
    impl = backends.implementation("noise", noise_backend)
    noise = host_side_by_side(
        {  # a provider whose call fails is reported and left out
            f"gaussian_noise [{noise_backend}]": lambda: gaussian_noise(
                x, sigma, seed=1, step=0, backend=noise_backend
            ),
            f"noise implementation called directly [{noise_backend}]": lambda: impl(
                x, sigma, None, seed_u64(1), 0, 0, 0, 0, True, False, torch.float32
            ),
        },
        device,
        args,
    )
    stub_calls = [0]

    def empty_noise(x, sigma, *_):  # the op's output, unwritten: what is left is the op layer
        stub_calls[0] += 1
        return x.new_empty((sigma.shape[0],) + tuple(x.shape[-4:]))

    with mock.patch.object(backends, "implementation", lambda op, backend: empty_noise):
        layer = host_time(lambda: gaussian_noise(x, sigma, seed=1, step=0, backend=noise_backend), device, args)
    image = "[1, 1, 2, 2]"
    layer_row = row(
        "a",
        "gaussian_noise op layer (implementation stubbed)",
        device,
        tensors=1,
        shape=image,
        timing=layer,
        target=OP_TARGET_US if stub_calls[0] else None,
        note="validation + backend choice + torch.library.custom_op dispatch"
        if stub_calls[0]
        else "the stub was never called: this is the full op, not its layer",
    )
    emit([row("a", name, device, tensors=1, shape=image, timing=t) for name, t in noise.items()] + [layer_row])

    native_ok, why = backends.native_can_run(device)
    if not native_ok:
        emit([row("a", "native optimizer ops", device, note=f"skipped: {why}")])
        return
    hyper = (0.9, 0.999, 1e-8, 0.0, False)
    launch = optim_ops.NativeLaunch("adam", optim_ops.adam_args(p, g, m, v, step, lr, *hyper), device)
    adam = host_side_by_side(
        {
            "torch.ops.dil_fast.adam_step_": lambda: torch.ops.dil_fast.adam_step_(p, g, m, v, step, lr, *hyper),
            "dil_fast.ops.optim.adam_step_ (public)": lambda: optim_ops.adam_step_(p, g, m, v, step, lr),
            "ops.optim.adam_args (validation + native struct)": lambda: optim_ops.adam_args(
                p, g, m, v, step, lr, *hyper
            ),
            "NativeLaunch (prevalidated adam)": launch,
        },
        device,
        args,
    )
    notes = {
        "NativeLaunch (prevalidated adam)": "what FusedAdam.step makes per bucket",
        "ops.optim.adam_args (validation + native struct)": "part of each dispatcher call, no launch",
    }
    emit(
        [
            row(
                "a",
                name,
                device,
                tensors=6,
                shape=shape16,
                timing=t,
                note=notes.get(name, ""),
                target=None if name in notes else OP_TARGET_US,
            )
            for name, t in adam.items()
        ]
    )


# ------------------------------------------------------------------------------------ (b) optimizer
def tiny_model(device, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return RRDBNet(3, 3, **TINY_RRDB).to(device)


class TensorCountModel(torch.nn.Module):
    """``n`` parameters of ``size`` elements each; ``forward(x) = sum_i <p_i, x>`` ([size] -> []),
    so one backward gives every parameter a gradient (x)."""

    def __init__(self, n: int = 698, size: int = 4):
        super().__init__()
        self.weights = torch.nn.ParameterList(torch.nn.Parameter(torch.randn(size)) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([(w * x).sum() for w in self.weights]).sum()


def optimizer_cases(device, quick: bool):
    """(label, parameters) of part (b), each after one backward has filled the gradients; ``quick``:
    the 4-element case only."""
    torch.manual_seed(0)
    few = TensorCountModel().to(device)
    few(torch.rand(4, device=device)).backward()
    cases = [("698 x [4] (2792 elements)", list(few.parameters()))]
    if not quick:
        rrdb = tiny_model(device)
        F.l1_loss(rrdb(torch.rand(1, 3, 4, 4, device=device)), torch.rand(1, 3, 4, 4, device=device)).backward()
        rrdb_params = list(rrdb.parameters())
        cases.append((f"RRDBNet nf=4 nb=23 gc=2 ({sum(q.numel() for q in rrdb_params)} elements)", rrdb_params))
    return cases


def part_optimizer_step(device, args, emit) -> None:
    """Each optimizer timed on its own (back-to-back steps, warm): the host cost of a step."""
    for i, (shape, params) in enumerate(optimizer_cases(device, args.quick)):
        fused = FusedAdam(params, lr=1e-4)
        emit(
            [
                row(
                    "b",
                    "FusedAdam.step()",
                    device,
                    tensors=len(params),
                    shape=shape,
                    timing=host_time(fused.step, device, args),
                    target=STEP_TARGET_US if i == 0 else None,
                    note=f"backend {fused_backend(device)}",
                )
            ]
        )
        for kind, kw in (("fused", {"fused": True}), ("foreach", {"foreach": True}), ("for-loop", {"foreach": False})):
            try:
                opt = torch.optim.Adam(params, lr=1e-4, **kw)
                t = host_time(opt.step, device, args)
            except (RuntimeError, ValueError) as exc:  # e.g. fused Adam unsupported on this device
                emit([row("b", f"torch.optim.Adam {kind}", device, tensors=len(params), note=f"skipped: {exc}")])
                continue
            emit([row("b", f"torch.optim.Adam {kind}", device, tensors=len(params), shape=shape, timing=t)])


def fused_backend(device) -> str:
    return backends.backend_for("adam_step", device, torch.float32, None)


# ------------------------------------------------------------------------------- (c) meta-iteration
def tiny_batches(k: int, device, size: int = 4, batch: int = 1, seed: int = 1) -> list:
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.rand(batch, 3, size, size, generator=g).to(device),
            torch.rand(batch, 3, size, size, generator=g).to(device),
        )
        for _ in range(k)
    ]


def bare_fwd_bwd(model, batches) -> None:
    """The model's own work of a meta-iteration: K forward+backward passes and nothing else (the
    gradients accumulate, as into the flat buffers of the fused path; nothing zeroes them)."""
    for inp, target in batches:
        F.l1_loss(model(inp), target).backward()


class PhaseClock:
    """``timer`` of :meth:`SerialFirstOrder.step`: host seconds per phase, no synchronisation."""

    def __init__(self):
        self.seconds = collections.defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, name):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t0


def phase_split(algo, batches, device, iterations: int) -> dict:
    """Median host seconds of each phase of ``algo.step`` over ``iterations`` meta-iterations."""
    per_phase = collections.defaultdict(list)
    for _ in range(iterations):
        clock = PhaseClock()
        algo.step(batches, timer=clock)
        for name, t in clock.seconds.items():
            per_phase[name].append(t)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {name: statistics.median(ts) for name, ts in per_phase.items()}


def part_meta_iteration(device, args, emit) -> None:
    """Meta-iterations and the bare passes timed side by side (the difference is the framework's
    host time, to the resolution of two large numbers), and the framework's phases (optimizer,
    other) timed directly inside the step."""
    bare_label = "bare forward+backward (K passes)"
    for k in (1,) if args.quick else (1, 4):
        batches = tiny_batches(k, device)
        bare_model = tiny_model(device)
        providers = {bare_label: lambda: bare_fwd_bwd(bare_model, batches)}
        algos = {}
        for fused in (True, False):
            if fused and not optim_ops.fused_optimizer(device):
                print("  SerialFirstOrder fused=True: skipped (no native optimizer ops here)", file=sys.stderr)
                continue
            name = f"SerialFirstOrder fused={fused}"
            algos[name] = SerialFirstOrder(tiny_model(device), fused=fused)
            providers[name] = lambda a=algos[name]: a.step(batches)
        timings = host_side_by_side(providers, device, args)
        shape = f"K={k} x [1, 3, 4, 4]"
        bare = timings[bare_label]
        tensors = len(list(bare_model.parameters()))
        rows = [row("c", bare_label, device, tensors=tensors, shape=shape, timing=bare, note="grads accumulate")]
        for name, algo in algos.items():
            t = timings[name]
            split = phase_split(algo, batches, device, args.repeat)
            rows += [
                row("c", f"{name} meta-iteration", device, tensors=tensors, shape=shape, timing=t),
                row(
                    "c",
                    f"{name} minus bare",
                    device,
                    tensors=tensors,
                    shape=shape,
                    us_per_call=round((t - bare) * 1e6, 2),
                    note="the framework's host time, as a difference",
                ),
                row(
                    "c",
                    f"{name} phases optimizer + other",
                    device,
                    tensors=tensors,
                    shape=shape,
                    us_per_call=round((split.get("optimizer", 0.0) + split.get("other", 0.0)) * 1e6, 2),
                    note="timed inside the step: "
                    + ", ".join(f"{ph} {v * 1e6:.1f} us" for ph, v in sorted(split.items())),
                ),
            ]
        emit(rows)


# ------------------------------------------------------------------------------------- (d) op count
class OpCounter(TorchDispatchMode):
    """Counts the dispatcher ops that run under it, by (phase, op name)."""

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()
        self.phase = "other"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[(self.phase, str(func))] += 1
        return func(*args, **(kwargs or {}))


def count_ops(algo, batches) -> tuple[collections.Counter, collections.Counter, int]:
    """(ops by name, ops by phase, native launches) of one steady-state meta-iteration of ``algo``."""
    algo.step(batches)  # the first iteration syncs the task model and builds the launches
    counter = OpCounter()
    launches = [0]
    real_call = optim_ops.NativeLaunch.__call__

    def counting_call(self, *args, **kwargs):
        launches[0] += 1
        return real_call(self, *args, **kwargs)

    @contextlib.contextmanager
    def phase(name):
        outer, counter.phase = counter.phase, name
        try:
            yield
        finally:
            counter.phase = outer

    with mock.patch.object(optim_ops.NativeLaunch, "__call__", counting_call), counter:
        algo.step(batches, timer=phase)
    by_name, by_phase = collections.Counter(), collections.Counter()
    for (ph, name), n in counter.counts.items():
        by_name[name] += n
        by_phase[ph] += n
    return by_name, by_phase, launches[0]


def part_op_count(args, emit) -> None:
    cfg, label = (
        (TINY_RRDB, "RRDBNet nf=4 nb=23 gc=2 (RRDB-23's graph)")
        if args.quick
        else (RRDB23, "RRDB-23 nf=64 nb=23 gc=32")
    )
    device = torch.device("cpu")
    batches = tiny_batches(4, device, size=8)
    for fused in (None, False):
        torch.manual_seed(0)
        algo = SerialFirstOrder(RRDBNet(3, 3, **cfg), fused=fused)
        mode = f"fused={algo.fused}" + (" (default)" if fused is None else " (per-tensor torch.optim.Adam)")
        by_name, by_phase, launches = count_ops(algo, batches)
        case = f"DIL_sf {mode}"
        common = {"tensors": len(list(algo.meta_model.parameters())), "shape": f"{label}, K=4 x [1, 3, 8, 8]"}
        rows = [row("d", case, device, op="total aten ops", count=sum(by_name.values()), **common)]
        rows += [row("d", case, device, op=f"phase {ph}", count=n, **common) for ph, n in sorted(by_phase.items())]
        rows.append(row("d", case, device, op="native launches (outside the dispatcher)", count=launches, **common))
        rows += [row("d", case, device, op=name, count=n, **common) for name, n in by_name.most_common(10)]
        print(f"(d) {case}, {common['shape']}:")
        emit(rows, ["op", "count"])


# ---------------------------------------------------------------- (e) weight options of the fast path
WEIGHT_OPTIONS = {
    "bf16 + channels_last (default)": {},
    "(a) --channels_last_weights": {"channels_last_weights": True},
    "(b) --weight_shadow": {"weight_shadow": True},
    "(a) + (b)": {"channels_last_weights": True, "weight_shadow": True},
}
STEP_COUNTS = (
    "dispatcher ops",
    "dispatcher ops, views excluded",
    "weight casts (per tensor)",
    "weight casts (whole buffer)",
    "gradient casts",
    "gradient accumulations",
    "weight layout copies in convolutions",
)


# ops that launch no kernel beyond views: metadata only
_METADATA_OPS = {
    torch.ops.aten.detach.default,
    torch.ops.aten.set_.source_Storage_storage_offset,
    torch.ops.aten.empty.memory_format,
    torch.ops.aten.empty_strided.default,
    torch.ops.aten.empty_like.default,
    torch.ops.aten.new_empty.default,
    torch.ops.aten.new_empty_strided.default,
    torch.ops.aten.lift_fresh.default,
}


class StepCounter(TorchDispatchMode):
    """Dispatcher ops and the fp32 -> bf16 casts that read the flat weight buffer ``[lo, hi)``."""

    def __init__(self, lo: int, hi: int, whole: int):
        super().__init__()
        self.lo, self.hi, self.whole = lo, hi, whole
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts["dispatcher ops"] += 1
        if not func.is_view and func not in _METADATA_OPS:
            self.counts["dispatcher ops, views excluded"] += 1
        src = args[0] if args else None
        if (
            func is torch.ops.aten._to_copy.default
            and isinstance(src, torch.Tensor)
            and src.dtype == torch.float32
            and (kwargs or {}).get("dtype") == torch.bfloat16
            and self.lo <= src.data_ptr() < self.hi
        ):
            self.counts[
                "weight casts (whole buffer)" if src.numel() == self.whole else "weight casts (per tensor)"
            ] += 1
        return func(*args, **(kwargs or {}))


def _under_convolution(evt) -> bool:
    parent = evt.cpu_parent
    while parent is not None:
        if "convolution" in parent.name:
            return True
        parent = parent.cpu_parent
    return False


def count_fast_step(cfg: dict, k: int, options: dict) -> collections.Counter:
    """The counts of :data:`STEP_COUNTS` over one steady-state DIL_sf meta-iteration of K = ``k``
    (batch 1x3x8x8) through the fast path with bf16 autocast, channels_last and ``options``."""
    from torch.profiler import ProfilerActivity, profile

    from dil_fast.train.fast import FastOptions, FastPath, prepare_model

    opts = FastOptions(precision="bf16", channels_last=True, **options)
    torch.manual_seed(0)
    algo = SerialFirstOrder(prepare_model(RRDBNet(3, 3, **cfg), opts))
    batches = tiny_batches(k, torch.device("cpu"), size=8)
    weight_shapes = {tuple(p.shape) for p in algo.task_model.parameters() if p.dim() == 4}
    flat = algo.task_optimizer.flat_params().data
    with FastPath(algo, opts, "cpu") as fp:
        fp.step(batches)  # the first iteration syncs the task model and builds the launches
        counter = StepCounter(flat.data_ptr(), flat.data_ptr() + flat.numel() * flat.element_size(), flat.numel())
        with counter:
            fp.step(batches)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            fp.step(batches)
    counts = counter.counts
    for evt in prof.events():
        if evt.name == "ToCopyBackward0":
            counts["gradient casts"] += 1
        elif evt.name == "torch::autograd::AccumulateGrad":
            counts["gradient accumulations"] += 1
        elif (
            evt.name == "aten::clone"
            and evt.input_shapes
            and tuple(evt.input_shapes[0]) in weight_shapes
            and _under_convolution(evt)
        ):
            counts["weight layout copies in convolutions"] += 1
    return counts


def part_weight_options(args, emit) -> None:
    cfg, label = (
        (TINY_RRDB, "RRDBNet nf=4 nb=23 gc=2 (RRDB-23's graph)")
        if args.quick
        else (RRDB23, "RRDB-23 nf=64 nb=23 gc=32")
    )
    device = torch.device("cpu")
    rows = []
    for case, options in WEIGHT_OPTIONS.items():
        one, two = count_fast_step(cfg, 1, options), count_fast_step(cfg, 2, options)
        common = {"tensors": 698 if cfg["nb"] == 23 else "", "shape": f"{label}, 1x3x8x8, one inner step (K=2 - K=1)"}
        for name in STEP_COUNTS:
            rows.append(row("e", case, device, op=name, count=two[name] - one[name], **common))
    print(f"(e) one inner step of the fast path per weight option, {label}:")
    emit(rows, ["case", "op", "count"])


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="fewer samples, (b) and (c) at their first case only, the small model for (d)",
    )
    ap.add_argument("--devices", default=None, help="comma-separated: cpu, cuda (default: cpu and cuda if present)")
    ap.add_argument("--parts", default="a,b,c,d,e", help="comma-separated parts to run, of a,b,c,d,e")
    ap.add_argument("--repeat", type=int, default=None, help="samples per timing, median reported (25; 5 quick)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed calls first (20; 2 quick)")
    ap.add_argument("--min-sample-ms", type=float, default=None, help="least time one sample lasts (2; 1 quick)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (torch and the native twins)")
    ap.add_argument("--no-record", action="store_true")
    add_out_argument(ap)
    args = ap.parse_args(argv)
    args.parts = {p for p in args.parts.split(",") if p}
    if not args.parts <= set("abcde"):
        ap.error(f"--parts: expected a comma-separated subset of a,b,c,d,e, got {','.join(sorted(args.parts))}")
    default_devices = "cpu,cuda" if torch.cuda.is_available() else "cpu"
    args.devices = [torch.device(d) for d in (args.devices or default_devices).split(",") if d]
    if any(d.type == "cuda" for d in args.devices) and not torch.cuda.is_available():
        ap.error("--devices: cuda was asked for but no CUDA device is available")
    args.repeat = args.repeat or (5 if args.quick else 25)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.quick else 20)
    args.min_sample_ms = args.min_sample_ms or (1.0 if args.quick else 2.0)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    emit = Emit(args, cpu)
    print(
        f"host overhead; CPU threads {torch.get_num_threads()}; devices {', '.join(map(str, args.devices))}; "
        f"native core: {backends.native_status().reason}",
        flush=True,
    )
    for device in args.devices:
        emit.device = device
        if "a" in args.parts:
            part_op_calls(device, args, emit)
        if "b" in args.parts:
            part_optimizer_step(device, args, emit)
        if "c" in args.parts:
            part_meta_iteration(device, args, emit)
    if "d" in args.parts:
        emit.device = cpu
        part_op_count(args, emit)
    if "e" in args.parts:
        emit.device = cpu
        part_weight_options(args, emit)
    if emit.path:
        print(f"appended to {emit.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
