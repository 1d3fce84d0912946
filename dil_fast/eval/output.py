"""What ``dil-fast eval`` writes: ``log.txt`` (the released line format), ``results.csv``,
``sweep.csv``, side-by-side comparison images (labelled panels with gaps, drawn on a matplotlib
canvas), all staged so the output folder gets a whole run or nothing new."""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile

import numpy as np

from ..data.images import write_image_rgb
from ..errors import InputError
from ..fileio import atomic_write_bytes

__all__ = [
    "format_log",
    "format_sections",
    "mean_scores",
    "results_csv",
    "sweep_csv",
    "side_by_side",
    "side_by_side_figure",
    "PANEL_LABELS",
    "PANEL_GAP",
    "StagedFolder",
    "RESULTS_FIELDS",
    "SWEEP_FIELDS",
]

RESULTS_FIELDS = ("ckpt", "confounder", "level", "image", "psnr", "ssim")
SWEEP_FIELDS = ("ckpt", "confounder", "level", "psnr", "ssim")
MEAN_ROW = "mean"  # the image column of a level's mean row (no test image is named so: it has no extension)


def mean_scores(results) -> tuple[float, float]:
    """(mean PSNR, mean SSIM) of ``[(name, psnr, ssim, ...)]`` (0, 0 for none)."""
    n = max(len(results), 1)
    return sum(r[1] for r in results) / n, sum(r[2] for r in results) / n


def format_log(results) -> str:
    """``log.txt`` text: the reference's per-image lines and its final average line (no newline after)."""
    lines = [f"{name}: PSNR, {psnr}; SSIM, {ssim}." for name, psnr, ssim, *_ in results]
    avg_psnr, avg_ssim = mean_scores(results)
    lines.append(f"avg PSNR: {avg_psnr}, avg SSIM: {avg_ssim}.")
    return "\n".join(lines)


def format_sections(sections: list[tuple[str, list]]) -> str:
    """``log.txt`` of several ``(title, results)`` sections: ``== title ==``, then :func:`format_log`
    of the section, sections separated by a blank line. One section is :func:`format_log` alone
    (the released file)."""
    if len(sections) == 1:
        return format_log(sections[0][1])
    return "\n\n".join(f"== {title} ==\n{format_log(results)}" for title, results in sections)


def _csv_bytes(fields, rows) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(fields)
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def results_csv(sections: list[tuple[str, str, str, list]]) -> bytes:
    """``results.csv``: one row per (checkpoint, level, image) of ``[(ckpt label, confounder, level,
    results)]``, then the level's mean row (image ``mean``). Scores as Python's ``str(float)``."""
    rows = []
    for label, confounder, level, results in sections:
        rows += [(label, confounder, level, r[0], repr(float(r[1])), repr(float(r[2]))) for r in results]
        p, s = mean_scores(results)
        rows.append((label, confounder, level, MEAN_ROW, repr(p), repr(s)))
    return _csv_bytes(RESULTS_FIELDS, rows)


def sweep_csv(sections: list[tuple[str, str, str, list]]) -> bytes:
    """``sweep.csv``: one row per (checkpoint, level) with the mean PSNR and SSIM over the images."""
    rows = []
    for label, confounder, level, results in sections:
        p, s = mean_scores(results)
        rows.append((label, confounder, level, repr(p), repr(s)))
    return _csv_bytes(SWEEP_FIELDS, rows)


PANEL_LABELS = ("input", "output", "ground truth")
PANEL_GAP = 8  # white pixels between two panels
_LABEL_PX = 11  # label font size in pixels
_LABEL_BAND = 18  # pixels above the images that hold the labels


def _label_width(text: str) -> int:
    """A generous estimate of the label's width in pixels (DejaVu Sans is about 0.62 em per character)."""
    return int(len(text) * _LABEL_PX * 0.62) + 4


def side_by_side_figure(degraded: np.ndarray, restored: np.ndarray, clean: np.ndarray):
    """``(figure, boxes)``: the degraded input (upsampled by nearest to ``H x W`` when it is ``1/s``
    of it), the output and the ground truth, left to right, each under its label
    (:data:`PANEL_LABELS`), :data:`PANEL_GAP` white pixels apart (more when a label is wider than
    the image), drawn pixel for pixel (``figimage``, no resampling). ``boxes``: each panel's
    ``(top, left, height, width)`` in the rendered image's pixels."""
    from .plot import new_figure

    s = clean.shape[0] // degraded.shape[0]
    if s > 1:
        degraded = np.repeat(np.repeat(degraded, s, axis=0), s, axis=1)
    if degraded.shape != clean.shape or restored.shape != clean.shape:
        raise ValueError(f"side_by_side: shapes {degraded.shape}, {restored.shape}, {clean.shape} do not line up")
    h, w = clean.shape[:2]
    labels = list(PANEL_LABELS)
    if s > 1:
        labels[0] = f"input (x{s} nearest)"
    column = max([w] + [_label_width(t) for t in labels])  # each panel centred in a column this wide
    width, height = 3 * column + 2 * PANEL_GAP, h + _LABEL_BAND
    fig = new_figure((width, height))
    boxes = []
    for i, (label, img) in enumerate(zip(labels, (degraded, restored, clean))):
        left = i * (column + PANEL_GAP) + (column - w) // 2
        fig.figimage(np.ascontiguousarray(img), xo=left, yo=0, origin="upper")  # offsets from the bottom left
        fig.text(
            (left + w / 2) / width,
            1 - (_LABEL_BAND / 2) / height,
            label,
            ha="center",
            va="center",
            fontsize=_LABEL_PX * 72 / fig.dpi,
        )
        boxes.append((_LABEL_BAND, left, h, w))
    return fig, boxes


def side_by_side(degraded: np.ndarray, restored: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """:func:`side_by_side_figure` rendered: an ``(H + 18) x W' x 3`` uint8 RGB image (``W'`` is
    three panels and two gaps) with the three images exact, labelled, on white."""
    from .plot import render

    fig, _ = side_by_side_figure(degraded, restored, clean)
    return render(fig)


class StagedFolder:
    """Files for ``folder`` written (atomically, :mod:`dil_fast.fileio`) into a hidden staging folder
    inside it and moved into place by :meth:`commit`, ``last`` last. On an exception inside the
    ``with`` block the staging folder is removed, and so are the folders it created: ``folder``
    holds a whole run or nothing new."""

    def __init__(self, folder: str, flag: str = "--save"):
        self.folder = os.path.abspath(folder)
        self.flag = flag
        self._created: list[str] = []
        self._staging: str | None = None
        self._files: list[str] = []

    def __enter__(self) -> StagedFolder:
        missing, path = [], self.folder
        while not os.path.exists(path):
            missing.append(path)
            path = os.path.dirname(path)
        try:
            for path in reversed(missing):
                os.mkdir(path)
                self._created.append(path)
            self._staging = tempfile.mkdtemp(prefix=".dil_fast-eval-", dir=self.folder)
        except OSError as exc:
            self._cleanup()
            raise InputError(f"{self.flag} {self.folder}: cannot create the folder ({exc.strerror or exc})") from None
        return self

    def _path(self, relpath: str) -> str:
        if relpath in self._files:
            raise InputError(f"{self.flag} {self.folder}: two outputs are named {relpath}")
        self._files.append(relpath)
        return os.path.join(self._staging, relpath)

    def staged_path(self, relpath: str) -> str:
        """Where a writer of its own (it must write atomically) puts the file ``relpath``."""
        path = self._path(relpath)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def write_image(self, relpath: str, img: np.ndarray) -> None:
        """Stage ``img`` (``HxWx3`` uint8 RGB) as the PNG ``relpath``."""
        write_image_rgb(self._path(relpath), img)

    def write_bytes(self, relpath: str, data: bytes) -> None:
        path = self._path(relpath)
        try:
            atomic_write_bytes(data, path)
        except OSError as exc:
            raise InputError(f"{self.flag} {self.folder}: cannot write {relpath} ({exc.strerror or exc})") from None

    def commit(self, last: str) -> None:
        """Move every staged file into the folder (``os.replace``, each one atomic), ``last`` last."""
        order = [f for f in self._files if f != last] + [f for f in self._files if f == last]
        try:
            for relpath in order:
                target = os.path.join(self.folder, relpath)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.replace(os.path.join(self._staging, relpath), target)
        except OSError as exc:
            raise InputError(
                f"{self.flag} {self.folder}: cannot move {relpath} into place ({exc.strerror or exc})"
            ) from None
        shutil.rmtree(self._staging, ignore_errors=True)
        self._staging = None

    def _cleanup(self) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
        for path in reversed(self._created):
            try:
                os.rmdir(path)
            except OSError:  # not empty: something else wrote there meanwhile, leave it
                break

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._cleanup()
