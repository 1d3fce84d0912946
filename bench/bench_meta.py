"""Time per meta-iteration and peak memory of the DIL variants, batched vs looped virtual updates.

Shapes: K in {2, 4, 8} confounders, one batch of ``--batch`` (8) RGB ``--size`` (64) patches per
confounder, a small RRDB (nf=32, nb=2, gc=16) and RRDB-23 (nf=64, nb=23, gc=32). Providers: each
variant with ``virtual_batching="batched"`` and ``"looped"`` (for ``pf``/``ps``, which have one
virtual model, that is one forward over the concatenated batches vs one per confounder). ``sf``
(no virtual batching) is timed as the reference point. Each meta-iteration runs through the
trainer's fast path with ``dil-fast train``'s defaults for the device (CUDA: bf16 autocast and
channels_last; CPU: fp32 NCHW), eagerly (no CUDA graph), so the batched pass timed is the one the
trainer takes; ``--plain`` times the bare algorithms instead. Peak memory is CUDA
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
from dil_fast.meta.options import option_fields  # noqa: E402
from dil_fast.models import RRDBNet  # noqa: E402
from dil_fast.train.fast import FastPath, resolve_options  # noqa: E402

MODELS = {
    "rrdb-small": {"nf": 32, "nb": 2, "gc": 16},
    "rrdb-23": {"nf": 64, "nb": 23, "gc": 32},
    "rrdb-tiny": {"nf": 8, "nb": 1, "gc": 4},
}
# the variants with a batched/looped choice (a virtual_batching option), and sf as the reference point
VIRTUAL = tuple(e.name for e in VARIANTS.entries() if "virtual_batching" in {f.name for f in option_fields(e.options)})
COLUMNS = ["model", "size", "batch", "variant", "K", "path", "fast_path", "ms", "peak_mib", "batched/looped"]


def build(variant: str, model: torch.nn.Module, path: str | None):
    kw = {} if path is None else {"virtual_batching": path}
    return VARIANTS[variant](model, **kw)


def peak_mib(step, batches, device) -> float | str:
    """CUDA peak allocated memory (MiB) of one meta-iteration; "n/a" on CPU."""
    if device.type != "cuda":
        return "n/a"
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    step(batches)
    torch.cuda.synchronize(device)
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def measure_group(variant, paths, cfg, k, batch, size, device, warmup, repeat, rounds, plain=False) -> list[dict]:
    """Times the paths of one variant interleaved, ``rounds`` times ``repeat`` runs each; reports
    the smallest per-round median (robust to other load on a shared machine). Each algorithm runs
    through the trainer's fast path (device defaults, eager) unless ``plain``."""
    torch.manual_seed(0)
    batches = [
        (torch.rand(batch, 3, size, size, device=device), torch.rand(batch, 3, size, size, device=device))
        for _ in range(k)
    ]
    rows, algos, fast = [], {}, []
    opts = resolve_options(device, cuda_graphs=False)
    for path in paths:
        row = {
            "variant": variant,
            "path": path or "-",
            "K": k,
            "fast_path": "plain" if plain else f"{opts.precision}{' channels_last' if opts.channels_last else ''}",
        }
        try:
            algo = build(variant, RRDBNet(**cfg).to(device), path)
            if plain:
                algos[path] = algo.step
            else:
                fast.append(FastPath(algo, opts, device))
                algos[path] = fast[-1].step
            row["peak_mib"] = peak_mib(algos[path], batches, device)
            time_fn(lambda s=algos[path]: s(batches), device=device, warmup=warmup, repeat=1)
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
                t = time_fn(lambda s=algos[path]: s(batches), device=device, warmup=0, repeat=repeat)
                row["ms"] = min(row["ms"], round(1e3 * t, 2))
    for fp in reversed(fast):  # each restores the math settings it found
        fp.close()
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
    ap.add_argument("--plain", action="store_true", help="time the bare algorithms, without the trainer's fast path")
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
                paths = ["batched", "looped"] if variant in VIRTUAL else [None]
                group = measure_group(
                    variant, paths, MODELS[name], k, batch, size, device, warmup, repeat, rounds, plain=args.plain
                )
                for r in group:
                    r.update(model=name, size=size, batch=batch)
                if len(group) == 2 and all(isinstance(r["ms"], float) for r in group):
                    group[0]["batched/looped"] = round(group[0]["ms"] / group[1]["ms"], 3)
                path = record("meta", group, device, out=args.out, columns=COLUMNS)
                rows.extend(group)
                print_table(group, ["model", "variant", "K", "path", "fast_path", "ms", "peak_mib", "batched/looped"])
                print(flush=True)
    print_table(rows, COLUMNS)
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
