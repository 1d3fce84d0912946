"""``dil-fast bench TOPIC [args]``: run ``bench/bench_<TOPIC>.py`` of a source checkout.

The benchmarks live in the repository's ``bench/`` folder (they are not installed with the wheel);
this command finds it beside the package (editable / source installs) or through ``--bench_dir``.
"""
from __future__ import annotations

import argparse
import os
import runpy
import sys

from .errors import FlagError


def _bench_dir(explicit: str | None) -> str:
    candidates = [explicit] if explicit else [
        os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"),
        os.path.join(os.getcwd(), "bench"),
    ]
    for c in candidates:
        if c and os.path.isfile(os.path.join(c, "_common.py")):
            return c
    raise FlagError("--bench_dir: no bench/ folder found; run from a dil_fast source checkout or pass --bench_dir")


def topics(bench_dir: str) -> list[str]:
    return sorted(f[len("bench_"):-3] for f in os.listdir(bench_dir) if f.startswith("bench_") and f.endswith(".py"))


def add_bench_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", help="run a benchmark of bench/ (optim, degrade, loader, meta, train, ...)",
                       description="Extra arguments go to the benchmark script (e.g. --quick).")
    p.add_argument("topic", help="benchmark name: bench/bench_<topic>.py ('list' shows them)")
    p.add_argument("--bench_dir", default=None, help="the bench/ folder (default: beside the package)")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for the benchmark")
    return p


def run_bench(args) -> int:
    bench_dir = _bench_dir(args.bench_dir)
    names = topics(bench_dir)
    if args.topic == "list":
        print("\n".join(names))
        return 0
    if args.topic not in names:
        raise FlagError(f"bench topic {args.topic!r} not found; available: {', '.join(names)}")
    path = os.path.join(bench_dir, f"bench_{args.topic}.py")
    root = os.path.dirname(bench_dir)
    if root not in sys.path:
        sys.path.insert(0, root)
    old_argv = sys.argv
    sys.argv = [path, *args.rest]
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    finally:
        sys.argv = old_argv
    return 0
