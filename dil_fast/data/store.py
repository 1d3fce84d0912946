"""PatchStore: a packed uint8 patch set (``dil-fast pack``) on the training device, and its loader.

Placement (``PatchStore(path, device, memory_budget)``):

* ``"device"``: the whole ``[N, H, W, 3]`` uint8 array lives on ``device`` when it fits
  ``memory_budget`` bytes (default: 75 % of the free GPU memory; on CPU: half the RAM). Sampling
  is then one kernel launch per meta-iteration (:func:`dil_fast.ops.sample_crops.sample_crops`).
* ``"pinned"`` (CUDA only): too big for the budget but fits half the host RAM: pinned host memory;
  the selected patches are gathered on the host and copied to the device asynchronously on a side
  stream, one meta-iteration ahead (:class:`StoreLoader` double-buffers).
* ``"memmap"``: otherwise, the file is memory-mapped and gathered the same way.

The checksum in ``index.json`` is verified while loading (``verify=False`` skips it); a mismatch
is an :class:`InputError` naming the store and the damaged patch range.

Epoch semantics of :class:`StoreLoader` (one per rank, same seed everywhere):

* confounder ``k`` visits the patches in the order ``perm_k = randperm(N)`` seeded by
  ``(seed, epoch, k)``; every patch once per epoch per confounder, except the ``N mod (W·B)``
  patches at the end of each order (``drop_last``, as the released trainer; they change each epoch);
* meta-iteration ``i`` of rank ``r`` (``W`` ranks, batch ``B``) takes order positions
  ``(i·W + r)·B ... (i·W + r + 1)·B - 1``: ranks never overlap and leave no gap;
* a sample's crop and dihedral mode are a hash of (seed, epoch, k, order position), so they do not
  depend on ``B`` or ``W`` (see :mod:`dil_fast.ops.reference.sample_crops`);
* ``len(loader) = N // (W·B)``; ``state_dict()`` = (epoch, position) plus the settings it is
  only valid for; resume: ``load_state_dict(state)`` then ``set_epoch(state epoch)`` (a
  ``set_epoch`` to the current epoch keeps the position; a new epoch starts at 0).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ..errors import CheckpointError, FlagError, InputError
from ..ops.sample_crops import OUT_DTYPES, sample_crops
from ..rng import stream_key
from .base import EpochCursor, check_loader_state, check_shard_args, check_shard_count, loader_state
from .pack import DATA_FILE, INDEX_FILE, STORE_FORMAT, STORE_VERSION, chunk_digests, combine_digests

__all__ = ["PatchStore", "StoreLoader", "parse_bytes", "is_store"]

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_bytes(value, flag: str = "--memory_budget") -> int:
    """``123``, ``"512M"``, ``"20G"``, ``"1.5GiB"`` -> bytes (binary units)."""
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise FlagError(f"{flag} {value}: not a size (examples: 20G, 512M, 1000000)")
        if value < 0:
            raise FlagError(f"{flag} {value}: must not be negative")
        return int(value)
    s = str(value).strip().lower().removesuffix("ib").removesuffix("b")
    num, unit = (s[:-1], s[-1]) if s and s[-1] in _UNITS else (s, "")
    try:
        out = float(num) * _UNITS[unit]
    except ValueError:
        out = math.nan
    if not math.isfinite(out):
        raise FlagError(f"{flag} {value!r}: not a size (examples: 20G, 512M, 1000000)") from None
    if out < 0:
        raise FlagError(f"{flag} {value}: must not be negative")
    return int(out)


def is_store(path) -> bool:
    """True when ``path`` is a folder holding a packed store's index."""
    return os.path.isfile(os.path.join(os.fspath(path), INDEX_FILE))


def _host_ram() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


class PatchStore:
    """A packed patch store: ``data`` is ``[N, H, W, 3]`` uint8 RGB (see module doc for placement)."""

    def __init__(self, path, device="cpu", memory_budget=None, *, verify: bool = True, host: str = "auto"):
        self.path = os.fspath(path)
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise FlagError(f"--device {device}: no CUDA device is available")
        if self.device.type not in ("cpu", "cuda"):
            raise FlagError(f"--device {device}: the patch store runs on cpu or cuda devices")
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.index = self._read_index()
        self.count = int(self.index["count"])
        self.height = int(self.index["height"])
        self.width = int(self.index["width"])
        self.sha256 = self.index["sha256"]
        self.nbytes = self.count * self.height * self.width * 3
        data_path = os.path.join(self.path, self.index.get("data", DATA_FILE))
        if not os.path.isfile(data_path):
            raise InputError(f"{self.path}: store data file {os.path.basename(data_path)} is missing")
        size = os.path.getsize(data_path)
        if size != self.nbytes:
            raise InputError(
                f"{self.path}: store data is {size} bytes, the index says {self.nbytes} "
                "(truncated or replaced); re-run `dil-fast pack`"
            )
        if host not in ("auto", "pinned", "memmap"):
            raise FlagError(f"host={host!r}: must be auto, pinned or memmap")
        budget = self._default_budget() if memory_budget is None else parse_bytes(memory_budget)
        if self.nbytes <= budget and host == "auto":
            self.placement = "device"
        elif self.device.type == "cuda" and host != "memmap" and (host == "pinned" or self.nbytes <= _host_ram() // 2):
            self.placement = "pinned"
        else:
            self.placement = "memmap"
        self.data = self._load(data_path, verify)

    # -- loading --------------------------------------------------------------------------------
    def _read_index(self) -> dict:
        if not os.path.isdir(self.path):
            raise InputError(f"{self.path}: not a packed store folder (create one with `dil-fast pack`)")
        ipath = os.path.join(self.path, INDEX_FILE)
        try:
            with open(ipath) as f:
                index = json.load(f)
        except FileNotFoundError:
            raise InputError(
                f"{self.path}: no {INDEX_FILE}; not a packed store (create one with `dil-fast pack`)"
            ) from None
        except (OSError, ValueError) as exc:
            raise InputError(f"{ipath}: unreadable store index ({exc})") from None
        if not isinstance(index, dict) or index.get("format") != STORE_FORMAT:
            raise InputError(f"{ipath}: not a dil_fast patch store index")
        if index.get("version") != STORE_VERSION:
            raise InputError(
                f"{ipath}: store version {index.get('version')} is not supported (expected {STORE_VERSION})"
            )
        for key in ("count", "height", "width", "sha256", "chunks", "chunk_bytes"):
            if key not in index:
                raise InputError(f"{ipath}: store index lacks {key!r}")
        return index

    def _default_budget(self) -> int:
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return int(free * 0.75)
        return _host_ram() // 2

    def _check_digests(self, digests: list[str]) -> None:
        expected = self.index["chunks"]
        if digests == expected and combine_digests(digests) == self.sha256:
            return
        bad = next((i for i, (a, b) in enumerate(zip(digests, expected)) if a != b), len(digests))
        patch_bytes = self.height * self.width * 3
        first = bad * self.index["chunk_bytes"] // patch_bytes
        last = min(self.count, ((bad + 1) * self.index["chunk_bytes"] + patch_bytes - 1) // patch_bytes) - 1
        raise InputError(
            f"{self.path}: store checksum does not match (patches {first}..{last} damaged); re-run `dil-fast pack`"
        )

    def _load(self, data_path: str, verify: bool) -> torch.Tensor:
        shape = (self.count, self.height, self.width, 3)
        if self.placement == "memmap":
            if verify:
                self._check_digests(chunk_digests(data_path, self.index["chunk_bytes"]))
            arr = np.memmap(data_path, dtype=np.uint8, mode="r", shape=shape)
            with warnings.catch_warnings():  # read-only mapping; nothing ever writes to it
                warnings.simplefilter("ignore", UserWarning)
                return torch.from_numpy(arr)
        if self.placement == "device" and self.device.type == "cpu":
            host = torch.empty(shape, dtype=torch.uint8)
        elif self.placement == "pinned":
            host = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
        else:
            host = None  # device placement on CUDA: stream chunks through a pinned buffer
        dev = torch.empty(shape, dtype=torch.uint8, device=self.device) if host is None else None
        chunk = int(self.index["chunk_bytes"])
        slots = 4
        staging = (
            [torch.empty(chunk, dtype=torch.uint8, pin_memory=True) for _ in range(slots)] if dev is not None else None
        )
        flat_dev = dev.view(-1) if dev is not None else None
        flat_host = host.view(-1).numpy() if host is not None else None
        copied = [None] * slots  # H2D copy out of each staging buffer
        digests = []  # futures: hashing runs on threads (hashlib releases the GIL) while reading on
        with (
            ThreadPoolExecutor(max(1, min(8, (os.cpu_count() or 2) - 1))) as pool,
            open(data_path, "rb", buffering=0) as f,
        ):
            for n, off in enumerate(range(0, self.nbytes, chunk)):
                size = min(chunk, self.nbytes - off)
                if flat_host is not None:
                    view = flat_host[off : off + size]
                else:
                    slot = n % slots
                    if copied[slot] is not None:
                        copied[slot].synchronize()
                    if verify and n >= slots:
                        digests[n - slots].result()  # the hash of this buffer's last chunk is done
                    view = staging[slot][:size].numpy()
                got = f.readinto(memoryview(view))
                if got != size:
                    raise InputError(f"{self.path}: store data ended early while reading")
                if verify:
                    digests.append(pool.submit(lambda v: hashlib.sha256(v).hexdigest(), view))
                if flat_dev is not None:
                    flat_dev[off : off + size].copy_(staging[slot][:size], non_blocking=True)
                    copied[slot] = torch.cuda.Event()
                    copied[slot].record(torch.cuda.current_stream(self.device))  # the copy's stream
            digests = [d.result() for d in digests]
        if verify:
            self._check_digests(digests)
        if dev is not None:
            torch.cuda.current_stream(self.device).synchronize()
            return dev
        return host

    # -- access ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.count

    def source_of(self, i: int) -> tuple[str, int, int]:
        """(image name, y, x) of patch ``i``: where it was cut from."""
        if not 0 <= i < self.count:
            raise IndexError(f"patch {i} outside 0..{self.count - 1}")
        import bisect

        sources = self.index["sources"]
        firsts = [s["first"] for s in sources]
        src = sources[bisect.bisect_right(firsts, i) - 1]
        j = i - src["first"]
        size, stride = self.index.get("size"), self.index.get("stride")
        if not size:
            return src["name"], 0, 0
        cols = (src["shape"][1] - size) // stride + 1
        return src["name"], (j // cols) * stride, (j % cols) * stride

    def check_patch_size(self, patch: int, flag: str = "--patch_size") -> None:
        if patch < 1 or patch > min(self.height, self.width):
            raise FlagError(
                f"{flag} {patch}: must be between 1 and the store's patch size {self.width}x{self.height} ({self.path})"
            )

    def crops(
        self,
        perm,
        start,
        batch,
        patch,
        key,
        counter_base=None,
        *,
        dtype=torch.float32,
        channels_last=False,
        backend=None,
    ) -> torch.Tensor:
        """``[K, B, 3, p, p]`` on ``self.device``: see :func:`dil_fast.ops.sample_crops.sample_crops`.

        ``perm``: ``[K, L]`` patch indices (on the store data's device for "device" placement, on
        the CPU otherwise). Host placements gather the ``K·B`` patches first (synchronously here;
        :class:`StoreLoader` overlaps that with the previous meta-iteration on CUDA).
        """
        counter_base = start if counter_base is None else counter_base
        if self.placement == "device":
            return sample_crops(
                self.data,
                perm,
                start,
                batch,
                patch,
                key,
                counter_base,
                dtype=dtype,
                channels_last=channels_last,
                backend=backend,
            )
        idx = perm[:, start : start + batch].reshape(-1).cpu()
        gathered = self.data.index_select(0, idx).to(self.device)
        local = torch.arange(idx.numel(), device=self.device).view(perm.shape[0], batch)
        return sample_crops(
            gathered,
            local,
            0,
            batch,
            patch,
            key,
            counter_base,
            dtype=dtype,
            channels_last=channels_last,
            backend=backend,
        )


class _HostFeeder:
    """Double-buffered host gather + H2D copy on a side stream (host placements on CUDA)."""

    def __init__(self, store: PatchStore, rows: int):
        shape = (rows, store.height, store.width, 3)
        self.store = store
        self.stream = torch.cuda.Stream(store.device)
        self.pinned = [torch.empty(shape, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
        self.dev = [torch.empty(shape, dtype=torch.uint8, device=store.device) for _ in range(2)]
        self.copied = [None, None]  # H2D copy done (side stream)
        self.freed = [None, None]  # the sampler finished reading the device buffer (main stream)

    def submit(self, slot: int, idx: torch.Tensor) -> None:
        if self.copied[slot] is not None:
            self.copied[slot].synchronize()  # pinned buffer no longer being read by a copy
        torch.index_select(self.store.data, 0, idx, out=self.pinned[slot])
        with torch.cuda.stream(self.stream):
            if self.freed[slot] is not None:
                self.stream.wait_event(self.freed[slot])
            self.dev[slot].copy_(self.pinned[slot], non_blocking=True)
            ev = torch.cuda.Event()
            ev.record(self.stream)
        self.copied[slot] = ev

    def take(self, slot: int) -> torch.Tensor:
        torch.cuda.current_stream(self.store.device).wait_event(self.copied[slot])
        return self.dev[slot]

    def release(self, slot: int) -> None:
        ev = torch.cuda.Event()
        ev.record(torch.cuda.current_stream(self.store.device))
        self.freed[slot] = ev


class StoreLoader(EpochCursor):
    """:class:`dil_fast.data.base.CleanLoader` over a :class:`PatchStore` (see module doc)."""

    yields = "clean"
    _RESUME_KEYS = ("seed", "batch_size", "patch_size", "world_size", "num_confounders")

    def __init__(
        self,
        store: PatchStore,
        batch_size: int,
        patch_size: int,
        num_confounders: int = 4,
        *,
        seed: int = 1,
        rank: int = 0,
        world_size: int = 1,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        backend: str | None = None,
    ):
        check_shard_args(batch_size, rank, world_size, num_confounders=num_confounders)
        if dtype not in OUT_DTYPES:
            raise FlagError(f"dtype {dtype}: must be one of {OUT_DTYPES}")
        store.check_patch_size(patch_size)
        check_shard_count(store.count, batch_size, world_size, "patches", f"the store {store.path}")
        self.store = store
        self.batch_size = int(batch_size)
        self.patch_size = int(patch_size)
        self.num_confounders = int(num_confounders)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.dtype = dtype
        self.channels_last = bool(channels_last)
        self.backend = backend
        self.epoch = 0
        self.position = 0
        self._perm_cache: tuple[int, torch.Tensor] | None = None
        self._feeder = None

    def __len__(self) -> int:
        return self.store.count // (self.world_size * self.batch_size)

    OPS = ("sample_crops",)  # the dispatcher ops this loader runs (a forced backend must serve them)

    def ops(self) -> tuple[str, ...]:
        return self.OPS

    def order(self, epoch: int | None = None) -> torch.Tensor:
        """``[K, N]`` int64 (CPU): the visiting order of every confounder in ``epoch``."""
        epoch = self.epoch if epoch is None else epoch
        rows = []
        for k in range(self.num_confounders):
            g = torch.Generator().manual_seed(
                (stream_key(self.seed, epoch, 100 + 2 * k) << 31) | stream_key(self.seed, epoch, 101 + 2 * k)
            )
            rows.append(torch.randperm(self.store.count, generator=g))
        return torch.stack(rows)

    def _perm(self) -> torch.Tensor:
        if self._perm_cache is None or self._perm_cache[0] != self.epoch:
            perm = self.order()
            if self.store.placement == "device":
                perm = perm.to(self.store.device)
            self._perm_cache = (self.epoch, perm)
        return self._perm_cache[1]

    def _start(self, it: int) -> int:
        return (it * self.world_size + self.rank) * self.batch_size

    def __iter__(self):
        if self.position >= len(self):
            self.position = 0  # a second pass over the same epoch without set_epoch repeats it
        perm = self._perm()
        key = stream_key(self.seed, self.epoch, 1)
        kw = dict(dtype=self.dtype, channels_last=self.channels_last, backend=self.backend)
        store = self.store
        if store.placement != "device" and store.device.type == "cuda":
            yield from self._iter_fed(perm, key, kw)
            return
        for it in range(self.position, len(self)):
            start = self._start(it)
            out = store.crops(perm, start, self.batch_size, self.patch_size, key, start, **kw)
            self.position = it + 1
            yield out

    def _iter_fed(self, perm, key, kw):
        num_k, b = self.num_confounders, self.batch_size
        if self._feeder is None:
            self._feeder = _HostFeeder(self.store, num_k * b)
        feeder = self._feeder
        local = torch.arange(num_k * b, device=self.store.device).view(num_k, b)
        first, n = self.position, len(self)

        def idx(it):
            s = self._start(it)
            return perm[:, s : s + b].reshape(-1)

        feeder.submit(first % 2, idx(first))
        for it in range(first, n):
            slot = it % 2
            data = feeder.take(slot)
            start = self._start(it)
            out = sample_crops(data, local, 0, b, self.patch_size, key, start, **kw)
            feeder.release(slot)
            if it + 1 < n:
                feeder.submit((it + 1) % 2, idx(it + 1))
            self.position = it + 1
            yield out

    def state_dict(self) -> dict:
        return {**loader_state(self, "store", self._RESUME_KEYS), "store_sha256": self.store.sha256}

    def load_state_dict(self, state: dict) -> None:
        check_loader_state(self, state, "store", self._RESUME_KEYS)
        if state["store_sha256"] != self.store.sha256:
            raise CheckpointError(f"loader state was saved for a different store than {self.store.path}")
        super().load_state_dict(state)
