"""PatchStore + StoreLoader: exactness, epochs, sharding, resume, placements."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from dil_fast import rng
from dil_fast.data.base import CleanLoader
from dil_fast.data.pack import pack_folder
from dil_fast.data.store import PatchStore, StoreLoader, parse_bytes
from dil_fast.errors import CheckpointError, FlagError
from dil_fast.ops import reference as ref
from dil_fast.ops.sample_crops import sample_crops

BK = "torch"  # loaders here use the torch path: the Triton op has its own exact tests, the interpreter is slow


needs_interpreter = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="tier T1: set TRITON_INTERPRET=1 before the run"
)


def _write_store(folder, patches: np.ndarray):
    """A store folder from an [N, H, W, 3] uint8 array, packed through the real packer via PNGs."""
    import cv2

    src = folder / "src"
    src.mkdir(parents=True)
    for i, p in enumerate(patches):
        cv2.imwrite(str(src / f"{i:05d}.png"), p[:, :, ::-1])
    pack_folder(src, folder / "store", progress=False)
    return folder / "store"


@pytest.fixture
def random_store(tmp_path):
    rng = np.random.default_rng(1)
    return PatchStore(_write_store(tmp_path / "random", rng.integers(0, 256, (37, 13, 11, 3), dtype=np.uint8)))


@pytest.fixture
def labelled_store(tmp_path):
    """Patch i is filled with the value i: every crop names its patch."""
    n = 41
    patches = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 9, 9, 3)).copy()
    return PatchStore(_write_store(tmp_path / "labelled", patches))


def _ids(batch):
    """[K, B, 3, p, p] uint8 crops of the labelled store -> [K, B] patch ids."""
    flat = batch.reshape(batch.shape[0], batch.shape[1], -1)
    assert (flat == flat[..., :1]).all()
    return flat[..., 0].long()


def test_loader_is_clean_loader_and_crops_are_the_store_content(random_store):
    ld = StoreLoader(random_store, batch_size=4, patch_size=6, num_confounders=3, seed=7, dtype=torch.uint8, backend=BK)
    assert isinstance(ld, CleanLoader) and len(ld) == 37 // 4
    batch = next(iter(ld))
    assert batch.shape == (3, 4, 3, 6, 6) and batch.dtype == torch.uint8
    order = ld.order()
    key = rng.stream_key(7, 0, 1)
    for k in range(3):
        y, x, m = rng.crop_params(key, k, torch.arange(4), 13, 11, 6)
        for j in range(4):
            src = random_store.data[order[k, j], y[j] : y[j] + 6, x[j] : x[j] + 6].permute(2, 0, 1)
            assert torch.equal(batch[k, j], ref.dihedral_ref(src, int(m[j])))
    f = next(iter(StoreLoader(random_store, 4, 6, 3, seed=7, backend=BK)))
    assert f.dtype == torch.float32 and torch.equal(f, batch.float() / 255)


def test_epoch_coverage_each_patch_once_per_confounder(labelled_store):
    ld = StoreLoader(
        labelled_store, batch_size=4, patch_size=5, num_confounders=3, seed=2, dtype=torch.uint8, backend=BK
    )
    seen = torch.cat([_ids(b) for b in ld], dim=1)  # [K, len * B]
    assert seen.shape == (3, 40)
    for k in range(3):
        assert len(set(seen[k].tolist())) == 40  # no duplicate; 41 mod 4 = 1 dropped
    assert not torch.equal(seen[0], seen[1])  # confounders see different orders
    ld.set_epoch(1)
    again = torch.cat([_ids(b) for b in ld], dim=1)
    assert not torch.equal(again, seen)


def test_sharding_no_duplicates_or_gaps_and_independent_of_split(labelled_store, random_store):
    world, b = 3, 2
    per_rank = []
    for r in range(world):
        ld = StoreLoader(labelled_store, b, 5, 2, seed=4, rank=r, world_size=world, dtype=torch.uint8, backend=BK)
        assert len(ld) == 41 // (world * b)
        per_rank.append(torch.cat([_ids(x) for x in ld], dim=1))
    allids = torch.cat(per_rank, dim=1)
    order = StoreLoader(labelled_store, b, 5, 2, seed=4, backend=BK).order()
    used = len(per_rank[0][0]) * world
    for k in range(2):
        assert sorted(allids[k].tolist()) == sorted(order[k, :used].tolist())  # no gap, no duplicate
    # a sample's crop depends on its order position only, not on batch size or rank count
    one = torch.cat(list(StoreLoader(random_store, 6, 5, 2, seed=9, backend=BK)), dim=1)
    ranks = [list(StoreLoader(random_store, 3, 5, 2, seed=9, rank=r, world_size=2, backend=BK)) for r in range(2)]
    interleaved = torch.cat([x for pair in zip(*ranks) for x in pair], dim=1)
    assert torch.equal(one, interleaved[:, : one.shape[1]])


def test_resume_is_exact_and_seeded(random_store):
    ld = StoreLoader(random_store, 3, 5, 2, seed=11, backend=BK)
    ld.set_epoch(2)
    it = iter(ld)
    head = [next(it) for _ in range(4)]
    state = ld.state_dict()
    tail = list(it)
    fresh = StoreLoader(random_store, 3, 5, 2, seed=11, backend=BK)
    fresh.load_state_dict(state)
    fresh.set_epoch(2)  # the trainer's call at the epoch start keeps the restored position
    assert all(torch.equal(a, b) for a, b in zip(tail, list(fresh), strict=True))
    other = StoreLoader(random_store, 3, 5, 2, seed=11, backend=BK)
    other.set_epoch(2)
    assert all(torch.equal(a, b) for a, b in zip(head + tail, list(other), strict=True))
    different = StoreLoader(random_store, 3, 5, 2, seed=12, backend=BK)
    different.set_epoch(2)
    assert not torch.equal(next(iter(different)), head[0])
    bad = dict(state, batch_size=4)
    with pytest.raises(CheckpointError, match="batch_size"):
        fresh.load_state_dict(bad)


def test_host_placement_equals_device_placement(random_store):
    mm = PatchStore(random_store.path, memory_budget=0)
    assert mm.placement == "memmap" and random_store.placement == "device"
    a = list(StoreLoader(random_store, 4, 6, 2, seed=3, channels_last=True, backend=BK))
    b = list(StoreLoader(mm, 4, 6, 2, seed=3, channels_last=True, backend=BK))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert a[0].permute(0, 1, 3, 4, 2).is_contiguous()


def test_bad_loader_settings(random_store):
    with pytest.raises(FlagError, match="--patch_size 14"):
        StoreLoader(random_store, 4, 14, backend=BK)
    with pytest.raises(FlagError, match="needs at least 40 patches"):
        StoreLoader(random_store, 20, 5, world_size=2, backend=BK)
    with pytest.raises(FlagError, match="rank"):
        StoreLoader(random_store, 2, 5, rank=2, world_size=2, backend=BK)
    assert parse_bytes("2G") == 2 << 30 and parse_bytes("512MiB") == 512 << 20 and parse_bytes(10) == 10
    with pytest.raises(FlagError, match="--memory_budget"):
        parse_bytes("lots")
    if not torch.cuda.is_available():
        with pytest.raises(FlagError, match="no CUDA device"):
            PatchStore(random_store.path, "cuda")


@pytest.mark.triton
@needs_interpreter
def test_loader_triton_path_equals_torch_path(random_store):
    a = StoreLoader(random_store, 2, 5, 2, seed=5, backend="triton")
    b = StoreLoader(random_store, 2, 5, 2, seed=5, backend="torch")
    assert torch.equal(next(iter(a)), next(iter(b)))


@pytest.mark.gpu
def test_gpu_sampler_and_placements_match_cpu(random_store):
    """T3: the Triton sampler on CUDA, device / pinned / memmap placements, all equal to the CPU path."""
    cpu = list(StoreLoader(random_store, 4, 6, 2, seed=3, backend="torch"))
    for kw in ({}, {"memory_budget": 0}, {"memory_budget": 0, "host": "memmap"}):
        store = PatchStore(random_store.path, "cuda", **kw)
        for backend in ("triton", "torch"):
            got = list(StoreLoader(store, 4, 6, 2, seed=3, backend=backend))
            assert all(torch.equal(a.cpu(), b) for a, b in zip(got, cpu, strict=True)), (store.placement, backend)
    store = PatchStore(random_store.path, "cuda")
    perm = torch.stack([torch.randperm(store.count) for _ in range(3)]).cuda()
    key = rng.stream_key(2, 2)
    for dtype in (torch.float32, torch.bfloat16, torch.uint8):
        want = ref.sample_crops_ref(store.data.cpu(), perm.cpu(), 3, 8, 7, key, dtype=dtype)
        got = sample_crops(store.data, perm, 3, 8, 7, key, dtype=dtype, backend="triton")
        assert torch.equal(got.cpu(), want), dtype
