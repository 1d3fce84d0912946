"""The reference data path: the released sampling, with per-sample counter-based seeding; bad images
read in workers; the worker cap."""

import cv2
import numpy as np
import pytest
import torch

from dil_fast.data.images import read_image_rgb
from dil_fast.data.released import (
    EpochShardSampler,
    NoisyPatchDataset,
    ReleasedPairLoader,
    augment,
    available_cpus,
    cap_workers,
    make_dataloader,
    next_batch,
    shutdown_workers,
)
from dil_fast.errors import InputError, SamplesUnavailable
from tests.conftest import make_png_folder
from tests.helpers import RRDB_NF4, train_argv


def test_dihedral_modes_follow_the_released_numbering():
    img = np.arange(2 * 3).reshape(2, 3, 1)  # asymmetric H != W
    # rot90 (counter-clockwise in the H,W plane): new[i, j] = old[j, W-1-i]
    r = augment(img, 5)
    assert r.shape[:2] == (3, 2) and r[0, 0, 0] == img[0, 2, 0] and r[2, 1, 0] == img[1, 0, 0]
    assert np.array_equal(augment(img, 0), img)
    assert np.array_equal(augment(img, 2), img[::-1])  # flip rows
    assert np.array_equal(augment(img, 6), img[::-1, ::-1])  # rot180
    assert np.array_equal(augment(img, 1), augment(img, 5)[::-1])  # flip-rows(rot90)
    assert np.array_equal(augment(img, 3), np.rot90(augment(img, 6)))  # rot270 = rot90 of rot180
    assert np.array_equal(augment(img, 4), img[:, ::-1])  # flip-rows(rot180) = flip cols
    assert np.array_equal(augment(img, 7), augment(img, 3)[::-1])
    sq = np.arange(9).reshape(3, 3, 1)
    outs = {augment(sq, m).tobytes() for m in range(8)}
    assert len(outs) == 8


def test_sample_is_the_released_recipe(png_folder):
    files = png_folder(n=3, size=40)
    ds = NoisyPatchDataset(files, 15, 16, seed=7, confounder=2)
    ds.set_epoch(3)
    lr, hr = ds[1]
    assert lr.dtype == hr.dtype == torch.float32 and lr.shape == hr.shape == (3, 16, 16)
    # re-draw the same numbers the way the docstring says
    rng = np.random.default_rng([7, 3, 2, 1])
    top, left, mode = int(rng.integers(0, 40 - 16)), int(rng.integers(0, 40 - 16)), int(rng.integers(0, 8))
    img = read_image_rgb(files[1])
    exp_hr = augment(img[top : top + 16, left : left + 16], mode).astype(np.float32) / 255.0
    noise = rng.standard_normal(exp_hr.shape) * 15 / 255.0
    exp_lr = np.clip(exp_hr + noise, 0, 1).astype(np.float32)
    assert np.array_equal(hr.numpy().transpose(1, 2, 0), exp_hr)
    assert np.array_equal(lr.numpy().transpose(1, 2, 0), exp_lr)
    # noise is not re-quantised to 8 bits
    assert not np.allclose(lr.numpy() * 255, np.round(lr.numpy() * 255))


def test_crop_offsets_never_reach_the_last_valid_position(png_folder):
    files = png_folder(n=1, size=20)
    img = read_image_rgb(files[0])
    seen = set()
    ds = NoisyPatchDataset(files, 0, 18, seed=0, confounder=0)
    for epoch in range(200):
        ds.set_epoch(epoch)
        _, hr = ds[0]
        # find the offset by matching against all candidate crops x modes
        for top in range(3):
            for left in range(3):
                crop = img[top : top + 18, left : left + 18]
                if any(
                    np.array_equal(hr.numpy().transpose(1, 2, 0), augment(crop, m).astype(np.float32) / 255)
                    for m in range(8)
                ):
                    seen.add((top, left))
    assert seen == {(t, l) for t in range(2) for l in range(2)}  # 0..H-p-1, as released
    ds_full = NoisyPatchDataset(files, 0, 18, seed=0, confounder=0, full_offsets=True)
    assert ds_full  # the fix exists behind a flag


def test_workers_do_not_change_the_data(png_folder, tmp_path):
    png_folder(n=8, size=24)
    a = ReleasedPairLoader(str(tmp_path / "train"), (5, 25), patch_size=16, batch_size=2, seed=3, num_workers=0)
    b = ReleasedPairLoader(str(tmp_path / "train"), (5, 25), patch_size=16, batch_size=2, seed=3, num_workers=2)
    assert len(a) == 4
    for pa, pb in zip(a, b):
        assert len(pa) == 2
        for (xa, ya), (xb, yb) in zip(pa, pb):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_each_confounder_has_its_own_order_and_epochs_differ(png_folder, tmp_path):
    png_folder(n=8, size=16)
    loader = ReleasedPairLoader(str(tmp_path / "train"), (0, 0), patch_size=16, batch_size=8, seed=1)
    loader.set_epoch(0)
    (x0, y0), (x1, y1) = next(iter(loader))
    # sigma 0 + patch = image: same set of 8 images, different order / modes per confounder
    assert not torch.equal(y0, y1)
    loader.set_epoch(1)
    (z0, _), _ = next(iter(loader))
    assert not torch.equal(z0, x0)


def test_sharding_has_no_duplicates_or_gaps():
    n, world = 11, 3
    shards = [EpochShardSampler(n, seed=5, confounder=0, rank=r, world_size=world) for r in range(world)]
    for s in shards:
        s.set_epoch(4)
    got = [i for s in shards for i in s.shard()]
    assert len(got) == 12 and set(got) == set(range(n))  # padded by wrapping, as DistributedSampler
    assert len({len(s.shard()) for s in shards}) == 1


def test_resume_position_skips_exactly(png_folder, tmp_path):
    png_folder(n=8, size=20)
    full = ReleasedPairLoader(str(tmp_path / "train"), (10,), patch_size=16, batch_size=2, seed=2)
    full.set_epoch(1)
    all_batches = [p[0][0] for p in full]
    part = ReleasedPairLoader(str(tmp_path / "train"), (10,), patch_size=16, batch_size=2, seed=2)
    part.load_state_dict({"epoch": 1, "position": 2})
    rest = [p[0][0] for p in part]
    assert len(rest) == 2 and all(torch.equal(a, b) for a, b in zip(all_batches[2:], rest))


def test_bad_trainsets(tmp_path, png_folder):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files"):
        ReleasedPairLoader(str(tmp_path / "empty"), (5,), patch_size=16, batch_size=2)
    with pytest.raises(InputError, match="folder not found"):
        ReleasedPairLoader(str(tmp_path / "missing"), (5,), patch_size=16, batch_size=2)
    png_folder(n=2, size=16, name="few")
    with pytest.raises(InputError, match="fewer than one batch"):
        ReleasedPairLoader(str(tmp_path / "few"), (5,), patch_size=16, batch_size=4)
    files = png_folder(n=2, size=12, name="small")
    ds = NoisyPatchDataset(files, 5, 16, seed=0, confounder=0)
    with pytest.raises(InputError, match="smaller than --patch_size 16"):
        ds[0]


# ---------------------------------------------------------------------------------------------
# Bad images read in DataLoader workers: one line in the main process, as without workers


def _truncated(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _rgba_translucent(path):
    img = np.full((24, 24, 4), 120, np.uint8)
    img[3, 5, 3] = 40
    cv2.imwrite(str(path), img)


BAD_IMAGES = {  # every class read_image_rgb (or the patch size) refuses, with the words of its message
    "truncated_png": (_truncated, "truncated or corrupt PNG"),
    "zero_bytes": (lambda p: p.write_bytes(b""), "empty file"),
    "not_an_image": (lambda p: p.write_bytes(b"plain text, not a PNG"), "not an image"),
    "16bit_png": (lambda p: cv2.imwrite(str(p), np.full((24, 24, 3), 1000, np.uint16)), "16-bit image"),
    "rgba_translucent": (_rgba_translucent, "transparent alpha channel"),
    "smaller_than_patch": (
        lambda p: cv2.imwrite(str(p), np.full((10, 30, 3), 9, np.uint8)),
        "image is 30x10, smaller than --patch_size 16",
    ),
}


def _bad_folder(tmp_path, kind):
    folder = tmp_path / kind
    make_png_folder(folder, n=2, size=24)
    bad = folder / "000001.png"
    BAD_IMAGES[kind][0](bad)
    return folder, bad


@pytest.mark.parametrize("workers", [0, 2], ids=["in_process", "2workers"])
@pytest.mark.parametrize("kind", list(BAD_IMAGES))
def test_bad_image_is_one_line_through_the_cli(tmp_path, kind, workers, monkeypatch, capfd):
    from dil_fast import cli
    from dil_fast.data import released as reference

    folder, bad = _bad_folder(tmp_path, kind)
    make_png_folder(tmp_path / "test", n=1, size=16)
    monkeypatch.setattr(reference, "available_cpus", lambda: 8)  # the 2 workers start on any machine
    tiny = dict(batch_size=1, num_workers=workers, size=RRDB_NF4, progress=True, tensorboard=True)
    rc = cli.main(train_argv(folder, tmp_path / "test", tmp_path / "run", "--levels", "5", **tiny))
    lines = capfd.readouterr().err.splitlines()
    assert rc == 2 and len(lines) == 1, lines  # no worker traceback, no "Caught InputError in DataLoader worker"
    assert lines[0].startswith(f"error: {bad}: ") and BAD_IMAGES[kind][1] in lines[0]


def test_bad_image_in_a_worker_raises_its_own_error(tmp_path):
    folder = tmp_path / "train"
    make_png_folder(folder, n=2, size=24)
    loader = ReleasedPairLoader(str(folder), (5, 10), patch_size=16, batch_size=1, num_workers=1, cpus=2)
    assert loader.num_workers == 1
    bad = folder / "000001.png"
    BAD_IMAGES["16bit_png"][0](bad)  # damaged after the loader checked it (mid-run)
    with pytest.raises(InputError) as info:
        for _ in loader:
            pass
    assert str(info.value) == f"{bad}: 16-bit image; convert it to 8-bit first (e.g. round(x / 257))"


def test_user_errors_cross_the_worker_boundary_unchanged():
    class Refusing(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, idx):
            if idx == 2:
                raise SamplesUnavailable("pip install dil-fast[samples]")
            return torch.full((2,), float(idx))

    batches = iter(make_dataloader(Refusing(), batch_size=2, num_workers=1))
    try:
        assert torch.equal(next_batch(batches), torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
        with pytest.raises(SamplesUnavailable, match=r"^pip install dil-fast\[samples\]$"):
            next_batch(batches)
    finally:
        shutdown_workers(batches)


# ---------------------------------------------------------------------------------------------
# The worker cap: K confounders x workers per confounder never exceed the CPUs


@pytest.mark.parametrize(
    "requested,confounders,cpus,expected",
    [
        (8, 4, 2, 0),
        (8, 4, 16, 4),
        (8, 4, 32, 8),
        (2, 1, 2, 2),
        (3, 2, 5, 2),
        (0, 4, 1, 0),
    ],
    ids=["released_default_on_2_cores", "halved", "fits", "exact", "floor", "none_asked"],
)
def test_cap_workers(requested, confounders, cpus, expected):
    count, note = cap_workers(requested, confounders, cpus)
    assert count == expected and count * confounders <= cpus
    if count == requested:
        assert note is None
    else:
        assert note.startswith(
            f"--num_workers {requested}: {confounders} confounders x {requested} workers = "
            f"{requested * confounders} processes for {cpus} CPUs; using {expected} per confounder"
        )
        assert "\n" not in note
    if expected == 0 and requested:
        assert "main process" in note


def test_available_cpus_follows_the_affinity(monkeypatch):
    from dil_fast.data import released as reference

    monkeypatch.setattr(reference.os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert available_cpus() == 3
    monkeypatch.delattr(reference.os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(reference.os, "cpu_count", lambda: 6)
    assert available_cpus() == 6


def test_loader_uses_the_capped_count_and_says_so(png_folder, tmp_path):
    png_folder(n=4, size=16)
    capped = ReleasedPairLoader(
        str(tmp_path / "train"), (5, 10, 15, 20), patch_size=16, batch_size=1, num_workers=8, cpus=2
    )
    assert capped.num_workers == 0 and "32 processes for 2 CPUs" in capped.worker_note
    pairs = next(iter(capped))
    assert len(pairs) == 4 and all(noisy.shape == clean.shape == (1, 3, 16, 16) for noisy, clean in pairs)
    kept = ReleasedPairLoader(str(tmp_path / "train"), (5, 10), patch_size=16, batch_size=1, num_workers=2, cpus=4)
    assert kept.num_workers == 2 and kept.worker_note is None
