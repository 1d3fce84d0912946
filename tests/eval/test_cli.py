"""`dil-fast eval` for every confounder family, SR, SwinIR, paired folders, sweeps, side-by-side
inputs, the drop-in defaults and the all-or-nothing output folder, on tiny images and networks."""

from __future__ import annotations

import argparse
import csv
import os
import re

import cv2
import numpy as np
import pytest
import torch

from dil_fast.data.images import image_to_tensor, read_image_rgb, tensor_to_uint8, write_image_rgb
from dil_fast.degrade import counterfactual, parse_confounders
from dil_fast.errors import CheckpointError, FlagError, InputError
from dil_fast.eval import add_eval_parser, evaluate, evaluate_model, run_eval
from dil_fast.eval.output import side_by_side_figure
from dil_fast.eval.plot import render
from dil_fast.metrics import calculate_psnr, calculate_ssim

LINE = re.compile(r"^(?P<name>[^:]+): PSNR, (?P<p>[-+0-9.e]+|inf); SSIM, (?P<s>[-+0-9.e]+)\.$")
AVG = re.compile(r"^avg PSNR: (?P<p>[-+0-9.e]+|inf), avg SSIM: (?P<s>[-+0-9.e]+)\.$")


def _run(argv) -> int:
    parser = argparse.ArgumentParser(prog="dil-fast")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    return run_eval(parser.parse_args(["eval", "--device", "cpu"] + [str(a) for a in argv]))


def _csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _images(folder) -> list[tuple[str, np.ndarray]]:
    return [(n, read_image_rgb(os.path.join(folder, n))) for n in sorted(os.listdir(folder))]


def _expected(model, images, spec: str, *, seed=0, y=False, crop=0, final_resize=None):
    """(psnr, ssim) per image by a path of its own: numpy noise for plain Gaussian noise, else the
    counterfactual of the one image with step = its index; then the network and the metrics."""
    out = []
    for i, (_, img) in enumerate(images):
        if spec.startswith("noise:"):
            rng = np.random.default_rng(np.random.SeedSequence([seed, i]))
            sigma = float(spec.split(":")[1])
            noisy = np.clip(img.astype(np.float32) / 255.0 + rng.standard_normal(img.shape) * sigma / 255.0, 0, 1)
            x = torch.from_numpy(noisy.astype(np.float32).transpose(2, 0, 1).copy())[None]
        else:
            clean = torch.from_numpy(img.transpose(2, 0, 1).copy())[None]
            x = counterfactual(clean, parse_confounders(spec), seed=seed, step=i)[0]
        if final_resize:
            x = counterfactual(x, parse_confounders(final_resize), seed=seed, step=i)[0]
        with torch.no_grad():
            restored = tensor_to_uint8(model(x))
        out.append(
            (
                calculate_psnr(img, restored, crop, test_y_channel=y, color_order="rgb"),
                calculate_ssim(img, restored, crop, test_y_channel=y, color_order="rgb"),
            )
        )
    return out


def _check_single(save, images, expected, confounder, level, label):
    """log.txt in the released format and results.csv rows (images + a mean row) hold ``expected``."""
    lines = (save / "log.txt").read_text().split("\n")
    assert len(lines) == len(images) + 1
    for (name, _), line, (p, s) in zip(images, lines, expected):
        m = LINE.match(line)
        assert m and m["name"] == name, line
        assert float(m["p"]) == pytest.approx(p, abs=1e-9) and float(m["s"]) == pytest.approx(s, abs=1e-9)
    assert AVG.match(lines[-1])
    rows = _csv(save / "results.csv")
    assert list(rows[0]) == ["ckpt", "confounder", "level", "image", "psnr", "ssim"]
    assert [r["image"] for r in rows] == [n for n, _ in images] + ["mean"]
    assert {(r["ckpt"], r["confounder"], r["level"]) for r in rows} == {(label, confounder, level)}
    for r, (p, s) in zip(rows, expected):
        assert float(r["psnr"]) == pytest.approx(p, abs=1e-9) and float(r["ssim"]) == pytest.approx(s, abs=1e-9)
    assert float(rows[-1]["psnr"]) == pytest.approx(np.mean([p for p, _ in expected]), abs=1e-9)


@pytest.mark.parametrize(
    "spec", ["noise:30", "blur:4.2", "jpeg:10", "hybrid:mild", "rain:light", "poisson:1", "isp:raw"]
)
def test_each_family_at_a_level(spec, rrdb_ckpt, testset, tmp_path):
    ckpt, model = rrdb_ckpt
    save = tmp_path / "out"
    assert _run(["--ckpt", ckpt, "--testset", testset, "--save", save, "--confounders", spec, "--seed", 4]) == 0
    images = _images(testset)
    family, level = spec.split(":")
    _check_single(save, images, _expected(model, images, spec, seed=4), family, level, "tiny")
    assert sorted(os.listdir(save)) == sorted([n for n, _ in images] + ["log.txt", "results.csv"])


def test_several_levels_give_sections_and_folders(rrdb_ckpt, testset, tmp_path):
    ckpt, model = rrdb_ckpt
    save = tmp_path / "out"
    _run(["--ckpt", ckpt, "--testset", testset, "--save", save, "--confounders", "noise:30,40,50"])
    images = _images(testset)
    sections = (save / "log.txt").read_text().split("\n\n")
    assert [s.split("\n")[0] for s in sections] == ["== noise:30 ==", "== noise:40 ==", "== noise:50 =="]
    rows = _csv(save / "results.csv")
    assert len(rows) == 3 * (len(images) + 1)
    for level, section in zip(("30", "40", "50"), sections):
        expected = _expected(model, images, f"noise:{level}")  # the released numpy arithmetic
        got = [float(LINE.match(line)["p"]) for line in section.split("\n")[1:-1]]
        assert got == pytest.approx([p for p, _ in expected], abs=1e-9)
        assert sorted(os.listdir(save / f"noise-{level}")) == [n for n, _ in images]
    # --level 50 is the released flag: the same numbers as the list's noise:50
    _run(["--ckpt", ckpt, "--testset", testset, "--save", tmp_path / "released", "--level", 50])
    assert (tmp_path / "released" / "log.txt").read_text() == sections[2].split("\n", 1)[1]


def test_task_sets_levels_and_metric(rrdb_ckpt, testset, tmp_path):
    ckpt, model = rrdb_ckpt
    save = tmp_path / "out"
    _run(["--ckpt", ckpt, "--testset", testset, "--save", save, "--task", "hybrid"])
    rows = [r for r in _csv(save / "results.csv") if r["image"] != "mean"]
    assert list(dict.fromkeys(r["level"] for r in rows)) == ["mild", "moderate", "severe"]
    images = _images(testset)
    expected = _expected(model, images, "hybrid:severe", y=True)  # the hybrid task reports Y
    assert [float(r["psnr"]) for r in rows if r["level"] == "severe"] == pytest.approx(
        [p for p, _ in expected], abs=1e-9
    )
    _run(
        [
            "--ckpt",
            ckpt,
            "--testset",
            testset,
            "--save",
            tmp_path / "rgb",
            "--task",
            "hybrid",
            "--no-y",
            "--confounders",
            "hybrid:severe",
        ]
    )
    rgb = _expected(model, images, "hybrid:severe", y=False)
    assert [float(r["psnr"]) for r in _csv(tmp_path / "rgb" / "results.csv")][:3] == pytest.approx(
        [p for p, _ in rgb], abs=1e-9
    )


def test_super_resolution_x4(x4_ckpt, tmp_path):
    ckpt, model = x4_ckpt
    folder = tmp_path / "hr"
    rng = np.random.default_rng(5)
    write_image_rgb(folder / "a.png", rng.integers(0, 256, (26, 27, 3), dtype=np.uint8))  # cropped to 24 x 24
    write_image_rgb(folder / "b.png", rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    save = tmp_path / "out"
    assert _run(["--ckpt", ckpt, "--testset", folder, "--save", save, "--task", "realsr", "--save_inputs"]) == 0
    images = [(n, img[: img.shape[0] // 4 * 4, : img.shape[1] // 4 * 4]) for n, img in _images(folder)]
    expected = _expected(model, images, "bicubic:4", y=True, crop=4)  # HR output against HR truth, Y, crop 4
    _check_single(save, images, expected, "bicubic", "4", "tiny_x4")
    assert read_image_rgb(save / "a.png").shape == (24, 24, 3)
    compare = read_image_rgb(save / "b_input_output_gt.png")
    hr = images[1][1]
    fig, boxes = side_by_side_figure(hr[::4, ::4], hr, hr)  # the layout of 24 x 32 panels, input x4
    assert compare.shape == render(fig).shape and fig.texts[0].get_text() == "input (x4 nearest)"
    (top, left, h, w), _, (gt_top, gt_left, _, _) = boxes
    lr = compare[top : top + h, left : left + w]
    np.testing.assert_array_equal(lr, np.repeat(np.repeat(lr[::4, ::4], 4, 0), 4, 1))  # nearest-upsampled LR
    np.testing.assert_array_equal(compare[gt_top : gt_top + h, gt_left : gt_left + w], hr)
    # a same-size level is followed by the x1/4 resize
    _run(
        [
            "--ckpt",
            ckpt,
            "--testset",
            folder,
            "--save",
            tmp_path / "noisy",
            "--task",
            "realsr",
            "--confounders",
            "blur:1",
        ]
    )
    noisy = _expected(model, images, "blur:1", y=True, crop=4, final_resize="bicubic:4")
    _check_single(tmp_path / "noisy", images, noisy, "blur", "1", "tiny_x4")


def test_swinir_checkpoint(swinir_ckpt, testset, tmp_path):
    ckpt, model = swinir_ckpt
    save = tmp_path / "out"
    _run(["--ckpt", ckpt, "--testset", testset, "--save", save, "--confounders", "jpeg:20"])
    images = _images(testset)
    _check_single(save, images, _expected(model, images, "jpeg:20"), "jpeg", "20", "swinir")


# ------------------------------------------------------------------------------------------ paired folders


def _lq_folder(tmp_path, testset, name="lq", scale=1, ext=".bmp"):
    folder = tmp_path / name
    folder.mkdir()
    rng = np.random.default_rng(9)
    for n, img in _images(testset):
        small = cv2.resize(img, (img.shape[1] // scale, img.shape[0] // scale), interpolation=cv2.INTER_AREA)
        noisy = np.clip(small.astype(np.int16) + rng.integers(-20, 21, small.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / (os.path.splitext(n)[0] + ext)), noisy[:, :, ::-1])
    return folder


def test_paired_folder(rrdb_ckpt, x4_ckpt, testset, tmp_path):
    images = _images(testset)
    for (ckpt, model), scale in ((rrdb_ckpt, 1), (x4_ckpt, 4)):
        lq = _lq_folder(tmp_path, testset, name=f"lq{scale}", scale=scale)
        save = tmp_path / f"out{scale}"
        assert _run(["--ckpt", ckpt, "--testset", testset, "--lq", lq, "--save", save]) == 0
        expected = []
        for n, clean in images:
            degraded = read_image_rgb(lq / (os.path.splitext(n)[0] + ".bmp"))
            with torch.no_grad():
                restored = tensor_to_uint8(model(image_to_tensor(degraded)[None]))
            expected.append((calculate_psnr(clean, restored, 0), calculate_ssim(clean, restored, 0)))
        _check_single(save, images, expected, "paired", f"lq{scale}", os.path.splitext(os.path.basename(ckpt))[0])
    # one paired folder (GT/ + LQ/, dil_fast.data.folders' layout) as --testset: the same pairs
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    os.symlink(testset, pairs / "GT")
    os.symlink(tmp_path / "lq1", pairs / "LQ")
    assert _run(["--ckpt", rrdb_ckpt[0], "--testset", pairs, "--save", tmp_path / "folder"]) == 0
    rows = _csv(tmp_path / "folder" / "results.csv")
    assert [(r["confounder"], r["level"]) for r in rows] == [("paired", "pairs")] * (len(images) + 1)
    assert [r["psnr"] for r in rows] == [r["psnr"] for r in _csv(tmp_path / "out1" / "results.csv")]
    with pytest.raises(FlagError, match="is a paired folder .*drop --level"):
        _run(["--ckpt", rrdb_ckpt[0], "--testset", pairs, "--save", tmp_path / "never", "--level", 30])


def test_paired_folder_mismatches(rrdb_ckpt, x4_ckpt, testset, tmp_path):
    ckpt, _ = rrdb_ckpt
    save = tmp_path / "out"
    lq = _lq_folder(tmp_path, testset)
    write_image_rgb(lq / "zzz.png", np.zeros((24, 24, 3), np.uint8))
    with pytest.raises(InputError, match=r"^--lq .*zzz\.png has no ground truth") as info:
        _run(["--ckpt", ckpt, "--testset", testset, "--lq", lq, "--save", save])
    assert "\n" not in str(info.value)
    os.remove(lq / "zzz.png")
    os.remove(lq / "000001.bmp")
    with pytest.raises(InputError, match=r"^--testset .*000001\.png has no degraded image"):
        _run(["--ckpt", ckpt, "--testset", testset, "--lq", lq, "--save", save])
    same_size = _lq_folder(tmp_path, testset, name="lq_full")  # 24 x 24: not 1/4 of the ground truth
    with pytest.raises(
        InputError,
        match=r"000000\.bmp: 24x24, but its ground truth 000000\.png is 24x24; "
        r"a x4 evaluation needs 6x6",
    ) as info:
        _run(["--ckpt", x4_ckpt[0], "--testset", testset, "--lq", same_size, "--save", save])
    assert "\n" not in str(info.value)
    assert not save.exists()


# ------------------------------------------------------------------------------------------------- sweep


@pytest.fixture
def sweep_figures(monkeypatch):
    """The figures ``sweep.png`` is drawn from, as ``dil-fast eval --sweep`` builds them."""
    from dil_fast.eval import plot

    figures, real = [], plot.generalization_figure

    def spy(*args, **kwargs):
        figures.append(real(*args, **kwargs))
        return figures[-1]

    monkeypatch.setattr(plot, "generalization_figure", spy)
    return figures


def _shaded(fig) -> tuple[float, float] | None:
    """The training range shaded on the sweep's axes (data coordinates), None when none is."""
    ax = fig.axes[0]
    spans = [p for p in ax.patches if p.get_label() == "training range"]
    if not spans:
        return None
    box = spans[0].get_window_extent(fig.canvas.get_renderer())
    (x0, _), (x1, _) = ax.transData.inverted().transform([(box.x0, box.y0), (box.x1, box.y1)])
    return round(x0, 3), round(x1, 3)


def test_sweep_two_checkpoints(train_state_ckpt, rrdb_ckpt, testset, tmp_path, capsys, sweep_figures):
    save = tmp_path / "sweep"
    argv = [
        "--ckpt",
        f"dil={train_state_ckpt[0]}",
        rrdb_ckpt[0],
        "--testset",
        testset,
        "--save",
        save,
        "--sweep",
        "noise:5:30:5",
        "--plot_size",
        "480x300",
    ]
    assert _run(argv) == 0
    assert "training range: 5..20 (dil's training state)" in capsys.readouterr().out
    assert sorted(os.listdir(save)) == ["log.txt", "results.csv", "sweep.csv", "sweep.png"]  # no images in a sweep
    rows = _csv(save / "sweep.csv")
    assert list(rows[0]) == ["ckpt", "confounder", "level", "psnr", "ssim"]
    levels = ["5", "10", "15", "20", "25", "30"]
    assert [(r["ckpt"], r["level"]) for r in rows] == [(c, lv) for c in ("dil", "tiny") for lv in levels]
    images = _images(testset)
    for label, (_, model) in (("dil", train_state_ckpt), ("tiny", rrdb_ckpt)):
        for r in (r for r in rows if r["ckpt"] == label and r["level"] in ("5", "30")):
            expected = _expected(model, images, f"noise:{r['level']}")
            assert float(r["psnr"]) == pytest.approx(np.mean([p for p, _ in expected]), abs=1e-9)
    assert len(_csv(save / "results.csv")) == 2 * len(levels) * (len(images) + 1)
    assert cv2.imread(str(save / "sweep.png")).shape == (300, 480, 3)
    (fig,) = sweep_figures
    ax = fig.axes[0]
    assert _shaded(fig) == pytest.approx((5, 20), abs=0.05)
    assert [line.get_label() for line in ax.get_lines()] == ["dil", "tiny"]
    for line, label in zip(ax.get_lines(), ("dil", "tiny")):
        assert list(line.get_xdata()) == [5, 10, 15, 20, 25, 30]
        assert list(line.get_ydata()) == pytest.approx([float(r["psnr"]) for r in rows if r["ckpt"] == label])
    assert [t.get_text() for t in ax.get_xticklabels()] == levels
    assert ax.get_title() == f"PSNR against noise level ({len(images)} test images)"

    _run(["--ckpt", rrdb_ckpt[0], "--testset", testset, "--save", tmp_path / "plain", "--sweep", "noise:5,30"])
    assert _shaded(sweep_figures[-1]) is None  # no training state, no --train_range
    assert cv2.imread(str(tmp_path / "plain" / "sweep.png")).shape == (600, 960, 3)
    _run(
        [
            "--ckpt",
            rrdb_ckpt[0],
            "--testset",
            testset,
            "--save",
            tmp_path / "flag",
            "--sweep",
            "noise:5,30",
            "--train_range",
            "5,20",
            "--save_inputs",
        ]
    )
    assert _shaded(sweep_figures[-1]) == pytest.approx((5, 20), abs=0.05)
    assert sorted(os.listdir(tmp_path / "flag" / "noise-30"))[:2] == ["000000.png", "000000_input_output_gt.png"]


def test_sweep_shades_the_training_range_of_a_model_n_from_its_run_folder(rrdb_ckpt, testset, tmp_path, sweep_figures):
    """model_N.pt holds weights only; the run's options.json (beside it) holds the training levels."""
    import json

    run = tmp_path / "runs" / "denoise"
    run.mkdir(parents=True)
    sd = torch.load(rrdb_ckpt[0], weights_only=True)["model_meta"]
    torch.save({"model_meta": sd, "model_task": sd}, run / "model_30.pt")
    (run / "options.json").write_text(
        json.dumps({"config": {"task": "denoise", "levels": [5.0, 10.0, 15.0, 20.0]}, "resolved": {}})
    )
    _run(
        [
            "--ckpt",
            f"dil={run / 'model_30.pt'}",
            "--testset",
            testset,
            "--save",
            tmp_path / "s",
            "--sweep",
            "noise:5:30:5",
        ]
    )
    assert _shaded(sweep_figures[-1]) == pytest.approx((5, 20), abs=0.05)


# ------------------------------------------------------------------------- side by side, defaults, failures


def test_save_inputs_side_by_side(rrdb_ckpt, testset, tmp_path):
    ckpt, _ = rrdb_ckpt
    save = tmp_path / "out"
    _run(["--ckpt", ckpt, "--testset", testset, "--save", save, "--level", 25, "--save_inputs", "--seed", 2])
    for i, (name, clean) in enumerate(_images(testset)):
        compare = read_image_rgb(save / name.replace(".png", "_input_output_gt.png"))
        rng = np.random.default_rng(np.random.SeedSequence([2, i]))
        noisy = np.clip(clean.astype(np.float32) / 255.0 + rng.standard_normal(clean.shape) * 25 / 255.0, 0, 1)
        noisy = np.clip(np.round(noisy.astype(np.float32) * 255), 0, 255).astype(np.uint8)
        restored = read_image_rgb(save / name)
        fig, boxes = side_by_side_figure(noisy, restored, clean)  # the layout: labels above, gaps between
        assert [t.get_text() for t in fig.texts] == ["input", "output", "ground truth"]
        assert compare.shape == render(fig).shape
        for (top, left, h, w), want in zip(boxes, (noisy, restored, clean)):
            np.testing.assert_array_equal(compare[top : top + h, left : left + w], want)


def test_no_testset_reads_the_current_folder(rrdb_ckpt, testset, tmp_path, monkeypatch):
    monkeypatch.chdir(testset)
    save = tmp_path / "out"
    assert _run(["--ckpt", rrdb_ckpt[0], "--save", save]) == 0
    assert [r["image"] for r in _csv(save / "results.csv")] == sorted(os.listdir(testset)) + ["mean"]


@pytest.mark.parametrize("level", ["nan", "inf", "-5"])
def test_bad_level_refused_before_anything_is_written(level, rrdb_ckpt, testset, tmp_path, capsys):
    from dil_fast.cli import main

    save = tmp_path / "out"
    rc = main(["eval", "--ckpt", rrdb_ckpt[0], "--testset", testset, "--save", str(save), "--level", level])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: --level must be a finite noise sigma >= 0") and err.count("\n") == 1
    assert not save.exists()


def test_eval_does_not_import_the_trainer():
    import subprocess
    import sys

    code = (
        "import sys, dil_fast.eval; "
        "print(sorted(m for m in sys.modules if m.startswith(('dil_fast.train', 'dil_fast.study'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_failure_leaves_the_output_folder_as_it_was(rrdb_ckpt, testset, tmp_path, monkeypatch):
    from dil_fast.eval import scoring

    real, calls = scoring.restore, []

    def failing_restore(model, x):
        calls.append(1)
        if len(calls) == 2:
            raise InputError("second image: simulated failure")
        return real(model, x)

    monkeypatch.setattr(scoring, "restore", failing_restore)
    fresh = tmp_path / "fresh" / "out"
    with pytest.raises(InputError, match="simulated"):
        _run(["--ckpt", rrdb_ckpt[0], "--testset", testset, "--save", fresh])
    assert not (tmp_path / "fresh").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("x")
    calls.clear()
    with pytest.raises(InputError, match="simulated"):
        _run(["--ckpt", rrdb_ckpt[0], "--testset", testset, "--save", existing, "--save_inputs"])
    assert os.listdir(existing) == ["keep.txt"]


def test_flag_and_checkpoint_errors(rrdb_ckpt, x4_ckpt, testset, tmp_path):
    ckpt = rrdb_ckpt[0]
    save = tmp_path / "out"
    base = ["--testset", testset, "--save", save]
    cases = [
        (["--ckpt", ckpt, "--level", 30, "--confounders", "blur:2"], FlagError, "give one of"),
        (["--ckpt", ckpt, "--train_range", "5,20"], FlagError, "--train_range belongs to --sweep"),
        (["--ckpt", ckpt, "--sweep", "noise:5:30:5", "--train_range", "20,5"], FlagError, "LO <= HI"),
        (["--ckpt", ckpt, "--sweep", "noise:5,10", "--plot_size", "big"], FlagError, "--plot_size"),
        (["--ckpt", ckpt, "--confounders", "bicubic:4"], FlagError, "a x1 network needs 24x24 inputs"),
        (["--ckpt", ckpt, "--task", "realsr"], CheckpointError, "x1 rrdb network; --task realsr evaluates x4"),
        (["--ckpt", ckpt, x4_ckpt[0], "--level", 10], CheckpointError, "different scales"),
        (["--ckpt", f"a={ckpt}", f"a={ckpt}"], FlagError, "labelled 'a'"),
        (["--ckpt", ckpt, "--arch_kwargs", "{nf"], FlagError, "--arch_kwargs"),
        (["--ckpt", ckpt, "--crop_border", 7], InputError, "smaller than SSIM's 11x11 window"),
    ]
    for argv, error, match in cases:
        with pytest.raises(error, match=match) as info:
            _run(argv + base)
        assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="is the --testset folder"):
        _run(["--ckpt", ckpt, "--testset", testset, "--save", testset])
    assert not save.exists()


# --------------------------------------------------------------------------------------------------- API


def test_evaluate_api(rrdb_ckpt, x4_ckpt, testset):
    _, model = rrdb_ckpt
    model.train()
    images = _images(testset)
    by_number = evaluate(model, images, 50, seed=3, device="cpu")
    assert model.training  # restored
    by_text = evaluate(model, images, "noise:50", seed=3, device="cpu")
    legacy = evaluate_model(model, images, 50, 3, "cpu")
    assert [r[1:3] for r in by_number] == [r[1:3] for r in by_text] == [r[1:3] for r in legacy]
    # image i's degradation depends on (seed, i) only, not on the images after it
    alone = evaluate(model, images[:1], "hybrid:moderate", seed=3, device="cpu")
    together = evaluate(model, images, "hybrid:moderate", seed=3, device="cpu")
    assert alone[0][1:3] == together[0][1:3]
    np.testing.assert_array_equal(alone[0][3], together[0][3])
    assert evaluate(model, images, "hybrid:moderate", seed=4, device="cpu")[0][1] != together[0][1]
    sr = evaluate(x4_ckpt[1], images, "bicubic:4", seed=0, device="cpu", y=True, crop_border=4)
    assert [r[3].shape for r in sr] == [(24, 24, 3)] * len(images)
    with pytest.raises(InputError, match="000000.png: .*a x1 network needs 24x24"):
        evaluate(model, images, "bicubic:4", seed=0, device="cpu")
