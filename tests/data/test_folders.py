"""The folder loaders (clean folder, paired GT/LQ folders) read in DataLoader workers: a bad image
ends a run with its one line, the workers are capped to the CPUs and stop when an iteration ends."""

import gc
import multiprocessing
import os
import time

import pytest
import torch

from dil_fast import cli
from dil_fast.data import released as reference
from dil_fast.data.folders import FolderCleanLoader, PairedLoader
from dil_fast.errors import InputError
from tests.conftest import make_png_folder
from tests.helpers import RRDB_NF4, train_argv


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _paired_folder(root, n=2, size=24):
    make_png_folder(root / "GT", n=n, size=size, seed=1)
    make_png_folder(root / "LQ", n=n, size=size, seed=2)
    return root


def _worker_processes():
    return {p.pid for p in multiprocessing.active_children()}


# ---------------------------------------------------------------------------------------------
# A bad image read in a worker: one stderr line naming the file, exit status 2


@pytest.mark.parametrize("layout", ["folder", "paired"])
def test_bad_image_in_a_worker_is_one_line_through_the_cli(tmp_path, layout, monkeypatch, capfd):
    if layout == "folder":
        trainset = tmp_path / "train"
        make_png_folder(trainset, n=2, size=24)
        bad = trainset / "000001.png"
        loader_flags = ["--loader", "folder"]
    else:
        trainset = _paired_folder(tmp_path / "pairs")
        bad = trainset / "LQ" / "000001.png"
        loader_flags = []  # a paired folder is read by --loader paired by default
    _truncate(bad)
    make_png_folder(tmp_path / "test", n=1, size=16)
    monkeypatch.setattr(reference, "available_cpus", lambda: 8)  # the 2 workers start on any machine
    flags = (*loader_flags, "--levels", "5", "--backend", "torch")
    tiny = dict(batch_size=1, num_workers=2, size=RRDB_NF4, progress=True, tensorboard=True)
    rc = cli.main(train_argv(trainset, tmp_path / "test", tmp_path / "run", *flags, **tiny))
    lines = capfd.readouterr().err.splitlines()
    assert rc == 2 and len(lines) == 1, lines  # no "Caught InputError in DataLoader worker process" traceback
    assert lines[0] == f"error: {bad}: truncated or corrupt PNG (no IEND chunk at the end)"


def test_bad_image_in_a_worker_raises_its_own_error(tmp_path):
    trainset = _paired_folder(tmp_path / "pairs")
    loader = PairedLoader([trainset], patch_size=16, batch_size=1, seed=3, num_workers=1, cpus=2)
    assert loader.num_workers == 1
    _truncate(trainset / "GT" / "000000.png")  # damaged after the loader checked it (mid-run)
    with pytest.raises(InputError) as info:
        for _ in loader:
            pass
    assert type(info.value) is InputError
    assert str(info.value) == f"{trainset / 'GT' / '000000.png'}: truncated or corrupt PNG (no IEND chunk at the end)"


# ---------------------------------------------------------------------------------------------
# Workers change nothing in the data; they are capped to the CPUs, and the trainer says so


def _batches(loader):
    return [b for b in loader]


def test_workers_do_not_change_the_batches(tmp_path):
    make_png_folder(tmp_path / "train", n=6, size=20, seed=4)
    pairs = _paired_folder(tmp_path / "pairs", n=4, size=20)
    clean = {
        w: _batches(
            FolderCleanLoader(str(tmp_path / "train"), 2, patch_size=16, batch_size=2, seed=7, num_workers=w, cpus=8)
        )
        for w in (0, 2)
    }
    assert len(clean[0]) == 3 and clean[0][0].shape == (2, 2, 3, 16, 16)
    assert all(torch.equal(a, b) for a, b in zip(clean[0], clean[2], strict=True))
    paired = {
        w: _batches(PairedLoader([pairs, pairs], patch_size=16, batch_size=2, seed=7, num_workers=w, cpus=8))
        for w in (0, 2)
    }
    assert len(paired[0]) == 2 and [t.shape for t in paired[0][0][1]] == [(2, 3, 16, 16)] * 2
    for a, b in zip(paired[0], paired[2], strict=True):
        assert all(
            torch.equal(x, y)
            for (lq_a, gt_a), (lq_b, gt_b) in zip(a, b, strict=True)
            for x, y in ((lq_a, lq_b), (gt_a, gt_b))
        )


def test_workers_are_capped_to_the_cpus(tmp_path):
    make_png_folder(tmp_path / "train", n=4, size=16)
    pairs = _paired_folder(tmp_path / "pairs", n=2, size=16)
    capped = FolderCleanLoader(str(tmp_path / "train"), 4, patch_size=16, batch_size=1, seed=1, num_workers=8, cpus=2)
    assert capped.num_workers == 0
    assert capped.worker_note == (
        "--num_workers 8: 4 confounders x 8 workers = 32 processes for 2 CPUs; using 0 per "
        "confounder (samples are read in the main process)"
    )
    assert next(iter(capped)).shape == (4, 1, 3, 16, 16)
    halved = PairedLoader([pairs, pairs], patch_size=16, batch_size=1, seed=1, num_workers=3, cpus=4)
    assert halved.num_workers == 2 and "6 processes for 4 CPUs; using 2 per confounder" in halved.worker_note
    kept = FolderCleanLoader(str(tmp_path / "train"), 2, patch_size=16, batch_size=1, seed=1, num_workers=2, cpus=4)
    assert kept.num_workers == 2 and kept.worker_note is None


def test_the_trainer_logs_the_worker_cap(tmp_path, monkeypatch):
    make_png_folder(tmp_path / "train", n=2, size=16)
    make_png_folder(tmp_path / "test", n=1, size=16)
    monkeypatch.setattr(reference, "available_cpus", lambda: 1)
    flags = ("--loader", "folder", "--levels", "5", "--backend", "torch")
    tiny = dict(batch_size=1, num_workers=3, size=RRDB_NF4, tensorboard=True)
    rc = cli.main(train_argv(tmp_path / "train", tmp_path / "test", tmp_path / "run", *flags, **tiny))
    assert rc == 0
    log = (tmp_path / "run" / "train.log").read_text()
    assert (
        "--num_workers 3: 1 confounders x 3 workers = 3 processes for 1 CPUs; using 1 per confounder "
        "(1 worker processes)"
    ) in log


# ---------------------------------------------------------------------------------------------
# An iteration that stops early (a bad sample, the caller breaking off) stops its workers at once


def test_a_failed_iteration_leaves_no_workers_behind(tmp_path):
    make_png_folder(tmp_path / "train", n=6, size=16)
    before = _worker_processes()
    loader = FolderCleanLoader(str(tmp_path / "train"), 1, patch_size=16, batch_size=1, seed=2, num_workers=2, cpus=8)
    _truncate(tmp_path / "train" / "000003.png")  # damaged after the loader checked it (mid-run)
    start = time.perf_counter()
    with pytest.raises(InputError, match="000003.png: truncated"):
        for _ in loader:
            pass
    # the error's traceback still holds the loader's frame: the workers must be gone without the collector
    assert _worker_processes() - before == set()
    gc.collect()
    assert time.perf_counter() - start < 3.0  # not 5 s per worker waited out at collection


def test_an_abandoned_iteration_stops_its_workers(tmp_path):
    make_png_folder(tmp_path / "train", n=6, size=16)
    pairs = _paired_folder(tmp_path / "pairs", n=6, size=16)
    before = _worker_processes()
    for loader in (
        FolderCleanLoader(str(tmp_path / "train"), 1, patch_size=16, batch_size=1, seed=2, num_workers=2, cpus=8),
        PairedLoader([pairs], patch_size=16, batch_size=1, seed=2, num_workers=2, cpus=8),
    ):
        batches = iter(loader)
        next(batches)
        assert len(_worker_processes() - before) == 2
        start = time.perf_counter()
        batches.close()  # what dropping it does: a stop after --stop_after, a signal
        assert _worker_processes() - before == set()
        assert time.perf_counter() - start < 3.0
        assert loader.position == 1  # the resume position counts the batch handed out


# ---------------------------------------------------------------------------------------------
# GT / LQ names: BasicSR's filename_tmpl (LQ stem = tmpl.format(GT stem))


def _named_pairs(root, gt_stems, lq_stems, size=8):
    """A paired folder with GT/<stem>.png and LQ/<stem>.png of the given stems (random pixels)."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    for side, stems in (("GT", gt_stems), ("LQ", lq_stems)):
        (root / side).mkdir(parents=True, exist_ok=True)
        for stem in stems:
            cv2.imwrite(str(root / side / f"{stem}.png"), rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    return root


def test_filename_tmpl_pairs_div2k_names(tmp_path):
    from dil_fast.data.folders import paired_files

    root = _named_pairs(tmp_path / "div2k", ["0801", "0802", "0810"], ["0801x4", "0802x4", "0810x4"])
    pairs = paired_files(root, filename_tmpl="{}x4")
    assert [(os.path.relpath(g, root), os.path.basename(q)) for g, q in pairs] == [
        (os.path.join("GT", "0801.png"), "0801x4.png"),
        (os.path.join("GT", "0802.png"), "0802x4.png"),
        (os.path.join("GT", "0810.png"), "0810x4.png"),
    ]
    # BasicSR's other spellings of the same template, and a prefix
    assert paired_files(root, filename_tmpl="{0}x4") == pairs
    pre = _named_pairs(tmp_path / "pre", ["a", "b"], ["lr_a_x2", "lr_b_x2"])
    assert [os.path.basename(q) for _, q in paired_files(pre, filename_tmpl="lr_{}_x2")] == [
        "lr_a_x2.png",
        "lr_b_x2.png",
    ]


def test_without_the_template_div2k_names_are_refused_with_the_flag_to_pass(tmp_path):
    from dil_fast.data.folders import paired_files

    root = _named_pairs(tmp_path / "div2k", ["0801", "0802"], ["0801x4", "0802x4"])
    with pytest.raises(InputError) as info:
        paired_files(root)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"--trainset {root}: 2 image(s) only in GT/ (e.g. 0801);")
    assert msg.endswith("GT and LQ images are matched by file name: LQ 0801x4 for GT 0801? pass --filename_tmpl '{}x4'")
    # names that no one template pairs: no suggestion
    odd = _named_pairs(tmp_path / "odd", ["0801", "0802"], ["0801x4", "0802x2"])
    with pytest.raises(InputError, match=r"matched by file name$"):
        paired_files(odd)


def test_a_template_that_leaves_names_unpaired_says_so(tmp_path):
    from dil_fast.data.folders import paired_files

    root = _named_pairs(tmp_path / "p", ["0801", "0802"], ["0801x4", "0802x3"])
    with pytest.raises(InputError) as info:
        paired_files(root, flag="--testset", filename_tmpl="{}x4")
    assert str(info.value) == (
        f"--testset {root}: 1 image(s) only in GT/ (e.g. 0802, whose LQ would be 0802x4); "
        "each LQ name is --filename_tmpl '{}x4' of its GT name"
    )


def test_meta_info_lists_gt_names_and_the_template_gives_the_lq(tmp_path):
    from dil_fast.data.folders import paired_files

    root = _named_pairs(tmp_path / "m", ["0801", "0802", "0803"], ["0801x2", "0802x2", "0803x2"])
    (root / "meta_info_DIV2K.txt").write_text("0803.png (8,8,3)\n0801.png (8,8,3)\n")
    assert [os.path.basename(q) for _, q in paired_files(root, filename_tmpl="{}x2")] == ["0803x2.png", "0801x2.png"]
    (root / "LQ" / "0801x2.png").unlink()
    with pytest.raises(InputError, match="meta_info names 0801 have no GT/LQ image pair"):
        paired_files(root, filename_tmpl="{}x2")


@pytest.mark.parametrize(
    "tmpl, words",
    [
        ("x4", "needs '{}' where the GT name stem goes"),
        ("{name}x4", "needs '{}' where the GT name stem goes"),
        ("{:>8}x4", "needs '{}' where the GT name stem goes"),
        ("{}x4{", "not a name template"),
        ("sub/{}", "must make a file name, not a path"),
    ],
    ids=["no-field", "named-field", "format-spec", "unbalanced", "path"],
)
def test_bad_templates_are_one_flag_line(tmp_path, tmpl, words):
    from dil_fast.data.folders import check_filename_tmpl, paired_files
    from dil_fast.errors import FlagError

    with pytest.raises(FlagError, match="^--filename_tmpl ") as info:
        check_filename_tmpl(tmpl)
    assert words in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(FlagError):
        paired_files(_named_pairs(tmp_path / "t", ["a"], ["a"]), filename_tmpl=tmpl)


def test_paired_loader_takes_the_template(tmp_path):
    root = _named_pairs(tmp_path / "sr", ["a", "b"], [], size=16)
    import cv2
    import numpy as np

    for stem in ("a", "b"):
        gt = cv2.imread(str(root / "GT" / f"{stem}.png"))
        cv2.imwrite(str(root / "LQ" / f"{stem}x2.png"), cv2.resize(gt, (8, 8), interpolation=cv2.INTER_AREA))
    loader = PairedLoader([root], patch_size=8, batch_size=1, seed=0, scale=2, filename_tmpl="{}x2")
    ((lq, gt),) = next(iter(loader))
    assert lq.shape == (1, 3, 4, 4) and gt.shape == (1, 3, 8, 8)
    assert np.isfinite(lq.numpy()).all()
    with pytest.raises(InputError, match="pass --filename_tmpl '{}x2'"):
        PairedLoader([root], patch_size=8, batch_size=1, seed=0, scale=2)
