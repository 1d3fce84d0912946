"""Counterfactual degradation throughput: B clean images under K confounders.

Confounder families: noise1 / blur1 (one confounder, K = 1), noise (sigma 5..20) and blur
(sigma 1..4, 21 taps) as K = 4 fused launches, JPEG (q 10..40), hybrid (mild..severe). Providers:
  dil_fast    counterfactual(...) on the device (Triton on CUDA; the torch path on the CPU); for
              noise and blur this is the fused K-way launch
  dil_fast-loop  noise/blur only: the K confounders as K separate launches
  torch       the pure-torch reference (backend="torch") on the same device
  numpy-cpu   the released code's way: numpy / OpenCV per image on the CPU (noise: float64 randn,
              clip; blur: cv2.filter2D; JPEG: cv2.imencode/imdecode), one image at a time
Reported: ms per call (median over samples of back-to-back calls) beside ``ms_single`` (one call
timed alone), images/s (B*K distorted images per call), GB/s (clean read once + K outputs
written, float32) and its fraction of the measured device copy bandwidth, and the per-image speedup
of dil_fast over numpy-cpu. A provider whose output disagrees with the reference gets no speedup;
``autotune`` says whether the Triton kernels tried all their configs. The rows of each (size, family) case are
appended to ``<--out>/degrade.csv`` as soon as it is measured.

    python bench/bench_degrade.py            # B=32, 64x64 and 256x256, K=4, on CUDA if present
    python bench/bench_degrade.py --quick    # small CPU run (CI smoke test)
    python bench/bench_degrade.py --families noise --sizes 256    # the GPU check's fused-noise step
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import add_out_argument, copy_bandwidth, print_table, record, time_fn  # noqa: E402
from dil_fast import backends  # noqa: E402
from dil_fast.degrade import JPEG, Ctx, counterfactual, deblur_levels, denoise_levels, hybrid  # noqa: E402
from dil_fast.degrade import blur_kernels as bk  # noqa: E402

FAMILIES = {
    "noise1": lambda: denoise_levels((15,)),
    "blur1": lambda: deblur_levels((2,), kernel_size=21),
    "noise": lambda: denoise_levels((5, 10, 15, 20)),
    "blur": lambda: deblur_levels((1, 2, 3, 4), kernel_size=21),
    "jpeg": lambda: [JPEG(q) for q in (10, 20, 30, 40)],
    "hybrid": lambda: [hybrid(level) for level in ("mild", "moderate", "severe", "severe")],
}
PROVIDERS = ("dil_fast", "dil_fast-loop", "torch", "numpy-cpu")
COLUMNS = [
    "family",
    "size",
    "B",
    "K",
    "provider",
    "ms",
    "ms_single",
    "img_per_s",
    "GB_s",
    "frac_copy_bw",
    "correct",
    "speedup_vs_numpy",
    "autotune",
]


def numpy_reference(family: str, imgs_u8: np.ndarray, specs) -> list:
    """The released code's per-image CPU path; imgs_u8 [B, H, W, 3]."""
    import cv2

    out = []
    for s in specs:
        for img in imgs_u8:
            if family.startswith("noise"):
                x = img.astype(np.float32) / 255.0
                out.append(np.clip(x + np.random.randn(*x.shape) * (s.sigma / 255.0), 0, 1).astype(np.float32))
            elif family.startswith("blur"):
                k = bk.gaussian_1d(torch.tensor([s.sigma]), s.kernel_size)[0].numpy()
                x = img.astype(np.float32) / 255.0
                out.append(cv2.sepFilter2D(x, -1, k, k, borderType=cv2.BORDER_REFLECT_101))
            elif family == "jpeg":
                ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(s.quality)])
                out.append(cv2.imdecode(buf, cv2.IMREAD_COLOR).astype(np.float32) / 255.0)
            else:
                return None
    return out


def check(family, fast, refr) -> bool:
    diff = (fast.float().cpu() - refr.float().cpu()).abs()
    if family in ("jpeg", "hybrid"):  # rare rounding flips are allowed (see the tests)
        return bool(diff.mean() < 1e-3)
    return bool(diff.max() < 1e-4)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small CPU-sized run")
    ap.add_argument("--device", default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--sizes", default=None, help="comma-separated square sizes (default 64,256)")
    ap.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, of {','.join(FAMILIES)}")
    ap.add_argument("--providers", default=",".join(PROVIDERS), help=f"comma-separated, of {','.join(PROVIDERS)}")
    ap.add_argument("--repeat", type=int, default=None)
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: 1 with --quick, as a shared CI box oversubscribes)",
    )
    add_out_argument(ap)
    args = ap.parse_args(argv)
    for flag, given, known in (("--families", args.families, FAMILIES), ("--providers", args.providers, PROVIDERS)):
        unknown = [v for v in given.split(",") if v and v not in known]
        if unknown:
            ap.error(f"{flag}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = args.threads or (1 if args.quick else None)
    if threads:
        torch.set_num_threads(threads)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    B = args.batch or (4 if args.quick else 32)
    sizes = [int(s) for s in (args.sizes or ("32" if args.quick else "64,256")).split(",")]
    repeat = args.repeat or (3 if args.quick else 20)
    families = [f for f in args.families.split(",") if f]
    providers = {p for p in args.providers.split(",") if p}
    # the Triton kernels' configs: all tried, or the first only (DIL_FAST_SKIP_AUTOTUNE=1, the interpreter)
    autotune = "first config only" if backends.skip_autotune() else "tuned"
    bw = copy_bandwidth(device)
    print(f"device {device}, copy bandwidth {bw / 1e9:.1f} GB/s, B={B}, sizes {sizes}", flush=True)

    path = None
    for size in sizes:
        gen = torch.Generator().manual_seed(size)
        clean_u8 = torch.randint(0, 256, (B, 3, size, size), dtype=torch.uint8, generator=gen)
        clean = (clean_u8.float() / 255).to(device)
        imgs = clean_u8.permute(0, 2, 3, 1).contiguous().numpy()
        for family in families:
            specs = FAMILIES[family]()
            K = len(specs)
            nbytes = clean.numel() * 4 * (1 + K)
            fast = lambda: counterfactual(clean, specs, seed=1, step=0)  # noqa: E731
            refr = lambda: counterfactual(clean, specs, seed=1, step=0, backend="torch")  # noqa: E731
            ok = check(family, fast(), refr())
            timings = {}
            if "dil_fast" in providers:
                timings["dil_fast"] = time_fn(fast, device=device, warmup=2, repeat=repeat)
            if "dil_fast-loop" in providers and family in ("noise", "blur"):

                def loop():  # the same K confounders as K separate launches
                    return torch.stack(
                        [s.apply(clean, Ctx(seed=1, step=0, k=k, batch=B, device=device)) for k, s in enumerate(specs)]
                    )

                timings["dil_fast-loop"] = time_fn(loop, device=device, warmup=2, repeat=repeat)
            if "torch" in providers:
                timings["torch"] = time_fn(refr, device=device, warmup=1, repeat=max(2, repeat // 4))
            if "numpy-cpu" in providers and numpy_reference(family, imgs[:1], specs[:1]) is not None:
                timings["numpy-cpu"] = time_fn(
                    lambda: numpy_reference(family, imgs, specs), device="cpu", warmup=1, repeat=max(2, repeat // 4)
                )
            t_np = timings.get("numpy-cpu")
            rows = []
            for provider, t in timings.items():
                on_device = provider != "numpy-cpu"
                rows.append(
                    {
                        "family": family,
                        "size": size,
                        "B": B,
                        "K": K,
                        "provider": provider,
                        "ms": round(t * 1e3, 3),
                        "ms_single": round(t.single * 1e3, 3),
                        "img_per_s": round(B * K / t, 1),
                        "GB_s": round(nbytes / t / 1e9, 2) if on_device else "",
                        "frac_copy_bw": round(nbytes / t / bw, 3) if on_device else "",
                        "correct": ok if provider.startswith("dil_fast") else "",
                        "speedup_vs_numpy": (round(t_np / t, 1) if (t_np and ok and on_device) else ""),
                        "autotune": autotune if on_device else "",
                    }
                )
            path = record("degrade", rows, device, out=args.out, columns=COLUMNS)
            print_table(rows)
            print(flush=True)
    if path:
        print(f"appended to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
