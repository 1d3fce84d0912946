"""dil_fast.train.ema (--ema) and several test sets (--testset A B): the average's arithmetic, its
place in checkpoints (params_ema beside the released keys), eval/--resume reading it, bitwise resume,
and one log section, metrics tag and curve per test set."""

from __future__ import annotations

import csv
import re

import pytest
import torch

from dil_fast.cli import main
from dil_fast.models import RRDBNet
from dil_fast.optim import FusedAdam
from dil_fast.train.ema import ModelEMA
from tests.conftest import make_png_folder
from tests.helpers import train_argv


@pytest.fixture
def data(tmp_path):
    make_png_folder(tmp_path / "train", n=8, size=24, seed=1)
    make_png_folder(tmp_path / "test", n=2, size=20, seed=2)
    make_png_folder(tmp_path / "other", n=1, size=20, seed=3)
    return tmp_path


def _train(data, out, *extra, epochs=2, testset=None):
    testset = testset or data / "test"
    return main(train_argv(data / "train", testset, out, "--print_every", "2", *extra, epochs=epochs))


@pytest.mark.parametrize("flat", [True, False], ids=["flat", "per-tensor"])
def test_the_average_is_the_lerp_of_every_step(flat):
    torch.manual_seed(0)
    model = RRDBNet(3, 3, nf=4, nb=1, gc=2)
    if flat:
        FusedAdam(model.parameters(), lr=1e-2)  # flattens the weights: one lerp over the buffer
    ema = ModelEMA(model, 0.75)
    expect = [p.detach().clone() for p in model.parameters()]
    for step in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update()
        expect = [0.75 * e + 0.25 * p.detach() for e, p in zip(expect, model.parameters())]
    for e, got in zip(expect, ema.model.parameters()):
        torch.testing.assert_close(got, e, rtol=1e-6, atol=1e-7)
    assert not any(p.requires_grad for p in ema.model.parameters())
    with pytest.raises(ValueError, match="--ema must be a decay in"):
        ModelEMA(model, 1.0)


def test_ema_in_checkpoints_eval_and_exact_resume(data, capsys):
    assert _train(data, data / "ema", "--ema", "0.9", "--test_every", "1") == 0
    log = (data / "ema" / "train.log").read_text()
    assert "EMA of the weights, decay 0.9" in log
    ck = torch.load(data / "ema" / "model_2.pt", weights_only=True)
    assert set(ck) == {"model_meta", "model_task", "params_ema"}
    meta, ema = ck["model_meta"], ck["params_ema"]
    assert any(not torch.equal(meta[k], ema[k]) for k in meta)  # the average lags the weights
    RRDBNet(3, 3, 8, 1, 4).load_state_dict(ck["model_meta"])  # the released scripts' loading still works
    state = torch.load(data / "ema" / "last.pt", weights_only=True)
    assert all(torch.equal(state["models"]["params_ema"][k], ema[k]) for k in ema)
    # the periodic test scored the EMA network: eval --key params_ema gives its numbers
    assert (
        main(
            [
                "eval",
                "--ckpt",
                str(data / "ema" / "model_2.pt"),
                "--testset",
                str(data / "test"),
                "--save",
                str(data / "ev"),
                "--level",
                "50",
                "--key",
                "params_ema",
                "--device",
                "cpu",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    logged = float(re.findall(r"Epoch: 1, psnr: ([0-9.]+)\. ssim", log)[-1])
    evaluated = [float(r["psnr"]) for r in csv.DictReader(open(data / "ev" / "results.csv")) if r["image"] == "mean"]
    assert evaluated and abs(evaluated[0] - logged) < 1e-9, (evaluated, logged)
    # a run without --ema has no EMA to evaluate: one line
    assert _train(data, data / "plain") == 0
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "--ckpt",
                str(data / "plain" / "model_2.pt"),
                "--testset",
                str(data / "test"),
                "--save",
                str(data / "ev2"),
                "--key",
                "params_ema",
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    assert "trained without --ema" in capsys.readouterr().err
    # resume: cut after 3 meta-iterations, continue; the EMA equals the uninterrupted run's bitwise
    assert _train(data, data / "cut", "--ema", "0.9", "--stop_after", "3") == 0
    assert _train(data, data / "cut", "--ema", "0.9", "--resume", str(data / "cut" / "last.pt")) == 0
    resumed = torch.load(data / "cut" / "model_2.pt", weights_only=True)["params_ema"]
    assert all(torch.equal(resumed[k], ema[k]) for k in ema)


def test_several_test_sets_each_logged_tagged_and_drawn(data):
    flags = ("--test_every", "1", "--test_confounders", "noise:30,50")
    assert _train(data, data / "run", *flags, epochs=1, testset=[data / "test", data / "other"]) == 0
    log = (data / "run" / "train.log").read_text()
    assert log.count("Test set: test") == 1 and log.count("Test set: other") == 1
    assert log.count("Epoch: 0, psnr:") == 4  # two sets x two levels
    tags = {r["tag"] for r in csv.DictReader(open(data / "run" / "metrics.csv"))}
    assert {
        "test/test/noise30/psnr",
        "test/test/noise50/psnr",
        "test/other/noise30/psnr",
        "test/other/noise50/ssim",
    } <= tags
    assert (data / "run" / "curves.png").exists()
    # one test set keeps the released log and tags
    assert _train(data, data / "one", epochs=1) == 0
    one = (data / "one" / "train.log").read_text()
    assert "Test set:" not in one
    assert "test/noise50/psnr" in {r["tag"] for r in csv.DictReader(open(data / "one" / "metrics.csv"))}


def test_bad_ema_and_testset_flags_are_one_line(data, capsys):
    for flags, needle in (
        (["--ema", "1.5"], "--ema must be a decay"),
        (["--ema", "0.9", "--reference_mode"], "--reference_mode cannot be combined with --ema"),
    ):
        assert _train(data, data / "bad", *flags) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
        assert not (data / "bad").exists()
    assert _train(data, data / "bad", epochs=None, testset=[data / "test", data / "test"]) == 2
    assert "names a folder twice" in capsys.readouterr().err and not (data / "bad").exists()


def test_train_pairs_lq_files_by_filename_tmpl(tmp_path, capsys):
    """``--filename_tmpl '{}x2'`` (BasicSR's): a paired --trainset whose LQ files are named 0001x2.png."""
    import cv2
    import numpy as np

    folder = tmp_path / "pairs"
    (folder / "GT").mkdir(parents=True)
    (folder / "LQ").mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        gt = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / "GT" / f"{i:04d}.png"), gt)
        cv2.imwrite(str(folder / "LQ" / f"{i:04d}x2.png"), cv2.resize(gt, (16, 16), interpolation=cv2.INTER_AREA))
    make_png_folder(tmp_path / "test", n=1, size=24, seed=2)
    sr = ("--scale", "2", "--arch", "rrdb_basicsr", "--arch_kwargs", '{"scale": 2}', "--print_every", "2")

    def train(out, *more):
        return main(train_argv(folder, tmp_path / "test", tmp_path / out, *sr, *more))

    assert train("no") == 2
    err = capsys.readouterr().err
    assert "--filename_tmpl '{}x2'" in err and not (tmp_path / "no").exists(), err
    assert train("yes", "--filename_tmpl", "{}x2") == 0
    assert (tmp_path / "yes" / "model_1.pt").exists()
    assert train("bad", "--filename_tmpl", "x2") == 2
    assert "--filename_tmpl 'x2'" in capsys.readouterr().err
