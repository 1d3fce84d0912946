"""DaliLoader: an NVIDIA DALI pipeline over a folder of images, as a :class:`CleanLoader`.

Optional extra ``dil_fast[dali]`` (``nvidia-dali-cuda130`` or ``-cuda120``). One pipeline per
epoch with one file reader per confounder (each confounder visits every file once per epoch in
its own seeded order, like the released trainer's K DataLoaders):

    readers.file(files=order_k[: L·W·B], shard_id=rank, num_shards=W)   (L = len(loader))
    -> decoders.image(device="mixed" on CUDA: nvJPEG for JPEG; "cpu" otherwise)
    -> slice at a uniform integer corner 0..H-p, 0..W-p (inclusive; any image size)
    -> flip(vertical=FR, horizontal=FC) with FR, FC, T fair coins
    -> on the training device: transpose where T, to ``[K, B, 3, p, p]`` float / 255.

The mode ``T + 2·FR + 4·FC`` follows the released numbering (docs/released-trainer.md;
:mod:`dil_fast.ops.reference.sample_crops`);
the draws come from DALI's RNG (seeded by seed, epoch and rank), so crops differ from the
PatchStore's counter-based ones. Sharding: DALI gives rank ``r`` the contiguous block
``r·L·B ... (r+1)·L·B - 1`` of each order: no duplicates, no gaps; the ``N mod (W·B)`` tail of each
order is dropped (``drop_last``). ``device=None``/CPU runs the pipeline with ``device_id=None``.

Resume: ``state_dict()`` holds (epoch, position) and this rank's DALI checkpoint (reader
positions and RNG states); ``load_state_dict`` rebuilds the pipeline from it, so the next batch is
exactly the one that would have come. The checkpoint is per rank: each rank keeps its own state.
"""

from __future__ import annotations

import importlib

import torch

from ..errors import CheckpointError, FlagError, InputError
from ..rng import stream_key
from .base import check_loader_state, check_shard_args, check_shard_count, loader_state
from .images import check_images, list_images
from .pack import PACK_EXTS

__all__ = ["DaliLoader", "dali_available"]


def dali_available() -> tuple[bool, str]:
    """(True, version) when DALI imports, else (False, the reason and the fix)."""
    try:
        dali = importlib.import_module("nvidia.dali")
    except Exception as exc:  # noqa: BLE001 - reported to the caller
        return False, (
            f"NVIDIA DALI is not importable ({exc}); install it with "
            "`pip install nvidia-dali-cuda130` (or -cuda120), or `pip install dil_fast[dali]`"
        )
    return True, dali.__version__


def _import_dali():
    ok, why = dali_available()
    if not ok:
        raise FlagError(f"--loader dali: {why}")
    import nvidia.dali as dali
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali.plugin.pytorch import feed_ndarray

    return dali, fn, types, feed_ndarray


def _dali_reason(exc: Exception) -> str:
    """The informative line of a DALI pipeline error (they open with boilerplate)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if "encountered:" in lines:
        lines = lines[lines.index("encountered:") + 1 :]
    skip = ("Critical error", "C++ context", "Current pipeline", "Error in ", "which was used", "File ")
    useful = [ln for ln in lines if not ln.startswith(skip)]
    return (useful or lines or [type(exc).__name__])[0]


class DaliLoader:
    """:class:`dil_fast.data.base.CleanLoader` over a folder of PNG/JPEG/BMP/WebP images."""

    yields = "clean"
    _RESUME_KEYS = ("seed", "batch_size", "patch_size", "world_size", "rank", "num_confounders")

    def __init__(
        self,
        folder,
        batch_size: int,
        patch_size: int,
        num_confounders: int = 4,
        *,
        device="cpu",
        seed: int = 1,
        rank: int = 0,
        world_size: int = 1,
        num_threads: int = 4,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        prefetch: int = 2,
    ):
        self._dali = _import_dali()
        check_shard_args(batch_size, rank, world_size, patch_size=patch_size)
        if num_threads < 1:
            raise FlagError(f"--num_workers {num_threads}: must be at least 1")
        if not dtype.is_floating_point and dtype != torch.uint8:
            raise FlagError(f"dtype {dtype}: must be a float type or uint8")
        self.folder = str(folder)
        self.files = list_images(self.folder, PACK_EXTS, flag="--trainset")
        check_shard_count(len(self.files), batch_size, world_size, "images", self.folder)
        # decoded once under dil_fast's policies now: DALI's decoder would fail mid-run, or take
        # what they refuse (16-bit, translucent alpha), after the run folder was written
        check_images(self.files, min_size=patch_size, workers=num_threads, progress=rank == 0)
        self.device = torch.device(device if device is not None else "cpu")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise FlagError(f"--device {device}: no CUDA device is available")
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        elif self.device.type not in ("cpu", "cuda"):
            raise FlagError(f"--loader dali runs on cpu or cuda devices, not {self.device}")
        self.batch_size = int(batch_size)
        self.patch_size = int(patch_size)
        self.num_confounders = int(num_confounders)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.num_threads = int(num_threads)
        self.dtype = dtype
        self.channels_last = bool(channels_last)
        self.prefetch = int(prefetch)
        self.epoch = 0
        self.position = 0
        self._pipe = None  # (epoch, pipeline); built lazily
        self._pending_checkpoint = None

    def __len__(self) -> int:
        return len(self.files) // (self.world_size * self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch:
            self.epoch = int(epoch)
            self.position = 0
            self._pipe = None
            self._pending_checkpoint = None

    def order(self, epoch: int | None = None) -> list[list[str]]:
        """Each confounder's file order for ``epoch`` (all ranks; the dropped tail removed)."""
        epoch = self.epoch if epoch is None else epoch
        used = len(self) * self.world_size * self.batch_size
        out = []
        for k in range(self.num_confounders):
            g = torch.Generator().manual_seed(
                (stream_key(self.seed, epoch, 200 + 2 * k) << 31) | stream_key(self.seed, epoch, 201 + 2 * k)
            )
            perm = torch.randperm(len(self.files), generator=g)[:used].tolist()
            out.append([self.files[i] for i in perm])
        return out

    def _build(self, checkpoint=None):
        dali, fn, types, _ = self._dali
        gpu = self.device.type == "cuda"
        p = self.patch_size
        orders = self.order()

        @dali.pipeline_def(enable_checkpointing=True)
        def pipeline():
            outs = []
            for k in range(self.num_confounders):
                encoded, _ = fn.readers.file(
                    files=orders[k],
                    shard_id=self.rank,
                    num_shards=self.world_size,
                    random_shuffle=False,
                    name=f"reader{k}",
                )
                shape = fn.peek_image_shape(encoded)  # [H, W, C] of the encoded image
                img = fn.decoders.image(encoded, device="mixed" if gpu else "cpu", output_type=types.RGB)
                corner = []
                for axis in (0, 1):
                    span = fn.cast(shape[axis], dtype=types.FLOAT) - (p - 1)
                    u = fn.random.uniform(range=[0.0, 1.0])
                    pos = dali.math.clamp(dali.math.floor(u * span), 0.0, span - 1)
                    corner.append(pos)
                anchor = fn.stack(*corner)
                crop = fn.slice(
                    img,
                    anchor,
                    [float(p), float(p)],
                    axes=[0, 1],
                    normalized_anchor=False,
                    normalized_shape=False,
                    out_of_bounds_policy="error",
                )
                t = fn.random.coin_flip(probability=0.5, dtype=types.INT32)
                fr = fn.random.coin_flip(probability=0.5, dtype=types.INT32)
                fc = fn.random.coin_flip(probability=0.5, dtype=types.INT32)
                crop = fn.flip(crop, vertical=fr, horizontal=fc)
                outs += [crop, t + 2 * fr + 4 * fc]
            return tuple(outs)

        pipe = pipeline(
            batch_size=self.batch_size,
            num_threads=self.num_threads,
            device_id=self.device.index if gpu else None,
            seed=stream_key(self.seed, self.epoch, 300 + self.rank),
            prefetch_queue_depth=self.prefetch,
            checkpoint=checkpoint,
        )
        pipe.build()
        self._pipe = (self.epoch, pipe)

    def _run(self):
        _, _, _, feed_ndarray = self._dali
        try:
            outs = self._pipe[1].run()
        except RuntimeError as exc:
            reason = _dali_reason(exc)
            if "out of bounds" in reason:
                reason = (
                    f"an image is smaller than the {self.patch_size}x{self.patch_size} patch (--patch_size): {reason}"
                )
            raise InputError(f"--trainset {self.folder}: DALI could not produce a batch: {reason}") from None
        k_n, b, p = self.num_confounders, self.batch_size, self.patch_size
        crops = torch.empty(k_n, b, p, p, 3, dtype=torch.uint8, device=self.device)
        modes = torch.empty(k_n, b, dtype=torch.int32)
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        for k in range(k_n):
            feed_ndarray(outs[2 * k].as_tensor(), crops[k], cuda_stream=stream)
            feed_ndarray(outs[2 * k + 1].as_tensor(), modes[k])
        t = (modes & 1).bool().to(self.device, non_blocking=True)[..., None, None, None]
        crops = torch.where(t, crops.transpose(2, 3), crops)  # [K, B, p, p, 3]
        if self.dtype.is_floating_point:
            crops = (crops.float() / 255).to(self.dtype)
        out = crops.permute(0, 1, 4, 2, 3)
        return out if self.channels_last else out.contiguous()

    def __iter__(self):
        if self.position >= len(self):  # a finished epoch (or a state saved at its end) restarts it
            self.position = 0
            self._pipe = None
            self._pending_checkpoint = None
        if self._pipe is None or self._pipe[0] != self.epoch:
            self._build(self._pending_checkpoint)
            self._pending_checkpoint = None
        for it in range(self.position, len(self)):
            out = self._run()
            self.position = it + 1
            yield out
        self._pipe = None  # the readers have wrapped around; the next pass rebuilds

    def state_dict(self) -> dict:
        if self._pipe is not None and self.position > 0:
            checkpoint = self._pipe[1].checkpoint()
        else:
            checkpoint = self._pending_checkpoint
        return {
            **loader_state(self, "dali", self._RESUME_KEYS),
            "num_files": len(self.files),
            "dali_checkpoint": checkpoint,
        }

    def load_state_dict(self, state: dict) -> None:
        check_loader_state(self, state, "dali", self._RESUME_KEYS)
        if state["num_files"] != len(self.files):
            raise CheckpointError(
                f"loader state was saved for {state['num_files']} images, {self.folder} has {len(self.files)}"
            )
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._pipe = None
        self._pending_checkpoint = state["dali_checkpoint"] if self.position > 0 else None
