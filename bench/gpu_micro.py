"""The GPU check's micro-benchmarks in one process (one torch import, one CUDA context): the two
ceilings (device copy bandwidth, bf16 matmul rate), flat Adam and the DIL_sf optimizer work
(bench_optim), the fused K-way noise (bench_degrade) and the PatchStore sampler (bench_loader),
then the issue's targets read back from the rows they recorded:

  flat Adam, P = 16.6 M, K = 1 / device copy bandwidth      >= 80 %
  fused K-way noise (B 32, 256x256, K 4) / copy bandwidth    >= 70 %
  PatchStore sampler, B 32, p 64, K 4                         >= 1 M patches/s

Each benchmark runs in its own try block, so one failure leaves the others' rows; the exit status
is 1 when one failed or a row it needs is missing, else 0 (a missed target is reported, not an error).

    python bench/gpu_micro.py --out DIR            # on the GPU
    python bench/gpu_micro.py --quick --out DIR    # the CPU rehearsal: tiny sizes, seconds
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import bench_degrade, bench_loader, bench_optim  # noqa: E402
from bench._common import copy_bandwidth, record, time_fn  # noqa: E402

RRDB23_P = 16_624_131
TARGETS = (
    ("flat Adam P=16.6M K=1 / copy bandwidth", 0.80),
    ("fused K-way noise / copy bandwidth", 0.70),
    ("PatchStore sampler patches/s (B 32, p 64)", 1e6),
)


def matmul_tflops(device, n: int) -> float:
    """bf16 ``n x n x n`` matrix product rate on random data (fp32 on the CPU), in TFLOP/s."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = time_fn(lambda: a @ b, device=device, warmup=3, repeat=10)
    return 2 * n**3 / t / 1e12


def _rows(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def targets(out: str, started: str, quick: bool) -> list[dict]:
    """The figures of :data:`TARGETS` from the rows recorded since ``started`` (ISO time)."""
    p = 100_003 if quick else RRDB23_P
    fresh = lambda rows: [r for r in rows if r.get("date", "") >= started]  # noqa: E731
    adam = [
        r
        for r in fresh(_rows(os.path.join(out, "optim.csv")))
        if r["bench"] == "adam" and r["provider"].startswith("dil_fast") and r["P"] == str(p) and r["K"] == "1"
    ]
    noise = [
        r
        for r in fresh(_rows(os.path.join(out, "degrade.csv")))
        if r["family"] == "noise" and r["provider"] == "dil_fast"
    ]
    sampler = [r for r in fresh(_rows(os.path.join(out, "loader.csv"))) if r["provider"].startswith("store-")]
    values = [
        float(adam[-1]["frac_copy_bw"]) if adam else None,
        float(noise[-1]["frac_copy_bw"]) if noise else None,
        float(sampler[-1]["patches_per_s"]) if sampler else None,
    ]
    out_rows = []
    for (name, goal), value in zip(TARGETS, values):
        met = "n/a" if value is None else ("met" if value >= goal else "MISSED")
        out_rows.append(
            {
                "figure": name,
                "value": "missing" if value is None else f"{value:.3g}",
                "target": f">= {goal:g}",
                "verdict": met,
            }
        )
    return out_rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes on the CPU (the rehearsal)")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--out", required=True, help="folder of the CSV files")
    args = ap.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    on = ["--device", str(device)]
    steps = {
        "ceilings": None,
        "bench_optim": lambda: bench_optim.main(
            (["--quick"] if args.quick else ["--sizes", str(RRDB23_P), "--ks", "1", "4", "--repeat", "20"])
            + on
            + ["--out", args.out]
        ),
        "bench_degrade": lambda: bench_degrade.main(
            (["--quick"] if args.quick else ["--sizes", "256", "--repeat", "20"])
            + ["--families", "noise", "--providers", "dil_fast,torch"]
            + on
            + ["--out", args.out]
        ),
        "bench_loader": lambda: bench_loader.main(
            (
                ["--quick", "--providers", "store-cpu"]
                if args.quick or device.type != "cuda"
                else ["--providers", "store-gpu", "--images", "256", "--iters", "20"]
            )
            + ["--out", args.out]
        ),
    }
    failed = []
    for name, run in steps.items():
        t0 = time.perf_counter()
        print(f"-- {name}", flush=True)
        try:
            if run is None:
                bw = copy_bandwidth(device)
                tf = matmul_tflops(device, 1024 if args.quick else 8192)
                record(
                    "ceilings",
                    [
                        {
                            "copy_GBps": round(bw / 1e9, 1),
                            "matmul_TFLOPs": round(tf, 1),
                            "matmul": "fp32 1024^3" if args.quick else "bf16 8192^3 random",
                        }
                    ],
                    device,
                    out=args.out,
                )
                print(f"device copy {bw / 1e9:.1f} GB/s (read + write); matmul {tf:.1f} TFLOP/s")
            else:
                rc = run()
                if rc not in (None, 0):
                    failed.append(f"{name} (exit {rc})")
        except SystemExit as exc:  # an argparse refusal
            failed.append(f"{name} (exit {exc.code})")
        except Exception:  # noqa: BLE001 - one benchmark's failure must not lose the others' rows
            traceback.print_exc()
            failed.append(name)
        print(f"-- {name}: {time.perf_counter() - t0:.1f} s", flush=True)
    rows = targets(args.out, started, args.quick)
    print("\ntargets (issue 17):")
    for r in rows:
        print(f"  {r['figure']:<45} {r['value']:>10}  {r['target']:<10} {r['verdict']}")
    if failed:
        print(f"failed: {', '.join(failed)}")
    missing = [r["figure"] for r in rows if r["value"] == "missing"]
    return 1 if failed or missing else 0


if __name__ == "__main__":
    sys.exit(main())
