"""Built-in sample data: public-domain / CC0 photographs that scikit-image ships in ``skimage/data``.

Nothing is downloaded: the files are located inside the installed scikit-image package
(``pip install dil-fast[samples]`` installs it). They are small, so training and evaluation on
them finish in minutes on a CPU; they stand in for DF2K (training) and Set5 (testing), which are
not redistributed.

Images and licences (as stated in scikit-image's ``skimage.data`` documentation):

=====================  ======  =============================================================
file                   split   source and licence
=====================  ======  =============================================================
astronaut.png          train   Eileen Collins, NASA Great Images database; public domain
rocket.jpg             train   DSCOVR launch on Falcon 9, SpaceX; released into public domain
hubble_deep_field.jpg  train   Hubble eXtreme Deep Field, NASA; public domain
chelsea.png            test    Chelsea the cat, Stefan van der Walt; CC0
coffee.png             test    coffee cup, Rachel Michetti (Pikolo Espresso Bar); CC0
=====================  ======  =============================================================

* :func:`builtin_train_patches` cuts the three training photographs (in the order above) into
  ``size`` x ``size`` patches on a grid of step ``stride`` (default ``size``; only full windows,
  row-major, as ``dil-fast crop``), written as ``000001.png``, ... At 64/64 that is 319 patches.
* :func:`builtin_testset` writes the two test photographs as ``chelsea.png`` and ``coffee.png``,
  each center-cropped to at most 256 x 256 (the crop keeps CPU evaluation of a full-size RRDB
  within seconds per image; the top-left corner is ``((H - h) // 2, (W - w) // 2)``).

Both write into the folder given (created if missing) and are cached: a marker file
``.dil_fast_builtin.json`` records what was written, and a folder whose marker matches the request
and whose files are all present is reused as is. A folder that holds other files and no marker is
refused rather than mixed with ours. Files are written atomically.

The JPEG sources are decoded with OpenCV; a different libjpeg could decode them a few levels
differently, so patch pixels are identical only for the same OpenCV build.
"""

from __future__ import annotations

import json
import os

import numpy as np

from ..errors import InputError, SamplesUnavailable
from ..fileio import atomic_write_bytes
from .crop import crop_grid
from .images import read_image_rgb, write_image_rgb

TRAIN_IMAGES = ("astronaut.png", "rocket.jpg", "hubble_deep_field.jpg")
TEST_IMAGES = ("chelsea.png", "coffee.png")
TEST_MAX_SIDE = 256
_MARKER = ".dil_fast_builtin.json"
_LAYOUT_VERSION = 1


def skimage_data_dir() -> str:
    """The folder of scikit-image's bundled sample images.

    Raises :class:`~dil_fast.errors.SamplesUnavailable` (one line with the fix) when scikit-image
    (the ``samples`` extra) is not installed or lacks the images, so a caller that can do without
    them (the trainer's periodic test) catches exactly that.
    """
    try:
        from importlib.resources import files

        folder = str(files("skimage.data"))
    except (ImportError, TypeError):
        raise SamplesUnavailable(
            "the built-in sample images need scikit-image, which is not installed; install them with: "
            "pip install dil-fast[samples]"
        ) from None
    missing = [n for n in TRAIN_IMAGES + TEST_IMAGES if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise SamplesUnavailable(
            f"scikit-image at {folder} lacks the sample images {', '.join(missing)}; "
            "reinstall it with: pip install --force-reinstall scikit-image"
        )
    return folder


def builtin_image(name: str) -> np.ndarray:
    """One of the bundled photographs as ``HxWx3`` uint8 RGB."""
    if name not in TRAIN_IMAGES + TEST_IMAGES:
        raise ValueError(f"not a built-in image: {name!r}")
    return read_image_rgb(os.path.join(skimage_data_dir(), name))


def center_crop(img: np.ndarray, max_side: int) -> np.ndarray:
    """Central crop of at most ``max_side`` x ``max_side`` (smaller sides are kept whole)."""
    h, w = img.shape[:2]
    ch, cw = min(h, max_side), min(w, max_side)
    y, x = (h - ch) // 2, (w - cw) // 2
    return np.ascontiguousarray(img[y : y + ch, x : x + cw])


def builtin_test_images() -> list[tuple[str, np.ndarray]]:
    """The test images in memory, sorted by name: ``[(file name, HxWx3 uint8), ...]``."""
    return [
        (name.rsplit(".", 1)[0] + ".png", center_crop(builtin_image(name), TEST_MAX_SIDE))
        for name in sorted(TEST_IMAGES)
    ]


def _cached(folder: str, spec: dict) -> bool:
    try:
        with open(os.path.join(folder, _MARKER), encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return False
    if marker.get("spec") != spec:
        return False
    return all(os.path.isfile(os.path.join(folder, n)) for n in marker.get("files", []))


def _prepare_folder(folder: str, flag: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{flag} {folder}: cannot create the folder ({exc.strerror or exc})") from None
    names = [n for n in os.listdir(folder) if not n.startswith(".")]
    if names and not os.path.exists(os.path.join(folder, _MARKER)):
        raise InputError(
            f"{flag} {folder}: folder holds other files; give an empty or new folder for the built-in data"
        )
    # a stale layout of ours: clear our numbered patches / images so nothing from it remains
    if names:
        for n in names:
            if n.endswith(".png"):
                os.unlink(os.path.join(folder, n))
        os.unlink(os.path.join(folder, _MARKER))


def _write_marker(folder: str, spec: dict, files: list[str]) -> None:
    atomic_write_bytes(json.dumps({"spec": spec, "files": files}).encode(), os.path.join(folder, _MARKER))


def builtin_train_patches(folder, size: int = 64, stride: int | None = None) -> str:
    """Cut the training photographs into ``size`` x ``size`` PNG patches in ``folder``; returns it.

    Cached (see the module docstring). ``stride`` defaults to ``size``.
    """
    folder = os.fspath(folder)
    stride = size if stride is None else stride
    if size < 1 or stride < 1:
        raise ValueError(f"size and stride must be positive, got {size}, {stride}")
    spec = {
        "kind": "train",
        "version": _LAYOUT_VERSION,
        "size": int(size),
        "stride": int(stride),
        "images": list(TRAIN_IMAGES),
    }
    if _cached(folder, spec):
        return folder
    images = [builtin_image(n) for n in TRAIN_IMAGES]
    _prepare_folder(folder, "--trainset")
    files = []
    for img in images:
        for patch in crop_grid(img, size, stride):
            name = f"{len(files) + 1:06d}.png"
            write_image_rgb(os.path.join(folder, name), np.ascontiguousarray(patch))
            files.append(name)
    if not files:
        raise InputError(f"--patch_size {size}: larger than every built-in training image")
    _write_marker(folder, spec, files)
    return folder


def builtin_testset(folder) -> str:
    """Write the test photographs (center-cropped to at most 256 x 256) as PNGs into ``folder``; returns it."""
    folder = os.fspath(folder)
    spec = {"kind": "test", "version": _LAYOUT_VERSION, "max_side": TEST_MAX_SIDE, "images": list(TEST_IMAGES)}
    if _cached(folder, spec):
        return folder
    images = builtin_test_images()
    _prepare_folder(folder, "--testset")
    for name, img in images:
        write_image_rgb(os.path.join(folder, name), img)
    _write_marker(folder, spec, [n for n, _ in images])
    return folder
