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
  BasicSR's meta_info). ``--scale s``: LQ images are GT / s; the GT crop is ``--patch_size`` (a
  multiple of s) at ``s * (y, x)`` and the LQ crop ``patch / s`` at ``(y, x)``, both under the same
  dihedral mode, so the pair stays aligned.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import FlagError, InputError
from .base import EpochCursor
from .images import list_images, read_image_rgb
from .released import (
    EpochShardSampler,
    augment,
    cap_workers,
    make_dataloader,
    next_batch,
    shutdown_workers,
)

__all__ = ["IMAGE_EXTS", "ShardedLoader", "FolderCleanLoader", "PairedLoader", "is_paired_folder", "paired_files"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
PAIR_NAMES = (("GT", "LQ"), ("gt", "lq"), ("HR", "LR"), ("hr", "lr"), ("target", "input"))


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

    def __getitem__(self, idx: int):
        path, p = self.files[idx], self.patch_size
        img = read_image_rgb(path)
        h, w = img.shape[:2]
        if h < p or w < p:
            raise InputError(f"{path}: image is {h}x{w}, smaller than --patch_size {p}")
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


def paired_files(folder, flag: str = "--trainset") -> list[tuple[str, str]]:
    """``[(gt_path, lq_path)]`` of a paired folder, sorted by name; one-line errors for a missing
    layout, names present on one side only, or meta_info names that are not there."""
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
        absent = [s for s in stems if s not in gts or s not in lqs]
        if absent:
            raise InputError(f"{flag} {folder}: meta_info names {', '.join(absent[:3])} have no GT/LQ image pair")
    else:
        only_gt, only_lq = sorted(set(gts) - set(lqs)), sorted(set(lqs) - set(gts))
        if only_gt or only_lq:
            side, names_ = ("GT", only_gt) if only_gt else ("LQ", only_lq)
            raise InputError(
                f"{flag} {folder}: {len(names_)} image(s) only in {side}/ (e.g. {names_[0]}); GT and LQ "
                "images are matched by file name"
            )
        stems = sorted(gts)
    return [(gts[s], lqs[s]) for s in stems]


class PairedPatchDataset(Dataset):
    """``dataset[i] -> (lq [3, p/s, p/s], gt [3, p, p])``: aligned crops of pair i under one mode."""

    def __init__(self, pairs, patch_size: int, scale: int, *, seed: int, confounder: int):
        self.pairs, self.patch_size, self.scale = list(pairs), int(patch_size), int(scale)
        self.seed, self.confounder, self.epoch = int(seed), int(confounder), 0

    def __len__(self) -> int:
        return len(self.pairs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, idx: int):
        gt_path, lq_path = self.pairs[idx]
        gt, lq = read_image_rgb(gt_path), read_image_rgb(lq_path)
        s, p = self.scale, self.patch_size
        if (lq.shape[0] * s, lq.shape[1] * s) != gt.shape[:2]:
            raise InputError(
                f"{lq_path}: LQ image is {lq.shape[0]}x{lq.shape[1]}, GT {gt_path} is "
                f"{gt.shape[0]}x{gt.shape[1]}; with --scale {s} the GT must be {s}x the LQ"
            )
        q = p // s
        if lq.shape[0] < q or lq.shape[1] < q:
            raise InputError(
                f"{lq_path}: LQ image is {lq.shape[0]}x{lq.shape[1]}, smaller than the {q}x{q} crop "
                f"(--patch_size {p} / --scale {s})"
            )
        rng = np.random.default_rng([self.seed, self.epoch, self.confounder, idx])
        y, x = _crop_corner(rng, lq.shape[0], lq.shape[1], q)
        mode = int(rng.integers(0, 8))
        lq_c = augment(lq[y : y + q, x : x + q], mode).astype(np.float32) / 255.0
        gt_c = augment(gt[s * y : s * y + p, s * x : s * x + p], mode).astype(np.float32) / 255.0
        return _chw(lq_c), _chw(gt_c)


class PairedLoader(ShardedLoader):
    """``[(lq, gt)] * K`` per meta-iteration, one paired folder per confounder."""

    yields = "pairs"

    @property
    def confounder_names(self) -> list[str]:
        """One confounder per paired folder, named by the folder."""
        return [os.path.basename(os.path.normpath(f)) for f in self.folders]

    def __init__(self, folders, *, patch_size: int, batch_size: int, seed: int, scale: int = 1, **kw):
        if patch_size % scale:
            raise FlagError(
                f"--patch_size {patch_size} must be a multiple of --scale {scale} (the GT crop is "
                "patch_size, the LQ crop patch_size / scale)"
            )
        self.folders = [os.fspath(f) for f in folders]
        datasets = [
            PairedPatchDataset(paired_files(f), patch_size, scale, seed=seed, confounder=k)
            for k, f in enumerate(self.folders)
        ]
        super().__init__(
            datasets, batch_size=batch_size, seed=seed, source=f"--trainset {' '.join(self.folders)}", **kw
        )

    def _emit(self, batches):
        return [tuple(b) for b in batches]
