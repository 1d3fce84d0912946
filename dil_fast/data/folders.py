"""Loaders over image folders read in DataLoader workers: clean patches (any task's confounders
then distort them on the device) and paired folders (LQ/GT, e.g. three rain datasets as three
confounders, or real LR/HR pairs).

Both are built on :class:`ShardedLoader`, which reads data as the released path's
:class:`~dil_fast.data.released.ReleasedPairLoader` does: K datasets, one per confounder, each
visited in its own seeded per-epoch order (:class:`~dil_fast.data.released.EpochShardSampler`,
sharded over DDP ranks), one batch of each per meta-iteration; every sample's crop and dihedral
mode come from ``numpy.random.default_rng([seed, epoch, confounder, index])``, so they depend only
on those four numbers (not on workers, batch split or ranks) and a resume continues exactly.
The workers are the released loader's too: ``--num_workers`` per confounder capped to the CPUs
(:func:`~dil_fast.data.released.cap_workers`, said in ``worker_note``), a bad image raised in the
main process as its own one-line error (:func:`~dil_fast.data.released.make_dataloader`,
:func:`~dil_fast.data.released.next_batch`), and the workers stopped as soon as an iteration
ends, fails or is abandoned (:func:`~dil_fast.data.released.shutdown_workers`).

* :class:`FolderCleanLoader` (``yields = "clean"``): ``--trainset`` a folder of PNG/JPEG/BMP/WebP
  images of any sizes >= the patch; crops drawn over every valid corner ``0 .. H-p`` inclusive (as
  the packed store; the released path's ``0 .. H-p-1`` stays with it).
* :class:`PairedLoader` (``yields = "pairs"``): each ``--trainset`` is a paired folder: ``GT/`` and
  ``LQ/`` (BasicSR's layout; also ``gt/ lq/``, ``HR/ LR/``, ``target/ input/``), matched by file name
  stem, optionally restricted to the names of a ``meta_info*.txt`` file (first token of each line,
  BasicSR's meta_info: GT names). ``filename_tmpl`` (``--filename_tmpl``, BasicSR's option of that
  name): the LQ stem is ``filename_tmpl.format(GT stem)``, so ``'{}x4'`` pairs DIV2K's
  ``0801.png`` with ``0801x4.png`` (default ``'{}'``: the same stem; the extensions may differ).
  ``--scale s``: LQ images are GT / s; the GT crop is ``--patch_size`` (a
  multiple of s) at ``s * (y, x)`` and the LQ crop ``patch / s`` at ``(y, x)``, both under the same
  dihedral mode, so the pair stays aligned.
"""

from __future__ import annotations

import os
import string

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import FlagError, InputError
from .base import EpochCursor
from .images import check_images, list_images, read_image_rgb
from .released import (
    EpochShardSampler,
    augment,
    cap_workers,
    make_dataloader,
    next_batch,
    shutdown_workers,
)

__all__ = [
    "IMAGE_EXTS",
    "DEFAULT_FILENAME_TMPL",
    "ShardedLoader",
    "FolderCleanLoader",
    "PairedLoader",
    "is_paired_folder",
    "paired_files",
    "check_filename_tmpl",
    "match_stems",
    "suggest_filename_tmpl",
    "unmatched_message",
]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
PAIR_NAMES = (("GT", "LQ"), ("gt", "lq"), ("HR", "LR"), ("hr", "lr"), ("target", "input"))
DEFAULT_FILENAME_TMPL = "{}"  # BasicSR's default: the LQ stem is the GT stem


def _chw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


def _crop_corner(rng, h: int, w: int, p: int) -> tuple[int, int]:
    return int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1))


class ShardedLoader(EpochCursor):
    """K datasets, one per confounder; one batch of each per meta-iteration, moved to ``device``.

    ``len``: ``min_k len(dataset_k) // (batch_size * gpus)`` meta-iterations per epoch (``drop_last``;
    the released arithmetic). Subclasses set ``yields`` and turn the K collated batches into their
    output (:meth:`_emit`). ``num_workers`` (per confounder) is capped by
    :func:`~dil_fast.data.released.cap_workers` (``cpus`` overrides the CPU count);
    ``num_workers`` holds the count in use and ``worker_note`` the line saying it was lowered
    (None when it was not).
    """

    yields = "pairs"

    def __init__(
        self,
        datasets,
        *,
        batch_size: int,
        seed: int,
        num_workers: int = 0,
        device="cpu",
        rank: int = 0,
        world_size: int = 1,
        gpus: int | None = None,
        source: str = "--trainset",
        cpus: int | None = None,
    ):
        self.datasets = list(datasets)
        self.num_confounders = len(self.datasets)
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.gpus = gpus or world_size
        self.num_workers, self.worker_note = cap_workers(int(num_workers), self.num_confounders, cpus)
        self.samplers = [
            EpochShardSampler(len(ds), seed=seed, confounder=k, rank=rank, world_size=world_size)
            for k, ds in enumerate(self.datasets)
        ]
        self.epoch = 0
        self.position = 0
        if len(self) == 0:
            smallest = min(len(ds) for ds in self.datasets)
            raise InputError(
                f"{source}: {smallest} images is fewer than one batch (--batch_size {batch_size} x {self.gpus} GPU(s))"
            )
        # every file decoded once now, before the run writes anything (the K clean datasets share theirs)
        shapes: dict = {}
        for ds in self.datasets:
            ds.check_files(workers=self.num_workers * self.num_confounders, progress=rank == 0, known=shapes)

    def __len__(self) -> int:
        return min(len(ds) for ds in self.datasets) // (self.batch_size * self.gpus)

    def _emit(self, batches):
        return batches

    def __iter__(self):
        non_blocking = self.device.type == "cuda"
        loaders = []
        try:  # the workers stop when the epoch ends, a sample fails or the caller drops the iterator
            for ds, sampler in zip(self.datasets, self.samplers):
                ds.set_epoch(self.epoch)
                sampler.set_epoch(self.epoch)
                sampler.start = self.position * self.batch_size
                loaders.append(
                    iter(
                        make_dataloader(
                            ds,
                            batch_size=self.batch_size,
                            sampler=sampler,
                            num_workers=self.num_workers,
                            drop_last=True,
                            pin_memory=self.device.type == "cuda",
                        )
                    )
                )
            while self.position < len(self):
                batches = []
                for it in loaders:
                    batch = next_batch(it)
                    batches.append(
                        tuple(t.to(self.device, non_blocking=non_blocking) for t in batch)
                        if isinstance(batch, (tuple, list))
                        else batch.to(self.device, non_blocking=non_blocking)
                    )
                self.position += 1
                yield self._emit(batches)
        finally:
            for it in loaders:
                shutdown_workers(it)


# --------------------------------------------------------------------------------------- clean
class CleanPatchDataset(Dataset):
    """``dataset[i] -> [3, p, p]`` float32 on [0, 1]: a random crop of image i under a random mode."""

    def __init__(self, files, patch_size: int, *, seed: int, confounder: int):
        self.files, self.patch_size, self.seed, self.confounder = (
            list(files),
            int(patch_size),
            int(seed),
            int(confounder),
        )
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.files)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def check_files(self, **kw) -> None:
        """Refuse now what ``__getitem__`` would refuse mid-run (:func:`~dil_fast.data.images.check_images`)."""
        check_images(self.files, min_size=self.patch_size, **kw)

    def __getitem__(self, idx: int):
        path, p = self.files[idx], self.patch_size
        img = read_image_rgb(path)
        h, w = img.shape[:2]
        if h < p or w < p:
            raise InputError(f"{path}: image is {w}x{h}, smaller than --patch_size {p}")
        rng = np.random.default_rng([self.seed, self.epoch, self.confounder, idx])
        top, left = _crop_corner(rng, h, w, p)
        mode = int(rng.integers(0, 8))
        return _chw(augment(img[top : top + p, left : left + p], mode).astype(np.float32) / 255.0)


class FolderCleanLoader(ShardedLoader):
    """Clean ``[K, B, 3, p, p]`` batches from one folder of images (every confounder its own order)."""

    yields = "clean"

    def __init__(self, folder, num_confounders: int, *, patch_size: int, batch_size: int, seed: int, **kw):
        files = list_images(folder, exts=IMAGE_EXTS, flag="--trainset")
        super().__init__(
            [CleanPatchDataset(files, patch_size, seed=seed, confounder=k) for k in range(num_confounders)],
            batch_size=batch_size,
            seed=seed,
            source=f"--trainset {folder}",
            **kw,
        )

    def _emit(self, batches):
        return torch.stack(batches)


# -------------------------------------------------------------------------------------- paired
def _pair_dirs(folder: str) -> tuple[str, str] | None:
    for gt, lq in PAIR_NAMES:
        g, q = os.path.join(folder, gt), os.path.join(folder, lq)
        if os.path.isdir(g) and os.path.isdir(q):
            return g, q
    return None


def is_paired_folder(path) -> bool:
    """True when ``path`` holds a GT folder and an LQ folder (see the module docstring)."""
    return os.path.isdir(os.fspath(path)) and _pair_dirs(os.fspath(path)) is not None


def _meta_names(folder: str) -> list[str] | None:
    files = sorted(n for n in os.listdir(folder) if n.startswith("meta_info") and n.endswith(".txt"))
    if not files:
        return None
    with open(os.path.join(folder, files[0]), encoding="utf-8") as f:
        return [ln.split()[0] for ln in f if ln.strip()]


# ------------------------------------------------------------------------- GT / LQ name matching
def check_filename_tmpl(tmpl: str, flag: str = "--filename_tmpl") -> str:
    """``tmpl`` when it is a BasicSR ``filename_tmpl`` dil_fast reads: text around one or more
    ``{}`` (or ``{0}``) fields that the GT stem fills, making a file name; one-line
    :class:`FlagError` naming ``flag`` otherwise."""
    example = f"e.g. {flag} '{{}}x4' pairs GT 0801.png with LQ 0801x4.png"
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(tmpl) if name is not None]
    except ValueError as exc:
        raise FlagError(f"{flag} {tmpl!r}: not a name template ({exc}); {example}") from None
    if not fields or any(name not in ("", "0") or spec or conv for name, spec, conv in fields):
        raise FlagError(f"{flag} {tmpl!r}: needs '{{}}' where the GT name stem goes, and no other field; {example}")
    name = tmpl.format("0801")
    if os.sep in name or (os.altsep and os.altsep in name) or name in (".", ".."):
        raise FlagError(f"{flag} {tmpl!r}: must make a file name, not a path; {example}")
    return tmpl


def match_stems(
    gt_stems, lq_stems, filename_tmpl: str = DEFAULT_FILENAME_TMPL
) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """``(pairs, only_gt, only_lq)``: ``(gt stem, lq stem)`` of every GT whose LQ stem
    (``filename_tmpl.format(gt stem)``) is there, sorted by GT stem; the GT stems without their LQ
    and the LQ stems no GT names, each sorted."""
    lq_set = set(lq_stems)
    wanted = {g: filename_tmpl.format(g) for g in gt_stems}
    pairs = sorted((g, q) for g, q in wanted.items() if q in lq_set)
    only_gt = sorted(g for g, q in wanted.items() if q not in lq_set)
    only_lq = sorted(lq_set - set(wanted.values()))
    return pairs, only_gt, only_lq


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def suggest_filename_tmpl(gt_stems, lq_stems) -> str | None:
    """The ``filename_tmpl`` that pairs every GT stem with exactly the LQ stems (``'{}x4'`` for DIV2K's
    ``0801`` / ``0801x4``), read off one LQ name that holds a GT name; None when there is none."""
    gts, lqs = set(gt_stems), set(lq_stems)
    for lq in sorted(lqs - gts)[:1]:
        holders = sorted((g for g in gts if g and g in lq), key=len, reverse=True)
        for g in holders[:1]:
            i = lq.index(g)
            tmpl = _escape(lq[:i]) + "{}" + _escape(lq[i + len(g) :])
            if {tmpl.format(s) for s in gts} == lqs:
                return tmpl
    return None


def unmatched_message(only_gt, only_lq, gt_stems, lq_stems, filename_tmpl: str) -> str:
    """The end of the one-line refusal of names present on one side only: where the names differ
    and, when one template pairs them all, the ``--filename_tmpl`` that does."""
    default = filename_tmpl == DEFAULT_FILENAME_TMPL
    side, example = ("GT", only_gt[0]) if only_gt else ("LQ", only_lq[0])
    if only_gt and not default:
        example += f", whose LQ would be {filename_tmpl.format(example)}"
    text = f"{len(only_gt) or len(only_lq)} image(s) only in {side}/ (e.g. {example}); "
    if not default:
        return text + f"each LQ name is --filename_tmpl {filename_tmpl!r} of its GT name"
    text += "GT and LQ images are matched by file name"
    suggestion = suggest_filename_tmpl(gt_stems, lq_stems)
    if suggestion is not None:
        text += f": LQ {suggestion.format(min(gt_stems))} for GT {min(gt_stems)}? pass --filename_tmpl '{suggestion}'"
    return text


def paired_files(folder, flag: str = "--trainset", filename_tmpl: str = DEFAULT_FILENAME_TMPL) -> list[tuple[str, str]]:
    """``[(gt_path, lq_path)]`` of a paired folder, sorted by name, each LQ named
    ``filename_tmpl.format(GT stem)``; one-line errors for a missing layout, names present on one
    side only, or meta_info (GT) names that are not there."""
    check_filename_tmpl(filename_tmpl)
    folder = os.fspath(folder)
    dirs = _pair_dirs(folder) if os.path.isdir(folder) else None
    if dirs is None:
        raise InputError(f"{flag} {folder}: not a paired folder (expected GT/ and LQ/ subfolders)")
    gt_dir, lq_dir = dirs
    gts = {os.path.splitext(os.path.basename(p))[0]: p for p in list_images(gt_dir, exts=IMAGE_EXTS, flag=flag)}
    lqs = {os.path.splitext(os.path.basename(p))[0]: p for p in list_images(lq_dir, exts=IMAGE_EXTS, flag=flag)}
    names = _meta_names(folder)
    if names is not None:
        stems = [os.path.splitext(os.path.basename(n))[0] for n in names]
        absent = [s for s in stems if s not in gts or filename_tmpl.format(s) not in lqs]
        if absent:
            raise InputError(f"{flag} {folder}: meta_info names {', '.join(absent[:3])} have no GT/LQ image pair")
        pairs = [(s, filename_tmpl.format(s)) for s in stems]
    else:
        pairs, only_gt, only_lq = match_stems(gts, lqs, filename_tmpl)
        if only_gt or only_lq:
            raise InputError(f"{flag} {folder}: " + unmatched_message(only_gt, only_lq, gts, lqs, filename_tmpl))
    return [(gts[g], lqs[q]) for g, q in pairs]


class PairedPatchDataset(Dataset):
    """``dataset[i] -> (lq [3, p/s, p/s], gt [3, p, p])``: aligned crops of pair i under one mode."""

    def __init__(self, pairs, patch_size: int, scale: int, *, seed: int, confounder: int):
        self.pairs, self.patch_size, self.scale = list(pairs), int(patch_size), int(scale)
        self.seed, self.confounder, self.epoch = int(seed), int(confounder), 0

    def __len__(self) -> int:
        return len(self.pairs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def check_files(self, **kw) -> None:
        """Refuse now what ``__getitem__`` would refuse mid-run: a bad image, a pair whose sizes do
        not match the scale, an LQ image smaller than its crop."""
        gts = check_images([g for g, _ in self.pairs], **kw)
        lqs = check_images([q for _, q in self.pairs], **kw)
        for (gt_path, lq_path), gt_hw, lq_hw in zip(self.pairs, gts, lqs):
            self._check_pair(gt_path, lq_path, gt_hw, lq_hw)

    def _check_pair(self, gt_path: str, lq_path: str, gt_hw, lq_hw) -> None:
        s, p = self.scale, self.patch_size
        if (lq_hw[0] * s, lq_hw[1] * s) != tuple(gt_hw):
            raise InputError(
                f"{lq_path}: LQ image is {lq_hw[1]}x{lq_hw[0]}, GT {gt_path} is "
                f"{gt_hw[1]}x{gt_hw[0]}; with --scale {s} the GT must be {s}x the LQ"
            )
        q = p // s
        if lq_hw[0] < q or lq_hw[1] < q:
            raise InputError(
                f"{lq_path}: LQ image is {lq_hw[1]}x{lq_hw[0]}, smaller than the {q}x{q} crop "
                f"(--patch_size {p} / --scale {s})"
            )

    def __getitem__(self, idx: int):
        gt_path, lq_path = self.pairs[idx]
        gt, lq = read_image_rgb(gt_path), read_image_rgb(lq_path)
        s, p = self.scale, self.patch_size
        self._check_pair(gt_path, lq_path, gt.shape[:2], lq.shape[:2])
        q = p // s
        rng = np.random.default_rng([self.seed, self.epoch, self.confounder, idx])
        y, x = _crop_corner(rng, lq.shape[0], lq.shape[1], q)
        mode = int(rng.integers(0, 8))
        lq_c = augment(lq[y : y + q, x : x + q], mode).astype(np.float32) / 255.0
        gt_c = augment(gt[s * y : s * y + p, s * x : s * x + p], mode).astype(np.float32) / 255.0
        return _chw(lq_c), _chw(gt_c)


class PairedLoader(ShardedLoader):
    """``[(lq, gt)] * K`` per meta-iteration, one paired folder per confounder (``filename_tmpl``:
    the LQ names, see the module doc)."""

    yields = "pairs"

    @property
    def confounder_names(self) -> list[str]:
        """One confounder per paired folder, named by the folder."""
        return [os.path.basename(os.path.normpath(f)) for f in self.folders]

    def __init__(
        self,
        folders,
        *,
        patch_size: int,
        batch_size: int,
        seed: int,
        scale: int = 1,
        filename_tmpl: str = DEFAULT_FILENAME_TMPL,
        **kw,
    ):
        if patch_size % scale:
            raise FlagError(
                f"--patch_size {patch_size} must be a multiple of --scale {scale} (the GT crop is "
                "patch_size, the LQ crop patch_size / scale)"
            )
        self.folders = [os.fspath(f) for f in folders]
        datasets = [
            PairedPatchDataset(paired_files(f, filename_tmpl=filename_tmpl), patch_size, scale, seed=seed, confounder=k)
            for k, f in enumerate(self.folders)
        ]
        super().__init__(
            datasets, batch_size=batch_size, seed=seed, source=f"--trainset {' '.join(self.folders)}", **kw
        )

    def _emit(self, batches):
        return [tuple(b) for b in batches]
