"""Image files in and out: one reader, one writer, one conversion each way.

Everything in dil_fast sees images as ``HxWx3 uint8`` RGB arrays (the released code reads with OpenCV
and converts BGR to RGB; so do we). Files are read from their bytes with ``cv2.imdecode`` so paths
with non-ASCII characters work on every platform.

Policies for files that are not plain 8-bit RGB (all errors are :class:`InputError` naming the file):

* **grayscale** (1 channel, 8-bit): *converted* -- the gray value is replicated into R, G and B
  (the same thing the released code's ``cv2.imread(path)`` does implicitly).
* **RGBA / gray+alpha**: *refused* unless the alpha channel is fully opaque (all 255), in which
  case alpha is dropped. A translucent pixel has no single right colour (the released code silently
  drops alpha, which keeps whatever colour sits under a transparent pixel); we refuse and say so.
* **16-bit** (PNG/TIFF with uint16 samples): *refused* with "16-bit image; convert to 8-bit".
  Training and metrics are defined on 8-bit data (the released code quantises to uint8 and its PSNR
  uses a peak of 255); silently rescaling would change the numbers, so the user chooses the
  conversion (e.g. ``round(x / 257)``).
* **float / other depths**: refused likewise.
* **JPEG EXIF orientation** is applied (the image is rotated/flipped upright), as the released code's
  ``cv2.imread`` does; orientation metadata in other formats is ignored.
* **not an image / corrupt / truncated**: refused. OpenCV decodes some truncated PNGs into a
  partly-black image without complaint, so PNGs are also checked for a complete ``IEND`` chunk;
  libjpeg decodes damaged JPEG data into a partly-grey image and only says so on stderr
  ("Corrupt JPEG data", "Premature end"), so those messages refuse the file too.

What libpng and libjpeg write to the process's stderr while decoding (``libpng error: ...``,
``libpng warning: iCCP: ...``) is captured (:func:`_decode_bytes`): a refusal quotes it in its one
line, and a warning about a file that decodes whole is dropped, so no library chatter precedes or
interleaves the tool's own lines.

:func:`check_images` decodes a whole list of files under these policies (in worker processes for
large lists) and checks their size, so a command refuses a bad file before it writes anything.

Writing is atomic: the PNG is encoded in memory, written to a temporary name in the target folder
and renamed, so a crash never leaves half a file under the final name.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:  # annotations only: torch is imported where it is used
    import torch

from .. import _progress
from ..errors import InputError
from ..fileio import atomic_write_bytes

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"
_JPEG_SOI = b"\xff\xd8\xff"


def _decode(path: str) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise InputError(f"{path}: image file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, not an image file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read image file ({exc.strerror or exc})") from None
    if not data:
        raise InputError(f"{path}: empty file, not an image")
    if data.startswith(_PNG_SIGNATURE) and _PNG_IEND not in data[-64:]:
        raise InputError(f"{path}: truncated or corrupt PNG (no IEND chunk at the end)")
    # JPEG is always 8-bit without alpha: decode as colour so its EXIF orientation is applied,
    # as the released code's cv2.imread does; other formats unchanged so the policies can see them
    flags = cv2.IMREAD_COLOR if data.startswith(_JPEG_SOI) else cv2.IMREAD_UNCHANGED
    img, said = _decode_bytes(np.frombuffer(data, dtype=np.uint8), flags)
    damage = _damage(said)
    if img is None or img.size == 0 or damage:
        why = damage or _first_line(said)
        raise InputError(f"{path}: not an image or a corrupt/truncated image file" + (f" ({why})" if why else ""))
    return img


_CAPTURE_LOCK = threading.Lock()
_capture: tuple[int, int] | None = None  # (pid, descriptor) of this process's file for the decoders' stderr


def _capture_fd() -> int:
    """This process's unlinked temporary file for the decoders' stderr (a forked worker makes its own)."""
    global _capture
    if _capture is None or _capture[0] != os.getpid():
        fd, name = tempfile.mkstemp(prefix=".dil_fast_decode.")
        try:
            os.unlink(name)  # nothing is left on disk, even after a kill
        except OSError:
            pass  # (Windows keeps an open file's name until it is closed)
        _capture = (os.getpid(), fd)
    return _capture[1]


def _decode_bytes(buf: np.ndarray, flags: int) -> tuple[np.ndarray | None, str]:
    """``cv2.imdecode`` with what the C libraries write to file descriptor 2 meanwhile captured:
    ``(image or None, their text)``. libpng and libjpeg report damage only there. Other threads'
    writes to stderr during the decode (milliseconds) land in the capture too, so they are
    serialised with it; a process without a usable descriptor 2 decodes without capturing."""
    with _CAPTURE_LOCK:
        try:
            cap = _capture_fd()
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):
            return _imdecode(buf, flags), ""
        try:
            os.ftruncate(cap, 0)
            os.lseek(cap, 0, os.SEEK_SET)
            os.dup2(cap, 2)
            try:
                img = _imdecode(buf, flags)
            finally:
                os.dup2(saved, 2)
        finally:
            os.close(saved)
        size = os.lseek(cap, 0, os.SEEK_CUR)
        os.lseek(cap, 0, os.SEEK_SET)
        said = os.read(cap, min(size, 1 << 16)) if size else b""
        return img, said.decode("utf-8", "replace")


def _imdecode(buf: np.ndarray, flags: int) -> np.ndarray | None:
    try:
        return cv2.imdecode(buf, flags)
    except cv2.error:
        return None


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0][:160] if lines else ""


def _damage(said: str) -> str:
    """The decoder message that says the data is damaged (libpng's errors, libjpeg's corrupt or
    cut-short data), or ``""``; benign warnings (an sRGB profile, extraneous bytes before a marker)
    are not damage."""
    for line in said.splitlines():
        text = line.strip()
        low = text.lower()
        if low.startswith("libpng error") or "premature end" in low:
            return text[:160]
        if low.startswith("corrupt jpeg data") and "extraneous bytes" not in low:
            return text[:160]
    return ""


def read_image_rgb(path) -> np.ndarray:
    """Read an image file as ``HxWx3 uint8`` RGB, applying the module's policies (see above)."""
    path = os.fspath(path)
    img = _decode(path)
    if img.dtype == np.uint16:
        raise InputError(f"{path}: 16-bit image; convert it to 8-bit first (e.g. round(x / 257))")
    if img.dtype != np.uint8:
        raise InputError(f"{path}: unsupported sample type {img.dtype}; only 8-bit images are supported")
    if img.ndim == 2:
        img = img[:, :, None]
    channels = img.shape[2]
    if channels in (2, 4):
        alpha = img[:, :, -1]
        if not bool((alpha == 255).all()):
            raise InputError(
                f"{path}: image has a transparent alpha channel; flatten it onto a background or save it without alpha"
            )
        img = img[:, :, :-1]
        channels -= 1
    if channels == 1:
        return np.ascontiguousarray(np.repeat(img, 3, axis=2))
    if channels == 3:
        return np.ascontiguousarray(img[:, :, ::-1])
    raise InputError(f"{path}: unsupported number of channels ({img.shape[2]})")


def list_images(folder, exts=(".png",), flag: str = "--trainset") -> list[str]:
    """Sorted paths of the files in ``folder`` whose extension (case-insensitive) is in ``exts``.

    Raises :class:`InputError` naming ``flag`` and the folder when it is missing, not a folder or
    holds no matching file. Not recursive; hidden files (names starting with '.') are skipped.
    """
    folder = os.fspath(folder)
    if not os.path.exists(folder):
        raise InputError(f"{flag} {folder}: folder not found")
    if not os.path.isdir(folder):
        raise InputError(f"{flag} {folder}: not a folder")
    exts = tuple(e.lower() for e in exts)
    try:
        names = os.listdir(folder)
    except OSError as exc:
        raise InputError(f"{flag} {folder}: cannot list folder ({exc.strerror or exc})") from None
    paths = sorted(
        os.path.join(folder, n)
        for n in names
        if not n.startswith(".") and n.lower().endswith(exts) and os.path.isfile(os.path.join(folder, n))
    )
    if not paths:
        raise InputError(f"{flag} {folder}: no image files ({', '.join(exts)}) in the folder")
    return paths


def _shape_or_error(path: str) -> tuple[int, int] | InputError:
    """Worker: the ``(height, width)`` of one image decoded under the policies, or its refusal."""
    try:
        return read_image_rgb(path).shape[:2]
    except InputError as exc:
        return exc


@contextlib.contextmanager
def worker_context():
    """The multiprocessing context for the image-decoding worker pools (check, crop, pack), to be
    held while a pool lives: fork on Linux (no ``__main__`` guard needed in a user's script),
    spawn elsewhere. A forked child inherits OpenCV's thread pool without its threads, and
    ``cv2.setNumThreads`` (or a parallel cv2 call) in the child then waits forever on the pool's
    condition variable once this process has used the pool (seen as a hung test suite), so the
    pool is stopped here (one thread) until the workers are done, and its size restored after."""
    import multiprocessing as mp

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    finally:
        cv2.setNumThreads(threads)


def _init_check_worker() -> None:
    cv2.setNumThreads(1)  # one image per process already


def check_images(
    paths,
    *,
    min_size: int = 0,
    size_flag: str = "--patch_size",
    workers: int = 0,
    progress: bool = True,
    known: dict | None = None,
) -> list[tuple[int, int]]:
    """Decode every file of ``paths`` as :func:`read_image_rgb` does and return its ``(height,
    width)``: a command calls it before it creates anything, so a bad file (the first one in the
    order of ``paths``) is refused with its one-line :class:`InputError` while nothing is written
    yet. ``min_size``: an image smaller than ``min_size`` x ``min_size`` is refused too, naming
    ``size_flag``. ``workers`` > 1 decodes in that many processes (a long list only); ``progress``
    reports by the rule of :mod:`dil_fast._progress` (nothing for a short check); ``known``
    (path -> shape) holds shapes already checked and receives the new ones."""
    paths = [os.fspath(p) for p in paths]
    known = {} if known is None else known
    todo = [p for p in dict.fromkeys(paths) if p not in known]
    with _progress.progress(len(todo), desc="checking images", unit="img", enabled=progress and bool(todo)) as bar:
        if workers > 1 and len(todo) >= 64:
            procs = min(workers, len(todo) // 16)
            with worker_context() as ctx, ctx.Pool(procs, initializer=_init_check_worker) as pool:
                chunk = max(1, min(64, len(todo) // (workers * 8)))
                results = pool.imap(_shape_or_error, todo, chunksize=chunk)
                _collect(todo, results, known, bar)  # leaving the with-block stops the workers
        else:
            _collect(todo, map(_shape_or_error, todo), known, bar)
    shapes = [known[p] for p in paths]
    if min_size:
        for path, (h, w) in zip(paths, shapes):
            if h < min_size or w < min_size:
                raise InputError(f"{path}: image is {w}x{h}, smaller than {size_flag} {min_size}")
    return shapes


def _collect(paths, results, known: dict, bar) -> None:
    for path, shape in zip(paths, results):
        if isinstance(shape, InputError):
            raise shape
        known[path] = tuple(shape)
        bar.update(1)


def encode_png(img: np.ndarray) -> bytes:
    """PNG bytes of an ``HxWx3`` uint8 RGB (or ``HxW`` gray) array."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise ValueError(f"encode_png expects uint8, got {img.dtype}")
    if img.ndim == 3:
        if img.shape[2] != 3:
            raise ValueError(f"encode_png expects HxWx3 RGB, got shape {img.shape}")
        img = img[:, :, ::-1]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img))
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def write_image_rgb(path, img: np.ndarray) -> None:
    """Write an ``HxWx3`` uint8 RGB array as PNG atomically (temp name in the same folder + rename).

    The format is always PNG whatever the extension. Raises :class:`InputError` naming the path
    when the folder cannot be created or written.
    """
    path = os.fspath(path)
    data = encode_png(img)
    try:
        atomic_write_bytes(data, path)
    except OSError as exc:
        raise InputError(f"{path}: cannot write image ({exc.strerror or exc})") from None


def image_to_tensor(img: np.ndarray) -> "torch.Tensor":
    """``HxWx3`` uint8 -> ``[3, H, W]`` float32 in [0, 1] (x / 255)."""
    import torch  # imported here so crop workers and image-only users do not pay for torch

    arr = np.ascontiguousarray(np.asarray(img).transpose(2, 0, 1))
    return torch.from_numpy(arr).float().div_(255.0)


def tensor_to_uint8(t: "torch.Tensor") -> np.ndarray:
    """``[3, H, W]`` (or ``[1, 3, H, W]``) float in [0, 1] -> ``HxWx3`` uint8: x * 255, round, clip.

    Rounding is half-to-even (``torch.round``), as the released code's ``np.round`` / ``torch.round``.
    """
    import torch

    t = t.detach()
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise ValueError(f"tensor_to_uint8 expects one image, got a batch of {t.shape[0]}")
        t = t[0]
    arr = t.float().mul(255.0).round().clamp_(0, 255).to(torch.uint8).cpu().numpy()
    return np.ascontiguousarray(arr.transpose(1, 2, 0))
