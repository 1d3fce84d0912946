"""`dil-fast eval` at the released --level with a tiny RRDBNet: log format, files, the released noise
arithmetic (seeded), bad inputs."""

from __future__ import annotations

import argparse
import math
import os
import re

import numpy as np
import pytest
import torch

from dil_fast.data.images import read_image_rgb, write_image_rgb
from dil_fast.errors import CheckpointError, FlagError, InputError
from dil_fast.eval import add_eval_parser, add_noise, evaluate_model, noise_rng, run_eval
from dil_fast.metrics import calculate_psnr, calculate_ssim
from dil_fast.models.rrdb import RRDBNet

LINE = re.compile(r"^(?P<name>[^:]+): PSNR, (?P<p>[-+0-9.e]+|inf); SSIM, (?P<s>[-+0-9.e]+)\.$")
LAST = re.compile(r"^avg PSNR: (?P<p>[-+0-9.e]+|inf), avg SSIM: (?P<s>[-+0-9.e]+)\.$")


def _parse(argv):
    parser = argparse.ArgumentParser(prog="dil-fast")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["eval"] + argv)


@pytest.fixture
def tiny_ckpt(tmp_path):
    torch.manual_seed(0)
    meta = RRDBNet(3, 3, nf=8, nb=1, gc=4)
    task = RRDBNet(3, 3, nf=8, nb=1, gc=4)
    path = tmp_path / "model_1.pt"
    torch.save({"model_meta": meta.state_dict(), "model_task": task.state_dict()}, path)
    return str(path), meta


def test_eval_end_to_end(tiny_ckpt, testset, tmp_path):
    ckpt, meta = tiny_ckpt
    save = tmp_path / "out"
    args = _parse(["--ckpt", ckpt, "--testset", testset, "--save", str(save), "--device", "cpu"])
    # unset: Gaussian noise 50, RGB, no crop (a --task would set them)
    assert args.level is None and args.seed == 0 and args.crop_border is None and args.y is None
    assert run_eval(args) == 0

    names = sorted(os.listdir(testset))
    assert sorted(os.listdir(save)) == sorted(names + ["log.txt", "results.csv"])
    lines = (save / "log.txt").read_text().split("\n")
    assert len(lines) == len(names) + 1
    psnrs, ssims = [], []
    for name, line in zip(names, lines):
        m = LINE.match(line)
        assert m, line
        assert m["name"] == name
        psnrs.append(float(m["p"]))
        ssims.append(float(m["s"]))
    m = LAST.match(lines[-1])
    assert m, lines[-1]
    assert float(m["p"]) == pytest.approx(np.mean(psnrs), rel=1e-12)
    assert float(m["s"]) == pytest.approx(np.mean(ssims), rel=1e-12)
    assert float(m["s"]) != 0.0  # the reference's mean SSIM is always 0; ours is the real mean

    # the written images are the restorations the metrics were computed on, by an independent path
    meta.eval()
    for i, (name, p, s) in enumerate(zip(names, psnrs, ssims)):
        clean = read_image_rgb(os.path.join(testset, name))
        rng = np.random.default_rng(np.random.SeedSequence([0, i]))
        lr = clean.astype(np.float32) / 255.0
        lr = np.clip(lr + rng.standard_normal(clean.shape) * 50 / 255.0, 0, 1).astype(np.float32)
        with torch.no_grad():
            out = meta(torch.from_numpy(lr.transpose(2, 0, 1).copy())[None])[0].numpy().transpose(1, 2, 0)
        sr = np.clip((out * 255.0).round(), 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(read_image_rgb(save / name), sr)
        assert p == pytest.approx(calculate_psnr(clean, sr, 0), abs=1e-9)
        assert s == pytest.approx(calculate_ssim(clean, sr, 0), abs=1e-9)

    explicit = tmp_path / "explicit"  # the default is the released --level 50
    run_eval(
        _parse(["--ckpt", ckpt, "--testset", testset, "--save", str(explicit), "--device", "cpu", "--level", "50"])
    )
    assert (explicit / "log.txt").read_text() == (save / "log.txt").read_text()


def test_eval_seeded_reproducible(tiny_ckpt, testset, tmp_path):
    ckpt, _ = tiny_ckpt
    logs = []
    for run, seed in enumerate(["0", "0", "1"]):
        save = tmp_path / f"run{run}"
        run_eval(_parse(["--ckpt", ckpt, "--testset", testset, "--save", str(save), "--seed", seed, "--device", "cpu"]))
        logs.append((save / "log.txt").read_text())
    assert logs[0] == logs[1]
    assert logs[0] != logs[2]


def test_eval_y_crop_and_size_flags(tiny_ckpt, testset, tmp_path):
    ckpt, _ = tiny_ckpt
    base = ["--ckpt", ckpt, "--testset", testset, "--device", "cpu"]
    run_eval(_parse(base + ["--save", str(tmp_path / "rgb")]))
    run_eval(
        _parse(
            base + ["--save", str(tmp_path / "y"), "--y", "--crop_border", "4", "--nf", "8", "--nb", "1", "--gc", "4"]
        )
    )
    name = sorted(os.listdir(testset))[0]
    clean = read_image_rgb(os.path.join(testset, name))
    sr = read_image_rgb(tmp_path / "y" / name)
    np.testing.assert_array_equal(sr, read_image_rgb(tmp_path / "rgb" / name))  # same noise, same output
    line = (tmp_path / "y" / "log.txt").read_text().split("\n")[0]
    m = LINE.match(line)
    assert float(m["p"]) == pytest.approx(
        calculate_psnr(clean, sr, 4, test_y_channel=True, color_order="rgb"), abs=1e-9
    )
    assert float(m["s"]) == pytest.approx(
        calculate_ssim(clean, sr, 4, test_y_channel=True, color_order="rgb"), abs=1e-9
    )


def test_evaluate_model_api():
    torch.manual_seed(1)
    model = RRDBNet(3, 3, nf=8, nb=1, gc=4).train()
    rng = np.random.default_rng(0)
    images = [(f"im{i}.png", rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)) for i in range(2)]
    res = evaluate_model(model, images, 25, 7, "cpu", y=True)
    assert model.training  # restored
    assert [r[0] for r in res] == ["im0.png", "im1.png"]
    for (name, img), (_, p, s, restored) in zip(images, res):
        assert restored.shape == img.shape and restored.dtype == np.uint8
        assert math.isfinite(p) and -1 <= s <= 1
    again = evaluate_model(model, images, 25, 7, torch.device("cpu"), y=True)
    assert [r[1] for r in again] == [r[1] for r in res]
    # noise of image i depends only on (seed, i)
    a = add_noise(images[0][1], 25, noise_rng(7, 0))
    b = add_noise(images[0][1], 25, noise_rng(7, 0))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1


def test_eval_default_testset(tiny_ckpt, tmp_path):
    pytest.importorskip("skimage")
    ckpt, _ = tiny_ckpt
    save = tmp_path / "d"
    assert run_eval(_parse(["--ckpt", ckpt, "--testset", "default", "--save", str(save), "--device", "cpu"])) == 0
    assert sorted(os.listdir(save)) == ["chelsea.png", "coffee.png", "log.txt", "results.csv"]
    assert read_image_rgb(save / "coffee.png").shape == (256, 256, 3)


def test_eval_non_png_input_saved_as_png(tiny_ckpt, tmp_path):
    import cv2

    ckpt, _ = tiny_ckpt
    folder = tmp_path / "t"
    folder.mkdir()
    img = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    cv2.imwrite(str(folder / "a.bmp"), img)
    run_eval(_parse(["--ckpt", ckpt, "--testset", str(folder), "--save", str(tmp_path / "o"), "--device", "cpu"]))
    assert sorted(os.listdir(tmp_path / "o")) == ["a.png", "log.txt", "results.csv"]
    assert (tmp_path / "o" / "log.txt").read_text().startswith("a.bmp: PSNR, ")


# ------------------------------------------------------------------------------------------ bad input


def test_bad_checkpoints(tiny_ckpt, testset, tmp_path):
    save = str(tmp_path / "o")
    base = ["--testset", testset, "--save", save, "--device", "cpu"]
    with pytest.raises(CheckpointError, match="not found"):
        run_eval(_parse(["--ckpt", str(tmp_path / "missing.pt")] + base))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        run_eval(_parse(["--ckpt", str(junk)] + base))
    other = tmp_path / "other.pt"
    torch.save({"model_meta": {"fc.weight": torch.zeros(2, 2)}}, other)
    with pytest.raises(CheckpointError, match="other.pt"):
        run_eval(_parse(["--ckpt", str(other)] + base))
    ckpt, _ = tiny_ckpt
    with pytest.raises(CheckpointError, match="do not fit"):
        run_eval(_parse(["--ckpt", ckpt, "--nf", "16"] + base))
    assert not os.path.exists(save)  # nothing written on a checkpoint error


def test_bad_testset_and_save(tiny_ckpt, testset, tmp_path):
    ckpt, _ = tiny_ckpt
    with pytest.raises(InputError, match="--testset .*not found"):
        run_eval(_parse(["--ckpt", ckpt, "--testset", str(tmp_path / "nope"), "--save", str(tmp_path / "o")]))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="--testset .*no image"):
        run_eval(_parse(["--ckpt", ckpt, "--testset", str(empty), "--save", str(tmp_path / "o")]))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="--save"):
        run_eval(_parse(["--ckpt", ckpt, "--testset", testset, "--save", str(blocker / "sub"), "--device", "cpu"]))
    small = tmp_path / "small"
    write_image_rgb(small / "tiny.png", np.zeros((8, 8, 3), np.uint8))
    out = tmp_path / "o2"
    with pytest.raises(InputError, match="tiny.png.*11x11"):
        run_eval(_parse(["--ckpt", ckpt, "--testset", str(small), "--save", str(out), "--device", "cpu"]))
    assert not out.exists()  # checked before anything is written: no folder, no image, no log
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"garbage")
    with pytest.raises(InputError, match="x.png"):
        run_eval(_parse(["--ckpt", ckpt, "--testset", str(bad), "--save", str(tmp_path / "o3")]))


def test_bad_flags(tiny_ckpt, testset, tmp_path):
    ckpt, _ = tiny_ckpt
    base = ["--ckpt", ckpt, "--testset", testset, "--save", str(tmp_path / "o")]
    with pytest.raises(FlagError, match="--level"):
        run_eval(_parse(base + ["--level", "-1"]))
    with pytest.raises(FlagError, match="--crop_border"):
        run_eval(_parse(base + ["--crop_border", "-2"]))
    with pytest.raises(FlagError, match="--device"):
        run_eval(_parse(base + ["--device", "banana"]))
    if not torch.cuda.is_available():
        with pytest.raises(FlagError, match="CUDA is not available"):
            run_eval(_parse(base + ["--device", "cuda"]))
    with pytest.raises(FlagError, match="--nb"):
        run_eval(_parse(base + ["--nb", "0"]))
    with pytest.raises(SystemExit):
        _parse(["--testset", testset])  # --ckpt and --save are required
