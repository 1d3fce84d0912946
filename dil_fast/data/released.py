"""The released data path: the released trainer's sampling, with sound seeding.

Per confounder k (Gaussian noise sigma_k) and per sample, as ``srdata_noise.DataCrop`` does:
read the PNG (OpenCV, BGR -> RGB uint8), draw the top-left corner uniformly from
``0 .. H-p-1`` / ``0 .. W-p-1`` (the released code never draws the last valid offset; kept for
parity, ``full_offsets=True`` fixes it), draw one of the 8 dihedral modes, then
``input = clip(target + N(0,1) * sigma / 255, 0, 1)`` with float64 normal noise, kept float32.

Seeding (a deliberate difference): the released code draws from numpy's global RNG inside
DataLoader workers, so every worker of an epoch repeats the same stream (a known bug) and results
depend on the number of workers. Here every sample has its own counter-based generator,
``numpy.random.default_rng([seed, epoch, confounder, index])`` (Philox-free but keyed by the full
tuple through SeedSequence), so a sample's crop, mode and noise depend only on those four numbers:
not on workers, batch split or ranks. The per-epoch shuffle of each confounder's loader comes from
``torch.Generator`` seeded with ``(seed, epoch, confounder)``; DDP ranks take interleaved shards of
it (as ``DistributedSampler``, padded by wrapping). Resume skips consumed batches exactly.

Workers: ``--num_workers`` is per confounder, so K confounders start K times as many processes;
:func:`cap_workers` lowers the count so that they fit the CPUs this process may use, and the
loader says so in ``worker_note``. A bad image (named by :func:`~dil_fast.data.images.read_image_rgb`)
stops the run with that one-line :class:`~dil_fast.errors.InputError` whether it was read in a
worker or in the main process (:func:`make_dataloader`, :func:`next_batch`).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from ..errors import DilFastError, InputError
from .base import EpochCursor
from .images import IMAGE_EXTS, check_images, list_images, read_image_rgb

# Dihedral modes, numbered as the released augment_img (rot90 = counter-clockwise in the H,W plane;
# flipud reverses H). Applied to HWC arrays.
_DIHEDRAL = (
    lambda a: a,
    lambda a: np.flipud(np.rot90(a)),
    lambda a: np.flipud(a),
    lambda a: np.rot90(a, k=3),
    lambda a: np.flipud(np.rot90(a, k=2)),
    lambda a: np.rot90(a),
    lambda a: np.rot90(a, k=2),
    lambda a: np.flipud(np.rot90(a, k=3)),
)


def augment(img: np.ndarray, mode: int) -> np.ndarray:
    """One of the 8 dihedral transforms of an HWC image, numbered as the released trainer
    (docs/released-trainer.md, "Data")."""
    return _DIHEDRAL[mode](img)


def _mix(*parts: int) -> int:
    """A 63-bit seed from a tuple of non-negative ints (stable across processes and runs)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h ^= (int(p) + 0x9E3779B97F4A7C15 + ((h << 6) & 0xFFFFFFFFFFFFFFFF) + (h >> 2)) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


class NoisyPatchDataset(Dataset):
    """One confounder's dataset: ``dataset[i] -> (input, target)``, float32 CHW in [0, 1].

    ``set_epoch`` must be called before iterating (the DataLoader copies the dataset into its workers
    when an iterator is created, so a new iterator per epoch sees the new epoch).
    """

    def __init__(self, files, sigma: float, patch_size: int, *, seed: int, confounder: int, full_offsets: bool = False):
        self.files = list(files)
        self.sigma = float(sigma)
        self.patch_size = int(patch_size)
        self.seed = int(seed)
        self.confounder = int(confounder)
        self.full_offsets = full_offsets
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.files)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, idx: int):
        path = self.files[idx]
        img = read_image_rgb(path)
        p = self.patch_size
        h, w = img.shape[:2]
        if h < p or w < p:
            raise InputError(f"{path}: image is {w}x{h}, smaller than --patch_size {p}")
        rng = np.random.default_rng([self.seed, self.epoch, self.confounder, idx])
        extra = 1 if self.full_offsets else 0
        top = int(rng.integers(0, max(h - p + extra, 1)))
        left = int(rng.integers(0, max(w - p + extra, 1)))
        mode = int(rng.integers(0, 8))
        hr = augment(img[top : top + p, left : left + p, :], mode).astype(np.float32) / 255.0
        noise = rng.standard_normal(hr.shape) * (self.sigma / 255.0)  # float64, as released
        lr = np.clip(hr + noise, 0, 1).astype(np.float32)
        return (
            torch.from_numpy(np.ascontiguousarray(lr.transpose(2, 0, 1))),
            torch.from_numpy(np.ascontiguousarray(hr.transpose(2, 0, 1))),
        )


def available_cpus() -> int:
    """CPUs this process may run on: ``os.sched_getaffinity`` where the OS has it (it honours
    ``taskset`` and cgroup cpusets), else ``os.cpu_count()``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cap_workers(per_confounder: int, confounders: int, cpus: int | None = None) -> tuple[int, str | None]:
    """The DataLoader workers per confounder that fit the machine: ``(count, note)``.

    ``confounders * per_confounder`` worker processes run at once; when that exceeds ``cpus``
    (default :func:`available_cpus`), the count becomes ``cpus // confounders`` (0: samples are
    read in the main process) and ``note`` is one line saying so (for the training log); else the
    count is kept and ``note`` is None.
    """
    cpus = available_cpus() if cpus is None else int(cpus)
    total = per_confounder * confounders
    if total <= cpus:
        return per_confounder, None
    capped = cpus // confounders
    where = "samples are read in the main process" if capped == 0 else f"{capped * confounders} worker processes"
    return capped, (
        f"--num_workers {per_confounder}: {confounders} confounders x {per_confounder} workers "
        f"= {total} processes for {cpus} CPUs; using {capped} per confounder ({where})"
    )


class _ErrorsAsSamples(Dataset):
    """``dataset`` whose user errors (:class:`DilFastError`) are returned in place of the sample.

    A DataLoader worker's exception reaches the main process re-built from its formatted traceback;
    returned as a value, the error arrives as itself (exceptions pickle as their class and message).
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx):
        try:
            return self.dataset[idx]
        except DilFastError as exc:
            return exc


def _collate_or_error(samples):
    """The batch of ``samples``, or the first user error among them."""
    for sample in samples:
        if isinstance(sample, DilFastError):
            return sample
    return default_collate(samples)


def make_dataloader(dataset: Dataset, **kwargs) -> DataLoader:
    """``DataLoader(dataset, **kwargs)`` whose batches are read with :func:`next_batch`, so a bad
    input raises its own one-line error in the main process, with or without workers.

    Its workers' base seed comes from a generator of its own (unless ``generator`` is given): a
    DataLoader iterator otherwise draws it from torch's global RNG, and a run interrupted and
    resumed creates more iterators than one run straight through, so the global RNG state saved
    in ``last.pt`` would differ between them. Every sample here carries its own generator, so the
    workers' seeds decide nothing."""
    kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    return DataLoader(_ErrorsAsSamples(dataset), collate_fn=_collate_or_error, **kwargs)


def next_batch(batches):
    """``next(batches)`` of a :func:`make_dataloader` iterator; raises the user error a sample carried."""
    batch = next(batches)
    if isinstance(batch, DilFastError):
        raise batch
    return batch


def shutdown_workers(batches) -> None:
    """Stop the worker processes of a DataLoader iterator now (no-op without workers).

    After a bad sample the error's traceback holds the iterator in a reference cycle; left to the
    garbage collector, its shutdown then waits out the 5 s join timeout of every worker (10 s for
    2 workers, measured with torch 2.13). DataLoader iterators have no public close;
    ``_shutdown_workers`` is what their ``__del__`` calls, and is safe to call twice.
    """
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


class EpochShardSampler(Sampler):
    """Seeded per-epoch permutation, sharded across ranks, starting at a given sample offset."""

    def __init__(self, n: int, *, seed: int, confounder: int, rank: int = 0, world_size: int = 1):
        self.n, self.seed, self.confounder = n, seed, confounder
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.start = 0  # samples of this rank's shard already consumed

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def shard(self) -> list[int]:
        g = torch.Generator().manual_seed(_mix(self.seed, self.epoch, self.confounder))
        perm = torch.randperm(self.n, generator=g).tolist()
        per_rank = -(-self.n // self.world_size)
        perm = (perm * (per_rank * self.world_size // max(self.n, 1) + 1))[: per_rank * self.world_size]
        return perm[self.rank :: self.world_size]

    def __iter__(self):
        return iter(self.shard()[self.start :])

    def __len__(self) -> int:
        return len(self.shard()) - self.start


_TRAIN_EXTS = tuple(e for e in IMAGE_EXTS if e not in (".tif", ".tiff"))  # as the folder loader


class ReleasedPairLoader(EpochCursor):
    """The released trainer's data path as a :class:`~dil_fast.data.base.PairLoader`.

    One shuffled DataLoader (drop_last) per confounder; each meta-iteration takes one batch from
    every loader and returns them in confounder order, moved to ``device``.
    Length: ``len(files) // (batch_size * gpus)`` meta-iterations per epoch, as released.
    ``num_workers`` (per confounder) is capped by :func:`cap_workers` (``cpus`` overrides the CPU
    count); ``num_workers`` holds the count in use and ``worker_note`` the line saying it was
    lowered (None when it was not).
    """

    yields = "pairs"

    @property
    def confounder_names(self) -> list[str]:
        """The confounders' names in the log and the metrics' tags (``noise5``, ...)."""
        return [f"noise{s:g}" for s in self.sigmas]

    def __init__(
        self,
        folder: str,
        sigmas,
        *,
        patch_size: int = 64,
        batch_size: int = 32,
        seed: int = 1,
        num_workers: int = 0,
        device="cpu",
        rank: int = 0,
        world_size: int = 1,
        gpus: int | None = None,
        full_offsets: bool = False,
        cpus: int | None = None,
    ):
        # the released trainer globs *.png; the README's PNG/JPEG folders are read whole
        self.files = list_images(folder, exts=_TRAIN_EXTS, flag="--trainset")
        self.sigmas = [float(s) for s in sigmas]
        self.num_confounders = len(self.sigmas)
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.gpus = gpus or world_size
        self.datasets = [
            NoisyPatchDataset(self.files, s, patch_size, seed=seed, confounder=k, full_offsets=full_offsets)
            for k, s in enumerate(self.sigmas)
        ]
        self.samplers = [
            EpochShardSampler(len(self.files), seed=seed, confounder=k, rank=rank, world_size=world_size)
            for k in range(self.num_confounders)
        ]
        self.num_workers, self.worker_note = cap_workers(int(num_workers), self.num_confounders, cpus)
        self.epoch = 0
        self.position = 0  # meta-iterations consumed in the current epoch
        if len(self) == 0:
            raise InputError(
                f"--trainset {folder}: {len(self.files)} images is fewer than one batch "
                f"(--batch_size {batch_size} x {self.gpus} GPU(s))"
            )
        # every file decoded once now, before the run writes anything
        check_images(
            self.files, min_size=patch_size, workers=self.num_workers * self.num_confounders, progress=rank == 0
        )

    def __len__(self) -> int:
        return len(self.files) // (self.batch_size * self.gpus)

    def __iter__(self):
        loaders = []
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
                        persistent_workers=False,
                    )
                )
            )
        non_blocking = self.device.type == "cuda"
        try:
            while self.position < len(self):
                pairs = []
                for it in loaders:
                    lr, hr = next_batch(it)
                    pairs.append(
                        (lr.to(self.device, non_blocking=non_blocking), hr.to(self.device, non_blocking=non_blocking))
                    )
                self.position += 1
                yield pairs
        finally:
            for it in loaders:
                shutdown_workers(it)
