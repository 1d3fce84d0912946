"""dil-fast pack: round trip against OpenCV, the CLI hooks, every bad input, and the temporary
folders of failed and killed runs (tier T0)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from dil_fast import cli
from dil_fast.data.pack import add_pack_parser, pack_folder, run_pack
from dil_fast.data.store import PatchStore
from dil_fast.errors import FlagError, InputError
from dil_fast.staging import lock_folder, release_folder_lock, stale_folders


def _cv2_rgb(path):
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1]


def _no_leftovers(tmp_path, name="store"):
    return not [p for p in os.listdir(tmp_path) if p.startswith(name)]


def test_round_trip_cut_grid(tmp_path, png_folder):
    paths = png_folder(n=4, size=40)
    index = pack_folder(tmp_path / "train", tmp_path / "store", size=16, stride=12, progress=False)
    store = PatchStore(tmp_path / "store")
    assert (store.count, store.height, store.width) == (4 * 9, 16, 16) == (index["count"], 16, 16)
    i = 0
    for p in paths:
        img = _cv2_rgb(p)
        for y in (0, 12, 24):
            for x in (0, 12, 24):
                assert np.array_equal(store.data[i].numpy(), img[y : y + 16, x : x + 16]), (p, y, x)
                assert store.source_of(i) == (os.path.basename(p), y, x)
                i += 1


def test_round_trip_ready_patches_jpeg_and_workers(tmp_path, png_folder):
    paths = png_folder(n=3, size=24)
    others = [tmp_path / "train" / f"zz.{ext}" for ext in ("bmp", "jpg", "webp")]
    for i, p in enumerate(others):
        cv2.imwrite(str(p), np.ascontiguousarray(np.rot90(cv2.imread(paths[i]))))
    pack_folder(tmp_path / "train", tmp_path / "s1", progress=False)
    pack_folder(tmp_path / "train", tmp_path / "s2", workers=2, progress=False)
    s1, s2 = PatchStore(tmp_path / "s1"), PatchStore(tmp_path / "s2")
    assert s1.count == 6 and s1.sha256 == s2.sha256
    for i, p in enumerate(paths + others):
        assert np.array_equal(s1.data[i].numpy(), _cv2_rgb(p))


def test_cli_hooks(tmp_path, png_folder, capsys):
    png_folder(n=2, size=32)
    parser = argparse.ArgumentParser()
    add_pack_parser(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(
        [
            "pack",
            "--input",
            str(tmp_path / "train"),
            "--output",
            str(tmp_path / "store"),
            "--size",
            "16",
            "--workers",
            "1",
            "--no_progress",
        ]
    )
    assert run_pack(args) == 0
    assert "packed 8 patches of 16x16 from 2 images" in capsys.readouterr().out
    index = json.loads((tmp_path / "store" / "index.json").read_text())
    assert index["stride"] == 16 and len(index["chunks"]) == 1
    with pytest.raises(FlagError, match="already exists"):
        run_pack(args)
    args.overwrite = True
    assert run_pack(args) == 0 and _no_leftovers(tmp_path, "store.")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files"):
        pack_folder(tmp_path / "empty", tmp_path / "store", progress=False)
    assert _no_leftovers(tmp_path)


def test_truncated_file_named_or_skipped(tmp_path, png_folder):
    paths = png_folder(n=3, size=24)
    with open(paths[1], "rb") as f:
        data = f.read()
    with open(paths[1], "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(InputError, match="000001.png.*--skip_bad"):
        pack_folder(tmp_path / "train", tmp_path / "store", workers=2, progress=False)
    assert _no_leftovers(tmp_path)
    index = pack_folder(tmp_path / "train", tmp_path / "store", skip_bad=True, progress=False)
    assert index["count"] == 2 and index["skipped"]["unreadable"] == ["000001.png"]


def test_image_smaller_than_patch(tmp_path, png_folder):
    png_folder(n=2, size=24)
    with pytest.raises(InputError, match="smaller than the 32x32 patch"):
        pack_folder(tmp_path / "train", tmp_path / "store", size=32, progress=False)
    with pytest.raises(InputError, match="no usable image"):
        pack_folder(tmp_path / "train", tmp_path / "store", size=32, skip_bad=True, progress=False)
    assert _no_leftovers(tmp_path)


def test_grayscale_is_converted_to_rgb_and_counted(tmp_path, png_folder, capsys):
    png_folder(n=2, size=24)
    cv2.imwrite(str(tmp_path / "train" / "gray.png"), np.full((24, 24), 7, np.uint8))
    index = pack_folder(tmp_path / "train", tmp_path / "store", progress=False)
    assert index["count"] == 3 and index["gray"] == ["gray.png"]
    data = np.fromfile(tmp_path / "store" / "patches.u8", np.uint8).reshape(3, 24, 24, 3)
    assert (data[2] == 7).all()  # the gray value in R, G and B


def test_ready_patches_of_different_sizes(tmp_path, png_folder):
    png_folder(n=3, size=24)
    cv2.imwrite(str(tmp_path / "train" / "000000_big.png"), np.full((30, 24, 3), 7, np.uint8))
    cv2.imwrite(str(tmp_path / "train" / "-tiny.png"), np.full((4, 4, 3), 7, np.uint8))  # read first
    with pytest.raises(InputError, match="different sizes: most are 24x24, -tiny.png is 4x4.*--size.*--skip_bad"):
        pack_folder(tmp_path / "train", tmp_path / "store", progress=False)
    assert _no_leftovers(tmp_path)
    # --skip_bad keeps the size most files have, whichever file comes first
    index = pack_folder(tmp_path / "train", tmp_path / "store", skip_bad=True, progress=False)
    assert (index["count"], index["height"], index["width"]) == (3, 24, 24)
    assert index["skipped"]["other_size"] == ["-tiny.png", "000000_big.png"]


def test_bad_flags(tmp_path, png_folder):
    png_folder(n=1, size=24)
    with pytest.raises(FlagError, match="--stride needs --size"):
        pack_folder(tmp_path / "train", tmp_path / "store", stride=4, progress=False)
    with pytest.raises(FlagError, match="--size 0"):
        pack_folder(tmp_path / "train", tmp_path / "store", size=0, progress=False)


def test_damaged_store_checksum(tmp_path, png_folder):
    png_folder(n=3, size=24)
    pack_folder(tmp_path / "train", tmp_path / "store", progress=False, chunk_bytes=24 * 24 * 3)
    data = tmp_path / "store" / "patches.u8"
    raw = bytearray(data.read_bytes())
    raw[24 * 24 * 3 + 5] ^= 0xFF  # inside patch 1
    data.write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"checksum does not match \(patches 1\.\.1 damaged\)"):
        PatchStore(tmp_path / "store")
    with pytest.raises(InputError, match="checksum"):
        PatchStore(tmp_path / "store", memory_budget=0)  # memmap path verifies too
    assert PatchStore(tmp_path / "store", verify=False).count == 3
    data.write_bytes(bytes(raw[:-10]))
    with pytest.raises(InputError, match="truncated"):
        PatchStore(tmp_path / "store")
    with pytest.raises(InputError, match="not a packed store"):
        PatchStore(tmp_path / "train")


# ---------------------------------------------------------------------------------------------
# Unwritable outputs, and the temporary folders of failed and killed runs


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: the PID names no process now
    return child.pid


def _cli_error(capfd, argv) -> str:
    rc = cli.main(argv)
    err = capfd.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), (rc, err)
    return err


def test_uncreatable_output_is_one_line_and_leaves_nothing(tmp_path, png_folder, capfd):
    png_folder(n=2, size=16)
    name = "s" * 250  # the temporary folder's name (+ ".tmp-<pid>") is too long even for root
    err = _cli_error(capfd, ["pack", "--input", str(tmp_path / "train"), "--output", str(tmp_path / name)])
    assert f"--output {tmp_path / name}: cannot create the store folder" in err and "too long" in err
    assert sorted(os.listdir(tmp_path)) == ["train"]


def test_read_only_parent_is_one_line(tmp_path, png_folder, capfd):
    png_folder(n=2, size=16)
    parent = tmp_path / "read_only"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        if os.access(parent, os.W_OK):
            pytest.skip("running as root: a read-only folder is writable (the name-too-long test covers this path)")
        err = _cli_error(capfd, ["pack", "--input", str(tmp_path / "train"), "--output", str(parent / "store")])
        assert "cannot create the store folder" in err and "Permission denied" in err
        assert os.listdir(parent) == []
    finally:
        parent.chmod(0o755)


def test_failed_pack_removes_its_folder(tmp_path, png_folder, capfd):
    png_folder(n=3, size=16)
    (tmp_path / "train" / "000001.png").write_bytes(b"")
    err = _cli_error(capfd, ["pack", "--input", str(tmp_path / "train"), "--output", str(tmp_path / "store")])
    assert "000001.png: empty file" in err
    assert _no_leftovers(tmp_path)


def test_stale_folders_rule(tmp_path):
    started = time.time()
    past = started - 60

    def folder(name, mtime=past):
        path = tmp_path / name
        path.mkdir()
        (path / "patches.u8").write_bytes(b"x" * 10)
        os.utime(path, (mtime, mtime))
        return str(path)

    dead = folder(f"store.tmp-{_dead_pid()}")
    old_unlocked = folder(f"store.tmp-{os.getppid()}")  # a live PID reused by another process
    fresh = folder("store.tmp-1", mtime=started + 5)  # a live PID's folder made after we started: not locked yet
    running = folder(f"store.tmp-{os.getpid()}")
    other_output = folder(f"other.tmp-{_dead_pid()}")
    lock = lock_folder(running)
    try:
        assert stale_folders(str(tmp_path), "store.tmp-", started) == sorted([dead, old_unlocked])
        assert stale_folders(str(tmp_path), "store.tmp-", started, by_age=False) == [dead]
    finally:
        release_folder_lock(lock)
    assert running in stale_folders(str(tmp_path), "store.tmp-", started)  # unlocked and old now
    assert fresh not in stale_folders(str(tmp_path), "store.tmp-", started) and os.path.isdir(other_output)


def test_next_pack_removes_a_dead_runs_folder(tmp_path, png_folder):
    png_folder(n=2, size=16)
    stale = tmp_path / f"store.tmp-{_dead_pid()}"
    stale.mkdir()
    (stale / "patches.u8").write_bytes(b"\0" * 4096)
    pack_folder(tmp_path / "train", tmp_path / "store", progress=False)
    assert sorted(os.listdir(tmp_path)) == ["store", "train"]


def test_killed_overwrite_puts_the_old_store_back(tmp_path, png_folder):
    png_folder(n=2, size=16)
    pack_folder(tmp_path / "train", tmp_path / "store", progress=False)
    moved = tmp_path / f"store.old-{_dead_pid()}"
    os.replace(tmp_path / "store", moved)  # killed between the two renames of --overwrite
    with pytest.raises(FlagError, match="already exists"):
        pack_folder(tmp_path / "train", tmp_path / "store", progress=False)
    assert PatchStore(tmp_path / "store").count == 2 and not moved.exists()
    moved.mkdir()  # killed after the second rename: the new store is in place, the old one is garbage
    pack_folder(tmp_path / "train", tmp_path / "store", overwrite=True, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["store", "train"]


_SLOW_PACK = """
import sys, time
import dil_fast.data.pack as pack

read = pack.read_image_rgb
def slow_read(path):
    time.sleep(0.05)
    return read(path)
pack.read_image_rgb = slow_read
pack.pack_folder(sys.argv[1], sys.argv[2], workers=1, progress=False)
"""


def test_killed_pack_leaves_its_folder_and_the_next_pack_removes_it(tmp_path, png_folder):
    png_folder(n=200, size=16)
    child = subprocess.Popen([sys.executable, "-c", _SLOW_PACK, str(tmp_path / "train"), str(tmp_path / "store")])
    data = tmp_path / f"store.tmp-{child.pid}" / "patches.u8"
    deadline = time.monotonic() + 60
    while not (data.exists() and data.stat().st_size > 0):  # mid-run: some patches written
        assert child.poll() is None and time.monotonic() < deadline, "the slow pack ended before it was killed"
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert data.exists() and not (tmp_path / "store").exists()
    pack_folder(tmp_path / "train", tmp_path / "store", progress=False)
    assert sorted(os.listdir(tmp_path)) == ["store", "train"] and PatchStore(tmp_path / "store").count == 200
