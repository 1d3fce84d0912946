"""Test images: a folder of clean images (or the built-in ones), or ground truth and degraded images
matched by file name stem (two folders, or one paired folder with ``GT/`` and ``LQ/``); the names of
the restored files.

``filename_tmpl`` (``--filename_tmpl``, BasicSR's option): the degraded image of ``0801.png`` is
named ``filename_tmpl.format("0801")`` plus any image extension, ``'{}x4'`` giving DIV2K's
``0801x4.png``; the default ``'{}'`` is the same stem."""

from __future__ import annotations

import os

import numpy as np

from ..data.folders import (
    DEFAULT_FILENAME_TMPL,
    check_filename_tmpl,
    is_paired_folder,
    paired_files,
    suggest_filename_tmpl,
)
from ..data.images import IMAGE_EXTS, list_images, read_image_rgb
from ..errors import InputError

__all__ = ["load_test_images", "load_paired_images", "load_paired_folder", "is_paired_testset", "output_names"]


def load_test_images(testset: str, flag: str = "--testset") -> list[tuple[str, np.ndarray]]:
    """``[(file name, HxWx3 uint8)]`` sorted by name; ``"default"`` means the built-in test images."""
    if testset == "default":
        from ..data.builtin import builtin_test_images

        return builtin_test_images()
    return [(os.path.basename(p), read_image_rgb(p)) for p in list_images(testset, exts=IMAGE_EXTS, flag=flag)]


def _by_stem(folder: str, flag: str) -> dict[str, str]:
    """``{stem: path}`` of a folder's images; :class:`InputError` when two files share a stem."""
    out: dict[str, str] = {}
    for path in list_images(folder, exts=IMAGE_EXTS, flag=flag):
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in out:
            raise InputError(
                f"{flag} {folder}: {os.path.basename(out[stem])} and {os.path.basename(path)} have the "
                "same name stem; pairs are matched by stem, keep one"
            )
        out[stem] = path
    return out


def _load_pairs(pairs: list[tuple[str, str]], scale: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Read ``[(gt_path, lq_path)]``, sorted by the GT name; each LQ must be 1/scale of its GT."""
    out = []
    for gt_path, lq_path in sorted(pairs, key=lambda pair: os.path.basename(pair[0])):
        clean, degraded = read_image_rgb(gt_path), read_image_rgb(lq_path)
        (H, W), (h, w) = clean.shape[:2], degraded.shape[:2]
        if (H, W) != (h * scale, w * scale):
            want = f"{H // scale}x{W // scale}" if H % scale == 0 and W % scale == 0 else f"1/{scale} of it"
            raise InputError(
                f"{lq_path}: {h}x{w}, but its ground truth {os.path.basename(gt_path)} is {H}x{W}; "
                f"a x{scale} evaluation needs {want}"
            )
        out.append((os.path.basename(gt_path), clean, degraded))
    return out


def load_paired_images(
    gt_folder: str,
    lq_folder: str,
    scale: int = 1,
    *,
    gt_flag: str = "--testset",
    lq_flag: str = "--lq",
    filename_tmpl: str = DEFAULT_FILENAME_TMPL,
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``[(ground-truth file name, GT HxWx3 uint8, LQ hxwx3 uint8)]`` sorted by the GT name, the
    images of the two folders matched by file name stem (``a.png`` with ``a.jpg``; with
    ``filename_tmpl`` ``'{}x4'``, ``a.png`` with ``ax4.jpg``), each LQ exactly ``1/scale`` of its GT
    (``H = scale h``, ``W = scale w``).

    Raises :class:`InputError` (one line naming the file) for an image without a partner, two
    files with one stem in a folder, or an LQ of the wrong size; :class:`FlagError` for a template
    that is not one.
    """
    check_filename_tmpl(filename_tmpl)
    if gt_folder == "default":
        raise InputError(
            f"{lq_flag} {lq_folder}: the degraded images need their ground truth; give {gt_flag} "
            "the folder of clean images (not 'default')"
        )
    gt, lq = _by_stem(gt_folder, gt_flag), _by_stem(lq_folder, lq_flag)
    wanted = {filename_tmpl.format(stem) for stem in gt}
    hint = _template_hint(gt, lq, filename_tmpl)
    for stem, path in sorted(lq.items()):
        if stem not in wanted:
            named = f"named {stem}.*" if filename_tmpl == DEFAULT_FILENAME_TMPL else f"whose name gives {stem}"
            raise InputError(
                f"{lq_flag} {lq_folder}: {os.path.basename(path)} has no ground truth {named} in {gt_flag} "
                f"{gt_folder}{hint}"
            )
    for stem, path in sorted(gt.items()):
        if filename_tmpl.format(stem) not in lq:
            raise InputError(
                f"{gt_flag} {gt_folder}: {os.path.basename(path)} has no degraded image named "
                f"{filename_tmpl.format(stem)}.* in {lq_flag} {lq_folder}{hint}"
            )
    return _load_pairs([(gt[stem], lq[filename_tmpl.format(stem)]) for stem in gt], scale)


def _template_hint(gt: dict, lq: dict, filename_tmpl: str) -> str:
    """The end of an unpaired image's refusal: the template in use when it is not the default; with
    the default, the ``--filename_tmpl`` that pairs every image when there is one; else ``""``."""
    if filename_tmpl != DEFAULT_FILENAME_TMPL:
        return f" (--filename_tmpl {filename_tmpl!r})"
    suggestion = suggest_filename_tmpl(gt, lq)
    return f"; pass --filename_tmpl '{suggestion}' (it pairs every image)" if suggestion is not None else ""


def is_paired_testset(testset: str) -> bool:
    """Whether ``testset`` is a paired folder (``GT/`` and ``LQ/``, :mod:`dil_fast.data.folders`)."""
    return testset != "default" and is_paired_folder(testset)


def load_paired_folder(
    folder: str, scale: int = 1, flag: str = "--testset", *, filename_tmpl: str = DEFAULT_FILENAME_TMPL
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """As :func:`load_paired_images` for a paired folder (``GT/`` + ``LQ/``, or the other names and
    the ``meta_info`` file :func:`dil_fast.data.folders.paired_files` reads)."""
    return _load_pairs(paired_files(folder, flag=flag, filename_tmpl=filename_tmpl), scale)


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
