"""`dil-fast study generalization` end to end at the tiny size for every task of dil_fast.tasks, its
seen/unseen levels taken from the task table, its numbers from dil_fast.eval (not the science);
every study flag at the tiny size; the GPU call's script rehearsed on the CPU."""

import csv
import importlib.util
import math
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from dil_fast.cli import main
from dil_fast.data.pack import pack_folder
from dil_fast.eval import evaluate, load_checkpoint, load_test_images, parse_levels, plot_generalization
from dil_fast.study import study_task
from dil_fast.study.evaluator import BatchedEvaluator
from dil_fast.study.evaluator import TestSet as StudyTestSet
from dil_fast.study.report import PLOT_SIZE, plot_study
from dil_fast.tasks import TASKS
from tests.conftest import make_png_folder

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# the built-in sample images come with scikit-image
needs_skimage = pytest.mark.skipif(
    not importlib.util.find_spec("skimage"),
    reason="the study's built-in images need scikit-image (pip install dil_fast[samples])",
)
has_matplotlib = importlib.util.find_spec("matplotlib") is not None

# a tiny RRDB, one meta-iteration of 2 patches per confounder, 16 x 16 patches (4 x 4 LR for realsr)
TINY = [
    "--tiny",
    "--budget",
    "1",
    "--nf",
    "4",
    "--nb",
    "1",
    "--gc",
    "4",
    "--patch_size",
    "16",
    "--batch_size",
    "2",
    "--device",
    "cpu",
    "--threads",
    "1",
]


def expected_levels(task: str) -> tuple[list[str], list[str]]:
    """The seen and unseen level names read off the task table: the training confounders, and the
    eval levels and periodic test that are not among them."""
    row = TASKS[task]
    seen = [lv.name for lv in parse_levels(row.confounders)]
    held = [lv.name for lv in parse_levels(row.eval_levels) + parse_levels(row.test)]
    return seen, [n for n in dict.fromkeys(held) if n not in seen]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A packed store of eight 32 x 32 training patches, a folder of two 32 x 32 test images, a
    second test folder of three, and a folder of two 80 x 80 clean training images to cut."""
    root = tmp_path_factory.mktemp("study_data")
    make_png_folder(root / "train", n=8, size=32)
    make_png_folder(root / "test", n=2, size=32, seed=5)
    make_png_folder(root / "test2", n=3, size=40, seed=7)
    make_png_folder(root / "full", n=2, size=80, seed=9)
    pack_folder(str(root / "train"), str(root / "store"), progress=False)
    return root


def _csv(path):
    return list(csv.DictReader(open(path, encoding="utf-8")))


def _mean_psnr(results):
    return float(np.mean([r[1] for r in results]))


def _run(*flags) -> int:
    return main(["study", "generalization", *flags])


@pytest.mark.parametrize("task", list(TASKS))
def test_tiny_study_of_every_task(data, tmp_path, task, capsys):
    out = tmp_path / task
    assert (
        _run(
            *TINY,
            "--task",
            task,
            "--variants",
            "erm,sf",
            "--trainset",
            str(data / "store"),
            "--testset",
            str(data / "test"),
            "--out",
            str(out),
        )
        == 0
    )
    seen, unseen = expected_levels(task)
    assert unseen, f"{task}: the task table holds out no level"
    rows = [r for r in _csv(out / "results.csv") if r["kind"] == "score" and not r["level"].startswith("mean")]
    assert {r["name"] for r in rows} == {"input", "erm", "sf"}
    for method in ("input", "erm", "sf"):
        mine = [r for r in rows if r["name"] == method]
        assert [f"{r['confounder']}:{r['level']}" for r in mine] == seen + unseen
        assert [r["seen"] for r in mine] == ["True"] * len(seen) + ["False"] * len(unseen)
    for r in rows:
        assert math.isfinite(float(r["psnr"])) and 0 < float(r["psnr"]) < 100, r
        assert math.isfinite(float(r["ssim"])) and -1 <= float(r["ssim"]) <= 1, r

    # the report names the task, its training confounders and its held-out levels
    md = (out / "results.md").read_text(encoding="utf-8")
    assert TASKS[task].confounders in md and "held out (unseen): " + ", ".join(unseen) in md
    assert f"Task `{task}`" in md and "mean unseen" in md and "| sf − erm |" in md
    printed = capsys.readouterr().out
    assert f"task {task}: training confounders (seen)" in printed and "training sf, seed 1" in printed

    # one entry against a direct dil_fast.eval.evaluate call of the trained network, one for the input row
    row = TASKS[task]
    images = load_test_images(str(data / "test"))
    level = parse_levels(row.test)[0]
    net = load_checkpoint("sf", str(out / "runs" / task / "sf" / "seed1" / "last.pt")).model
    direct = evaluate(net, images, level, seed=1, device="cpu", y=row.y, crop_border=row.crop_border)
    entry = next(r for r in rows if r["name"] == "sf" and f"{r['confounder']}:{r['level']}" == level.name)
    assert float(entry["psnr"]) == pytest.approx(_mean_psnr(direct), abs=1e-9)
    if row.scale == 1:
        baseline = evaluate(torch.nn.Identity(), images, level, seed=1, y=row.y, crop_border=row.crop_border)
        entry = next(r for r in rows if r["name"] == "input" and f"{r['confounder']}:{r['level']}" == level.name)
        assert float(entry["psnr"]) == pytest.approx(_mean_psnr(baseline), abs=1e-9)

    img = cv2.imread(str(out / f"generalization_{task}.png"), cv2.IMREAD_COLOR)
    assert img is not None and len(np.unique(img.reshape(-1, 3), axis=0)) > 10  # something was drawn


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
    assert [lv.level for lv in second.seen] == [
        "realsr2-gaussian-x4",
        "realsr2-generalized-x4",
        "realsr2-plateau-x4",
        "realsr2-sinc-x4",
    ]
    assert [lv.name for lv in second.unseen] == ["bicubic:4"]
    custom = study_task("denoise", test_confounders="noise:25,20,70")  # a trained level is not held out
    assert [lv.level for lv in custom.unseen] == ["25", "70"]


def test_curves_seeds_bias_free_and_intervals(data, tmp_path):
    """--eval_every, --seeds, --last_evals, the -bf methods, two test sets side by side,
    --test_max_side, --test_seed, --decay_from/--lr_floor: curves.csv holds every point of every run,
    the table is the mean of the last points, the differences are paired over (seed, image)."""
    out = tmp_path / "curves"
    assert (
        _run(
            "--tiny",
            "--budget",
            "4",
            "--eval_every",
            "2",
            "--last_evals",
            "2",
            "--seeds",
            "3,5",
            "--nf",
            "4",
            "--nb",
            "1",
            "--gc",
            "4",
            "--patch_size",
            "16",
            "--batch_size",
            "2",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--variants",
            "erm,sf,erm-bf,sf-bf",
            "--trainset",
            str(data / "store"),
            "--testset",
            str(data / "test"),
            str(data / "test2"),
            "--test_max_side",
            "24",
            "--test_seed",
            "7",
            "--decay_from",
            "0.25",
            "--lr_floor",
            "0.5",
            "--out",
            str(out),
        )
        == 0
    )
    curves = _csv(out / "curves.csv")
    task = study_task("denoise")
    n_levels = len(task.levels)
    runs = {(r["method"], r["seed"]) for r in curves if r["method"] != "input"}
    assert runs == {(m, s) for m in ("erm", "sf", "erm-bf", "sf-bf") for s in ("3", "5")}
    for m, s in runs:
        mine = [r for r in curves if r["method"] == m and r["seed"] == s]
        assert sorted({int(r["meta_iteration"]) for r in mine}) == [2, 4]
        assert len(mine) == 2 * n_levels * (2 + 3)  # points x levels x images of both test sets
        assert {r["testset"] for r in mine} == {"test", "test2"}
        assert all(r["ssim"] for r in mine if r["meta_iteration"] == "4") and not any(
            r["ssim"] for r in mine if r["meta_iteration"] == "2"
        )
        assert {int(r["images_seen"]) for r in mine} == {2 * 4 * 2, 4 * 4 * 2}
    # test images centre-cropped to 24 and the noise seeded by --test_seed: the input rows equal evaluate's
    images = [(n, img[4:28, 4:28]) for n, img in load_test_images(str(data / "test"))]
    direct = evaluate(torch.nn.Identity(), images, 50, seed=7)
    mine = [r for r in curves if r["method"] == "input" and r["testset"] == "test" and r["level"] == "50"]
    assert [float(r["psnr"]) for r in mine] == pytest.approx([d[1] for d in direct], abs=1e-6)  # 6 decimals
    # the score of a run is the mean of its last 2 points; the table's cell the mean over seeds of the image mean
    results = _csv(out / "results.csv")

    def score(method, seed, level):
        vals = [
            float(r["psnr"])
            for r in curves
            if r["method"] == method and r["seed"] == seed and r["testset"] == "test" and r["level"] == level
        ]
        return np.mean(vals)  # 2 points x 2 images

    cell = next(
        r
        for r in results
        if r["kind"] == "score" and r["testset"] == "test" and r["name"] == "sf" and r["level"] == "50"
    )
    per_seed = [score("sf", s, "50") for s in ("3", "5")]
    assert float(cell["psnr"]) == pytest.approx(np.mean(per_seed), abs=1e-5)
    assert float(cell["psnr_std"]) == pytest.approx(np.std(per_seed, ddof=1), abs=1e-5)
    diff = next(
        r
        for r in results
        if r["kind"] == "difference"
        and r["testset"] == "test2"
        and r["name"] == "erm-bf - erm"
        and r["level"] == "mean unseen"
    )
    assert int(diff["n"]) == 2 * 3 and float(diff["lo"]) <= float(diff["psnr"]) <= float(diff["hi"])
    assert diff["verdict"] in ("better", "worse", "not distinguishable")
    md = (out / "results.md").read_text(encoding="utf-8")
    assert "## Verdict" in md and "`test2`, sf − erm: mean seen" in md and "2 seed(s) x 3 images = 6 pairs" in md
    assert "± " in md and "sf-bf − erm" in md
    # the bias-free runs trained a network without biases, saved and loaded like the biased one
    net = load_checkpoint("bf", str(out / "runs" / "denoise" / "erm-bf" / "seed5" / "last.pt")).model
    assert not [k for k in net.state_dict() if k.endswith(".bias")]
    if has_matplotlib:
        img = cv2.imread(str(out / "generalization_denoise.png"))
        assert img is not None and img.shape[0] > 600 and img.shape[1] > 600


@needs_skimage
def test_crop_and_stride(data, tmp_path):
    """--crop/--stride cut the built-in images and any clean folder (--workers processes); a store is
    refused a --crop."""
    from dil_fast.data.store import PatchStore

    common = [
        "--tiny",
        "--budget",
        "1",
        "--variants",
        "erm",
        "--nf",
        "4",
        "--nb",
        "1",
        "--gc",
        "4",
        "--patch_size",
        "16",
        "--batch_size",
        "2",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--testset",
        str(data / "test"),
    ]
    out = tmp_path / "cut"
    assert (
        _run(
            *common,
            "--trainset",
            str(data / "full"),
            "--crop",
            "40",
            "--stride",
            "20",
            "--workers",
            "2",
            "--out",
            str(out),
        )
        == 0
    )
    stores = [p for p in (out / "data").iterdir() if p.name.startswith("store_full_")]
    assert len(stores) == 1 and stores[0].name.endswith("_40s20")
    assert PatchStore(str(stores[0]), "cpu", verify=False).count == 2 * 3 * 3  # (80 - 40) / 20 + 1 = 3 per side
    out2 = tmp_path / "builtin"
    assert _run(*common, "--crop", "128", "--stride", "128", "--out", str(out2)) == 0
    store = out2 / "data" / "store_builtin_128s128"
    assert PatchStore(str(store), "cpu", verify=False).count == 4 * 4 + 3 * 5 + 6 * 7  # astronaut, rocket, hubble
    assert not (out2 / "data" / "builtin_train").exists()  # the decoded sources are not kept
    assert _run(*common, "--trainset", str(data / "store"), "--crop", "16", "--out", str(tmp_path / "no")) == 2


def test_batched_evaluator_equals_eval_evaluate(data):
    """The study's batched scores are dil_fast.eval.evaluate's, PSNR and SSIM, for every level kind."""
    torch.manual_seed(0)
    from dil_fast.models import RRDBNet

    net = RRDBNet(3, 3, nf=4, nb=1, gc=4).eval()
    images = load_test_images(str(data / "test2"))
    levels = tuple(parse_levels("noise:5,50")) + tuple(parse_levels("blur:2")) + tuple(parse_levels("jpeg:30"))
    ev = BatchedEvaluator([StudyTestSet("t", "x", tuple(images))], levels, seed=3, device="cpu")
    psnr, ssim = ev(net, ssim=True)
    assert psnr[0].shape == (len(levels), 3) and ssim[0].shape == (len(levels), 3)
    for li, lv in enumerate(levels):
        direct = evaluate(net, images, lv, seed=3)
        np.testing.assert_allclose(psnr[0][li], [d[1] for d in direct], rtol=0, atol=1e-9)
        np.testing.assert_allclose(ssim[0][li], [d[2] for d in direct], rtol=0, atol=1e-9)
    assert ev(net)[1] is None and net.training is False


def test_stats_intervals_and_verdicts():
    from dil_fast.study.stats import paired_difference, t_quantile_975

    assert t_quantile_975(1) == pytest.approx(12.7062, abs=1e-4)
    assert t_quantile_975(5) == pytest.approx(2.5706, abs=1e-4)
    for df, exact in ((31, 2.0395), (40, 2.0211), (60, 2.0003), (120, 1.9799), (10**6, 1.9600)):
        assert t_quantile_975(df) == pytest.approx(exact, abs=2e-4)
    if importlib.util.find_spec("scipy"):
        from scipy.stats import t

        for df in (1, 2, 7, 29, 30, 31, 45, 200):
            assert t_quantile_975(df) == pytest.approx(t.ppf(0.975, df), abs=2e-4)
    a = np.array([[1.0, 2.0, 3.0], [2.0, 3.0, 4.0]])
    d = paired_difference(a + 1.0, a)  # a constant +1: zero spread, a zero-width interval above 0
    assert (d.mean, d.lo, d.hi, d.n, d.verdict) == (1.0, 1.0, 1.0, 6, "better")
    d = paired_difference([0.1, -0.2, 0.15], [0.0, 0.0, 0.0])
    assert d.verdict == "not distinguishable" and d.lo < 0 < d.hi
    half = 4.3027 * np.std([0.1, -0.2, 0.15], ddof=1) / math.sqrt(3)
    assert d.hi - d.mean == pytest.approx(half, abs=1e-4)
    assert paired_difference([-1.0, -1.2, -1.1], [0.0, 0.0, 0.0]).verdict == "worse"
    one = paired_difference([0.5], [0.0])
    assert one.n == 1 and math.isnan(one.lo) and one.verdict.startswith("one sample") and one.cell() == "+0.50"
    with pytest.raises(ValueError):
        paired_difference([1.0, 2.0], [1.0])


def test_cost_model_counts_the_convolutions():
    """rrdb_macs_per_pixel against torch's FLOP counter on a forward, x1 and x4; the default RRDB is
    the 16.6 M multiply-adds of docs/released-trainer.md."""
    from torch.utils.flop_counter import FlopCounterMode

    from dil_fast.models import RRDBNet, RRDBNetX4
    from dil_fast.study.cost import patches_per_meta_iteration, rates_for, rrdb_macs_per_pixel, run_cost

    assert rrdb_macs_per_pixel(64, 23, 32) == 16_610_688  # = the bias-free parameter count (stride-1 convs)
    for cls, scale in ((RRDBNet, 1), (RRDBNetX4, 4)):
        for nf, nb, gc in ((8, 2, 4), (16, 1, 8)):
            net = cls(3, 3, nf=nf, nb=nb, gc=gc, bias=False)
            x = torch.rand(2, 3, 12, 10)
            with FlopCounterMode(display=False) as counter:
                net(x)
            assert counter.get_total_flops() == 2 * rrdb_macs_per_pixel(nf, nb, gc, scale=scale) * 2 * 12 * 10
    assert patches_per_meta_iteration("erm", 4, 32) == patches_per_meta_iteration("sf-bf", 4, 32) == 128
    assert patches_per_meta_iteration("pf", 4, 8) == 40 and patches_per_meta_iteration("ss-fo", 4, 8) == 64
    with pytest.raises(ValueError):
        patches_per_meta_iteration("nope", 4, 8)
    c = run_cost(
        "erm",
        macs_per_pixel=1000,
        k=4,
        batch=2,
        patch=10,
        budget=10,
        evals=2,
        eval_pixels=500,
        rates=rates_for("cpu", 1),
    )
    assert c.flops_per_meta_iteration == 8 * 100 * 1000 * 6 and c.train_flops == 10 * c.flops_per_meta_iteration
    assert c.eval_flops == 500 * 1000 * 2 * 2 and c.total_s == pytest.approx(c.train_s + c.eval_s + c.setup_s)


def test_lr_schedule():
    from dil_fast.study.runner import lr_factor

    assert [lr_factor(i, 10, 0.5, 0.1) for i in (0, 4)] == [1.0, 1.0]
    assert lr_factor(5, 10, 0.5, 0.1) == pytest.approx(1.0)
    assert lr_factor(10, 10, 0.5, 0.1) == pytest.approx(0.1)
    assert lr_factor(7, 10, 0.5, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.4)))
    assert lr_factor(3, 10, 1.0, 0.1) == 1.0


def test_time_limit_stops_at_a_curve_point_and_compares_at_the_common_horizon(data, tmp_path):
    """A --time_limit too short for the budget: the budget is cut for every run (from what the first
    run measured) or a run stops at a curve point; the table compares every method at the last
    point all reached."""
    out = tmp_path / "limit"
    assert (
        _run(
            "--tiny",
            "--budget",
            "3000",
            "--eval_every",
            "5",
            "--last_evals",
            "1",
            "--nf",
            "4",
            "--nb",
            "1",
            "--gc",
            "4",
            "--patch_size",
            "16",
            "--batch_size",
            "2",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--variants",
            "erm,sf",
            "--trainset",
            str(data / "store"),
            "--testset",
            str(data / "test"),
            "--time_limit",
            "20",
            "--out",
            str(out),
        )
        == 0
    )
    curves = _csv(out / "curves.csv")
    last = {m: max(int(r["meta_iteration"]) for r in curves if r["method"] == m) for m in ("erm", "sf")}
    assert all(v < 3000 and v % 5 == 0 for v in last.values())
    md = (out / "results.md").read_text(encoding="utf-8")
    assert f"up to meta-iteration {min(last.values())} " in md
    log = (out / "study.log").read_text(encoding="utf-8")
    assert "time check: budget cut from 3000 to" in log or "time limit: stopped at" in log


def test_dry_run_prints_the_plan_and_trains_nothing(tmp_path, capsys):
    out = tmp_path / "dry"
    assert (
        _run(
            "--scale",
            "gpu",
            "--device",
            "cuda",
            "--testset",
            "default",
            str(tmp_path / "absent"),
            "--dry-run",
            "--out",
            str(out),
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "plan: task denoise, 3 method(s) x 1 seed(s)" in printed and "1,514,880 multiply-adds" in printed
    assert "25% of 790 TFLOP/s" in printed and "estimated total:" in printed
    assert "erm-bf" in printed and not out.exists()


def test_bad_flags(tmp_path, capsys):
    def refused(*flags, says):
        out = tmp_path / "out"
        assert _run(*flags, "--out", str(out)) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1, err
        assert not (out / "runs").exists()  # refused before anything trained

    refused("--tiny", "--variants", "erm,nope", says="nope")
    refused("--tiny", "--budget", "0", says="--budget")
    refused("--tiny", "--task", "denoise", "--order", "2", says="--order 2 selects")
    refused(
        "--tiny",
        "--task",
        "hybrid",
        "--variants",
        "erm,erm-steps",
        says="divisible by the 3 confounders of --task hybrid",
    )
    refused("--tiny", "--test_confounders", "nope:1", says="--test_confounders")
    refused("--tiny", "--seeds", "1,1", says="--seeds")
    refused("--tiny", "--seeds", "1", "--seed", "2", says="--seed and --seeds")
    refused("--tiny", "--decay_from", "2", says="--decay_from")
    refused("--tiny", "--time_limit", "0", says="--time_limit")
    refused("--tiny", "--eval_every", "-1", says="--eval_every")


def test_paired_folders_are_refused_with_the_command_that_reads_them(tmp_path, capsys):
    make_png_folder(tmp_path / "pairs" / "GT", n=2, size=32)
    make_png_folder(tmp_path / "pairs" / "LQ", n=2, size=32, seed=1)
    pairs = str(tmp_path / "pairs")
    assert _run("--tiny", "--task", "derain", "--trainset", pairs, "--out", str(tmp_path / "a")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--task derain" in err and "dil-fast train --task derain --trainset" in err
    assert _run("--tiny", "--task", "realnoise", "--testset", "default", pairs, "--out", str(tmp_path / "b")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"dil-fast eval --task realnoise --testset {pairs}" in err


def test_plot_fallback_draws_psnr_against_level(tmp_path):
    task = study_task("jpeg", test_confounders="jpeg:40,70")
    rows = [{"method": m, "level": lv, "psnr": 30.0 + i} for m in ("input", "sf") for i, lv in enumerate(task.seen)]
    plot_study(str(tmp_path / "p.png"), task, rows, "jpeg")
    assert cv2.imread(str(tmp_path / "p.png")).shape == (PLOT_SIZE[1], PLOT_SIZE[0], 3)
    img = plot_generalization(
        str(tmp_path / "q.png"),
        {"input": [(1.0, 20.0), (5.0, float("nan"))], "a": [(1.0, 20.0)]},
        (1.0, 4.0),
        "t",
        "x",
        size=(401, 257),
    )
    assert img.shape == (257, 401, 3)


@needs_skimage
def test_gpu_call_script_rehearses_on_the_cpu(tmp_path):
    """bench/gpu_study.sh --rehearse: the device call's script end to end on the CPU at a tiny size:
    at most 4 files with plain names, the study's report among them; --dry-run prints the plan."""
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    out = tmp_path / "OUT"
    proc = subprocess.run(
        [
            "bash",
            os.path.join(REPO, "bench", "gpu_study.sh"),
            "--rehearse",
            "--out",
            str(out),
            "--set5",
            str(tmp_path / "no_set5"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["curves.csv", "generalization_denoise.png", "gpu_study.log", "results.md"]
    assert all(p.stat().st_size < 16 << 20 for p in out.iterdir())
    log = (out / "gpu_study.log").read_text(encoding="utf-8")
    assert "not found, skipped" in log and "study exit status 0" in log
    md = (out / "results.md").read_text(encoding="utf-8")
    assert "erm-bf" in md and "## Verdict" in md and "--scale gpu" in md
    proc = subprocess.run(
        ["bash", os.path.join(REPO, "bench", "gpu_study.sh"), "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0 and "estimated total:" in proc.stdout, proc.stdout + proc.stderr


def test_from_curves_merges_runs_made_apart(data, tmp_path):
    """One process per seed, then --from_curves: the same table as one process with both seeds."""
    common = [
        "--tiny",
        "--budget",
        "2",
        "--eval_every",
        "1",
        "--nf",
        "4",
        "--nb",
        "1",
        "--gc",
        "4",
        "--patch_size",
        "16",
        "--batch_size",
        "2",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--variants",
        "erm,sf",
        "--trainset",
        str(data / "store"),
        "--testset",
        str(data / "test"),
    ]
    for seed in (1, 2):
        assert _run(*common, "--seeds", str(seed), "--out", str(tmp_path / f"s{seed}")) == 0
    assert _run(*common, "--seeds", "1,2", "--out", str(tmp_path / "both")) == 0
    assert (
        _run(
            *common,
            "--from_curves",
            str(tmp_path / "s1" / "curves.csv"),
            str(tmp_path / "s2" / "curves.csv"),
            "--out",
            str(tmp_path / "merged"),
        )
        == 0
    )

    def scores(folder):
        rows = _csv(tmp_path / folder / "results.csv")
        return [(r["kind"], r["name"], r["level"], r["verdict"]) for r in rows], np.array(
            [[float(r[c]) if r[c] else 0.0 for c in ("psnr", "lo", "hi")] for r in rows]
        )

    (names_m, vals_m), (names_b, vals_b) = scores("merged"), scores("both")
    assert names_m == names_b
    np.testing.assert_allclose(vals_m, vals_b, rtol=0, atol=1e-5)  # curves.csv keeps 6 decimals
    assert (tmp_path / "merged" / "results.md").read_text(encoding="utf-8").count("± ") > 10
    import shutil

    shutil.copy(tmp_path / "s1" / "curves.csv", tmp_path / "copy.csv")  # the same run twice is refused
    assert (
        _run(
            *common,
            "--from_curves",
            str(tmp_path / "s1" / "curves.csv"),
            str(tmp_path / "copy.csv"),
            "--out",
            str(tmp_path / "twice"),
        )
        == 2
    )
