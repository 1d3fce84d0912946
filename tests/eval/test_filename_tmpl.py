"""``dil-fast eval --filename_tmpl``: BasicSR's meaning (the LQ stem is ``tmpl.format(GT stem)``), for
``--lq`` folders and paired ``--testset`` folders; DIV2K-named pairs scored with a BasicSR x2 model."""

from __future__ import annotations

import argparse
import csv

import cv2
import numpy as np
import pytest
import torch

from dil_fast.data.images import image_to_tensor, read_image_rgb, tensor_to_uint8, write_image_rgb
from dil_fast.errors import FlagError, InputError
from dil_fast.eval.cli import add_eval_parser, run_eval
from dil_fast.eval.testsets import load_paired_images
from dil_fast.metrics import calculate_psnr
from dil_fast.models import RRDBNetBasicSR
from tests.models.test_interchange import _basicsr_state_dict


def _run(argv) -> int:
    parser = argparse.ArgumentParser(prog="dil-fast")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    return run_eval(parser.parse_args(["eval", "--device", "cpu"] + [str(a) for a in argv]))


def _csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def div2k(tmp_path):
    """``(gt folder, lq folder)``: DIV2K's naming at x2 (``0801.png`` / ``0801x2.png``), LQ = GT area-downscaled."""
    rng = np.random.default_rng(5)
    gt_dir, lq_dir = tmp_path / "DIV2K_valid_HR", tmp_path / "DIV2K_valid_LR_bicubic_X2"
    gt_dir.mkdir()
    lq_dir.mkdir()
    for stem in ("0801", "0802"):
        yy, xx = np.mgrid[0:24, 0:20].astype(np.float32)
        img = np.clip(np.stack([yy * 8, xx * 9, yy * xx / 3], -1) + rng.normal(0, 8, (24, 20, 3)), 0, 255)
        img = img.astype(np.uint8)
        write_image_rgb(gt_dir / f"{stem}.png", img)
        write_image_rgb(lq_dir / f"{stem}x2.png", cv2.resize(img, (10, 12), interpolation=cv2.INTER_AREA))
    return gt_dir, lq_dir


@pytest.fixture
def x2_model(tmp_path):
    """``(path, model)``: a tiny BasicSR RRDBNet(scale=2) checkpoint (``params_ema``) and the network."""
    sd = _basicsr_state_dict(in_ch=12, nf=4, nb=1, gc=2, seed=8)
    path = tmp_path / "RealESRGAN_x2_tiny.pth"
    torch.save({"params_ema": sd}, path)
    model = RRDBNetBasicSR(nf=4, nb=1, gc=2, scale=2).eval()
    model.load_state_dict(sd)
    return str(path), model


def _expected_psnr(model, gt_path, lq_path) -> float:
    with torch.no_grad():
        out = tensor_to_uint8(model(image_to_tensor(read_image_rgb(lq_path)).unsqueeze(0))[0])
    return calculate_psnr(out, read_image_rgb(gt_path), crop_border=0)


def test_lq_folder_with_div2k_names(div2k, x2_model, tmp_path):
    gt, lq = div2k
    ckpt, model = x2_model
    save = tmp_path / "out"
    assert _run(["--ckpt", ckpt, "--testset", gt, "--lq", lq, "--filename_tmpl", "{}x2", "--save", save]) == 0
    rows = _csv(save / "results.csv")
    assert [r["image"] for r in rows[:-1]] == ["0801.png", "0802.png"]
    assert read_image_rgb(save / "0801.png").shape == (24, 20, 3)  # named after the ground truth, at its size
    want = _expected_psnr(model, gt / "0801.png", lq / "0801x2.png")
    assert float(rows[0]["psnr"]) == pytest.approx(want, abs=1e-4)


def test_paired_testset_with_div2k_names(div2k, x2_model, tmp_path):
    gt, lq = div2k
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    (pairs / "GT").symlink_to(gt)
    (pairs / "LQ").symlink_to(lq)
    save = tmp_path / "out"
    assert _run(["--ckpt", x2_model[0], "--testset", pairs, "--filename_tmpl", "{}x2", "--save", save]) == 0
    assert [r["image"] for r in _csv(save / "results.csv")[:-1]] == ["0801.png", "0802.png"]


def test_div2k_names_without_the_template_name_the_flag(div2k, x2_model, tmp_path):
    gt, lq = div2k
    with pytest.raises(InputError) as info:
        _run(["--ckpt", x2_model[0], "--testset", gt, "--lq", lq, "--save", tmp_path / "o"])
    msg = str(info.value)
    assert "\n" not in msg and "0801x2.png has no ground truth named 0801x2.*" in msg
    assert msg.endswith("; pass --filename_tmpl '{}x2' (it pairs every image)")
    assert not (tmp_path / "o").exists()


def test_a_template_that_misses_names_the_file_and_the_template(div2k, tmp_path):
    gt, lq = div2k
    (lq / "0802x2.png").rename(lq / "0802_x2.png")
    with pytest.raises(InputError) as info:
        load_paired_images(str(gt), str(lq), 2, filename_tmpl="{}x2")
    assert str(info.value) == (
        f"--lq {lq}: 0802_x2.png has no ground truth whose name gives 0802_x2 in --testset {gt} "
        "(--filename_tmpl '{}x2')"
    )
    (lq / "0802_x2.png").rename(lq / "0802x2.png")
    (lq / "0801x2.png").unlink()
    with pytest.raises(InputError, match=r"0801\.png has no degraded image named 0801x2\.\* in --lq "):
        load_paired_images(str(gt), str(lq), 2, filename_tmpl="{}x2")


def test_template_flag_checks(div2k, x2_model, testset, tmp_path):
    gt, lq = div2k
    ckpt = x2_model[0]
    with pytest.raises(FlagError, match=r"^--filename_tmpl '\{\}x2' names degraded images: it needs --lq or a paired"):
        _run(["--ckpt", ckpt, "--testset", testset, "--filename_tmpl", "{}x2", "--save", tmp_path / "o"])
    with pytest.raises(FlagError, match=r"^--filename_tmpl 'x2': needs '\{\}' where the GT name stem goes"):
        _run(["--ckpt", ckpt, "--testset", gt, "--lq", lq, "--filename_tmpl", "x2", "--save", tmp_path / "o"])
    assert not (tmp_path / "o").exists()
