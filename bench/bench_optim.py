"""Optimizer traffic: flat / K-stacked fused Adam and the DIL_sf meta-iteration's optimizer work.

1. Adam over P parameters (K = 1 or K stacked sets): dil_fast (one launch over [K, P]) against
   torch.optim.Adam for-loop, foreach and fused over the same parameters split into tensors the
   way a network holds them. Reports the per-call time, ``ratio_vs_torch_fused`` (time / torch
   fused time: below 1 is faster), achieved GB/s (28 bytes per parameter: read p, g, m, v, write
   p, m, v) and its fraction of two measured bandwidths: the device copy (read + write counted)
   and an in-place add ``a += b`` over the run's largest P (12 bytes per element, the same
   read-modify-write pattern as Adam; on a CPU the copy also pays a hidden read of its output).
2. The optimizer work of one DIL_sf meta-iteration on RRDB-23 (698 tensors, 16.6 M parameters):
   4 task-Adam steps (betas (0, 0.999)), meta gradient (meta - task), meta Adam step, task <- meta,
   fused (dil_fast flat buffers) against the reference trainer's way (per-tensor Adam, meta grads
   set tensor by tensor, ``load_state_dict`` of the task model and of the task optimizer, whose
   state is saved with a deep copy at the end of each meta-iteration); ``ratio_vs_reference`` is
   dil_fast time / reference time.

Providers of one case are timed side by side: each round runs every provider once, so the
machine's condition (other jobs, clocks) hits them alike, and the median over rounds is reported.
A sample is enough back-to-back calls to last ``--min-sample-ms`` (a small op is never timed as one
call between events) and counts as the per-call mean of those calls; ``ms_single`` beside it is the
median of single calls timed alone. Rows are appended to ``<--out>/optim.csv`` as soon as their case
is measured, with the 1-minute load average of the machine.

No forward/backward runs: gradients are fixed random buffers (never zeros). Every provider is
checked against torch.optim.Adam first; a failed check is reported and no speedup is given.

    python bench/bench_optim.py            # GPU sizes: P = 1 M, 16.6 M, 100 M; K = 1, 4
    python bench/bench_optim.py --quick    # small sizes, fine on a CPU
    python bench/bench_optim.py --device cpu --sizes 16624131 --ks 1 --threads 1
    python bench/bench_optim.py --sizes 16624131 --ks 1 4 --repeat 20   # the GPU check's step
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import add_out_argument, copy_bandwidth, print_table, record, time_side_by_side  # noqa: E402
from dil_fast import backends  # noqa: E402
from dil_fast.ops import optim as F  # noqa: E402
from dil_fast.optim import FlatParams  # noqa: E402

BYTES_PER_PARAM = 28  # fp32 Adam: read p, g, m, v (16) + write p, m, v (12)
RRDB23 = 16_624_131
ROW_KEYS = [
    "bench",
    "provider",
    "P",
    "K",
    "tensors",
    "dtype",
    "calls",
    "ms",
    "ms_single",
    "GBps",
    "frac_copy_bw",
    "frac_rmw_bw",
    "ratio_vs_torch_fused",
    "ratio_vs_reference",
    "speedup_vs_for_loop",
    "correct",
    "copy_GBps",
    "rmw_GBps",
]
PRINT_KEYS = [
    "bench",
    "provider",
    "P",
    "K",
    "tensors",
    "calls",
    "ms",
    "ms_single",
    "GBps",
    "frac_copy_bw",
    "frac_rmw_bw",
    "ratio_vs_torch_fused",
    "ratio_vs_reference",
    "speedup_vs_for_loop",
    "correct",
]


def rrdb_shapes(nb: int = 23, nf: int = 64, gc: int = 32, in_nc: int = 3, out_nc: int = 3) -> list[tuple]:
    """Parameter shapes of RRDBNet(in_nc, out_nc, nf, nb, gc) in state_dict order."""
    shapes = [(nf, in_nc, 3, 3), (nf,)]
    for _ in range(nb):
        for _ in range(3):
            for i in range(5):
                cout = gc if i < 4 else nf
                shapes += [(cout, nf + i * gc, 3, 3), (cout,)]
    for cout, cin in ((nf, nf), (nf, nf), (out_nc, nf)):
        shapes += [(cout, cin, 3, 3), (cout,)]
    return shapes


def shapes_for(p: int) -> list[tuple]:
    """RRDB-23's shapes for its size; otherwise P split into 698 near-equal tensors."""
    if p == RRDB23:
        return rrdb_shapes()
    n = min(698, p)
    base, extra = divmod(p, n)
    return [(base + (1 if i < extra else 0),) for i in range(n)]


def make_params(shapes, device, gen):
    params = [torch.nn.Parameter(torch.randn(s, device=device, generator=gen)) for s in shapes]
    for q in params:
        q.grad = torch.randn(q.shape, device=device, generator=gen)
    return params


def torch_adam_provider(params, kind: str, **kw):
    opts = {"for-loop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}[kind]
    opt = torch.optim.Adam(params, **kw, **opts)
    return opt.step


def provider_name(device, backend) -> str:
    chosen = backends.backend_for("adam_step", device, None, backend)
    return "dil_fast[torch-ref]" if chosen == "torch" else f"dil_fast[native-{torch.device(device).type}]"


def rmw_bandwidth(device, n: int, repeat: int) -> float:
    """Bytes/s of ``a += b`` over n float32 elements (read a, b; write a: 12 bytes per element)."""
    a, b = torch.ones(n, device=device), torch.ones(n, device=device)
    t = time_side_by_side({"add": lambda: a.add_(b)}, device, warmup=2, repeat=max(5, repeat // 2), min_sample_s=0.0)
    return 12 * n / t["add"]


def new_row(**fields) -> dict:
    row = dict.fromkeys(ROW_KEYS, "")
    row.update(fields)
    return row


def check_adam(device, backend: str | None) -> tuple[bool, str]:
    """dil_fast flat Adam against torch.optim.Adam on 3 steps (odd sizes)."""
    gen = torch.Generator(device=device).manual_seed(0)
    shapes = [(1,), (3,), (1023,), (4099,)]
    ours = make_params(shapes, device, gen)
    ref = [torch.nn.Parameter(q.detach().clone()) for q in ours]
    for a, b in zip(ours, ref):
        b.grad = a.grad.clone()
    flat = FlatParams(ours)
    m, v, step = torch.zeros_like(flat.data), torch.zeros_like(flat.data), F.new_step(device)
    lr = F.as_lr(1e-3, device)
    opt = torch.optim.Adam(ref, lr=1e-3, foreach=False)
    for _ in range(3):
        F.adam_step_(flat.data, flat.grad, m, v, step, lr, backend=backend)
        opt.step()
    err = max((a - b).abs().max().item() for a, b in zip(ours, ref))
    return err < 1e-5, f"max |diff| {err:.2e}"


def bench_adam(device, sizes, ks, args, bw, backend, ok_check, emit):
    rows = []
    for p in sizes:
        shapes = shapes_for(p)
        for k in ks:
            gen = torch.Generator(device=device).manual_seed(1)
            data = torch.randn(k, p, device=device, generator=gen)
            grad = torch.randn(k, p, device=device, generator=gen)
            m, v = torch.zeros_like(data), torch.zeros_like(data)
            step, lr = F.new_step(device, k), F.as_lr(1e-3, device)

            def fused_step(data=data, grad=grad, m=m, v=v, step=step, lr=lr):
                F.adam_step_(data, grad, m, v, step, lr, backend=backend) if k > 1 else F.adam_step_(
                    data[0], grad[0], m[0], v[0], step, lr, backend=backend
                )

            providers = {provider_name(device, backend): fused_step}
            del gen
            sets = [make_params(shapes, device, torch.Generator(device=device).manual_seed(2 + i)) for i in range(k)]
            for kind in ("for-loop", "foreach", "fused"):
                steps = [torch_adam_provider(ps, kind, lr=1e-3) for ps in sets]
                providers[f"torch-{kind}"] = lambda steps=steps: [s() for s in steps]
            timings = time_side_by_side(
                providers, device, warmup=2, repeat=args.repeat, min_sample_s=args.min_sample_ms / 1e3, max_calls=1000
            )
            nbytes = BYTES_PER_PARAM * p * k
            base, fused = timings.get("torch-for-loop"), timings.get("torch-fused")
            case = []
            for name, t in timings.items():
                correct = ok_check if name.startswith("dil_fast") else True
                case.append(
                    new_row(
                        bench="adam",
                        provider=name,
                        P=p,
                        K=k,
                        tensors=len(shapes),
                        dtype="float32",
                        calls=t.calls,
                        ms=round(t * 1e3, 4),
                        ms_single=round(t.single * 1e3, 4),
                        GBps=round(nbytes / t / 1e9, 2),
                        frac_copy_bw=round(nbytes / t / bw["copy"], 3),
                        frac_rmw_bw=round(nbytes / t / bw["rmw"], 3),
                        ratio_vs_torch_fused=(round(t / fused, 3) if fused and correct else ""),
                        speedup_vs_for_loop=(round(base / t, 2) if base and correct else ""),
                        correct=correct,
                    )
                )
            emit(case)
            rows += case
            del sets, providers, data, grad, m, v
            if torch.device(device).type == "cuda":
                torch.cuda.empty_cache()
    return rows


def bench_dil_sf(device, nb, args, backend, ok_check, emit):
    """Optimizer work of one DIL_sf meta-iteration: fused flat buffers vs the reference's way."""
    shapes = rrdb_shapes(nb=nb)
    gen = torch.Generator(device=device).manual_seed(3)
    # --- reference: two models' worth of per-tensor parameters, torch Adam for-loop
    meta_ref = make_params(shapes, device, gen)
    task_ref = [torch.nn.Parameter(q.detach().clone()) for q in meta_ref]
    grads = [torch.randn(s, device=device, generator=gen) for s in shapes]
    meta_mod, task_mod = torch.nn.ParameterList(meta_ref), torch.nn.ParameterList(task_ref)
    task_opt = torch.optim.Adam(task_ref, lr=1e-4, betas=(0.0, 0.999), foreach=False)
    meta_opt = torch.optim.Adam(meta_ref, lr=1e-4, foreach=False)
    saved = {"opt": copy.deepcopy(task_opt.state_dict())}

    def reference_iteration():
        task_mod.load_state_dict(meta_mod.state_dict())
        task_opt.load_state_dict(saved["opt"])
        for _ in range(4):
            for q, g in zip(task_ref, grads):
                q.grad = g
            task_opt.step()
        for mq, tq in zip(meta_ref, task_ref):
            mq.grad = mq.detach() - tq.detach()
        meta_opt.step()
        saved["opt"] = copy.deepcopy(task_opt.state_dict())

    # --- fused: flat task/meta buffers, one launch per task step, one for meta step + reset
    p = sum(int(torch.Size(s).numel()) for s in shapes)
    meta = torch.randn(p, device=device, generator=gen)
    task = meta.clone()
    tgrad = torch.randn(p, device=device, generator=gen)
    tm, tv, ts = torch.zeros_like(meta), torch.zeros_like(meta), F.new_step(device)
    mm, mv, ms = torch.zeros_like(meta), torch.zeros_like(meta), F.new_step(device)
    lr = F.as_lr(1e-4, device)

    def fused_iteration():
        for _ in range(4):
            F.adam_step_(task, tgrad, tm, tv, ts, lr, 0.0, 0.999, backend=backend)
        F.meta_step_(meta, task, mm, mv, ms, lr, 0.9, 0.999, reset=True, backend=backend)

    reference = "reference (per-tensor Adam + load_state_dict)"
    ours = provider_name(device, backend)
    timings = time_side_by_side(
        {reference: reference_iteration, ours: fused_iteration},
        device,
        warmup=2,
        repeat=args.repeat,
        min_sample_s=args.min_sample_ms / 1e3,
        max_calls=1000,
    )
    t_ref, t_fused = timings[reference], timings[ours]
    nbytes = BYTES_PER_PARAM * p * 5 + 4 * p  # 5 Adam passes + the reset's write of the task weights
    rows = [
        new_row(
            bench="dil_sf_optimizer",
            provider=reference,
            P=p,
            K=4,
            tensors=len(shapes),
            dtype="float32",
            calls=t_ref.calls,
            ms=round(t_ref * 1e3, 3),
            ms_single=round(t_ref.single * 1e3, 3),
            correct=True,
        ),
        new_row(
            bench="dil_sf_optimizer",
            provider=ours,
            P=p,
            K=4,
            tensors=len(shapes),
            dtype="float32",
            calls=t_fused.calls,
            ms=round(t_fused * 1e3, 3),
            ms_single=round(t_fused.single * 1e3, 3),
            GBps=round(nbytes / t_fused / 1e9, 2),
            correct=ok_check,
            ratio_vs_reference=(round(t_fused / t_ref, 3) if ok_check else ""),
            speedup_vs_for_loop=(round(t_ref / t_fused, 2) if ok_check else ""),
        ),
    ]
    emit(rows)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="small sizes (CPU-friendly)")
    ap.add_argument("--sizes", type=int, nargs="*", help="parameter counts P")
    ap.add_argument("--ks", type=int, nargs="*", default=[1, 4])
    ap.add_argument("--repeat", type=int, default=None, help="timed rounds per case (median reported)")
    ap.add_argument("--min-sample-ms", type=float, default=2.0, help="least time one timed sample lasts")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (torch and the native twins)")
    ap.add_argument("--skip-dil-sf", action="store_true", help="only the Adam cases")
    ap.add_argument("--backend", default=None, choices=[None, "torch", "cuda"])
    ap.add_argument("--no-record", action="store_true")
    add_out_argument(ap)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    sizes = args.sizes or ([100_003, 1_000_003] if args.quick else [1_000_000, RRDB23, 100_000_000])
    args.repeat = args.repeat or (5 if args.quick else 50)
    ok, why = check_adam(device, args.backend)
    print(f"correctness vs torch.optim.Adam: {'ok' if ok else 'FAILED'} ({why})")
    bw = {"copy": copy_bandwidth(device), "rmw": rmw_bandwidth(device, max(sizes), args.repeat)}
    print(
        f"device copy bandwidth: {bw['copy'] / 1e9:.1f} GB/s; in-place add (a += b, P = {max(sizes)}): "
        f"{bw['rmw'] / 1e9:.1f} GB/s; threads: {torch.get_num_threads() if device.type == 'cpu' else '-'}"
    )
    written = []

    def emit(case_rows):
        for r in case_rows:
            r.update(copy_GBps=round(bw["copy"] / 1e9, 1), rmw_GBps=round(bw["rmw"] / 1e9, 1))
        if not args.no_record:
            written.append(record("optim", case_rows, device, out=args.out, columns=ROW_KEYS))
        print_table(case_rows, PRINT_KEYS)
        print(flush=True)

    bench_adam(device, sizes, args.ks, args, bw, args.backend, ok, emit)
    if not args.skip_dil_sf:
        bench_dil_sf(device, 1 if args.quick else 23, args, args.backend, ok, emit)
    if written:
        print("wrote", written[-1])


if __name__ == "__main__":
    main()
