"""``dil-fast crop``: cut a folder of images into square patches on a grid (the released crop script).

Every image of ``--input`` (sorted by file name; PNG, JPEG, BMP, WebP; read with the policies of
:mod:`dil_fast.data.images`) is cut into ``--size`` x ``--size`` windows whose top-left corners lie
on a grid of step ``--stride`` starting at (0, 0); only windows that fit entirely are kept (a
remainder narrower than ``--size`` at the right/bottom is dropped). Patches are written as PNG
named ``000001.png``, ``000002.png``, ... in one global order: image order, then row-major
(top to bottom, left to right inside an image). The order does not depend on ``--workers``.

Work is spread over ``--workers`` processes, one image per task. Each worker writes its patches
into a hidden staging folder inside ``--output``; when every image has been cut, the main process
renames them to their final numbers (a rename is atomic, so a final name never holds half a file).
If anything fails, the staging folder is removed and no new patch appears in ``--output``.
Existing files in ``--output`` with the same names are replaced; other files are left alone.
The staging folder, ``.dil_fast_crop.<pid>.<random>``, is locked while the crop runs; a crop
killed outright (``kill -9``) leaves it behind, and the next crop into the same ``--output``
removes every stale one when it starts (:func:`dil_fast.staging.stale_folders` says which).
Progress follows :mod:`dil_fast._progress`: a bar on a terminal, plain lines in a pipe or a log.

Bad input (one-line error, exit 2): a missing or empty ``--input`` folder, a corrupt or
unsupported file (named), ``--size``/``--stride``/``--workers`` not positive, ``--output`` equal to
``--input`` or not writable. An image smaller than ``--size`` in either dimension yields no patch:
it is skipped with a warning on stderr (count and names) -- a dataset with a few small images
stays usable, as in the released script; if no image yields any patch, that is an error.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

from .. import _progress
from ..errors import FlagError, InputError
from ..staging import lock_folder, release_folder_lock, stale_folders
from .images import encode_png, list_images, read_image_rgb, worker_context

CROP_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
STAGING_PREFIX = ".dil_fast_crop."


def grid_positions(height: int, width: int, size: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners ``(y, x)`` of the full ``size`` x ``size`` windows, row-major."""
    if height < size or width < size:
        return []
    ys = range(0, height - size + 1, stride)
    xs = range(0, width - size + 1, stride)
    return [(y, x) for y in ys for x in xs]


def crop_grid(img, size: int, stride: int) -> list:
    """The full windows of an ``HxWxC`` array on the grid, row-major (views, not copies)."""
    h, w = img.shape[:2]
    return [img[y : y + size, x : x + size] for y, x in grid_positions(h, w, size, stride)]


def _cut_one(task) -> tuple[int, int, int, int]:
    """Worker: cut image ``index`` into staging files ``{index:07d}_{k:06d}.png``; returns counts."""
    index, path, size, stride, staging = task
    img = read_image_rgb(path)
    patches = crop_grid(img, size, stride)
    for k, patch in enumerate(patches):
        with open(os.path.join(staging, f"{index:07d}_{k:06d}.png"), "wb") as f:
            f.write(encode_png(patch))
    return index, len(patches), img.shape[0], img.shape[1]


def _worker_init() -> None:
    import cv2

    cv2.setNumThreads(1)  # one image per process already; avoid oversubscribing the cores


def _missing_folders(path: str) -> list[str]:
    """The folders ``os.makedirs(path)`` would create, deepest first."""
    out = []
    path = os.path.abspath(path)
    while not os.path.exists(path):
        out.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return out


def _remove_empty(folders: list[str]) -> None:
    """Remove the folders a failed crop created, deepest first, while they are empty."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            return


def _positive(flag: str, value) -> int:
    if value is None or int(value) < 1:
        raise FlagError(f"{flag} must be a positive integer, got {value}")
    return int(value)


def crop_folder(
    input_dir, output_dir, size: int = 256, stride: int = 256, workers: int = 1, progress: bool = True
) -> dict:
    """Cut every image of ``input_dir`` into patches in ``output_dir`` (see the module docstring).

    Returns ``{"patches": n, "images": m, "skipped": [names of images smaller than size]}``.
    ``progress=False`` reports no progress.
    """
    started = time.time()
    size = _positive("--size", size)
    stride = _positive("--stride", stride)
    workers = _positive("--workers", workers)
    input_dir, output_dir = os.fspath(input_dir), os.fspath(output_dir)
    paths = list_images(input_dir, exts=CROP_EXTS, flag="--input")
    if os.path.realpath(input_dir) == os.path.realpath(output_dir):
        raise FlagError(f"--output {output_dir}: must differ from --input")
    for path in stale_folders(output_dir, STAGING_PREFIX, started):
        shutil.rmtree(path, ignore_errors=True)
    created = _missing_folders(output_dir)  # removed again when the crop fails: nothing is left
    try:
        os.makedirs(output_dir, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}.", dir=output_dir)
    except OSError as exc:
        _remove_empty(created)
        raise InputError(f"--output {output_dir}: cannot create or write the folder ({exc.strerror or exc})") from None

    lock = None
    failed = True
    try:
        lock = lock_folder(staging)
        tasks = [(i, p, size, stride, staging) for i, p in enumerate(paths)]
        counts = [0] * len(paths)
        with _progress.progress(len(paths), desc="crop", unit="img", enabled=progress) as bar:
            if workers == 1 or len(paths) == 1:
                for index, n, _, _ in map(_cut_one, tasks):
                    counts[index] = n
                    bar.update(1)
            else:
                with worker_context() as ctx:
                    pool = ProcessPoolExecutor(
                        max_workers=min(workers, len(paths)), initializer=_worker_init, mp_context=ctx
                    )
                    try:
                        for index, n, _, _ in pool.map(_cut_one, tasks, chunksize=1):
                            counts[index] = n
                            bar.update(1)
                    finally:
                        # on an error, do not wait for the images still queued
                        pool.shutdown(wait=True, cancel_futures=True)

        skipped = [os.path.basename(p) for p, n in zip(paths, counts) if n == 0]
        total = sum(counts)
        if total == 0:
            raise InputError(f"--input {input_dir}: no image is at least {size}x{size} pixels; nothing to crop")
        number = 0
        for index, n in enumerate(counts):
            for k in range(n):
                number += 1
                os.replace(
                    os.path.join(staging, f"{index:07d}_{k:06d}.png"), os.path.join(output_dir, f"{number:06d}.png")
                )
        failed = False
    except OSError as exc:
        raise InputError(f"--output {output_dir}: cannot write patches ({exc.strerror or exc})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        release_folder_lock(lock)
        if failed:
            _remove_empty(created)

    if skipped:
        shown = ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        print(f"warning: skipped {len(skipped)} image(s) smaller than {size}x{size}: {shown}", file=sys.stderr)
    return {"patches": total, "images": len(paths), "skipped": skipped}


def add_crop_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "crop",
        help="cut a folder of images into square patches (the released crop script)",
        description="Cut every image of --input into --size x --size patches on a --stride grid, "
        "written as 000001.png, 000002.png, ... into --output.",
    )
    p.add_argument("--input", required=True, help="folder of images (PNG, JPEG, BMP, WebP)")
    p.add_argument("--output", required=True, help="folder for the patches (created if missing)")
    p.add_argument("--size", type=int, default=256, help="patch side in pixels")
    p.add_argument("--stride", type=int, default=256, help="grid step in pixels")
    p.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="worker processes (at most 8, at most the CPU count)",
    )
    p.add_argument(
        "--no_progress",
        action="store_true",
        help="no progress report (default: a bar on a terminal, a line every "
        f"{_progress.LOG_INTERVAL_S:.0f} s in a pipe or a log)",
    )
    p.set_defaults(func=run_crop)
    return p


def run_crop(args) -> int:
    summary = crop_folder(
        args.input, args.output, size=args.size, stride=args.stride, workers=args.workers, progress=not args.no_progress
    )
    print(
        f"wrote {summary['patches']} patches of {args.size}x{args.size} from {summary['images']} images "
        f"to {args.output}"
    )
    return 0
