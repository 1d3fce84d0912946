"""``dil-fast pack``: decode a folder of images into a packed uint8 patch store.

A store is a folder holding two files:

* ``patches.u8``: the raw ``N×H×W×3`` uint8 RGB array (C order, no header), memory-mappable;
* ``index.json``: format/version, ``count``/``height``/``width``/``channels``, the source images
  (``name``, ``shape`` ``[h, w, 3]``, first patch ``first``, patch ``count``, grid origin of each
  patch derivable from ``size``/``stride``) and a checksum: SHA-256 of every ``chunk_bytes`` chunk
  of ``patches.u8`` (``chunks``) and SHA-256 of their concatenated digests (``sha256``), so
  verification runs chunks in parallel and names the damaged patch range.

Full images are cut on a grid (``--size S --stride T``: top-left corners ``0, T, 2T, ...`` while
the patch fits; the DF2K recipe is ``--size 256 --stride 256``); without ``--size`` every file is
taken as one ready patch and all must have the same shape. Decoding goes through
:func:`dil_fast.data.images.read_image_rgb` (one reader for the whole package), in worker
processes, with progress by the rule of :mod:`dil_fast._progress` (a bar on a terminal, plain
lines in a pipe or a log).

The store is written under ``OUTPUT.tmp-<pid>`` and renamed at the end, so an interrupted run never
leaves a half store under the final name; a failed run removes that folder, and a run killed
outright (``kill -9``, a lost node) leaves it for the next ``pack`` to the same ``OUTPUT``, which
removes every stale one when it starts (see :func:`dil_fast.staging.stale_folders`). Replacing a store
(``--overwrite``) moves the old one to ``OUTPUT.old-<pid>`` for the moment of the swap; a run
killed inside that moment is repaired likewise (the old store is put back when no new one arrived).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from .. import _progress
from ..errors import FlagError, InputError
from ..staging import lock_folder, release_folder_lock, stale_folders
from .images import list_images, read_image_rgb, worker_context

__all__ = ["PACK_EXTS", "STORE_FORMAT", "add_pack_parser", "run_pack", "pack_folder", "chunk_digests"]

PACK_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
STORE_FORMAT = "dil_fast.patchstore"
STORE_VERSION = 1
DATA_FILE = "patches.u8"
INDEX_FILE = "index.json"
CHUNK_BYTES = 64 << 20


# ----------------------------------------------------------------------------------------------
# Source headers: the channel count (the reader converts gray to RGB, as everywhere in dil_fast;
# the summary counts the conversions) and, for ready patches, the size most files have.


def _header_info(path: str) -> tuple[int, int, int] | None:
    """``(height, width, channels)`` (channels 1 gray, 3 colour) from a PNG/JPEG header; None when unknown."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return None
    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 26:
        width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        return height, width, 1 if head[25] in (0, 4) else 3
    if head.startswith(b"\xff\xd8"):
        i = 2
        while i + 9 < len(head):
            if head[i] != 0xFF:
                return None
            marker = head[i + 1]
            if marker == 0xFF:
                i += 1
                continue
            seg = int.from_bytes(head[i + 2 : i + 4], "big")
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                height, width = int.from_bytes(head[i + 5 : i + 7], "big"), int.from_bytes(head[i + 7 : i + 9], "big")
                return height, width, 1 if head[i + 9] == 1 else 3
            i += 2 + seg
    return None


def _ready_shape(paths) -> tuple[int, int] | None:
    """The ``(height, width)`` most ready patches have, from their headers (None when none is known):
    the store's patch size without ``--size``, so one odd file is the one refused or skipped."""
    sizes = Counter(info[:2] for info in map(_header_info, paths) if info is not None)
    return sizes.most_common(1)[0][0] if sizes else None


@dataclass
class _Result:
    index: int
    name: str
    shape: tuple
    channels: int | None
    patches: np.ndarray | None  # [n, S, S, 3] uint8
    error: str | None = None
    kind: str = ""  # "bad" (unreadable) or "small" (smaller than the patch)


def _cut(img: np.ndarray, size: int | None, stride: int | None) -> np.ndarray:
    if size is None:
        return img[None]
    h, w, _ = img.shape
    ys = range(0, h - size + 1, stride)
    xs = range(0, w - size + 1, stride)
    return np.stack([img[y : y + size, x : x + size] for y in ys for x in xs])


def _work(job) -> _Result:
    index, path, size, stride = job
    name = os.path.basename(path)
    try:
        img = read_image_rgb(path)
    except InputError as exc:
        return _Result(index, name, (), None, None, str(exc), "bad")
    if size is not None and (img.shape[0] < size or img.shape[1] < size):
        msg = f"{path}: image is {img.shape[1]}x{img.shape[0]}, smaller than the {size}x{size} patch (--size)"
        return _Result(index, name, img.shape, None, None, msg, "small")
    info = _header_info(path)
    return _Result(index, name, tuple(img.shape), None if info is None else info[2], _cut(img, size, stride))


class _ChunkHasher:
    """SHA-256 per fixed-size chunk of a byte stream fed in arbitrary pieces."""

    def __init__(self, chunk_bytes: int):
        self.chunk_bytes = chunk_bytes
        self.digests: list[str] = []
        self._h = hashlib.sha256()
        self._fill = 0

    def update(self, data: memoryview) -> None:
        while len(data):
            take = min(len(data), self.chunk_bytes - self._fill)
            self._h.update(data[:take])
            self._fill += take
            data = data[take:]
            if self._fill == self.chunk_bytes:
                self._flush()

    def _flush(self):
        self.digests.append(self._h.hexdigest())
        self._h = hashlib.sha256()
        self._fill = 0

    def finish(self) -> list[str]:
        if self._fill:
            self._flush()
        return self.digests


def combine_digests(digests: list[str]) -> str:
    return hashlib.sha256("".join(digests).encode()).hexdigest()


def chunk_digests(path: str, chunk_bytes: int, threads: int = 8) -> list[str]:
    """SHA-256 of every chunk of a file, computed by threads (hashlib releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    size = os.path.getsize(path)
    starts = list(range(0, size, chunk_bytes))

    def one(start):
        with open(path, "rb") as f:
            f.seek(start)
            return hashlib.sha256(f.read(min(chunk_bytes, size - start))).hexdigest()

    with ThreadPoolExecutor(max(1, threads)) as pool:
        return list(pool.map(one, starts))


def _results(jobs, workers: int, show_progress: bool):
    with _progress.progress(len(jobs), desc="pack", unit="img", enabled=show_progress) as bar:
        if workers <= 1:
            for job in jobs:
                yield _work(job)
                bar.update()
            return
        with worker_context() as ctx, ctx.Pool(workers) as pool:
            for res in pool.imap(_work, jobs, chunksize=4):
                yield res
                bar.update()


def pack_folder(
    input_dir: str,
    output: str,
    *,
    size: int | None = None,
    stride: int | None = None,
    workers: int = 1,
    skip_bad: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    chunk_bytes: int = CHUNK_BYTES,
) -> dict:
    """Pack ``input_dir`` into the store folder ``output``; returns the index (see module doc).

    Raises :class:`InputError` (bad folder or files, named) or :class:`FlagError` (bad values).
    """
    if size is not None and size < 1:
        raise FlagError(f"--size {size}: must be a positive number of pixels")
    if stride is not None and size is None:
        raise FlagError("--stride needs --size (ready patches are taken whole)")
    if size is not None:
        stride = size if stride is None else stride
        if stride < 1:
            raise FlagError(f"--stride {stride}: must be a positive number of pixels")
    started = time.time()
    output = os.path.abspath(output)
    parent = os.path.dirname(output)
    if not os.path.isdir(parent):
        raise InputError(f"--output {output}: parent folder {parent} does not exist")
    _repair_killed_runs(output, started)
    if os.path.exists(output) and not overwrite:
        raise FlagError(f"--output {output}: already exists (pass --overwrite to replace it)")
    paths = list_images(input_dir, PACK_EXTS, flag="--input")

    tmp = f"{output}.tmp-{os.getpid()}"
    try:
        os.mkdir(tmp)
        lock = lock_folder(tmp)
    except OSError as exc:
        raise InputError(f"--output {output}: cannot create the store folder {tmp} ({exc.strerror or exc})") from None
    try:
        try:
            index = _write_store(paths, tmp, size, stride, workers, skip_bad, progress, chunk_bytes, input_dir)
            if os.path.exists(output):
                old = f"{output}.old-{os.getpid()}"
                os.replace(output, old)
                os.replace(tmp, output)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, output)
        except OSError as exc:  # the inputs' read errors are InputErrors already: this is the output side
            raise InputError(f"--output {output}: cannot write the store ({exc.strerror or exc})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        release_folder_lock(lock)
    return index


def _repair_killed_runs(output: str, started: float) -> None:
    """Clean up after earlier packs to ``output`` that were killed: remove their ``.tmp-<pid>`` folders
    and put back a store that a killed ``--overwrite`` had moved aside without replacing it."""
    parent, base = os.path.split(output)
    for path in stale_folders(parent, base + ".tmp-", started):
        shutil.rmtree(path, ignore_errors=True)
    # an .old- folder exists only between two renames, so only a dead PID makes it stale
    for path in stale_folders(parent, base + ".old-", started, by_age=False):
        if os.path.exists(output):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.replace(path, output)
            except OSError:
                pass  # left as it is; the folder name says what it holds


def _write_store(paths, tmp, size, stride, workers, skip_bad, show_progress, chunk_bytes, input_dir) -> dict:
    jobs = [(i, p, size, stride) for i, p in enumerate(paths)]
    hasher = _ChunkHasher(chunk_bytes)
    sources, skipped, gray = [], {"bad": [], "small": [], "other_size": []}, []
    shape = None if size is None else (size, size)  # (H, W) of every patch
    ready = _ready_shape(paths) if size is None else None  # the ready patches' size most files have
    count = 0
    results = _results(jobs, workers, show_progress)
    with open(os.path.join(tmp, DATA_FILE), "wb") as out, contextlib.closing(results):
        for res in results:
            if res.error is not None:
                if not skip_bad:
                    raise InputError(res.error + ("" if res.kind == "small" else " (pass --skip_bad to skip it)"))
                skipped[res.kind].append(res.name)
                continue
            n, h, w, _ = res.patches.shape
            if n == 0:
                continue
            if shape is None:
                shape = ready or (h, w)
            if (h, w) != shape:
                if skip_bad:
                    skipped["other_size"].append(res.name)
                    continue
                raise InputError(
                    f"--input {input_dir}: ready patches of different sizes: most are {shape[1]}x{shape[0]}, "
                    f"{res.name} is {w}x{h}; pass --size/--stride to cut them, or --skip_bad to skip the odd ones"
                )
            if res.channels == 1:
                gray.append(res.name)  # converted to RGB by the reader, as everywhere in dil_fast
            buf = memoryview(np.ascontiguousarray(res.patches)).cast("B")
            out.write(buf)
            hasher.update(buf)
            sources.append({"name": res.name, "shape": list(res.shape), "first": count, "count": n})
            count += n
    if count == 0:
        raise InputError(
            f"--input {input_dir}: no usable image ({len(skipped['bad'])} unreadable, "
            f"{len(skipped['small'])} smaller than the patch, {len(skipped['other_size'])} of another size skipped)"
        )
    digests = hasher.finish()
    index = {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "data": DATA_FILE,
        "dtype": "uint8",
        "layout": "NHWC",
        "count": count,
        "height": shape[0],
        "width": shape[1],
        "channels": 3,
        "size": size,
        "stride": stride,
        "chunk_bytes": chunk_bytes,
        "chunks": digests,
        "sha256": combine_digests(digests),
        "skipped": {"unreadable": skipped["bad"], "too_small": skipped["small"], "other_size": skipped["other_size"]},
        "gray": gray,
        "sources": sources,
    }
    with open(os.path.join(tmp, INDEX_FILE), "w") as f:
        json.dump(index, f)
    return index


def add_pack_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``pack`` sub-command to an ``argparse`` sub-parser set; returns its parser."""
    p = subparsers.add_parser(
        "pack",
        help="decode a folder of images into a packed uint8 patch store",
        description="Decode PNG/JPEG/BMP/WebP images into a packed uint8 patch store (a folder with "
        "patches.u8 and index.json) for `dil-fast train --loader store`.",
    )
    p.add_argument("--input", required=True, help="folder of images (not recursive)")
    p.add_argument("--output", required=True, help="store folder to create")
    p.add_argument(
        "--size",
        type=int,
        default=None,
        help="cut full images into SIZE x SIZE patches (default: every file is one ready patch)",
    )
    p.add_argument("--stride", type=int, default=None, help="grid step of the cut (default: --size)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="decoding processes")
    p.add_argument("--skip_bad", action="store_true", help="skip unreadable or too-small images (counted)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument(
        "--no_progress",
        action="store_true",
        help="no progress report (default: a bar on a terminal, a line every "
        f"{_progress.LOG_INTERVAL_S:.0f} s in a pipe or a log)",
    )
    return p


def run_pack(args) -> int:
    """Run ``dil-fast pack`` from parsed arguments; prints a one-line summary; returns 0."""
    if args.workers < 1:
        raise FlagError(f"--workers {args.workers}: must be at least 1")
    index = pack_folder(
        args.input,
        args.output,
        size=args.size,
        stride=args.stride,
        workers=args.workers,
        skip_bad=args.skip_bad,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    sk = index["skipped"]
    gib = index["count"] * index["height"] * index["width"] * 3 / 2**30
    msg = (
        f"packed {index['count']} patches of {index['width']}x{index['height']} from "
        f"{len(index['sources'])} images into {args.output} ({gib:.2f} GiB)"
    )
    if sk["unreadable"] or sk["too_small"] or sk["other_size"]:
        msg += f"; skipped {len(sk['unreadable'])} unreadable and {len(sk['too_small'])} too-small images"
        if sk["other_size"]:
            msg += f" and {len(sk['other_size'])} of another size"
    if index["gray"]:
        msg += f"; {len(index['gray'])} grayscale image(s) converted to RGB"
    print(msg)
    return 0
