"""The periodic test of `dil-fast train` is `dil-fast eval`: the training log's per-image PSNR/SSIM
equal `dil-fast eval` of the checkpoint written at that epoch, at the same level, seed and metric."""

import csv
import re

import pytest

from dil_fast.cli import main
from tests.conftest import make_png_folder
from tests.helpers import RRDB_NF4, train_argv

FLAGS = ("--test_every", "1", "--save_every", "1", "--backend", "torch", "--levels", "5,15", "--test_level", "30")
# "<time> : 000000.png: <psnr>, <ssim>", the released line of one test image
IMAGE_LINE = re.compile(r" : (\S+\.png): (\S+), (\S+)$")


def _logged_scores(log_path) -> dict:
    scores = {}
    for line in log_path.read_text().splitlines():
        m = IMAGE_LINE.search(line)
        if m:
            scores[m.group(1)] = (float(m.group(2)), float(m.group(3)))
    return scores


def _eval_scores(results_csv) -> dict:
    with open(results_csv, newline="") as f:
        return {r["image"]: (float(r["psnr"]), float(r["ssim"])) for r in csv.DictReader(f) if r["image"] != "mean"}


@pytest.mark.parametrize("scale", [1, 4], ids=["denoise", "x4_sr"])
def test_logged_test_scores_equal_dil_fast_eval_of_the_checkpoint(tmp_path, scale):
    make_png_folder(tmp_path / "train", n=2, size=24, seed=1)
    make_png_folder(tmp_path / "test", n=2, size=26, seed=2)  # 26 is no multiple of 4: the x4 test crops it
    sr = ["--scale", "4", "--arch", "rrdb_x4", "--loader", "folder"] if scale == 4 else []
    flags, run = (*FLAGS, "--seed", "3", *sr), tmp_path / "run"
    argv = train_argv(tmp_path / "train", tmp_path / "test", run, *flags, batch_size=1, size=RRDB_NF4, tensorboard=True)
    assert main(argv) == 0
    assert (
        main(
            [
                "eval",
                "--ckpt",
                str(tmp_path / "run" / "model_1.pt"),
                "--testset",
                str(tmp_path / "test"),
                "--save",
                str(tmp_path / "eval"),
                "--level",
                "30",
                "--seed",
                "3",
                "--scale",
                str(scale),
                "--no-y",
                "--crop_border",
                "0",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    logged = _logged_scores(tmp_path / "run" / "train.log")
    evaluated = _eval_scores(tmp_path / "eval" / "results.csv")
    assert sorted(logged) == ["000000.png", "000001.png"]
    assert logged == evaluated  # the same floats, not merely close
