"""Built-in sample data from scikit-image: patch counts, content, caching, the missing-package error."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from dil_fast.data import builtin
from dil_fast.data.images import read_image_rgb
from dil_fast.errors import InputError

pytest.importorskip("skimage")


def test_train_patches_content_and_cache(tmp_path):
    folder = tmp_path / "train"
    # a big patch keeps the test fast: 512x512, 427x640, 872x1000 at 128/128 -> 16 + 15 + 42
    assert builtin.builtin_train_patches(folder, size=128) == str(folder)
    names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
    assert names == [f"{i:06d}.png" for i in range(1, 16 + 15 + 42 + 1)]
    astronaut = builtin.builtin_image("astronaut.png")
    np.testing.assert_array_equal(read_image_rgb(folder / "000001.png"), astronaut[:128, :128])
    np.testing.assert_array_equal(read_image_rgb(folder / "000006.png"), astronaut[128:256, 128:256])
    rocket = builtin.builtin_image("rocket.jpg")
    np.testing.assert_array_equal(read_image_rgb(folder / "000017.png"), rocket[:128, :128])
    hubble = builtin.builtin_image("hubble_deep_field.jpg")
    np.testing.assert_array_equal(read_image_rgb(folder / "000073.png"), hubble[640:768, 768:896])

    mtime = os.path.getmtime(folder / "000001.png")
    builtin.builtin_train_patches(folder, size=128)  # cached: nothing rewritten
    assert os.path.getmtime(folder / "000001.png") == mtime

    # another layout replaces ours completely
    builtin.builtin_train_patches(folder, size=200, stride=300)
    names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
    assert names == [f"{i:06d}.png" for i in range(1, 4 + 2 + 9 + 1)]
    marker = json.loads((folder / ".dil_fast_builtin.json").read_text())
    assert marker["spec"]["size"] == 200 and len(marker["files"]) == 15

    # a deleted patch makes the cache incomplete: rebuilt
    os.unlink(folder / "000003.png")
    builtin.builtin_train_patches(folder, size=200, stride=300)
    assert (folder / "000003.png").exists()


def test_testset(tmp_path):
    folder = builtin.builtin_testset(tmp_path / "test")
    assert sorted(os.listdir(folder)) == [".dil_fast_builtin.json", "chelsea.png", "coffee.png"]
    chelsea = builtin.builtin_image("chelsea.png")  # 300 x 451
    got = read_image_rgb(os.path.join(folder, "chelsea.png"))
    np.testing.assert_array_equal(got, chelsea[22:278, 97:353])
    mem = dict(builtin.builtin_test_images())
    np.testing.assert_array_equal(mem["chelsea.png"], got)
    assert mem["coffee.png"].shape == (256, 256, 3)


def test_center_crop_small_side_kept():
    img = np.arange(10 * 300 * 3, dtype=np.uint8).reshape(10, 300, 3)
    out = builtin.center_crop(img, 256)
    assert out.shape == (10, 256, 3)
    np.testing.assert_array_equal(out, img[:, 22:278])


def test_refuses_foreign_folder(tmp_path):
    (tmp_path / "mine.png").write_bytes(b"x")
    with pytest.raises(InputError, match="holds other files"):
        builtin.builtin_testset(tmp_path)
    assert (tmp_path / "mine.png").read_bytes() == b"x"


def test_missing_scikit_image(monkeypatch):
    def fake_files(name):
        raise ModuleNotFoundError(f"No module named '{name}'")

    import importlib.resources

    monkeypatch.setattr(importlib.resources, "files", fake_files)
    with pytest.raises(InputError, match=r"pip install dil-fast\[samples\]"):
        builtin.skimage_data_dir()
