"""`dil-fast study generalization` end to end at the tiny size for every task of dil_fast.tasks, its
seen/unseen levels taken from the task table, its numbers from dil_fast.eval, and its OpenCV plot
(not the science)."""
import csv
import importlib.util
import math

import cv2
import numpy as np
import pytest
import torch

from dil_fast.cli import main
from dil_fast.data.pack import pack_folder
from dil_fast.eval import (
    evaluate,
    load_checkpoint,
    load_test_images,
    parse_levels,
    plot_generalization,
)
from dil_fast.study import study_task
from dil_fast.study.methods import MethodRun
from dil_fast.study.report import PLOT_SIZE, markdown_tables, plot_study
from dil_fast.tasks import TASKS
from tests.conftest import make_png_folder

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# the built-in sample images come with scikit-image
needs_skimage = pytest.mark.skipif(not importlib.util.find_spec("skimage"),
                                   reason="the study's built-in images need scikit-image (pip install dil_fast[samples])")

# a tiny RRDB, one meta-iteration of 2 patches per confounder, 16 x 16 patches (4 x 4 LR for realsr)
TINY = ["--tiny", "--budget", "1", "--nf", "4", "--nb", "1", "--gc", "4", "--patch_size", "16", "--batch_size", "2",
        "--device", "cpu", "--threads", "1"]


def expected_levels(task: str) -> tuple[list[str], list[str]]:
    """The seen and unseen level names read off the task table: the training confounders, and the
    eval levels and periodic test that are not among them."""
    row = TASKS[task]
    seen = [lv.name for lv in parse_levels(row.confounders)]
    held = [lv.name for lv in parse_levels(row.eval_levels) + parse_levels(row.test)]
    return seen, [n for n in dict.fromkeys(held) if n not in seen]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A packed store of eight 32 x 32 training patches and a folder of two 32 x 32 test images."""
    root = tmp_path_factory.mktemp("study_data")
    make_png_folder(root / "train", n=8, size=32)
    make_png_folder(root / "test", n=2, size=32, seed=5)
    pack_folder(str(root / "train"), str(root / "store"), progress=False)
    return root


def _rows(out):
    return list(csv.DictReader(open(out / "results.csv", encoding="utf-8")))


def _mean_psnr(results):
    return float(np.mean([r[1] for r in results]))


@pytest.mark.parametrize("task", list(TASKS))
def test_tiny_study_of_every_task(data, tmp_path, task, capsys):
    out = tmp_path / task
    assert main(["study", "generalization", *TINY, "--task", task, "--variants", "erm,sf",
                 "--trainset", str(data / "store"), "--testset", str(data / "test"), "--out", str(out)]) == 0
    seen, unseen = expected_levels(task)
    assert unseen, f"{task}: the task table holds out no level"
    rows = _rows(out)
    assert {r["method"] for r in rows} == {"input", "erm", "sf"}
    for method in ("input", "erm", "sf"):
        mine = [r for r in rows if r["method"] == method]
        assert [f"{r['confounder']}:{r['level']}" for r in mine] == seen + unseen
        assert [r["seen"] for r in mine] == ["True"] * len(seen) + ["False"] * len(unseen)
    for r in rows:
        assert r["task"] == task
        assert math.isfinite(float(r["psnr"])) and 0 < float(r["psnr"]) < 100, r
        assert math.isfinite(float(r["ssim"])) and -1 <= float(r["ssim"]) <= 1, r

    # the report names the task, its training confounders and its held-out levels
    md = (out / "results.md").read_text(encoding="utf-8")
    line = next(s for s in md.splitlines() if s.startswith("- training confounders (seen)"))
    assert TASKS[task].confounders in line and "held out (unseen): " + ", ".join(unseen) in line
    assert f"Task `{task}`" in md and "mean unseen" in md and "| sf - erm |" in md
    assert "no unseen levels" not in md
    printed = capsys.readouterr().out
    assert f"task {task}: training confounders (seen)" in printed and "training sf" in printed

    # one entry against a direct dil_fast.eval.evaluate call of the trained network, one for the input row
    row = TASKS[task]
    images = load_test_images(str(data / "test"))
    level = parse_levels(row.test)[0]
    net = load_checkpoint("sf", str(out / "runs" / task / "sf" / "last.pt")).model
    direct = evaluate(net, images, level, seed=1, device="cpu", y=row.y, crop_border=row.crop_border)
    entry = next(r for r in rows if r["method"] == "sf" and f"{r['confounder']}:{r['level']}" == level.name)
    assert float(entry["psnr"]) == pytest.approx(_mean_psnr(direct), abs=1e-9)
    if row.scale == 1:
        baseline = evaluate(torch.nn.Identity(), images, level, seed=1, y=row.y, crop_border=row.crop_border)
        entry = next(r for r in rows if r["method"] == "input" and f"{r['confounder']}:{r['level']}" == level.name)
        assert float(entry["psnr"]) == pytest.approx(_mean_psnr(baseline), abs=1e-9)

    img = cv2.imread(str(out / f"generalization_{task}.png"), cv2.IMREAD_COLOR)
    assert img is not None and img.shape == (PLOT_SIZE[1], PLOT_SIZE[0], 3)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 10  # something was drawn


def test_levels_come_from_the_task_table():
    for name in TASKS:
        task = study_task(name)
        assert ([lv.name for lv in task.seen], [lv.name for lv in task.unseen]) == expected_levels(name)
    # pinned: the paper's held-out sigmas, the camera pipeline's mixed stage, the x4 clean bicubic test
    assert [lv.level for lv in study_task("denoise").unseen] == ["30", "40", "50"]
    assert [lv.name for lv in study_task("realnoise").unseen] == ["isp:mixed"]
    assert study_task("deblur").numeric and not study_task("hybrid").numeric
    second = study_task("realsr", order=2)
    assert second.confounders == "realsr:2"
    assert [lv.level for lv in second.seen] == ["realsr2-gaussian-x4", "realsr2-generalized-x4", "realsr2-plateau-x4",
                                                "realsr2-sinc-x4"]
    assert [lv.name for lv in second.unseen] == ["bicubic:4"]
    custom = study_task("denoise", test_confounders="noise:25,20,70")  # a trained level is not held out
    assert [lv.level for lv in custom.unseen] == ["25", "70"]


def test_a_task_without_unseen_levels_says_so(tmp_path):
    task = study_task("jpeg", test_confounders="jpeg:40,70")
    assert task.unseen == ()
    rows = [{"method": m, "level": lv, "psnr": 30.0 + i, "ssim": 0.9} for m in ("input", "sf") for i, lv in
            enumerate(task.seen)]
    md = markdown_tables(task, rows, [MethodRun("sf", 1, 1, 2, 5, 8, 0.5)], {"total time": "1 s"})
    assert "no unseen levels" in md and "mean unseen" not in md and "held out (unseen)" not in md
    assert "| input | 30.00 | 31.00 | 32.00 | 33.00 | 31.50 |" in md
    plot_study(str(tmp_path / "p.png"), task, rows, "jpeg")
    assert cv2.imread(str(tmp_path / "p.png")).shape == (PLOT_SIZE[1], PLOT_SIZE[0], 3)


@needs_skimage
def test_erm_steps_matches_images_and_steps(tmp_path):
    out = tmp_path / "steps"
    assert main(["study", "generalization", "--scale", "tiny", "--variants", "erm-steps,sf", "--budget", "1",
                 "--device", "cpu", "--out", str(out)]) == 0
    md = (out / "results.md").read_text(encoding="utf-8")
    # erm-steps: batch 4/4 = 1 per confounder, 4 trainer iterations, 4 optimizer steps, 16 images like sf
    assert "| erm-steps | 1 | 4 | 1 | 4 | 16 |" in md
    assert "| sf | 1 | 1 | 4 | 5 | 16 |" in md
    assert "training confounders (seen) noise:5,10,15,20" in md  # the built-in data, the default task


def test_bad_flags(tmp_path, capsys):
    def refused(*flags, says):
        out = tmp_path / "out"
        assert main(["study", "generalization", *flags, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1, err
        assert not (out / "runs").exists()  # refused before anything trained

    refused("--tiny", "--variants", "erm,nope", says="nope")
    refused("--scale", "gpu", says="--trainset")
    refused("--tiny", "--budget", "0", says="--budget")
    refused("--tiny", "--task", "denoise", "--order", "2", says="--order 2 selects")
    refused("--tiny", "--task", "hybrid", "--variants", "erm,erm-steps",
            says="divisible by the 3 confounders of --task hybrid")
    refused("--tiny", "--test_confounders", "nope:1", says="--test_confounders")


def test_paired_folders_are_refused_with_the_command_that_reads_them(tmp_path, capsys):
    make_png_folder(tmp_path / "pairs" / "GT", n=2, size=32)
    make_png_folder(tmp_path / "pairs" / "LQ", n=2, size=32, seed=1)
    pairs = str(tmp_path / "pairs")
    assert main(["study", "generalization", "--tiny", "--task", "derain", "--trainset", pairs,
                 "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--task derain" in err and "dil-fast train --task derain --trainset" in err
    assert main(["study", "generalization", "--tiny", "--task", "realnoise", "--testset", pairs,
                 "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"dil-fast eval --task realnoise --testset {pairs}" in err


def test_plot_handles_odd_series(tmp_path):
    path = tmp_path / "p.png"
    img = plot_generalization(str(path), {"input": [(1.0, 20.0), (5.0, float("nan"))], "a": [(1.0, 20.0)],
                                          "b with a long name": [(4.2, 19.9), (4.4, 19.95), (5.0, 20.0)]},
                              (1.0, 4.0), "t", "x", size=(401, 257))
    assert img.shape == (257, 401, 3)
    assert cv2.imread(str(path)).shape == (257, 401, 3)
