"""``dil-fast demo``: the main job on a built-in default.

Cuts patches from the public-domain sample images scikit-image ships (dil_fast.data.builtin), trains
a reduced RRDB with DIL_sf on Gaussian noise sigma 5/10/15/20 for a few minutes on CPU, then reports
PSNR/SSIM on the built-in test images at a seen (15) and an unseen (50) noise level, next to the
PSNR of the noisy input.
"""

from __future__ import annotations

import argparse
import os
import time


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=os.path.join("runs", "demo"), help="output folder (patches, checkpoints, log)")
    p.add_argument("--variant", default="sf", help="DIL variant to train (default sf)")
    p.add_argument("--epochs", type=int, default=12, help="training epochs over the built-in patches")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--patch_size", type=int, default=40)
    p.add_argument("--nf", type=int, default=16)
    p.add_argument("--nb", type=int, default=1)
    p.add_argument("--gc", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4, help="task learning rate (raised from 1e-4 for a short run)")
    p.add_argument("--meta_lr", type=float, default=1e-3, help="meta learning rate (halved every --lr_step epochs)")
    p.add_argument(
        "--lr_step", type=int, default=3, help="halve the meta learning rate every N epochs (the released schedule)"
    )
    p.add_argument(
        "--ema",
        type=float,
        default=0.98,
        help="decay of the EMA of the meta weights that is evaluated (0: evaluate the last weights)",
    )
    p.add_argument("--seen", type=float, default=15.0, help="a training noise level to report")
    p.add_argument("--unseen", type=float, default=50.0, help="a noise level outside training to report")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch (default 1: this small model's convolutions gain little from more "
        "threads, and extra threads slow to a crawl when another process shares the cores)",
    )
    p.set_defaults(func=run_demo)


def run_demo(args) -> int:
    import numpy as np
    import torch

    from .checkpoints import LAST
    from .data.builtin import builtin_testset, builtin_train_patches
    from .data.images import list_images, read_image_rgb
    from .eval import evaluate_model
    from .metrics import calculate_psnr
    from .train import TrainConfig, Trainer

    if args.threads < 1:
        from .errors import FlagError

        raise FlagError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    t0 = time.time()
    patches = builtin_train_patches(os.path.join(args.out, "patches"), size=64, stride=64)
    testdir = builtin_testset(os.path.join(args.out, "test"))
    n = len(list_images(patches, flag="--trainset"))
    print(f"built-in data: {n} training patches of 64x64, test images in {testdir}")
    cfg = TrainConfig(
        ckpt_save=os.path.join(args.out, "ckpt"),
        trainset=patches,
        testset=testdir,
        variant=args.variant,
        patch_size=args.patch_size,
        batch_size=args.batch_size,
        total_epoch=args.epochs,
        save_every=args.epochs,
        test_every=args.epochs + 1,
        print_every=20,
        num_workers=0,
        seed=args.seed,
        device=args.device,
        nf=args.nf,
        nb=args.nb,
        gc=args.gc,
        lr=args.lr,
        meta_lr=args.meta_lr,
        lr_step=args.lr_step,
        ema=args.ema or None,
        progress=None,
    )
    trainer = Trainer(cfg)
    rc = trainer.run()
    if rc:
        return rc
    train_s = time.time() - t0
    ckpt = os.path.join(cfg.ckpt_save, LAST)  # the full state after the last epoch
    model = (trainer.meta_model if trainer.ema is None else trainer.ema.model).eval()
    images = [(os.path.basename(f), read_image_rgb(f)) for f in list_images(testdir, flag="--testset")]
    print(
        f"\nDIL_{args.variant}, RRDB nf={args.nf} nb={args.nb} gc={args.gc}, trained on sigma 5,10,15,20 "
        f"for {args.epochs} epochs ({train_s:.0f} s incl. data preparation)"
    )
    print(f"{'sigma':>6} {'':>7} {'input PSNR':>11} {'output PSNR':>12} {'output SSIM':>12}")
    for level, kind in ((args.seen, "seen"), (args.unseen, "unseen")):
        res = evaluate_model(model, images, level=level, seed=0, device=trainer.device)
        rng_in = []
        for i, (_name, clean) in enumerate(images):
            noisy = _noisy_uint8(clean, level, seed=0, index=i)
            rng_in.append(calculate_psnr(noisy, clean, crop_border=0))
        p = float(np.mean([r[1] for r in res]))
        s = float(np.mean([r[2] for r in res]))
        print(f"{level:>6g} {kind:>7} {np.mean(rng_in):>11.2f} {p:>12.2f} {s:>12.4f}")
    print(f"checkpoint: {ckpt}   log: {os.path.join(cfg.ckpt_save, 'train.log')}")
    return 0


def _noisy_uint8(clean, level: float, seed: int, index: int):
    """The noisy input the evaluation feeds the model, quantised for an input-PSNR baseline."""
    import numpy as np

    from .eval import add_noise, noise_rng

    noisy = add_noise(clean, level, noise_rng(seed, index))
    return np.clip(np.round(noisy * 255.0), 0, 255).astype(np.uint8)
