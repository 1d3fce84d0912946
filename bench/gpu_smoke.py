"""The GPU check's CLI smoke: ``dil-fast train`` of every variant as a user types it, with the
device's defaults (on CUDA: bf16, channels_last, CUDA graphs), for ``--stop_after`` meta-iterations
on patches cut from the built-in sample images; then each run's ``train.log`` is read back.

A run passes when it exits 0, logs finite losses (every "Task loss" / "Losses:" value), and its log
names the fast path: the ``Fast path:`` line at the start and the ``Fast path taken:`` line at the end
(which says "CUDA graph" when the replay ran, or "eager launches (no CUDA graph: why)"). The runs
share one process (one torch import, one CUDA context); a table of variant, status, path and seconds
is printed last, and ``smoke.csv`` in ``--out`` gets one row per variant.

    python bench/gpu_smoke.py --out DIR                       # on the GPU
    python bench/gpu_smoke.py --out DIR --device cpu --tiny   # the CPU rehearsal
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import sys
import tempfile
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import print_table, record  # noqa: E402
from dil_fast.meta import VARIANTS  # noqa: E402

LOSS = re.compile(r"(?:Task loss: |noise[0-9.]+ )([-+0-9.eE]+|nan|inf|-inf)")


def check_log(text: str) -> tuple[str, str]:
    """``(status, path)`` of one run's train.log: status "ok" or why not."""
    losses = [float(v) for v in LOSS.findall(text)]
    start = re.search(r"Fast path: (.+)", text)
    taken = re.search(r"Fast path taken: (.+)", text)
    path = taken.group(1).strip() if taken else (start.group(1).strip() if start else "")
    if not losses:
        return "no losses logged", path
    if not all(math.isfinite(v) for v in losses):
        return "non-finite loss", path
    if start is None or taken is None:
        return "no 'Fast path' line" if start is None else "no 'Fast path taken' line", path
    return "ok", path


def run_variant(variant: str, patches: str, out: str, args) -> dict:
    from dil_fast.cli import main as cli

    run_dir = os.path.join(out, variant)
    argv = [
        "train",
        "--trainset",
        patches,
        "--ckpt_save",
        run_dir,
        "--variant",
        variant,
        "--stop_after",
        str(args.stop_after),
        "--print_every",
        "5",
        "--no_progress",
        "--no_tensorboard",
        "--num_workers",
        "0",
        "--patch_size",
        str(args.patch),
        "--batch_size",
        str(args.batch),
        "--nf",
        str(args.nf),
        "--nb",
        str(args.nb),
        "--gc",
        str(args.gc),
    ]
    if args.device:
        argv += ["--device", args.device]
    if args.tiny:  # the CPU's fast path, so the log names it as on CUDA (the plain fp32 path is not named)
        argv += ["--precision", "bf16", "--channels_last"]
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            rc = cli(argv)
        except SystemExit as exc:
            rc = exc.code
        except Exception as exc:  # noqa: BLE001 - one variant's crash must not hide the others
            rc = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    seconds = time.perf_counter() - t0
    log = os.path.join(run_dir, "train.log")
    text = open(log).read() if os.path.exists(log) else ""
    status, path = check_log(text) if rc == 0 else (f"exit {rc}", "")
    notes = sorted({str(w.message).splitlines()[0][:160] for w in caught if issubclass(w.category, RuntimeWarning)})
    return {
        "variant": variant,
        "status": status,
        "fast_path": path,
        "seconds": round(seconds, 1),
        "warnings": " | ".join(notes),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder of smoke.csv and the runs' train.log files")
    ap.add_argument("--device", default=None, help="--device of the runs (default: the trainer's, CUDA if present)")
    ap.add_argument("--tiny", action="store_true", help="the CPU rehearsal: tiny sizes, bf16 + channels_last")
    ap.add_argument("--variants", default=",".join(VARIANTS.names()))
    ap.add_argument("--stop_after", type=int, default=None, help="meta-iterations per run (20; 3 tiny)")
    args = ap.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]  # a registry reads like a dict of names
    if unknown:
        ap.error(f"--variants: unknown {', '.join(unknown)}")
    args.stop_after = args.stop_after or (3 if args.tiny else 20)
    args.nf, args.nb, args.gc = (8, 1, 4) if args.tiny else (32, 2, 16)
    args.patch, args.batch = (16, 2) if args.tiny else (48, 8)
    from dil_fast.data.builtin import builtin_train_patches

    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="dil_fast_smoke_")
    rows = []
    try:
        patches = builtin_train_patches(
            os.path.join(work, "patches"), size=64 if not args.tiny else 32, stride=64 if not args.tiny else 96
        )
        for variant in variants:
            print(f"-- {variant}", flush=True)
            r = run_variant(variant, patches, os.path.join(work, "runs"), args)
            rows.append(r)
            shutil.copy(
                os.path.join(work, "runs", variant, "train.log"), os.path.join(args.out, f"smoke_{variant}.log")
            ) if os.path.exists(os.path.join(work, "runs", variant, "train.log")) else None
            print(f"-- {variant}: {r['status']} in {r['seconds']} s; {r['fast_path']}", flush=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    record("smoke", rows, device, out=args.out)
    print()
    print_table(rows, ["variant", "status", "seconds", "fast_path"])
    bad = [r["variant"] for r in rows if r["status"] != "ok"]
    print(f"\n{len(rows) - len(bad)}/{len(rows)} variants ok" + (f"; failed: {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
