"""``dil-fast demo``: the main job on a built-in default.

Cuts patches from the public-domain sample images scikit-image ships (dil_fast.data.builtin), trains
a reduced bias-free RRDB with a global input skip (dil_fast.models.rrdb) with DIL_sf on Gaussian
noise sigma 5/10/15/20 for a few minutes on CPU, then reports PSNR/SSIM on the built-in test images
at a seen (15) and an unseen (50) noise level, next to the PSNR of the noisy input.
"""

from __future__ import annotations

import argparse
import os
import time

DEMO_ARCH_KWARGS = '{"bias": false, "residual": true}'


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=os.path.join("runs", "demo"), help="output folder (patches, checkpoints, log)")
    p.add_argument("--variant", default="sf", help="DIL variant to train (default sf)")
    p.add_argument("--epochs", type=int, default=8, help="training epochs over the built-in patches")
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
    p.add_argument(
        "--arch_kwargs",
        default=DEMO_ARCH_KWARGS,
        help="the RRDB's keyword arguments as JSON, as for train (default: bias-free with a global input skip, "
        "output = input + RRDB(input); '{}' trains the released RRDB, which must learn the identity and the "
        "colour of its output, and lands seed-dependent colour offsets in a run this short)",
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
    from .errors import FlagError
    from .eval import evaluate_model
    from .metrics import calculate_psnr
    from .train import TrainConfig, Trainer

    if args.threads < 1:
        raise FlagError(f"--threads must be >= 1, got {args.threads}")
    patch_dir, test_dir = os.path.join(args.out, "patches"), os.path.join(args.out, "test")
    cfg = TrainConfig(
        ckpt_save=os.path.join(args.out, "ckpt"),
        trainset=patch_dir,
        testset=test_dir,
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
        arch_kwargs=args.arch_kwargs,
        progress=None,
    )
    _check_flags(cfg)  # before the first file is written
    torch.set_num_threads(args.threads)
    t0 = time.time()
    patches = builtin_train_patches(patch_dir, size=64, stride=64)
    testdir = builtin_testset(test_dir)
    n = len(list_images(patches, flag="--trainset"))
    print(f"built-in data: {n} training patches of 64x64, test images in {testdir}")
    trainer = Trainer(cfg)
    rc = trainer.run()
    if rc:
        return rc
    train_s = time.time() - t0
    ckpt = os.path.join(cfg.ckpt_save, LAST)  # the full state after the last epoch
    model = (trainer.meta_model if trainer.ema is None else trainer.ema.model).eval()
    images = [(os.path.basename(f), read_image_rgb(f)) for f in list_images(testdir, flag="--testset")]
    print(
        f"\nDIL_{args.variant}, RRDB nf={args.nf} nb={args.nb} gc={args.gc}{_network_note(trainer.meta_model)}, "
        "trained on sigma 5,10,15,20 "
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


def _check_flags(cfg) -> None:
    """Every flag, and that the network they describe builds: a :class:`FlagError` naming the flag."""
    from .errors import FlagError
    from .models.registry import build_model, parse_arch_kwargs, size_kwargs

    try:
        cfg.validate()
        arch = cfg.arch_name()
        build_model(arch, {**parse_arch_kwargs(cfg.arch_kwargs), **size_kwargs(arch, cfg.model_overrides())})
    except (FlagError, ValueError) as exc:  # the demo's --epochs is the trainer's --total_epoch
        raise FlagError(str(exc).replace("--total_epoch", "--epochs")) from None


def _network_note(model) -> str:
    """`` (bias-free, input skip)`` for the demo's network, empty for the released RRDB."""
    config = getattr(model, "config", {})
    notes = [n for n, on in (("bias-free", config.get("bias") is False), ("input skip", config.get("residual"))) if on]
    return f" ({', '.join(notes)})" if notes else ""


def _noisy_uint8(clean, level: float, seed: int, index: int):
    """The noisy input the evaluation feeds the model, quantised for an input-PSNR baseline."""
    import numpy as np

    from .eval import add_noise, noise_rng

    noisy = add_noise(clean, level, noise_rng(seed, index))
    return np.clip(np.round(noisy * 255.0), 0, 255).astype(np.uint8)
