"""``dil-fast bench TOPIC [args]``: run the benchmark ``bench_<TOPIC>.py``.

The benchmarks' source is the repository's ``bench/`` folder, installed with the package as
``dil_fast.benchmarks``; this command finds them through ``--bench_dir``, else in the source
checkout beside the package (editable installs), else installed, else in ``./bench``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import runpy
import sys

from .errors import FlagError

CHECKOUT_BENCH_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
INSTALLED_BENCH_PACKAGE = "dil_fast.benchmarks"


def _installed_bench_dir() -> str | None:
    spec = importlib.util.find_spec(INSTALLED_BENCH_PACKAGE)
    return spec.submodule_search_locations[0] if spec and spec.submodule_search_locations else None


def _bench_dir(explicit: str | None) -> str:
    installed = None if explicit else _installed_bench_dir()
    candidates = [explicit] if explicit else [CHECKOUT_BENCH_DIR, installed, os.path.join(os.getcwd(), "bench")]
    for c in candidates:
        if c and os.path.isfile(os.path.join(c, "_common.py")):
            if c == installed:
                # the scripts import their helpers as bench._common, the name they have in a checkout
                sys.modules.setdefault("bench", importlib.import_module(INSTALLED_BENCH_PACKAGE))
            return c
    raise FlagError(
        "--bench_dir: no benchmarks found (neither installed with dil_fast nor in a source checkout); pass --bench_dir"
    )


def topics(bench_dir: str) -> list[str]:
    return sorted(f[len("bench_") : -3] for f in os.listdir(bench_dir) if f.startswith("bench_") and f.endswith(".py"))


def add_bench_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "bench",
        help="run a benchmark of bench/ (optim, degrade, loader, meta, train, ...)",
        description="Extra arguments go to the benchmark script (e.g. --quick).",
    )
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
