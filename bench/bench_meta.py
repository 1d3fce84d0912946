"""Time per meta-iteration and peak memory of the DIL variants, batched vs looped virtual updates.

Shapes: K in {2, 4, 8} confounders, one batch of ``--batch`` (8) RGB ``--size`` (64) patches per
confounder, a small RRDB (nf=32, nb=2, gc=16) and RRDB-23 (nf=64, nb=23, gc=32). Providers: each
variant with ``virtual_batching="batched"`` and ``"looped"`` (for ``pf``/``ps``, which have one
virtual model, that is one forward over the concatenated batches vs one per confounder). ``sf``
(no virtual batching) is timed as the reference point. Peak memory is CUDA
``max_memory_allocated`` during one meta-iteration (not measured on CPU). The rows of each
(model, K, variant) group are appended to ``<--out>/meta.csv`` as soon as the group is measured.

    python bench/bench_meta.py                # full grid (use a GPU)
    python bench/bench_meta.py --quick        # tiny sizes, runs on CPU in well under a minute
    python bench/bench_meta.py --models rrdb-23 --ks 4 --variants ss-fo pf sf   # a slice of the grid
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import add_out_argument, print_table, record, time_fn  # noqa: E402
from dil_fast.meta import VARIANTS  # noqa: E402
from dil_fast.models import RRDBNet  # noqa: E402

MODELS = {
    "rrdb-small": {"nf": 32, "nb": 2, "gc": 16},
    "rrdb-23": {"nf": 64, "nb": 23, "gc": 32},
    "rrdb-tiny": {"nf": 8, "nb": 1, "gc": 4},
}
VIRTUAL = ("ss", "ss-fo", "ps", "pf")
COLUMNS = ["model", "size", "batch", "variant", "K", "path", "ms", "peak_mib", "batched/looped"]


def build(variant: str, model: torch.nn.Module, path: str | None):
    kw = {} if path is None else {"virtual_batching": path}
    return VARIANTS[variant](model, **kw)


def peak_mib(algo, batches, device) -> float | str:
    """CUDA peak allocated memory (MiB) of one meta-iteration; "n/a" on CPU."""
    if device.type != "cuda":
        return "n/a"
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    algo.step(batches)
    torch.cuda.synchronize(device)
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def measure_group(variant, paths, cfg, k, batch, size, device, warmup, repeat, rounds) -> list[dict]:
    """Times the paths of one variant interleaved, ``rounds`` times ``repeat`` runs each; reports
    the smallest per-round median (robust to other load on a shared machine)."""
    torch.manual_seed(0)
    batches = [
        (torch.rand(batch, 3, size, size, device=device), torch.rand(batch, 3, size, size, device=device))
        for _ in range(k)
    ]
    rows, algos = [], {}
    for path in paths:
        row = {"variant": variant, "path": path or "-", "K": k}
        try:
            algos[path] = build(variant, RRDBNet(**cfg).to(device), path)
            row["peak_mib"] = peak_mib(algos[path], batches, device)
            time_fn(lambda a=algos[path]: a.step(batches), device=device, warmup=warmup, repeat=1)
            row["ms"] = float("inf")
        except torch.cuda.OutOfMemoryError:
            algos.pop(path, None)
            row.update(peak_mib="oom", ms="oom")
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
    for _ in range(rounds):
        for path, row in zip(paths, rows):
            if path in algos:
                t = time_fn(lambda a=algos[path]: a.step(batches), device=device, warmup=0, repeat=repeat)
                row["ms"] = min(row["ms"], round(1e3 * t, 2))
    algos.clear()  # free the models before the next case (the lambdas above captured `batches`)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny RRDB, 16x16, batch 2, K=2,4 (CPU smoke)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", nargs="+", default=None, choices=list(MODELS))
    ap.add_argument("--variants", nargs="+", default=list(VIRTUAL) + ["sf"], choices=list(VIRTUAL) + ["sf"])
    ap.add_argument("--ks", nargs="+", type=int, default=None)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=None, help="timed runs per round")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds; the best round is reported")
    ap.add_argument("--warmup", type=int, default=None, help="untimed meta-iterations per path first (3; 1 quick)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: 1 on CPU, for stable timings)")
    add_out_argument(ap)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if args.threads or device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    models = args.models or (["rrdb-tiny"] if args.quick else ["rrdb-small", "rrdb-23"])
    ks = args.ks or ([2, 4] if args.quick else [2, 4, 8])
    size = args.size or (16 if args.quick else 64)
    batch = args.batch or (2 if args.quick else 8)
    repeat = args.repeat or (1 if args.quick else 5)
    rounds = args.rounds or 3
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)

    rows, path = [], None
    for name in models:
        for k in ks:
            for variant in args.variants:
                paths = [None] if variant == "sf" else ["batched", "looped"]
                group = measure_group(variant, paths, MODELS[name], k, batch, size, device, warmup, repeat, rounds)
                for r in group:
                    r.update(model=name, size=size, batch=batch)
                if len(group) == 2 and all(isinstance(r["ms"], float) for r in group):
                    group[0]["batched/looped"] = round(group[0]["ms"] / group[1]["ms"], 3)
                path = record("meta", group, device, out=args.out, columns=COLUMNS)
                rows.extend(group)
                print_table(group, ["model", "variant", "K", "path", "ms", "peak_mib", "batched/looped"])
                print(flush=True)
    print_table(rows, COLUMNS)
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
