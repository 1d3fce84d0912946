"""Image I/O: round trips, the grayscale / alpha / 16-bit policies, bad files, atomic writes."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import torch

from dil_fast.data.images import (
    image_to_tensor,
    list_images,
    read_image_rgb,
    tensor_to_uint8,
    write_image_rgb,
)
from dil_fast.errors import InputError


def _rand(h=9, w=13, c=3, seed=0, dtype=np.uint8):
    hi = 256 if dtype == np.uint8 else 65536
    return np.random.default_rng(seed).integers(0, hi, (h, w, c) if c else (h, w), dtype=dtype)


def _imwrite(path, arr):
    ok, buf = cv2.imencode(os.path.splitext(str(path))[1], arr)
    assert ok
    with open(path, "wb") as f:
        f.write(buf.tobytes())


def test_roundtrip_rgb_order(tmp_path):
    img = _rand()
    p = tmp_path / "a.png"
    write_image_rgb(p, img)
    out = read_image_rgb(p)
    assert out.dtype == np.uint8 and out.shape == (9, 13, 3)
    np.testing.assert_array_equal(out, img)
    # the file on disk is BGR, as OpenCV writes it: channel order is really swapped
    np.testing.assert_array_equal(cv2.imread(str(p))[:, :, ::-1], img)


def test_non_ascii_path(tmp_path):
    img = _rand(seed=1)
    p = tmp_path / "données_画像.png"
    write_image_rgb(p, img)
    np.testing.assert_array_equal(read_image_rgb(p), img)


def test_grayscale_is_replicated(tmp_path):
    g = _rand(c=0)
    p = tmp_path / "g.png"
    _imwrite(p, g)
    out = read_image_rgb(p)
    assert out.shape == (9, 13, 3)
    for ch in range(3):
        np.testing.assert_array_equal(out[:, :, ch], g)


def test_opaque_rgba_drops_alpha(tmp_path):
    bgra = _rand(c=4)
    bgra[:, :, 3] = 255
    p = tmp_path / "o.png"
    _imwrite(p, bgra)
    np.testing.assert_array_equal(read_image_rgb(p), bgra[:, :, 2::-1])


def test_translucent_rgba_refused(tmp_path):
    bgra = _rand(c=4)
    bgra[0, 0, 3] = 254
    p = tmp_path / "t.png"
    _imwrite(p, bgra)
    with pytest.raises(InputError, match=r"t\.png.*alpha"):
        read_image_rgb(p)


def test_16bit_refused(tmp_path):
    p = tmp_path / "deep.png"
    _imwrite(p, _rand(dtype=np.uint16))
    with pytest.raises(InputError, match=r"deep\.png: 16-bit"):
        read_image_rgb(p)


@pytest.mark.parametrize("content", [b"", b"hello, not an image", b"\x89PNG\r\n\x1a\n garbage"])
def test_not_an_image(tmp_path, content):
    p = tmp_path / "bad.png"
    p.write_bytes(content)
    with pytest.raises(InputError, match=r"bad\.png"):
        read_image_rgb(p)


def test_truncated_png(tmp_path):
    p = tmp_path / "cut.png"
    write_image_rgb(p, _rand(64, 64))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputError, match=r"cut\.png.*truncated"):
        read_image_rgb(p)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_image_rgb(tmp_path / "nope.png")
    with pytest.raises(InputError, match="folder"):
        read_image_rgb(tmp_path)


def test_jpeg_bmp_read(tmp_path):
    img = _rand(16, 16)
    _imwrite(tmp_path / "x.bmp", img[:, :, ::-1].copy())
    np.testing.assert_array_equal(read_image_rgb(tmp_path / "x.bmp"), img)
    _imwrite(tmp_path / "x.jpg", img[:, :, ::-1].copy())
    assert read_image_rgb(tmp_path / "x.jpg").shape == (16, 16, 3)


def test_list_images(tmp_path):
    for n in ["b.png", "a.PNG", "c.jpg", ".hidden.png", "notes.txt"]:
        (tmp_path / n).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    names = [os.path.basename(p) for p in list_images(tmp_path)]
    assert names == ["a.PNG", "b.png"]
    names = [os.path.basename(p) for p in list_images(tmp_path, exts=(".png", ".jpg"))]
    assert names == ["a.PNG", "b.png", "c.jpg"]


def test_list_images_errors(tmp_path):
    with pytest.raises(InputError, match=r"^--trainset .*nope: folder not found"):
        list_images(tmp_path / "nope")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(InputError, match=r"^--testset .*: no image files"):
        list_images(tmp_path, flag="--testset")
    with pytest.raises(InputError, match="not a folder"):
        list_images(tmp_path / "f.txt")


def test_write_is_atomic_and_leaves_no_temp(tmp_path):
    p = tmp_path / "sub" / "w.png"
    write_image_rgb(p, _rand())
    assert os.listdir(tmp_path / "sub") == ["w.png"]
    with pytest.raises(ValueError):
        write_image_rgb(p, _rand().astype(np.float32))
    assert os.listdir(tmp_path / "sub") == ["w.png"]


def test_write_unwritable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="cannot write"):
        write_image_rgb(blocker / "x.png", _rand())


def test_tensor_conversions():
    img = _rand()
    t = image_to_tensor(img)
    assert t.dtype == torch.float32 and t.shape == (3, 9, 13)
    assert float(t.min()) >= 0 and float(t.max()) <= 1
    assert torch.equal(t[1], torch.from_numpy(img[:, :, 1]).float() / 255)
    np.testing.assert_array_equal(tensor_to_uint8(t), img)
    np.testing.assert_array_equal(tensor_to_uint8(t[None]), img)
    # x*255, round half to even, clip
    v = torch.tensor([-0.5, 0.5 / 255, 1.5 / 255, 2.5 / 255, 0.999, 1.2]).view(1, 1, 6).expand(3, 1, 6)
    np.testing.assert_array_equal(tensor_to_uint8(v)[0, :, 0], [0, 0, 2, 2, 255, 255])


def _raw_png(arr: np.ndarray, color_type: int, bit_depth: int = 8) -> bytes:
    """A minimal PNG written by hand (OpenCV cannot write gray+alpha): no filtering, one IDAT."""
    import struct
    import zlib

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    h, w = arr.shape[:2]
    dtype = ">u2" if bit_depth == 16 else "u1"
    rows = b"".join(b"\x00" + arr[y].astype(dtype).tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_gray_alpha_png(tmp_path):
    gray = _rand(6, 5, c=0, seed=4)
    la = np.stack([gray, np.full_like(gray, 255)], -1)
    p = tmp_path / "la.png"
    p.write_bytes(_raw_png(la, color_type=4))
    out = read_image_rgb(p)
    assert out.shape == (6, 5, 3)
    for ch in range(3):
        np.testing.assert_array_equal(out[:, :, ch], gray)
    la[2, 3, 1] = 0
    p.write_bytes(_raw_png(la, color_type=4))
    with pytest.raises(InputError, match="alpha"):
        read_image_rgb(p)


def test_16bit_gray_refused(tmp_path):
    p = tmp_path / "g16.png"
    p.write_bytes(_raw_png(_rand(4, 4, c=0, dtype=np.uint16), color_type=0, bit_depth=16))
    with pytest.raises(InputError, match="16-bit"):
        read_image_rgb(p)


def test_jpeg_exif_orientation_applied(tmp_path):
    """EXIF orientation 6 (rotate 90 CW) is applied, as the reference's cv2.imread does."""
    import struct

    img = np.zeros((8, 16, 3), np.uint8)
    img[:, :8] = 255
    ok, buf = cv2.imencode(".jpg", img)
    data = buf.tobytes()
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0) + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + b"MM\x00*\x00\x00\x00\x08" + ifd
    p = tmp_path / "rot.jpg"
    p.write_bytes(data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:])
    out = read_image_rgb(p)
    assert out.shape == (16, 8, 3)
    assert out[:8].mean() > 200 and out[8:].mean() < 50  # the white left half is now on top


_POOL_SCRIPT = """
import os, sys
import cv2
import numpy as np
from dil_fast.data.images import check_images, write_image_rgb

folder = sys.argv[1]
paths = []
for i in range(64):
    paths.append(os.path.join(folder, f"{i:03d}.png"))
    write_image_rgb(paths[-1], np.full((8, 8, 3), i, np.uint8))
cv2.setNumThreads(2)
big = np.random.default_rng(0).random((1500, 1500), dtype=np.float32)
for _ in range(3):
    cv2.GaussianBlur(big, (15, 15), 3)  # runs on OpenCV's thread pool, which forked workers inherit
shapes = check_images(paths, workers=2, progress=False)
print(len(shapes), cv2.getNumThreads())
"""


def test_decoding_workers_start_after_opencv_used_its_thread_pool(tmp_path):
    """Forked decoding workers used to hang forever in ``cv2.setNumThreads`` when this process had
    used OpenCV's thread pool before (the test suite hung here): the pool is now stopped while the
    workers live, and its size restored after."""
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-c", _POOL_SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["64", "2"]
