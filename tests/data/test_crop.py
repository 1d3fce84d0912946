"""`dil-fast crop`: counts, global numbering, pixel equality with a manual crop, bad inputs, the
staging folders of failed and killed runs."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from dil_fast import cli
from dil_fast.data.crop import (
    STAGING_PREFIX,
    add_crop_parser,
    crop_folder,
    grid_positions,
    run_crop,
)
from dil_fast.data.images import read_image_rgb, write_image_rgb
from dil_fast.errors import FlagError, InputError
from dil_fast.staging import lock_folder, release_folder_lock


def _parse(argv):
    parser = argparse.ArgumentParser(prog="dil-fast")
    add_crop_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["crop"] + argv)


def _images(folder, shapes, seed=0):
    rng = np.random.default_rng(seed)
    imgs = []
    for i, (h, w) in enumerate(shapes):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        write_image_rgb(os.path.join(folder, f"img{i:02d}.png"), img)
        imgs.append(img)
    return imgs


def _manual(imgs, size, stride):
    out = []
    for img in imgs:
        h, w = img.shape[:2]
        y = 0
        while y + size <= h:
            x = 0
            while x + size <= w:
                out.append(img[y : y + size, x : x + size])
                x += stride
            y += stride
    return out


def test_grid_positions():
    assert grid_positions(10, 10, 4, 4) == [(0, 0), (0, 4), (4, 0), (4, 4)]
    assert grid_positions(8, 9, 4, 3) == [(0, 0), (0, 3), (3, 0), (3, 3)]
    assert grid_positions(3, 10, 4, 4) == []
    assert grid_positions(4, 4, 4, 100) == [(0, 0)]


@pytest.mark.parametrize("workers", [1, 2], ids=["serial", "2procs"])
@pytest.mark.parametrize("size,stride", [(16, 16), (16, 7), (20, 30)], ids=["s16", "s16-7", "s20-30"])
def test_crop_matches_manual(tmp_path, workers, size, stride):
    shapes = [(40, 33), (16, 50), (63, 17), (21, 21)]
    imgs = _images(tmp_path / "in", shapes)
    expected = _manual(imgs, size, stride)
    assert (
        run_crop(
            _parse(
                [
                    "--input",
                    str(tmp_path / "in"),
                    "--output",
                    str(tmp_path / "out"),
                    "--size",
                    str(size),
                    "--stride",
                    str(stride),
                    "--workers",
                    str(workers),
                ]
            )
        )
        == 0
    )
    names = sorted(os.listdir(tmp_path / "out"))
    assert names == [f"{i:06d}.png" for i in range(1, len(expected) + 1)]
    for name, patch in zip(names, expected):
        np.testing.assert_array_equal(read_image_rgb(tmp_path / "out" / name), patch)


def test_defaults_and_mixed_formats(tmp_path):
    args = _parse(["--input", "a", "--output", "b"])
    assert (args.size, args.stride) == (256, 256) and args.workers >= 1
    inp = tmp_path / "in"
    inp.mkdir()
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (12, 24, 3), dtype=np.uint8)
    cv2.imwrite(str(inp / "b.bmp"), b[:, :, ::-1])
    cv2.imwrite(str(inp / "a.png"), a[:, :, ::-1])
    (inp / "readme.txt").write_text("not an image, ignored")
    summary = crop_folder(inp, tmp_path / "out", size=12, stride=12, workers=1)
    assert summary == {"patches": 6, "images": 2, "skipped": []}
    out = tmp_path / "out"
    np.testing.assert_array_equal(read_image_rgb(out / "000004.png"), a[12:, 12:])
    np.testing.assert_array_equal(read_image_rgb(out / "000006.png"), b[:, 12:])
    assert sorted(os.listdir(out)) == [f"{i:06d}.png" for i in range(1, 7)]  # no staging left behind


def test_small_images_skipped_with_warning(tmp_path, capsys):
    _images(tmp_path / "in", [(10, 40), (32, 32), (40, 8)])
    summary = crop_folder(tmp_path / "in", tmp_path / "out", size=16, stride=16, workers=1)
    assert summary["patches"] == 4 and summary["skipped"] == ["img00.png", "img02.png"]
    assert "skipped 2 image(s) smaller than 16x16" in capsys.readouterr().err


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="--input .*not found"):
        crop_folder(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="--input .*no image"):
        crop_folder(tmp_path / "empty", tmp_path / "out")
    _images(tmp_path / "in", [(8, 8)])
    with pytest.raises(InputError, match="at least 16x16"):
        crop_folder(tmp_path / "in", tmp_path / "out", size=16, stride=16)
    for flag, kw in [("--size", {"size": 0}), ("--stride", {"stride": -3}), ("--workers", {"workers": 0})]:
        with pytest.raises(FlagError, match=flag):
            crop_folder(tmp_path / "in", tmp_path / "out", **kw)
    with pytest.raises(FlagError, match="--output"):
        crop_folder(tmp_path / "in", tmp_path / "in", size=4, stride=4)


@pytest.mark.parametrize("workers", [1, 2], ids=["serial", "2procs"])
def test_corrupt_file_named_and_nothing_written(tmp_path, workers):
    _images(tmp_path / "in", [(32, 32), (32, 32), (32, 32)])
    (tmp_path / "in" / "img01.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    out = tmp_path / "out"
    with pytest.raises(InputError, match="img01.png"):
        crop_folder(tmp_path / "in", out, size=16, stride=16, workers=workers)
    assert not out.exists()  # the folder it created is removed again
    (out / "kept").mkdir(parents=True)  # an existing --output keeps what it held, and gains nothing
    with pytest.raises(InputError, match="img01.png"):
        crop_folder(tmp_path / "in", out, size=16, stride=16, workers=workers)
    assert os.listdir(out) == ["kept"]


def test_unwritable_output(tmp_path):
    _images(tmp_path / "in", [(16, 16)])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="--output"):
        crop_folder(tmp_path / "in", blocker / "out", size=8, stride=8)


def test_unwritable_output_is_one_line_through_the_cli(tmp_path, capfd):
    _images(tmp_path / "in", [(16, 16)])
    (tmp_path / "file").write_text("x")
    rc = cli.main(
        [
            "crop",
            "--input",
            str(tmp_path / "in"),
            "--output",
            str(tmp_path / "file" / "out"),
            "--size",
            "8",
            "--stride",
            "8",
        ]
    )
    err = capfd.readouterr().err
    assert rc == 2 and err.splitlines() == [
        f"error: --output {tmp_path / 'file' / 'out'}: cannot create or write the folder (Not a directory)"
    ]


def test_stale_staging_folders_are_removed_at_the_next_start(tmp_path):
    _images(tmp_path / "in", [(16, 16)])
    out = tmp_path / "out"
    out.mkdir()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    past = time.time() - 60
    dead = out / f"{STAGING_PREFIX}{child.pid}.k9x2ab"  # killed (kill -9) crop: its PID is gone
    old_style = out / f"{STAGING_PREFIX}q1w2e3r4"  # no PID in the name, older than this crop, unlocked
    in_use = out / f"{STAGING_PREFIX}{os.getpid()}.other"  # another crop running now: locked
    for folder in (dead, old_style, in_use):
        folder.mkdir()
        (folder / "0000000_000000.png").write_bytes(b"half")
        os.utime(folder, (past, past))
    lock = lock_folder(str(in_use))
    try:
        crop_folder(tmp_path / "in", out, size=8, stride=8, progress=False)
    finally:
        release_folder_lock(lock)
    assert sorted(os.listdir(out)) == [in_use.name, "000001.png", "000002.png", "000003.png", "000004.png"]
