"""Clean p×p patches per second from a folder of 256×256 PNG patches (issue 5, item 7).

Providers (one meta-iteration = K batches of B patches; patches/s = K·B·iterations / seconds):

* ``reference``: :class:`dil_fast.data.released.ReleasedPairLoader` (PNG decode, crop, dihedral
  and the Gaussian noise, in DataLoader worker processes, as released: its workers draw the noise);
* ``dali-cpu`` / ``dali-gpu``: :class:`dil_fast.data.dali.DaliLoader` (``--dali_threads`` threads);
* ``store-cpu`` / ``store-gpu``: :class:`dil_fast.data.store.StoreLoader` on a packed store,
  data resident on the device (one sampler launch per meta-iteration).

Input: ``--images`` synthetic structured PNGs written to a temporary folder (and packed), unless
``--folder`` names a real one. Wall clock over ``--iters`` meta-iterations after ``--warmup``,
CUDA synchronised at the end, median of ``--repeat`` runs. Each provider's row is appended to
``<--out>/loader.csv`` as soon as it is measured.

    python bench/bench_loader.py --quick      # CPU, tiny, under a minute
    python bench/bench_loader.py              # on a GPU machine: all providers
    python bench/bench_loader.py --providers store-gpu --images 256 --iters 20   # the GPU check's step
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import add_out_argument, print_table, record  # noqa: E402
from dil_fast.data.dali import DaliLoader, dali_available  # noqa: E402
from dil_fast.data.pack import pack_folder  # noqa: E402
from dil_fast.data.store import PatchStore, StoreLoader  # noqa: E402

PROVIDERS = ("reference", "dali-cpu", "dali-gpu", "store-cpu", "store-gpu")
COLUMNS = ["provider", "on", "config", "K", "B", "p", "source", "iters", "patches_per_s"]


def write_pngs(folder: str, n: int, size: int, seed: int = 0) -> None:
    """n structured 256×256 RGB PNGs (gradients + texture; compress like photos, not like noise)."""
    import cv2

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(n):
        f = rng.uniform(1, 8, 3)
        base = np.stack([np.sin(f[0] * yy * 6), np.cos(f[1] * xx * 6), np.sin(f[2] * (xx + yy) * 4)], -1)
        img = np.clip(base * 90 + 128 + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(os.path.join(folder, f"{i:06d}.png"), img)


def throughput(make, k: int, b: int, iters: int, warmup: int, repeat: int, device: torch.device) -> float:
    loader = make()
    rates = []
    epoch = 0
    for _ in range(repeat):
        it = iter(loader)
        for _ in range(warmup):
            next(it)
        t0 = time.perf_counter()
        last = None
        for _ in range(iters):
            last = next(it)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rates.append(k * b * iters / (time.perf_counter() - t0))
        del it, last
        epoch += 1
        loader.set_epoch(epoch)
    return statistics.median(rates)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny CPU run")
    ap.add_argument("--folder", default=None, help="folder of PNG patches (default: synthetic)")
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--confounders", type=int, default=4)
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--workers", type=int, default=8, help="reference DataLoader workers")
    ap.add_argument("--dali_threads", type=int, default=8)
    ap.add_argument("--providers", default=",".join(PROVIDERS), help=f"comma-separated, of {','.join(PROVIDERS)}")
    ap.add_argument("--repeat", type=int, default=None, help="timed runs per provider, median reported (3; 1 quick)")
    add_out_argument(ap)
    args = ap.parse_args(argv)
    unknown = [v for v in args.providers.split(",") if v and v not in PROVIDERS]
    if unknown:
        ap.error(f"--providers: unknown {', '.join(unknown)}; choose from {', '.join(PROVIDERS)}")
    cuda = torch.cuda.is_available()
    if args.quick:
        args.images = args.images or 96
        args.iters = args.iters or 4
        args.workers = min(args.workers, 2)
        args.dali_threads = min(args.dali_threads, 2)
    images = args.images or 2048
    k, b, p = args.confounders, args.batch, args.patch
    iters = args.iters or 40
    # enough images for warm-up + timed iterations without crossing an epoch
    need = b * (iters + 3)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder
        if folder is None:
            folder = os.path.join(tmp, "png")
            write_pngs(folder, max(images, need), 256)
        store_path = os.path.join(tmp, "store")
        pack_folder(folder, store_path, workers=min(8, os.cpu_count() or 1), progress=False)
        path = None
        for prov in [v for v in args.providers.split(",") if v]:
            kind, _, where = prov.partition("-")
            dev = torch.device("cuda" if where == "gpu" else "cpu")
            if where == "gpu" and not cuda:
                print(f"skip {prov}: no CUDA device")
                continue
            if kind == "dali" and not dali_available()[0]:
                print(f"skip {prov}: {dali_available()[1]}")
                continue
            if kind == "reference":
                from dil_fast.data.released import ReleasedPairLoader

                dev = torch.device("cuda" if cuda else "cpu")
                config = f"{args.workers} DataLoader workers"
                make = lambda: ReleasedPairLoader(  # noqa: E731
                    folder,
                    [5 * (i + 1) for i in range(k)],
                    patch_size=p,
                    batch_size=b,
                    num_workers=args.workers,
                    device=dev,
                )
            elif kind == "dali":
                config = f"{args.dali_threads} DALI threads"
                make = lambda dev=dev: DaliLoader(folder, b, p, k, device=dev, num_threads=args.dali_threads)  # noqa: E731
            elif kind == "store":
                store = PatchStore(store_path, dev)
                config = f"{torch.get_num_threads()} torch threads" if dev.type == "cpu" else store.placement
                make = lambda store=store: StoreLoader(store, b, p, k)  # noqa: E731
            warm = 1 if args.quick else 3
            rate = throughput(make, k, b, iters, warm, args.repeat or (1 if args.quick else 3), dev)
            row = {
                "provider": prov,
                "on": str(dev),
                "config": config,
                "K": k,
                "B": b,
                "p": p,
                "source": "256x256 png",
                "iters": iters,
                "patches_per_s": round(rate),
            }
            path = record("loader", [row], torch.device("cuda" if cuda else "cpu"), out=args.out, columns=COLUMNS)
            print_table([row], ["provider", "on", "config", "K", "B", "p", "iters", "patches_per_s"])
            print(flush=True)
    if path:
        print(f"appended to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
