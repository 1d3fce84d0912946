"""DaliLoader in DALI's CPU mode (device_id=None): crops, sharding, resume, bad input (tier T0)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from dil_fast.data.dali import dali_available

_ok, _why = dali_available()
pytestmark = pytest.mark.skipif(not _ok, reason=f"DALI not importable: {_why.split(';')[0]}")

if _ok:
    from dil_fast.data.base import CleanLoader
    from dil_fast.data.dali import DaliLoader
    from dil_fast.errors import FlagError, InputError
    from dil_fast.ops.reference.sample_crops import dihedral_ref


def _noise_folder(folder, n, size, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    imgs = []
    for i in range(n):
        img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f"{i:04d}.png"), img[:, :, ::-1])
        imgs.append(torch.from_numpy(img).permute(2, 0, 1))
    return imgs


def _labelled_folder(folder, n, size):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(folder / f"{i:04d}.png"), np.full((size, size, 3), i, np.uint8))


def _ids(batch):
    flat = batch.reshape(batch.shape[0], batch.shape[1], -1)
    assert (flat == flat[..., :1]).all()
    return flat[..., 0].long()


def test_crops_are_dihedral_crops_of_the_images_all_offsets_and_modes(tmp_path):
    imgs = _noise_folder(tmp_path / "train", n=8, size=7)
    ld = DaliLoader(
        tmp_path / "train", batch_size=4, patch_size=5, num_confounders=2, num_threads=1, dtype=torch.uint8, seed=3
    )
    assert isinstance(ld, CleanLoader) and len(ld) == 2
    candidates = {
        dihedral_ref(img[:, y : y + 5, x : x + 5], m).numpy().tobytes(): (y, x, m)
        for img in imgs
        for y in range(3)
        for x in range(3)
        for m in range(8)
    }
    assert len(candidates) == 8 * 9 * 8  # noise images: every candidate crop is distinct
    offsets, modes = set(), set()
    for epoch in range(12):
        ld.set_epoch(epoch)
        for batch in ld:
            assert batch.shape == (2, 4, 3, 5, 5) and batch.dtype == torch.uint8
            for crop in batch.reshape(-1, 3, 5, 5):
                y, x, m = candidates[crop.numpy().tobytes()]  # KeyError: not a dihedral crop of an image
                offsets.add((y, x))
                modes.add(m)
    assert offsets == {(y, x) for y in range(3) for x in range(3)}  # last offset (2) reached too
    assert modes == set(range(8))
    f = next(iter(DaliLoader(tmp_path / "train", 4, 5, 2, num_threads=1, seed=3)))
    assert f.dtype == torch.float32 and 0 <= f.min() and f.max() <= 1


def test_epochs_and_sharding_no_duplicates_or_gaps(tmp_path):
    _labelled_folder(tmp_path / "train", n=14, size=6)
    world, b = 2, 3
    seen = []
    for r in range(world):
        ld = DaliLoader(tmp_path / "train", b, 4, 2, rank=r, world_size=world, num_threads=1, dtype=torch.uint8, seed=1)
        assert len(ld) == 14 // (world * b)
        seen.append(torch.cat([_ids(x) for x in ld], dim=1))
    allids = torch.cat(seen, dim=1)
    for k in range(2):
        assert len(set(allids[k].tolist())) == 12  # 14 mod 6 = 2 dropped, nothing twice
    order = DaliLoader(tmp_path / "train", b, 4, 2, num_threads=1, seed=1).order()
    assert sorted(allids[0].tolist()) == sorted(int(p[-8:-4]) for p in order[0])
    ld = DaliLoader(tmp_path / "train", b, 4, 2, rank=0, world_size=world, num_threads=1, dtype=torch.uint8, seed=1)
    ld.set_epoch(1)
    assert not torch.equal(torch.cat([_ids(x) for x in ld], dim=1), seen[0])


def test_resume_is_exact(tmp_path):
    _noise_folder(tmp_path / "train", n=12, size=9)
    ld = DaliLoader(tmp_path / "train", 2, 6, 2, num_threads=2, seed=5)
    ld.set_epoch(1)
    it = iter(ld)
    head = [next(it) for _ in range(2)]
    state = ld.state_dict()
    tail = list(it)
    assert len(head) + len(tail) == len(ld) == 6
    fresh = DaliLoader(tmp_path / "train", 2, 6, 2, num_threads=2, seed=5)
    fresh.load_state_dict(state)
    fresh.set_epoch(1)
    assert all(torch.equal(a, c) for a, c in zip(tail, list(fresh), strict=True))
    end = fresh.state_dict()  # saved at the end of the epoch: the next epoch starts cleanly
    again = DaliLoader(tmp_path / "train", 2, 6, 2, num_threads=2, seed=5)
    again.load_state_dict(end)
    again.set_epoch(2)
    ref2 = DaliLoader(tmp_path / "train", 2, 6, 2, num_threads=2, seed=5)
    ref2.set_epoch(2)
    assert all(torch.equal(a, c) for a, c in zip(again, ref2, strict=True))


def test_bad_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files"):
        DaliLoader(tmp_path / "empty", 2, 4)
    _noise_folder(tmp_path / "small", n=4, size=6)
    with pytest.raises(FlagError, match="needs at least 6 images"):
        DaliLoader(tmp_path / "small", 3, 4, world_size=2)
    # every image is decoded once when the loader is built, before DALI (or the trainer) starts
    with pytest.raises(InputError, match=r"0000\.png: image is 6x6, smaller than --patch_size 8"):
        DaliLoader(tmp_path / "small", 2, 8, num_threads=1)
    _noise_folder(tmp_path / "trunc", n=4, size=8)
    p = tmp_path / "trunc" / "0002.png"
    p.write_bytes(p.read_bytes()[:60])
    with pytest.raises(InputError, match=r"0002\.png"):
        DaliLoader(tmp_path / "trunc", 2, 4, 1, num_threads=1)
