"""`dil-fast restore`: tiles (exact with enough context, close without), batches, precisions,
scales, checkpoint layouts, output names, and the errors that leave nothing behind, on tiny CPU
networks and images."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from dil_fast.cli import main
from dil_fast.data.images import image_to_tensor, read_image_rgb, tensor_to_uint8, write_image_rgb
from dil_fast.eval.restore import Restorer, tile_windows
from dil_fast.metrics import calculate_psnr

RRDB_REACH = 19  # tiny RRDB: conv_first + 3 RDBs x 5 convs + trunk_conv + HRconv + conv_last, 3x3 each


class ThreeConv(nn.Module):
    """A fully convolutional network that sees 3 pixels each way (three 3x3 convolutions)."""

    def __init__(self, width: int = 6):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 3, 3, padding=1),
        )

    def forward(self, x):
        return x + 0.3 * self.body(x)


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth image with texture and an edge, ``h x w x 3`` uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([yy / h, xx / w, ((yy + xx) % 23) / 23], -1) * 180 + 30
    base[:, w // 3 :] += 25
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def _untiled(model, img: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return tensor_to_uint8(model(image_to_tensor(img)[None]))


def _run(*argv) -> int:
    return main(["restore", "--device", "cpu", "--no_progress", *[str(a) for a in argv]])


def _one_error_line(capsys, *words) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for w in words:
        assert w in err, err
    return err


# ------------------------------------------------------------------------------------------------ tiles


@pytest.mark.parametrize(
    "h,w,tile,pad",
    [(1, 1, 4, 2), (17, 23, 8, 3), (63, 40, 16, 0), (97, 17, 32, 10), (20, 20, 64, 5)],
    ids=lambda v: str(v),
)
def test_tile_windows_cover_the_image_with_enough_context(h, w, tile, pad):
    (wh, ww), tiles = tile_windows(h, w, tile, pad)
    assert (wh, ww) == (min(h, tile + 2 * pad), min(w, tile + 2 * pad))
    covered = np.zeros((h, w), np.int32)
    for t in tiles:
        covered[t.y0 : t.y1, t.x0 : t.x1] += 1
        assert 0 <= t.wy <= t.y0 < t.y1 <= t.wy + wh <= h and 0 <= t.wx <= t.x0 < t.x1 <= t.wx + ww <= w
        # context on every side is at least `pad`, or that side is the image's border
        assert t.y0 - t.wy >= pad or t.wy == 0
        assert t.x0 - t.wx >= pad or t.wx == 0
        assert t.wy + wh - t.y1 >= pad or t.wy + wh == h
        assert t.wx + ww - t.x1 >= pad or t.wx + ww == w
    assert (covered == 1).all()


@pytest.mark.parametrize("tile,batch", [(8, 1), (13, 3), (32, 4), (100, 2)])
def test_tiled_equals_untiled_for_a_fully_convolutional_network(tile, batch):
    torch.manual_seed(0)
    model = ThreeConv().eval()
    img = _photo(45, 38)
    want = _untiled(model, img)
    got = Restorer(model, tile=tile, tile_pad=3, batch_size=batch)([img])[0]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("ckpt", ["rrdb_ckpt", "x4_ckpt"])
def test_tiled_rrdb_is_exact_with_its_receptive_field_and_close_without(ckpt, request):
    _, model = request.getfixturevalue(ckpt)
    img = _photo(41, 30, seed=1)
    want = _untiled(model, img)
    exact = Restorer(model, tile=12, tile_pad=RRDB_REACH + 1, batch_size=3)([img])[0]
    np.testing.assert_array_equal(exact, want)
    seams = Restorer(model, tile=12, tile_pad=2, batch_size=3)([img])[0]
    assert seams.shape == want.shape
    assert calculate_psnr(seams, want, 0, color_order="rgb") > 40  # a few units off at the seams, no more


def test_tiled_swinir_is_close_to_untiled(swinir_ckpt):
    """SwinIR attends within windows laid from its input's corner, so a tile's windows are not the
    image's: close, not exact (a random tiny SwinIR: about 5 % of the bytes differ)."""
    _, model = swinir_ckpt
    img = _photo(52, 45, seed=2)
    want = _untiled(model, img)
    got = Restorer(model, tile=16, tile_pad=8, batch_size=2)([img])[0]
    assert got.shape == want.shape and calculate_psnr(got, want, 0, color_order="rgb") > 28
    np.testing.assert_array_equal(Restorer(model, tile=64, tile_pad=8)([img])[0], want)  # one tile: the image


def test_batches_and_bf16():
    torch.manual_seed(0)
    model = ThreeConv().eval()
    imgs = [_photo(19, 27, seed=s) for s in range(3)]
    one_by_one = [Restorer(model, batch_size=1)([im])[0] for im in imgs]
    together = Restorer(model, batch_size=3)(imgs)
    for a, b in zip(one_by_one, together):
        np.testing.assert_array_equal(a, b)
    half = Restorer(model, precision="bf16")(imgs)
    assert all(calculate_psnr(a, b, 0, color_order="rgb") > 30 for a, b in zip(half, one_by_one))
    with pytest.raises(ValueError, match="one size"):
        Restorer(model)([imgs[0], _photo(20, 27)])


# ------------------------------------------------------------------------------------------- the command


@pytest.fixture
def photos(tmp_path):
    """A folder of real-looking degraded photos of different sizes, formats and channel counts."""
    folder = tmp_path / "photos"
    folder.mkdir()
    write_image_rgb(folder / "a.png", _photo(30, 22, seed=1))
    cv2.imwrite(str(folder / "b.jpg"), _photo(24, 24, seed=2))
    cv2.imwrite(str(folder / "c.png"), _photo(24, 24, seed=3)[:, :, 0])  # grayscale: becomes RGB
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"skipped")
    return folder


def test_restore_a_folder_as_a_user_types_it(rrdb_ckpt, photos, tmp_path, capsys):
    ckpt, model = rrdb_ckpt
    out = tmp_path / "restored"
    assert _run("--ckpt", ckpt, "--input", photos, "--output", out) == 0
    assert sorted(os.listdir(out)) == ["a.png", "b.png", "c.png"]
    for name in ("a.png", "b.jpg", "c.png"):
        src = read_image_rgb(photos / name)
        np.testing.assert_array_equal(read_image_rgb(out / (os.path.splitext(name)[0] + ".png")), _untiled(model, src))
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("restored 3 image(s) into ") and "rrdb x1, whole images" in line
    # tiles and batches give the same files; a suffix names them apart in the same folder
    assert (
        _run(
            "--ckpt",
            ckpt,
            "--input",
            photos,
            "--output",
            out,
            "--tile",
            8,
            "--tile_pad",
            RRDB_REACH + 1,
            "--batch_size",
            5,
            "--suffix",
            "tiled",
        )
        == 0
    )
    for stem in "abc":
        assert (out / f"{stem}_tiled.png").read_bytes() == (out / f"{stem}.png").read_bytes()
    assert not [n for n in os.listdir(out) if n.startswith(".")]  # no temporary files left


def test_restore_one_file_at_scale_4_from_a_basicsr_checkpoint(x4_ckpt, photos, tmp_path):
    ckpt, model = x4_ckpt
    out = tmp_path / "sr" / "x4"
    assert (
        _run(
            "--ckpt",
            ckpt,
            "--input",
            photos / "a.png",
            "--output",
            out,
            "--tile",
            16,
            "--batch_size",
            2,
            "--tile_pad",
            RRDB_REACH + 1,
        )
        == 0
    )
    assert os.listdir(out) == ["a.png"]
    got = read_image_rgb(out / "a.png")
    assert got.shape == (120, 88, 3)
    np.testing.assert_array_equal(got, _untiled(model, read_image_rgb(photos / "a.png")))


def test_restore_a_training_state_and_a_custom_architecture(train_state_ckpt, photos, tmp_path):
    ckpt, model = train_state_ckpt
    assert _run("--ckpt", ckpt, "--input", photos, "--output", tmp_path / "o1", "--precision", "bf16") == 0
    got = read_image_rgb(tmp_path / "o1" / "a.png")
    assert calculate_psnr(got, _untiled(model, read_image_rgb(photos / "a.png")), 0, color_order="rgb") > 30
    torch.manual_seed(5)
    net = ThreeConv(width=4)
    torch.save(net.state_dict(), tmp_path / "custom.pt")
    assert (
        _run(
            "--ckpt",
            tmp_path / "custom.pt",
            "--input",
            photos,
            "--output",
            tmp_path / "o2",
            "--arch",
            "tests.eval.test_restore:ThreeConv",
            "--arch_kwargs",
            '{"width": 4}',
            "--tile",
            10,
            "--tile_pad",
            3,
        )
        == 0
    )
    np.testing.assert_array_equal(
        read_image_rgb(tmp_path / "o2" / "b.png"), _untiled(net.eval(), read_image_rgb(photos / "b.jpg"))
    )


def test_existing_outputs_are_kept_unless_overwrite(rrdb_ckpt, photos, tmp_path, capsys):
    ckpt, _ = rrdb_ckpt
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    (out / "b.png").write_bytes(b"an earlier result")
    assert _run("--ckpt", ckpt, "--input", photos, "--output", out) == 2
    _one_error_line(capsys, "--output", "b.png exists", "--overwrite")
    assert sorted(os.listdir(out)) == ["b.png", "keep.txt"] and (out / "b.png").read_bytes() == b"an earlier result"
    assert _run("--ckpt", ckpt, "--input", photos, "--output", out, "--overwrite") == 0
    assert sorted(os.listdir(out)) == ["a.png", "b.png", "c.png", "keep.txt"]
    assert read_image_rgb(out / "b.png").shape == (24, 24, 3)


def test_bad_input_is_one_line_and_creates_nothing(rrdb_ckpt, photos, tmp_path, capsys):
    ckpt, _ = rrdb_ckpt
    out = tmp_path / "new" / "out"
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    bad = tmp_path / "bad"
    bad.mkdir()
    write_image_rgb(bad / "1.png", _photo(20, 20))
    (bad / "2.png").write_bytes((bad / "1.png").read_bytes()[:60])  # truncated
    rgba = tmp_path / "rgba"
    rgba.mkdir()
    cv2.imwrite(str(rgba / "t.png"), np.dstack([_photo(20, 20), np.full((20, 20), 7, np.uint8)]))
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["--input", tmp_path / "missing", "--output", out], ["--input", "no such file or folder"]),
        (["--input", empty, "--output", out], ["--input", "no image files"]),
        (["--input", bad, "--output", out], ["2.png", "truncated"]),
        (["--input", rgba, "--output", out], ["t.png", "transparent"]),
        (["--input", a_file, "--output", out], ["file.txt", "not an image"]),
        (["--input", photos, "--output", a_file], ["--output", "is a file"]),
        (["--input", photos, "--output", a_file / "sub"], ["--output", "is a file"]),
        (["--input", photos, "--output", photos], ["--output", "is the --input folder"]),
        (["--input", photos / "a.png", "--output", photos], ["--output", "is the --input folder"]),
        (["--input", photos, "--output", out, "--tile", -1], ["--tile must be >= 0"]),
        (["--input", photos, "--output", out, "--tile_pad", -2], ["--tile_pad must be >= 0"]),
        (["--input", photos, "--output", out, "--batch_size", 0], ["--batch_size must be >= 1"]),
        (["--input", photos, "--output", out, "--precision", "fp16"], ["--precision fp16 needs a CUDA device"]),
        (["--input", photos, "--output", out, "--suffix", "a/b"], ["--suffix"]),
        (["--input", photos, "--output", out, "--arch_kwargs", "{nf"], ["--arch_kwargs"]),
        (["--input", photos, "--output", out, "--arch", "swinir"], ["tiny.pt", "rrdb network, not --arch swinir"]),
    ]
    for argv, words in cases:
        assert _run("--ckpt", ckpt, *argv) == 2, argv
        _one_error_line(capsys, *words)
    assert _run("--ckpt", a_file, "--input", photos, "--output", out) == 2
    _one_error_line(capsys, "file.txt")
    assert _run("--ckpt", tmp_path / "nope.pt", "--input", photos, "--output", out) == 2
    _one_error_line(capsys, "nope.pt", "not found")
    assert not (tmp_path / "new").exists()
    assert sorted(os.listdir(photos)) == [".hidden.png", "a.png", "b.jpg", "c.png", "notes.txt"]


def test_a_failure_during_the_run_keeps_whole_outputs_and_says_how_many(
    rrdb_ckpt, photos, tmp_path, capsys, monkeypatch
):
    from dil_fast.eval import restore as restore_module

    ckpt, _ = rrdb_ckpt
    calls = []
    real = restore_module.Restorer._forward

    def fail_second(self, x):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("Input size is too small for this network\nsecond line")
        return real(self, x)

    monkeypatch.setattr(restore_module.Restorer, "_forward", fail_second)
    out = tmp_path / "out"
    assert _run("--ckpt", ckpt, "--input", photos, "--output", out, "--batch_size", 1) == 2
    _one_error_line(capsys, "b.jpg", "the network failed on this image", "too small", "1 of 3 outputs")
    assert os.listdir(out) == ["a.png"]
    assert read_image_rgb(out / "a.png").shape == (30, 22, 3)


def test_progress_lines_when_not_a_terminal(rrdb_ckpt, photos, tmp_path, capsys, monkeypatch):
    """Off a terminal the progress rule prints plain lines (here every image: interval 0), then a
    closing line; --no_progress prints none."""
    from dil_fast import _progress
    from dil_fast.eval import restore as restore_module

    monkeypatch.setattr(
        restore_module, "progress", lambda *a, **k: _progress.progress(*a, **k, isatty=False, interval=0.0)
    )
    ckpt, _ = rrdb_ckpt
    assert (
        main(["restore", "--device", "cpu", "--ckpt", ckpt, "--input", str(photos), "--output", str(tmp_path / "p")])
        == 0
    )
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("restore: 1/3 img (33%)") and lines[-1].startswith("restore: 3/3 img in ")
    assert _run("--ckpt", ckpt, "--input", photos, "--output", tmp_path / "q") == 0
    assert capsys.readouterr().err == ""


def test_a_model_n_of_ones_own_architecture_is_rebuilt_from_its_run_folder(photos, tmp_path, capsys):
    """model_N.pt holds weights only; the run's options.json says which network (and its keywords)."""
    import json

    run = tmp_path / "runs" / "mine"
    run.mkdir(parents=True)
    torch.manual_seed(7)
    net = ThreeConv(width=5)
    torch.save({"model_meta": net.state_dict(), "model_task": net.state_dict()}, run / "model_1.pt")
    arch = "tests.eval.test_restore:ThreeConv"
    (run / "options.json").write_text(
        json.dumps({"config": {}, "resolved": {"model": {"arch": arch, "kwargs": {"width": 5}}}})
    )
    out = tmp_path / "out"
    assert _run("--ckpt", run / "model_1.pt", "--input", photos, "--output", out) == 2
    _one_error_line(capsys, "model_1.pt", "pass --arch " + arch)
    assert not out.exists()
    assert _run("--ckpt", run / "model_1.pt", "--input", photos, "--output", out, "--arch", arch) == 0
    assert "network: " + arch + " {'width': 5} (from " in capsys.readouterr().out
    np.testing.assert_array_equal(read_image_rgb(out / "a.png"), _untiled(net.eval(), read_image_rgb(photos / "a.png")))
