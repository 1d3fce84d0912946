"""`dil-fast study generalization` end to end at the tiny size, and its OpenCV plot (not the science)."""
import csv
import importlib.util
import math

import cv2
import numpy as np
import pytest

from dil_fast.cli import main
from dil_fast.study import TASKS
from dil_fast.study.report import PLOT_SIZE, plot_generalization

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# the study trains on the built-in sample images, which scikit-image ships
needs_skimage = pytest.mark.skipif(not importlib.util.find_spec("skimage"),
                                   reason="the study's built-in images need scikit-image (pip install dil_fast[samples])")


def _check_outputs(out, task, methods):
    rows = list(csv.DictReader(open(out / "results.csv", encoding="utf-8")))
    levels = TASKS[task].seen + TASKS[task].unseen
    assert {r["method"] for r in rows} == {"input", *methods}
    assert len(rows) == len(levels) * (len(methods) + 1)
    for r in rows:
        assert r["task"] == task
        assert math.isfinite(float(r["psnr"])) and 0 < float(r["psnr"]) < 100, r
        assert math.isfinite(float(r["ssim"])) and -1 <= float(r["ssim"]) <= 1, r
        assert r["seen"] == str(float(r["level"]) in TASKS[task].seen)
    md = (out / "results.md").read_text(encoding="utf-8")
    assert "| method |" in md and "optimizer steps" in md and "images seen" in md
    for m in methods:
        assert f"| {m} |" in md
    png = out / f"generalization_{task}.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    img = cv2.imread(str(png), cv2.IMREAD_COLOR)
    assert img is not None and img.shape == (PLOT_SIZE[1], PLOT_SIZE[0], 3)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 10  # something was drawn


@needs_skimage
@pytest.mark.parametrize("task", ["denoise", "deblur"])
def test_tiny_study_end_to_end(tmp_path, task, capsys):
    out = tmp_path / task
    assert main(["study", "generalization", "--tiny", "--task", task, "--budget", "2", "--device", "cpu",
                 "--out", str(out)]) == 0
    _check_outputs(out, task, ["erm", "sf"])
    printed = capsys.readouterr().out
    assert "[study" in printed and "training sf" in printed
    assert (out / "study.log").is_file()


@needs_skimage
def test_erm_steps_matches_images_and_steps(tmp_path):
    out = tmp_path / "steps"
    assert main(["study", "generalization", "--scale", "tiny", "--variants", "erm-steps,sf", "--budget", "1",
                 "--device", "cpu", "--out", str(out)]) == 0
    md = (out / "results.md").read_text(encoding="utf-8")
    # erm-steps: batch 4/4 = 1 per confounder, 4 trainer iterations, 4 optimizer steps, 16 images like sf
    assert "| erm-steps | 1 | 4 | 1 | 4 | 16 |" in md
    assert "| sf | 1 | 1 | 4 | 5 | 16 |" in md


def test_bad_flags(tmp_path, capsys):
    assert main(["study", "generalization", "--tiny", "--variants", "erm,nope", "--out", str(tmp_path / "a")]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["study", "generalization", "--scale", "gpu", "--out", str(tmp_path / "b")]) == 2
    assert "--trainset" in capsys.readouterr().err
    assert main(["study", "generalization", "--tiny", "--budget", "0", "--out", str(tmp_path / "c")]) == 2


def test_plot_handles_odd_series(tmp_path):
    path = tmp_path / "p.png"
    img = plot_generalization(str(path), {"input": [(1.0, 20.0), (5.0, float("nan"))], "a": [(1.0, 20.0)],
                                          "b with a long name": [(4.2, 19.9), (4.4, 19.95), (5.0, 20.0)]},
                              (1.0, 4.0), "t", "x", size=(401, 257))
    assert img.shape == (257, 401, 3)
    assert cv2.imread(str(path)).shape == (257, 401, 3)
