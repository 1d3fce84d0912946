"""``dil-fast eval``: denoise a test folder with a checkpoint and report PSNR/SSIM (the reference eval script).

Per image of ``--testset`` (sorted by file name): clean uint8 RGB -> float32 / 255 -> plus float64
standard-normal noise x ``--level`` / 255 -> clip to [0, 1] -> float32 ``[1, 3, H, W]`` -> network
(``model_meta`` of the checkpoint, under ``torch.no_grad``) -> x 255, round, clip to uint8 ->
PSNR / SSIM against the clean image (:mod:`dil_fast.metrics`, ``--crop_border``, RGB or ``--y``)
-> the restored image written into ``--save`` under the same file name. ``log.txt`` in ``--save``
holds the reference's lines, the numbers printed with Python's ``str(float)`` as the reference::

    NAME: PSNR, p; SSIM, s.
    ...
    avg PSNR: p, avg SSIM: s.

Deliberate differences from the reference script (see README):

* the noise is seeded: image ``i`` (0-based, in sorted order) draws from
  ``numpy.random.default_rng(SeedSequence([seed, i]))`` (``--seed``, default 0), the same
  ``standard_normal`` float64 draw in ``HxWx3`` order, so results reproduce run to run and do not
  depend on which other images are in the folder before or after it; the reference is unseeded;
* the mean SSIM is correct (the reference's is always 0: it never accumulates the sum);
* restored images are always PNG: a non-PNG input ``x.jpg`` is saved as ``x.png`` (lossless, so
  the file holds exactly what was measured); the log names the input file;
* the model size is inferred from the checkpoint (``--nf --nb --gc`` override it), any device.

Errors (one line, exit 2): missing ``--ckpt``, a file that is not a checkpoint or whose weights do
not fit, a missing or empty ``--testset``, an unreadable image, an image smaller than SSIM's
11 x 11 window, an unwritable ``--save``, invalid ``--level``/``--crop_border``/``--device``.
Every output file is written atomically; ``log.txt`` is written last, once every image succeeded.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

from ..data.images import IMAGE_EXTS, list_images, read_image_rgb, tensor_to_uint8, write_image_rgb
from ..errors import CheckpointError, FlagError, InputError
from ..metrics import calculate_psnr, calculate_ssim
from ..fileio import atomic_write_bytes
from ..checkpoints import load_file, load_into, model_weights
from ..devices import resolve_device


def noise_rng(seed: int, index: int) -> np.random.Generator:
    """The generator that draws the noise of test image ``index`` (0-based, sorted order)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def add_noise(img: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """``HxWx3`` uint8 -> float32 ``HxWx3`` in [0, 1]: x / 255 + N(0, 1) x level / 255, clipped."""
    clean = img.astype(np.float32) / 255.0
    noisy = clean + rng.standard_normal(img.shape) * level / 255.0  # float64, the reference's order
    return np.clip(noisy, 0.0, 1.0).astype(np.float32)


def evaluate_model(model: torch.nn.Module, images, level: float, seed: int, device, y: bool = False,
                   crop_border: int = 0) -> list[tuple[str, float, float, np.ndarray]]:
    """Denoise ``images`` (``[(name, HxWx3 uint8)]``, in the order given) and score them.

    Image ``i`` gets the noise of :func:`noise_rng` ``(seed, i)``. Returns
    ``[(name, psnr, ssim, restored HxWx3 uint8)]``. The model runs in eval mode under
    ``torch.no_grad`` on ``device`` with float32 inputs ``[1, 3, H, W]``; its training mode is
    restored afterwards. Raises :class:`InputError` naming an image too small for SSIM.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    results = []
    try:
        for index, (name, img) in enumerate(images):
            noisy = add_noise(img, level, noise_rng(seed, index))
            x = torch.from_numpy(np.ascontiguousarray(noisy.transpose(2, 0, 1)))[None].to(device)
            with torch.no_grad():
                out = model(x)
            restored = tensor_to_uint8(out.float().cpu())
            if restored.shape != img.shape:
                raise InputError(f"{name}: the model output is {restored.shape[0]}x{restored.shape[1]}, the image {img.shape[0]}x{img.shape[1]}; "
                                 "eval needs a same-size (denoising) model")
            try:
                psnr = calculate_psnr(img, restored, crop_border, test_y_channel=y, color_order="rgb")
                ssim = calculate_ssim(img, restored, crop_border, test_y_channel=y, color_order="rgb")
            except ValueError as exc:
                raise InputError(f"{name}: {exc}") from None
            results.append((name, psnr, ssim, restored))
    finally:
        model.train(was_training)
    return results


def format_log(results) -> str:
    """``log.txt`` text: the reference's per-image lines and its final average line (no newline after)."""
    lines = [f"{name}: PSNR, {psnr}; SSIM, {ssim}." for name, psnr, ssim, *_ in results]
    n = max(len(results), 1)
    avg_psnr = sum(r[1] for r in results) / n
    avg_ssim = sum(r[2] for r in results) / n
    lines.append(f"avg PSNR: {avg_psnr}, avg SSIM: {avg_ssim}.")
    return "\n".join(lines)


def load_test_images(testset: str, flag: str = "--testset") -> list[tuple[str, np.ndarray]]:
    """``[(file name, HxWx3 uint8)]`` sorted by name; ``"default"`` means the built-in test images."""
    if testset == "default":
        from ..data.builtin import builtin_test_images

        return builtin_test_images()
    return [(os.path.basename(p), read_image_rgb(p)) for p in list_images(testset, exts=IMAGE_EXTS, flag=flag)]


def load_eval_model(ckpt_path: str, nf: int | None = None, nb: int | None = None, gc: int | None = None,
                    key: str = "model_meta") -> torch.nn.Module:
    """The RRDBNet of a checkpoint's ``key`` network (size inferred, flags override), weights loaded."""
    from ..models.rrdb import build_rrdb, infer_rrdb_config

    sd = model_weights(load_file(ckpt_path), ckpt_path, key=key)
    try:
        config = infer_rrdb_config(sd)
    except ValueError as exc:
        raise CheckpointError(f"{ckpt_path}: {exc}") from None
    for flag, value in (("nf", nf), ("nb", nb), ("gc", gc)):
        if value is not None:
            if value < 1:
                raise FlagError(f"--{flag} must be a positive integer, got {value}")
            config[flag] = int(value)
    model = build_rrdb(config)
    load_into(model, sd, ckpt_path, what=key)
    return model


def output_names(names: list[str]) -> list[str]:
    """File names of the restored PNGs: the input name, ``x.jpg`` -> ``x.png`` unless that is taken."""
    taken = {n for n in names if n.lower().endswith(".png")}
    out = []
    for name in names:
        stem, ext = os.path.splitext(name)
        if ext.lower() == ".png":
            out.append(name)
        else:
            out.append(stem + ".png" if stem + ".png" not in taken else name + ".png")
            taken.add(out[-1])
    return out


def run_eval(args) -> int:
    if args.level < 0:
        raise FlagError(f"--level must be >= 0, got {args.level}")
    if args.crop_border < 0:
        raise FlagError(f"--crop_border must be >= 0, got {args.crop_border}")
    device = resolve_device(args.device)
    model = load_eval_model(args.ckpt, args.nf, args.nb, args.gc).to(device)
    images = load_test_images(args.testset)

    save = args.save
    try:
        os.makedirs(save, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--save {save}: cannot create the folder ({exc.strerror or exc})") from None
    if not os.path.isdir(save) or not os.access(save, os.W_OK | os.X_OK):
        raise InputError(f"--save {save}: folder is not writable")

    try:
        results = evaluate_model(model, images, args.level, args.seed, device, y=args.y, crop_border=args.crop_border)
    except torch.cuda.OutOfMemoryError:
        raise InputError(f"--testset {args.testset}: an image does not fit in {device} memory; "
                         "try --device cpu") from None
    for (name, psnr, ssim, restored), out_name in zip(results, output_names([r[0] for r in results])):
        write_image_rgb(os.path.join(save, out_name), restored)
        print(f"{name}: PSNR, {psnr}; SSIM, {ssim}.")
    text = format_log(results)
    try:
        atomic_write_bytes(text.encode("utf-8"), os.path.join(save, "log.txt"))
    except OSError as exc:
        raise InputError(f"--save {save}: cannot write log.txt ({exc.strerror or exc})") from None
    print(text.rsplit("\n", 1)[-1])
    sys.stdout.flush()
    return 0


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval",
        help="denoise a test folder with a checkpoint and report PSNR/SSIM (the reference eval script)",
        description="Add Gaussian noise of --level to every image of --testset, restore it with the "
        "checkpoint's meta network, write the restored images and log.txt into --save.",
    )
    p.add_argument("--ckpt", required=True, help="checkpoint (model_N.pt, a training state, or a state_dict)")
    p.add_argument("--testset", default="default",
                   help="folder of clean test images, or 'default' for the built-in images (default)")
    p.add_argument("--save", required=True, help="folder for the restored images and log.txt")
    p.add_argument("--level", type=float, default=50, help="noise sigma on the 0..255 scale (default 50)")
    p.add_argument("--seed", type=int, default=0, help="noise seed; image i uses (seed, i) (default 0)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    p.add_argument("--y", action="store_true", help="PSNR/SSIM on the BT.601 Y channel instead of RGB")
    p.add_argument("--crop_border", type=int, default=0, help="pixels removed on each side before the metrics")
    p.add_argument("--nf", type=int, default=None, help="RRDB width (default: from the checkpoint)")
    p.add_argument("--nb", type=int, default=None, help="number of RRDB blocks (default: from the checkpoint)")
    p.add_argument("--gc", type=int, default=None, help="RRDB growth channels (default: from the checkpoint)")
    p.set_defaults(func=run_eval)
    return p
