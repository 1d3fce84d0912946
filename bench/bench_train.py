"""Training throughput: dil_fast against the released trainer's computation, in one process on one device.

Cases, per shape (RRDB-23 nf=64 nb=23 gc=32, 64x64 patches; batch 8 x K=4 confounders, then batch 32
and K=8), each a full meta-iteration including its data:

  (a) reference  ``--reference_mode``: DataLoader workers + OpenCV PNG reads + numpy noise,
                 per-tensor torch.optim.Adam, state_dict copies, loss.item() per step, fp32 with
                 torch's default math settings (:mod:`dil_fast.train.reference_mode`);
  (b) default    the fast path as ``dil-fast train`` runs it on this device: PatchStore sampler ->
                 fused K-way degradation -> DIL_sf with the fused flat-buffer optimizer, bf16
                 autocast + channels_last + the meta-iteration replayed as one CUDA graph on CUDA
                 (the default ``--cuda_graphs``; fp32 NCHW, eager, on CPU); ``--no_graphs``: (b)
                 runs eagerly on CUDA too (``--no_cuda_graphs``);
  (c) contrast   with ``--compile``: (b) plus ``torch.compile`` (captured when (b) is); else, on CUDA
                 when (b) is captured: (b) with ``--no_cuda_graphs`` (eager launches), so c/b is what
                 the graph buys; not run otherwise;
  (d) floor      the bare model's K forward+backward passes on tensors already on the device, at
                 (b)'s precision and layout, launched eagerly: no data, degradation, optimizer or
                 meta-update (so a captured (b), free of launch costs, can run under it);
  (b+OPTION)     with ``--weight_options``: (b) with the weight options of ``dil-fast train``
                 (``cw``: ``--channels_last_weights``, ``ws``: ``--weight_shadow``, ``cw+ws``: both),
                 each gated and timed like (b), so the GPU check compares them in one run
                 (``bench/bench_host.py`` part e counts what each removes per inner step).

Printed per case: meta-iterations/s, images/s (K x batch per meta-iteration), peak device memory,
and a time split (data, degradation, fwd_bwd, optimizer, other) from a separate instrumented run
that synchronises at every phase boundary (so its total exceeds the pipelined time). Ratios:
``b/a`` and ``c/a`` are speedups (meta-iterations/s over the reference's); ``b/d`` and ``c/d`` are
times per meta-iteration over the floor's (1.0 = no overhead over the bare model); ``b/c`` (when (c) is
the eager contrast) the captured meta-iteration's time over the eager one. The cases run in
the order d, a, b, c, and each row is appended to ``<--out>/train.csv`` as soon as its case is
measured, with its ratios (a run cut short keeps every finished case).

Correctness gate (:func:`check_agreement`): before timing, the fast path ((b), and (c) when it runs)
and the reference computation train from the same weights on the same batches for a few
meta-iterations and must agree step by step: exactly (float64, tolerances 1e-9 / 1e-6), and in the
configuration as timed (losses within 1e-3, bf16 5%; weight-update cosine >= 0.99, bf16 0.9). If a check fails, the run
prints why, reports no speedup for that case (ratios 'refused') and exits with status 1.

    python bench/bench_train.py                 # full run (use a GPU)
    python bench/bench_train.py --compile       # (c) = (b) + torch.compile
    python bench/bench_train.py --no_graphs     # (b) eager on CUDA too (then (c) only with --compile)
    python bench/bench_train.py --profile       # + per-op profile of one meta-iteration of (b)/(c)
    python bench/bench_train.py --quick         # tiny model on CPU: the CI correctness gate
    python bench/bench_train.py --shapes 8x4    # one shape (the GPU check's step)
    python bench/bench_train.py --weight_options cw,ws,cw+ws   # + (b) with each weight option
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import gc
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import add_out_argument, default_out_dir, print_table, record  # noqa: E402
from dil_fast.meta import SerialFirstOrder  # noqa: E402
from dil_fast.meta.released import ReleasedSF  # noqa: E402
from dil_fast.models import RRDBNet  # noqa: E402
from dil_fast.timing import synchronize  # noqa: E402
from dil_fast.train import TrainConfig, Trainer  # noqa: E402
from dil_fast.train.fast import (  # noqa: E402
    GRAPH_WARMUP,
    FastForward,
    FastOptions,
    FastPath,
    math_settings,
    prepare_model,
    resolve_options,
)

MODELS = {"rrdb-23": {"nf": 64, "nb": 23, "gc": 32}, "rrdb-tiny": {"nf": 8, "nb": 1, "gc": 4}}
FULL_SHAPES = [(8, 4), (32, 4), (8, 8)]  # (batch per confounder, K)
QUICK_SHAPES = [(2, 4)]
SIGMAS = (5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0)
SPLIT = ("data", "degradation", "fwd_bwd", "optimizer", "other")
WEIGHT_OPTIONS = {
    "cw": {"channels_last_weights": True, "channels_last": True},
    "ws": {"weight_shadow": True},
    "cw+ws": {"channels_last_weights": True, "channels_last": True, "weight_shadow": True},
}
COLUMNS = [
    "shape",
    "model",
    "batch",
    "k",
    "patch",
    "case",
    "precision",
    "meta_it_s",
    "images_s",
    "ms_per_it",
    "peak_mib",
    *[f"split_{n}_ms" for n in SPLIT],
    "speedup_vs_a",
    "time_vs_floor",
    "correct",
]
PRINT_KEYS = [
    "case",
    "precision",
    "meta_it_s",
    "images_s",
    "ms_per_it",
    "peak_mib",
    *[f"split_{n}_ms" for n in SPLIT],
    "speedup_vs_a",
    "time_vs_floor",
    "correct",
]


# ---------------------------------------------------------------------- plumbing
class PhaseTimer:
    """``with timer("fwd_bwd"): ...`` adds the phase's wall time, synchronising at both ends."""

    def __init__(self, device):
        self.device = device
        self.t = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, name):
        synchronize(self.device)
        t0 = time.perf_counter()
        yield
        synchronize(self.device)
        self.t[name] += time.perf_counter() - t0


def _null_phase(_name):
    return contextlib.nullcontext()


def make_model(model_cfg: dict, device, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return RRDBNet(3, 3, **model_cfg).to(device)


def build_fast_algorithm(model: torch.nn.Module):
    """The algorithm of the fast cases ((b), (c)): DIL_sf with the default (fused) optimizer."""
    return SerialFirstOrder(model)


# ---------------------------------------------------------------------- the cases
class TrainerCase:
    """Cases (a)-(c): one meta-iteration of ``dil-fast train`` as the trainer runs it (its loader,
    degradation, confounder order and fast path), driven through :meth:`Trainer.meta_iterations`.
    ``step(phase)`` times the phases with ``phase`` (a :class:`PhaseTimer`) when given."""

    def __init__(self, base, cfg: TrainConfig):
        self.trainer = Trainer(cfg, model=copy.deepcopy(base)).open()
        self._phase = _null_phase
        self._steps = self.trainer.meta_iterations(timer=lambda name: self._phase(name))

    def step(self, phase=None):
        self._phase = phase or _null_phase
        return next(self._steps)

    def close(self):
        self._steps.close()
        self.trainer.close()


def case_config(
    kind: str, folder, store, device, batch, k, patch, opts: FastOptions | None, backend, num_workers: int, out: str
) -> TrainConfig:
    """The ``dil-fast train`` configuration of case ``kind`` ("reference" or "fast")."""
    common = dict(
        ckpt_save=out,
        device=str(device),
        batch_size=batch,
        patch_size=patch,
        seed=1,
        num_workers=num_workers,
        levels=SIGMAS[:k],
        progress=False,
    )
    if kind == "reference":
        return TrainConfig(trainset=folder, loader="reference", reference_mode=True, **common)
    return TrainConfig(
        trainset=store,
        loader="store",
        confounders="noise:" + ",".join(f"{s:g}" for s in SIGMAS[:k]),
        backend=backend,
        precision=opts.precision,
        channels_last=opts.channels_last,
        compile=opts.compile,
        cuda_graphs=opts.cuda_graphs,
        channels_last_weights=opts.channels_last_weights,
        weight_shadow=opts.weight_shadow,
        **common,
    )


class FloorCase:
    """Case (d): the bare model's K forward+backward passes at the fast path's precision and layout."""

    def __init__(self, base, device, batch, k, patch, opts: FastOptions):
        self.model = copy.deepcopy(base)
        floor_opts = FastOptions(precision=opts.precision, channels_last=opts.channels_last, compile=opts.compile)
        self.settings = math_settings(floor_opts, device)
        self.settings.__enter__()
        self.forward = FastForward(floor_opts, device, self.model)
        g = torch.Generator().manual_seed(3)
        self.pairs = [
            (
                torch.rand(batch, 3, patch, patch, generator=g).to(device),
                torch.rand(batch, 3, patch, patch, generator=g).to(device),
            )
            for _ in range(k)
        ]

    def step(self, phase=None):
        with (phase or _null_phase)("fwd_bwd"):
            for inp, target in self.pairs:
                self.model.zero_grad(set_to_none=True)
                torch.nn.functional.l1_loss(self.forward(self.model, inp), target).backward()

    def close(self):
        self.settings.__exit__(None, None, None)


# ---------------------------------------------------------------------- correctness gate
def _batches(n, k, batch, patch, device, seed=11):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        pairs = []
        for j in range(k):
            clean = torch.rand(batch, 3, patch, patch, generator=g)
            noisy = (clean + torch.randn(batch, 3, patch, patch, generator=g) * (SIGMAS[j] / 255)).clamp(0, 1)
            pairs.append((noisy.to(device), clean.to(device)))
        out.append(pairs)
    return out


def _trajectory(make_algo, base, batches, w0, device, opts: FastOptions | None):
    """Losses [n, K] and the flat weight update after training ``base`` on ``batches``."""
    model = copy.deepcopy(base)
    algo = make_algo(model if opts is None else prepare_model(model, opts))
    ctx = math_settings(FastOptions(precision="fp32"), device) if opts is None else FastPath(algo, opts, device)
    with ctx as fp:
        step = algo.step if opts is None else fp.step
        losses = torch.stack([step(b).detach().double().cpu().clone() for b in batches])
    delta = torch.cat([(p.detach() - w0[name]).flatten() for name, p in algo.meta_model.named_parameters()])
    return losses, delta.double()


def _errors(run, ref) -> tuple[float, float, float]:
    (lf, df), (lr_, dr) = run, ref
    loss_err = ((lf - lr_).abs() / lr_.abs().clamp_min(1e-30)).max().item()
    w_err = ((df - dr).norm() / dr.norm().clamp_min(1e-30)).item()
    cos = torch.nn.functional.cosine_similarity(df, dr, dim=0).item()
    return loss_err, w_err, cos


def check_agreement(base, device, k, batch, patch, opts: FastOptions, cache: dict | None = None) -> tuple[bool, str]:
    """The fast path (``opts``) against the reference computation, from the same weights on the same
    batches. Returns (ok, one-line summary).

    1. exact arithmetic: both in float64 (model and flat optimizer buffers), with ``opts``' layout,
       compilation and graphs, on a copy of the model cut to at most 2 blocks and batch 2 (the
       algorithm does not depend on the depth; float64 convolutions of RRDB-23 are slow): losses within
       1e-9 and the weight update within 1e-6 (relative L2). In float32 this comparison is
       ill-conditioned: where the inner Adam steps cancel, the meta gradient is a few ulps and the
       first meta-Adam steps turn its rounding into O(lr) updates.
    2. the configuration as timed (``opts``' precision) tracks the fp32 reference: losses within 1e-3
       (fp32/tf32 on CPU 1e-4; bf16 5e-2) and the weight update's cosine >= 0.99 (bf16 0.9).

    ``cache``: a dict kept across the cases of one shape, holding the reference trajectories (they do
    not depend on ``opts``).
    """
    cache = {} if cache is None else cache
    n = 4 + (GRAPH_WARMUP + 1 if opts.cuda_graphs else 0)
    cfg = {
        "nf": base.conv_first.out_channels,
        "gc": base.RRDB_trunk[0].RDB1.conv1.out_channels,
        "nb": min(len(base.RRDB_trunk), 2),
    }
    small = make_model(cfg, device, seed=1).double()
    b64 = [[(x.double(), y.double()) for x, y in pairs] for pairs in _batches(n, k, min(batch, 2), patch, device)]
    w64 = {name: p.detach().clone() for name, p in small.named_parameters()}
    exact = FastOptions(
        precision="fp32",
        channels_last=opts.channels_last,
        compile=opts.compile,
        cuda_graphs=opts.cuda_graphs,
        channels_last_weights=opts.channels_last_weights,
    )
    if ("f64", n) not in cache:
        cache["f64", n] = _trajectory(ReleasedSF, small, b64, w64, device, None)
    loss_err, w_err, _ = _errors(_trajectory(build_fast_algorithm, small, b64, w64, device, exact), cache["f64", n])
    notes = [f"float64: loss rel err {loss_err:.1e} (tol 1e-09), update rel L2 err {w_err:.1e} (tol 1e-06)"]
    ok = loss_err <= 1e-9 and w_err <= 1e-6

    batches = _batches(n, k, batch, patch, device)
    w0 = {name: p.detach().clone() for name, p in base.named_parameters()}
    if ("f32", n) not in cache:
        cache["f32", n] = _trajectory(ReleasedSF, base, batches, w0, device, None)
    loss_err, w_err, cos = _errors(_trajectory(build_fast_algorithm, base, batches, w0, device, opts), cache["f32", n])
    bf16 = opts.precision == "bf16"
    loss_tol = 5e-2 if bf16 else (1e-3 if device.type == "cuda" or opts.precision == "tf32" else 1e-4)
    cos_min = 0.9 if bf16 else 0.99
    notes.append(
        f"{opts.precision} as timed: loss rel err {loss_err:.1e} (tol {loss_tol:.0e}), update cosine "
        f"{cos:.4f} (min {cos_min})"
    )
    ok = ok and loss_err <= loss_tol and cos >= cos_min
    return bool(ok), "; ".join(notes)


# ---------------------------------------------------------------------- timing
def measure(case, device, warmup: int, iters: int, split_iters: int) -> dict:
    for _ in range(warmup):
        case.step()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        case.step()
    synchronize(device)
    elapsed = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    timer = PhaseTimer(device)
    t1 = time.perf_counter()
    for _ in range(split_iters):
        case.step(timer)
    synchronize(device)
    split_total = (time.perf_counter() - t1) / max(split_iters, 1)
    split = {name: timer.t.get(name, 0.0) / max(split_iters, 1) for name in SPLIT}
    split["other"] += max(split_total - sum(split.values()), 0.0)
    return {"t": elapsed / iters, "peak_mib": peak, "split": split, "split_total": split_total}


def _fmt(v, spec=".3g"):
    return "n/a" if v is None else format(v, spec)


def run_shape(args, device, model_name, model_cfg, batch, k, patch, folder, store, out) -> bool:
    """Gate, measure and record the cases of one shape; True when every correctness gate passed."""
    base = make_model(model_cfg, device)
    opts_b = resolve_options(
        device, precision=args.precision, cuda_graphs=False if args.no_graphs else None, backend=args.backend
    )
    cuda = device.type == "cuda"
    opts_c = None
    if args.compile or opts_b.cuda_graphs:  # (b) + compile, else (b) without its graph
        opts_c = resolve_options(
            device,
            precision=args.precision,
            compile=args.compile,
            cuda_graphs=opts_b.cuda_graphs and args.compile,
            backend=args.backend,
        )
    shape = f"{model_name} b{batch} k{k} {patch}x{patch}"
    print(f"\n== {shape} on {device} ==")
    extra = {f"b+{name}": dataclasses.replace(opts_b, **WEIGHT_OPTIONS[name]) for name in args.weight_options}
    gates, cache = {}, {}

    def gate(name, o):
        """Each fast case is checked just before it is timed (a run cut short keeps what it measured)."""
        ok, why = check_agreement(base, device, k, batch, patch, o, cache)
        gates[name] = ok
        print(f"correctness ({name} vs reference): {'ok' if ok else 'FAILED'}: {why}", flush=True)
        if not ok:
            print(f"CORRECTNESS GATE FAILED for case ({name}): refusing to report a speedup for it")

    def trainer_case(kind, opts):
        return TrainerCase(
            base,
            case_config(
                kind,
                folder,
                store,
                device,
                batch,
                k,
                patch,
                opts,
                args.backend,
                args.num_workers,
                os.path.join(out, kind),
            ),
        )

    # the floor and the reference first, so every row has its ratios when it is measured and recorded
    cases = [
        ("d", "floor", opts_b, lambda: FloorCase(base, device, batch, k, patch, opts_b)),
        ("a", "reference", None, lambda: trainer_case("reference", None)),
        (
            "b",
            "default" + (" (cuda_graphs)" if opts_b.cuda_graphs else ""),
            opts_b,
            lambda: trainer_case("fast", opts_b),
        ),
    ]
    for key, o in extra.items():
        label = "default + " + ", ".join(f"--{flag}" for flag in WEIGHT_OPTIONS[key[2:]] if flag != "channels_last")
        cases.append((key, label, o, lambda o=o: trainer_case("fast", o)))
    if opts_c is not None:  # last: with --compile its first compilation is the slowest step of the run
        label = "+".join(x for x, on in (("cuda_graphs", opts_c.cuda_graphs), ("compile", opts_c.compile)) if on)
        cases.append(("c", label or "eager (--no_cuda_graphs)", opts_c, lambda: trainer_case("fast", opts_c)))
    if args.cases:
        cases = [c for c in cases if c[0] in args.cases]
    results, rows = {}, []
    for key, label, opts, make in cases:
        if opts is not None and key != "d":
            gate(key, opts)
        case = make()
        try:
            r = results[key] = measure(case, device, args.warmup, args.iters, args.split_iters)
        finally:
            case.close()
            del case
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
        refused = key in gates and not gates[key]
        speedup = None if key in ("a", "d") or "a" not in results else results["a"]["t"] / r["t"]
        vs_floor = None if key in ("a", "d") or "d" not in results else r["t"] / results["d"]["t"]
        row = {
            "shape": shape,
            "model": model_name,
            "batch": batch,
            "k": k,
            "patch": patch,
            "case": f"({key}) {label}",
            "precision": "fp32 (torch defaults)" if opts is None else opts.precision,
            "meta_it_s": round(1 / r["t"], 4),
            "images_s": round(k * batch / r["t"], 2),
            "ms_per_it": round(r["t"] * 1e3, 3),
            "peak_mib": None if r["peak_mib"] is None else round(r["peak_mib"]),
            **{f"split_{n}_ms": round(r["split"][n] * 1e3, 3) for n in SPLIT},
            "speedup_vs_a": "refused" if refused else (None if speedup is None else round(speedup, 3)),
            "time_vs_floor": "refused" if refused else (None if vs_floor is None else round(vs_floor, 3)),
            "correct": gates.get(key, ""),
        }
        record("train", [row], device, out=args.out, columns=COLUMNS)
        rows.append(row)
        print_table([row], PRINT_KEYS)
        print(flush=True)
    print_table(rows, PRINT_KEYS)
    if "a" not in results or "d" not in results:
        print("ratios need cases (a) and (d)")
        return all(gates.values())
    ta, td = results["a"]["t"], results["d"]["t"]
    for key in ("b", "c", *extra):
        if key not in results and args.cases and key not in args.cases:
            continue
        if key not in results:
            print(
                f"{key}/a, {key}/d: n/a (case ({key}) not run: without --compile it is the eager contrast to a "
                "captured (b), and (b) is not captured here)"
            )
            continue
        if not gates.get(key, True):
            print(f"{key}/a, {key}/d: refused (correctness gate failed)")
            continue
        r = results[key]
        pipe = sum(r["split"][n] for n in ("data", "degradation", "optimizer"))
        print(
            f"{key}/a = {ta / r['t']:.2f}x speedup; {key}/d = {r['t'] / td:.3f} (time over the bare model); "
            f"data+degradation+optimizer = {pipe / max(r['split_total'], 1e-12):.1%} of the instrumented step"
        )
    if "c" in results and opts_b.cuda_graphs and not opts_c.cuda_graphs and all(gates.get(x, True) for x in "bc"):
        print(f"b/c = {results['b']['t'] / results['c']['t']:.3f} (the captured step's time over the eager one)")
    if args.profile and (model_name, batch, k) == args.profile_shape:
        _profile(args, device, base, batch, k, patch, folder, store, out, opts_b, opts_c)
    return all(gates.values())


def _profile(args, device, base, batch, k, patch, folder, store, out, opts_b, opts_c):
    from dil_fast.train.profile import (
        format_table,
        measure_ceilings,
        profile_meta_iteration,
    )

    out_root = args.out or default_out_dir()
    for key, o in (("b", opts_b), ("c", opts_c)):
        if o is None:
            continue
        case = TrainerCase(
            base,
            case_config(
                "fast",
                folder,
                store,
                device,
                batch,
                k,
                patch,
                o,
                args.backend,
                args.num_workers,
                os.path.join(out, f"profile_{key}"),
            ),
        )
        try:
            ceilings = measure_ceilings(device, o.precision)
            res = profile_meta_iteration(
                case.step,
                device,
                os.path.join(out_root, f"profile_train_{key}"),
                warmup=max(args.warmup, GRAPH_WARMUP + 1),
                ceilings=ceilings,
                precision=o.precision,
            )
            print(f"\n-- profile of case ({key}) --")
            print(format_table(res))
        finally:
            case.close()


# ---------------------------------------------------------------------- data
def make_dataset(root: str, n: int, size: int, seed: int = 0) -> tuple[str, str]:
    """A folder of ``n`` structured random PNG patches (``size`` x ``size``) and its packed store."""
    import cv2
    import numpy as np

    from dil_fast.data.pack import pack_folder

    folder = os.path.join(root, "png")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(n):
        base = np.stack([yy * rng.uniform(0.5, 1), xx * rng.uniform(0.5, 1), (yy + xx) / 2], -1)
        img = np.clip(base * 200 + rng.normal(0, 20, base.shape) + 20, 0, 255).astype(np.uint8)
        cv2.imwrite(os.path.join(folder, f"{i:06d}.png"), img)
    store = os.path.join(root, "store")
    pack_folder(folder, store, progress=False)
    return folder, store


# ---------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny model on CPU-sized shapes (the CI correctness gate)")
    p.add_argument("--device", default=None, help="default: cuda if available (cpu with --quick)")
    p.add_argument("--model", default=None, choices=sorted(MODELS), help="default rrdb-23 (rrdb-tiny with --quick)")
    p.add_argument("--shapes", default=None, help="batch x K list, e.g. 8x4,32x4,8x8 (default: that; 2x4 quick)")
    p.add_argument("--patch", type=int, default=None, help="patch size (64; 16 with --quick)")
    p.add_argument("--iters", type=int, default=None, help="timed meta-iterations per case (20; 3 quick)")
    p.add_argument(
        "--warmup", type=int, default=None, help=f"untimed first meta-iterations ({GRAPH_WARMUP + 2}; 2 quick)"
    )
    p.add_argument("--split_iters", type=int, default=None, help="instrumented meta-iterations (5; 1 quick)")
    p.add_argument("--num_workers", type=int, default=None, help="reference DataLoader workers (8; 0 quick)")
    p.add_argument("--precision", default=None, choices=("fp32", "tf32", "bf16"), help="fast path precision")
    p.add_argument("--compile", action="store_true", help="case (c) is (b) plus torch.compile")
    p.add_argument(
        "--no_graphs",
        action="store_true",
        help="case (b) without its CUDA graph (--no_cuda_graphs); (c) then runs only with --compile",
    )
    p.add_argument("--backend", default=None, choices=("torch", "triton", "cuda"), help="sampling/degradation kernels")
    p.add_argument("--profile", action="store_true", help="profile one meta-iteration of (b)/(c) at the first shape")
    p.add_argument("--cases", default="", help="comma-separated subset of the cases to run (d,a,b,c,b+cw,...)")
    p.add_argument(
        "--weight_options",
        default="",
        help=f"comma-separated extra cases: (b) with weight options, of {', '.join(WEIGHT_OPTIONS)} "
        "(cw: --channels_last_weights, ws: --weight_shadow)",
    )
    add_out_argument(p)
    args = p.parse_args(argv)
    q = args.quick
    args.device = torch.device(args.device or ("cpu" if q or not torch.cuda.is_available() else "cuda"))
    args.model = args.model or ("rrdb-tiny" if q else "rrdb-23")
    if args.shapes:
        try:
            args.shape_list = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes.split(",")]
        except ValueError:
            p.error(f"--shapes: expected e.g. 8x4,32x4, got {args.shapes!r}")
    else:
        args.shape_list = QUICK_SHAPES if q else FULL_SHAPES
    if any(k > len(SIGMAS) or k < 1 or b < 1 for b, k in args.shape_list):
        p.error(f"--shapes: K must be 1..{len(SIGMAS)} and batch >= 1")
    args.patch = args.patch or (16 if q else 64)
    args.iters = args.iters or (3 if q else 20)
    args.warmup = args.warmup if args.warmup is not None else (2 if q else GRAPH_WARMUP + 2)
    args.split_iters = args.split_iters or (1 if q else 5)
    args.num_workers = args.num_workers if args.num_workers is not None else (0 if q else 8)
    args.weight_options = [w for w in args.weight_options.split(",") if w]
    args.cases = [c for c in args.cases.split(",") if c]
    unknown = [w for w in args.weight_options if w not in WEIGHT_OPTIONS]
    if unknown:
        p.error(f"--weight_options: unknown {', '.join(unknown)} (choose from {', '.join(WEIGHT_OPTIONS)})")
    b0, k0 = args.shape_list[0]
    args.profile_shape = (args.model, b0, k0)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = args.device
    model_cfg = MODELS[args.model]
    per_case = args.warmup + args.iters + args.split_iters
    max_batch = max(b for b, _ in args.shape_list)
    tmp = tempfile.mkdtemp(prefix="dil_fast_bench_train_")
    all_ok = True
    try:
        # enough patches that no case starts a second epoch (the reference restarts its workers then)
        size = max(args.patch + 8, 24) if args.quick else 256
        folder, store_path = make_dataset(tmp, n=max_batch * (per_case + 1), size=size)
        for batch, k in args.shape_list:
            all_ok &= run_shape(
                args, device, args.model, model_cfg, batch, k, args.patch, folder, store_path, os.path.join(tmp, "runs")
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nrows appended to {os.path.join(args.out or default_out_dir(), 'train.csv')}")
    if not all_ok:
        print("correctness gate FAILED: no speedup reported for the failing case(s)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
