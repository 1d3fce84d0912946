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
  partly-black image without complaint, so PNGs are also checked for a complete ``IEND`` chunk.

Writing is atomic: the PNG is encoded in memory, written to a temporary name in the target folder
and renamed, so a crash never leaves half a file under the final name.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:  # annotations only: torch is imported where it is used
    import torch

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
    buf = np.frombuffer(data, dtype=np.uint8)
    # JPEG is always 8-bit without alpha: decode as colour so its EXIF orientation is applied,
    # as the released code's cv2.imread does; other formats unchanged so the policies can see them
    flags = cv2.IMREAD_COLOR if data.startswith(_JPEG_SOI) else cv2.IMREAD_UNCHANGED
    try:
        img = cv2.imdecode(buf, flags)
    except cv2.error:
        img = None
    if img is None or img.size == 0:
        raise InputError(f"{path}: not an image or a corrupt/truncated image file")
    return img


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
