"""The README's promise under bad input and faults, class by class (issue 21's adversarial run):
every error is one line naming the file or flag (no library chatter before it), exit status 2 (3
for a run that stops itself), and nothing is created, archived or left half-written; no checkpoint
holds a non-finite value; a lock file cannot wedge a run folder.

Each class is a case of a parametrised test below, on tiny images and a 4-channel RRDB; the
commands run in process (``dil_fast.cli.main``) and file-descriptor-level capture (``capfd``) sees
what C libraries print too.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import socket
import types

import cv2
import numpy as np
import pytest
import torch

from dil_fast import checkpoints, fileio
from dil_fast.cli import main
from dil_fast.errors import TrainingStopped
from dil_fast.train import TrainConfig, Trainer
from dil_fast.train import state as state_io
from dil_fast.train.run_folder import LOCK_NAME, RunFolder
from tests.conftest import make_png_folder
from tests.helpers import RRDB_NF4, train_argv


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """A clean training folder (8 PNGs of 24x24), a test folder and a released model_1.pt."""
    root = tmp_path_factory.mktemp("clean")
    make_png_folder(root / "train", n=8, size=24, seed=1)
    make_png_folder(root / "test", n=1, size=20, seed=2)
    from dil_fast.models import RRDBNet

    net = RRDBNet(3, 3, nf=4, nb=1, gc=2)
    torch.save(checkpoints.released_checkpoint(net.state_dict()), root / "model_1.pt")
    return root


@pytest.fixture
def data(tmp_path, clean):
    shutil.copytree(clean, tmp_path, dirs_exist_ok=True)
    return tmp_path


def train(data, run="run", *extra, trainset=None, size=True):
    size = RRDB_NF4 if size else ()
    return train_argv(trainset or data / "train", data / "test", data / run, *extra, size=size)


def one_line(capfd, rc, expected_rc=2):
    """The one ``error:`` line of a refused command (stderr holds nothing else)."""
    err = capfd.readouterr().err
    lines = err.splitlines()
    assert rc == expected_rc and len(lines) == 1 and lines[0].startswith("error: "), (rc, err)
    return lines[0]


def tree(folder) -> dict:
    """``relative path -> size`` of everything under ``folder`` (hidden files included)."""
    out = {}
    for base, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(base, name)
            out[os.path.relpath(path, folder)] = os.path.getsize(path) if os.path.isfile(path) else -1
    return out


def earlier_run(data, name="run"):
    """A run folder holding an earlier run (what a new run would archive): its listing."""
    folder = data / name
    folder.mkdir()
    (folder / "train.log").write_text("an earlier run\n")
    shutil.copy(data / "model_1.pt", folder / "model_1.pt")
    return tree(folder)


def nonfinite(obj, prefix=""):
    if isinstance(obj, torch.Tensor):
        return [prefix] if obj.is_floating_point() and not torch.isfinite(obj).all() else []
    if isinstance(obj, dict):
        return [n for k, v in obj.items() for n in nonfinite(v, f"{prefix}.{k}")]
    if isinstance(obj, (list, tuple)):
        return [n for i, v in enumerate(obj) for n in nonfinite(v, f"{prefix}.{i}")]
    return []


# ------------------------------------------------------------------------------- bad image files
def _png(img):
    return cv2.imencode(".png", img)[1].tobytes()


def _jpeg(seed=0, size=24):
    img = (np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)
    return cv2.imencode(".jpg", img)[1].tobytes()


def _good_png():
    yy, xx = np.mgrid[0:24, 0:24]
    return _png(np.stack([yy * 9, xx * 9, (yy + xx) * 4], -1).astype(np.uint8))


def _damaged(data: bytes, at: int, n: int, fill: bytes) -> bytes:
    b = bytearray(data)
    b[at : at + n] = fill * n
    return bytes(b)


def _translucent(channels: int) -> bytes:
    img = np.full((24, 24, channels), 120, np.uint8)
    img[..., -1] = 40
    if channels == 2:  # OpenCV writes no gray+alpha PNG; Pillow does
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(img, "LA").save(buf, format="PNG")
        return buf.getvalue()
    return _png(img)


BAD_FILES = {  # name -> (file name, bytes, words of the one line)
    "png_truncated": ("x.png", lambda: _good_png()[:200], "truncated or corrupt PNG"),
    "png_corrupt": ("x.png", lambda: _damaged(_good_png(), 60, 40, b"\x00"), "libpng error"),
    "zero_bytes": ("x.png", lambda: b"", "empty file"),
    "text_named_png": ("x.png", lambda: b"plain text, not a PNG\n", "not an image"),
    "png_16bit": ("x.png", lambda: _png(np.full((24, 24, 3), 1000, np.uint16)), "16-bit image"),
    "rgba_translucent": ("x.png", lambda: _translucent(4), "transparent alpha"),
    "la_translucent": ("x.png", lambda: _translucent(2), "transparent alpha"),
    "png_4x4": ("x.png", lambda: _png(np.zeros((4, 4, 3), np.uint8)), "image is 4x4, smaller than --patch_size 16"),
    "jpeg_truncated": ("x.jpg", lambda: _jpeg()[: len(_jpeg()) // 2], "not an image or a corrupt"),
    "jpeg_corrupt": ("x.jpg", lambda: _damaged(_jpeg(size=64), 700, 60, b"\xff"), "Corrupt JPEG data"),
}


def _bad_folder(data, kind):
    folder = data / f"bad_{kind}"
    shutil.copytree(data / "train", folder)
    name, content, _ = BAD_FILES[kind]
    if kind == "la_translucent":
        pytest.importorskip("PIL")
    (folder / name).write_bytes(content())
    return folder, folder / name


@pytest.mark.parametrize("loader", ["reference", "folder"])
@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_a_bad_training_image_is_refused_before_the_run_folder_is_touched(data, kind, loader, capfd):
    folder, bad = _bad_folder(data, kind)
    before = earlier_run(data)
    rc = main(train(data, "run", "--loader", loader, trainset=folder))
    line = one_line(capfd, rc)
    assert line.startswith(f"error: {bad}: ") and BAD_FILES[kind][2] in line, line
    assert tree(data / "run") == before  # no options.json, metrics.csv, train.log, lock; not archived
    assert not [p for p in os.listdir(data) if "_archived_" in p]


@pytest.mark.parametrize(
    "case",
    ["patch_larger_than_images", "paired_sizes_mismatch"],
)
def test_sizes_that_do_not_fit_are_refused_before_the_run_folder_is_touched(data, case, capfd):
    before = earlier_run(data)
    if case == "patch_larger_than_images":
        argv = train(data, "run", "--patch_size", "32")
        words = "image is 24x24, smaller than --patch_size 32"
    else:
        pairs = data / "pairs"
        make_png_folder(pairs / "GT", n=4, size=24)
        make_png_folder(pairs / "LQ", n=4, size=20)
        argv = train(data, "run", trainset=pairs)
        words = "LQ image is 20x20, GT"
    line = one_line(capfd, main(argv))
    assert words in line and tree(data / "run") == before


def test_the_check_in_worker_processes_names_the_first_bad_file(tmp_path):
    from dil_fast.data.images import check_images
    from dil_fast.errors import InputError

    good = _good_png()
    paths = []
    for i in range(80):
        path = tmp_path / f"{i:03d}.png"
        path.write_bytes(good if i not in (41, 70) else b"not a png")
        paths.append(path)
    with pytest.raises(InputError, match="041.png: not an image"):
        check_images(paths, workers=2, progress=False)
    assert check_images(paths[:40], workers=2, progress=False, min_size=24) == [(24, 24)] * 40


def test_a_jpeg_only_folder_trains_on_the_released_path(data):
    """The README's PNG/JPEG folders: the released path (--loader reference) reads JPEGs too."""
    folder = data / "jpegs"
    folder.mkdir()
    for i in range(8):
        (folder / f"{i}.jpg").write_bytes(_jpeg(i))
    assert main(train(data, "run", "--stop_after", "1", trainset=folder)) == 0
    assert (data / "run" / "last.pt").exists()


@pytest.mark.parametrize("command", ["crop", "pack", "eval"])
def test_other_commands_refuse_a_corrupt_png_in_one_line_and_leave_nothing(data, command, capfd):
    folder, bad = _bad_folder(data, "png_corrupt")
    out = data / "out" / "deeper"
    argv = {
        "crop": ["crop", "--input", str(folder), "--output", str(out), "--size", "16", "--workers", "2"],
        "pack": ["pack", "--input", str(folder), "--output", str(data / "out"), "--workers", "2", "--no_progress"],
        "eval": ["eval", "--ckpt", str(data / "model_1.pt"), "--testset", str(folder), "--save", str(out)],
    }[command]
    line = one_line(capfd, main(argv))
    assert line.startswith(f"error: {bad}: ") and "libpng error" in line, line
    assert not (data / "out").exists()


def test_pack_converts_grayscale_and_skip_bad_skips_an_odd_size(data, capsys):
    folder = data / "mixed"
    shutil.copytree(data / "train", folder)
    cv2.imwrite(str(folder / "gray.png"), np.full((24, 24), 9, np.uint8))
    cv2.imwrite(str(folder / "tiny.png"), np.zeros((4, 4, 3), np.uint8))
    assert main(["pack", "--input", str(folder), "--output", str(data / "s1"), "--no_progress"]) == 2
    assert "tiny.png is 4x4" in capsys.readouterr().err and not (data / "s1").exists()
    rc = main(["pack", "--input", str(folder), "--output", str(data / "s1"), "--skip_bad", "--no_progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "1 of another size" in out and "1 grayscale image(s) converted to RGB" in out


# ------------------------------------------------------------------------------- failing outputs
def _full_disk_after(nbytes):
    """``checkpoints.atomic_save`` on a disk that fills after ``nbytes``: torch.save then raises its
    own RuntimeError ("enforce fail at inline_container.cc"), the OSError behind it as context."""

    def save(obj, path):
        def write(f):
            class Full(io.RawIOBase):
                written = 0

                def writable(self):
                    return True

                def write(self, b):
                    if self.written + len(b) > nbytes:
                        raise OSError(errno.ENOSPC, "No space left on device")
                    self.written += len(b)
                    return f.write(b)

            torch.save(obj, Full())

        fileio.atomic_write(path, write, fsync=True)

    return save


def test_a_full_disk_during_a_checkpoint_is_one_line_and_leaves_no_temporary_file(data, monkeypatch, capfd):
    monkeypatch.setattr(checkpoints, "atomic_save", _full_disk_after(2000))
    line = one_line(capfd, main(train(data, "run")))
    assert f"error: --ckpt_save: cannot write {data / 'run' / 'model_1.pt'} (No space left on device)" in line
    assert not [n for n in os.listdir(data / "run") if n.endswith(fileio.TMP_SUFFIX) or n == LOCK_NAME]


@pytest.mark.parametrize("case", ["a_folder", "under_a_file", "read_only_folder", "full_disk"])
def test_every_output_error_of_convert_is_one_line(data, case, monkeypatch, capfd):
    out = data / "converted.pt"
    words = {
        "a_folder": "it is a folder",
        "under_a_file": "is a file, not a folder",
        "read_only_folder": "Permission denied",
        "full_disk": "No space left on device",
    }[case]
    if case == "a_folder":
        out.mkdir()
    elif case == "under_a_file":
        (data / "afile").write_text("x")
        out = data / "afile" / "converted.pt"
    elif case == "read_only_folder":  # chmod does not stop root: the folder refuses the temporary file

        def refuse(**_kw):
            raise PermissionError(errno.EACCES, "Permission denied")

        monkeypatch.setattr(fileio, "tempfile", types.SimpleNamespace(mkstemp=refuse))
    else:
        monkeypatch.setattr(checkpoints, "atomic_save", _full_disk_after(500))
    line = one_line(capfd, main(["convert", "--ckpt", str(data / "model_1.pt"), "--to", "dil", "--out", str(out)]))
    assert line.startswith("error: --out: ") and words in line, line
    assert not [n for n in os.listdir(data) if n.endswith(fileio.TMP_SUFFIX)]


def test_a_write_in_a_folder_made_read_only_empties_its_temporary_file(tmp_path, monkeypatch):
    """Its name cannot be removed (the folder refuses), so it is left empty for the next run to remove."""
    real_unlink = os.unlink

    def read_only(path, *a, **kw):
        if str(path).endswith(fileio.TMP_SUFFIX):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_unlink(path, *a, **kw)

    def fail_late(f):
        f.write(b"x" * 100_000)
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "unlink", read_only)
    with pytest.raises(OSError):
        fileio.atomic_write(str(tmp_path / "last.pt"), fail_late)
    left = [n for n in os.listdir(tmp_path) if n.endswith(fileio.TMP_SUFFIX)]
    assert len(left) == 1 and os.path.getsize(tmp_path / left[0]) == 0


# ------------------------------------------------------------------------------- flags
FLAGS = {  # name -> (extra flags, words of the one line), all refused before anything is built
    "arch_empty": (["--arch="], "--arch must be one of"),
    "arch_relative_module": (["--arch", ".x:Y"], "--arch must be one of"),
    "arch_empty_module": (["--arch", ":Y"], "--arch must be one of"),
    "memory_budget_words": (["--memory_budget", "lots"], "--memory_budget 'lots': not a size"),
    "memory_budget_nan": (["--memory_budget", "nan"], "--memory_budget 'nan': not a size"),
    "arch_kwargs_vs_nf": (["--arch_kwargs", '{"nf": "x"}', "--nf", "8"], "--nf 8 and --arch_kwargs nf='x' disagree"),
    "arch_kwargs_not_a_number": (["--arch_kwargs", '{"nf": "x"}'], '--arch_kwargs {"nf": "x"}: invalid literal'),
    "arch_kwargs_negative": (["--arch_kwargs", '{"nf": -1}'], '--arch_kwargs {"nf": -1}: RRDBNet: nf must be'),
    "arch_kwargs_too_large": (
        ["--arch_kwargs", '{"nf": 200000, "nb": 1, "gc": 4}'],
        "parameters; its two float32 copies need",
    ),
    "lr_beyond_float32": (["--lr", "1e39"], "--lr 1e+39: larger than a float32 learning rate"),
}


@pytest.mark.parametrize("case", list(FLAGS))
def test_a_bad_flag_is_one_line_naming_it(data, case, capfd):
    extra, words = FLAGS[case]
    before = earlier_run(data)
    line = one_line(capfd, main(train(data, "run", *extra, size=False)))
    assert words in line, line
    assert tree(data / "run") == before


def test_a_raw_pickle_checkpoint_is_refused_without_torch_warnings(data, capfd):
    import pickle

    class Code:
        def __reduce__(self):
            return (print, ("ran",))

    with open(data / "raw.pkl", "wb") as f:
        pickle.dump({"model_meta": Code()}, f, protocol=4)
    line = one_line(
        capfd,
        main(["eval", "--ckpt", str(data / "raw.pkl"), "--testset", str(data / "test"), "--save", str(data / "o")]),
    )
    assert "refused: the file carries Python objects" in line  # and no "UserWarning: Detected pickle protocol 4"


# ------------------------------------------------------------------------------- non-finite state
@pytest.mark.parametrize(
    "variant,lrs,print_every",
    [
        ("erm", ["--lr", "3"], 1),  # finite gradients whose squares overflow Adam's second moment
        ("sf", ["--lr", "2", "--meta_lr", "2"], 1),
        ("pf", ["--lr", "2", "--meta_lr", "2"], 100),  # no log point: read every --max_bad_steps iterations
    ],
    ids=["erm_lr3", "sf_lr2_meta2", "pf_lr2_meta2_between_log_points"],
)
def test_a_diverging_run_skips_counts_and_stops_writing_nothing_non_finite(data, variant, lrs, print_every, capfd):
    argv = train(data, "run", "--variant", variant, *lrs, "--max_bad_steps", "3", "--total_epoch", "6")
    line = one_line(capfd, main(argv + ["--print_every", str(print_every)]), expected_rc=3)
    # one definition of "consecutive" for every variant, learning rate and log interval
    assert "error: 3 consecutive meta-iterations had non-finite losses or gradients" in line, line
    if print_every == 1:
        assert "skipped 1 non-finite step(s)" in (data / "run" / "train.log").read_text()
    for name in os.listdir(data / "run"):
        if name.endswith(".pt"):
            assert nonfinite(torch.load(data / "run" / name, weights_only=True)) == [], name


def test_the_checkpoint_check_covers_the_optimizer_state(data):
    trainer = Trainer(
        TrainConfig(
            ckpt_save=str(data / "run"),
            trainset=str(data / "train"),
            testset=str(data / "test"),
            patch_size=16,
            batch_size=2,
            total_epoch=1,
            num_workers=0,
            nf=4,
            nb=1,
            gc=2,
            variant="erm",
        )
    ).open()
    try:
        x = torch.rand(2, 3, 16, 16)
        trainer.algorithm.step([(x, x)])
        state_io.check_finite_weights(trainer.algorithm, "folder")  # finite: passes
        exp_avg_sq = next(iter(trainer.algorithm.meta_optimizer.state.values()))["exp_avg_sq"]
        exp_avg_sq.view(-1)[0] = float("inf")  # the weights stay finite
        with pytest.raises(TrainingStopped, match="the optimizer state became non-finite .*exp_avg_sq"):
            state_io.check_finite_weights(trainer.algorithm, "folder")
    finally:
        trainer.close()


def test_a_gradient_too_large_for_adam_is_flagged_on_the_device():
    from dil_fast.meta.base import GRAD_LIMIT, MetaAlgorithm

    for grads in ([torch.tensor([1.0, 2.0 * GRAD_LIMIT])], [torch.tensor([1.0, float("nan")])]):
        for kw in ({"flat_grad": grads[0]}, {"grads": grads}):
            flag = torch.zeros(1)
            MetaAlgorithm._flag_nonfinite(flag, **kw)
            assert flag.item() == 1.0, kw
    flag = torch.zeros(1)
    MetaAlgorithm._flag_nonfinite(flag, torch.tensor(0.5), flat_grad=torch.tensor([-GRAD_LIMIT, 3.0]))
    assert flag.item() == 0.0


# ------------------------------------------------------------------------------- resume
def test_a_learning_rate_a_resumed_state_does_not_take_is_said(data, capfd):
    assert main(train(data, "run", "--total_epoch", "2", "--stop_after", "2")) == 0
    last = data / "run" / "last.pt"
    assert main(train(data, "run", "--total_epoch", "2", "--resume", str(last), "--lr", "0.001")) == 0
    log = (data / "run" / "train.log").read_text()
    assert "--lr 0.001 is not used: the training state continues at its own 0.0001" in log


def test_an_interrupted_and_resumed_run_saves_the_rng_state_of_one_run_straight_through(data):
    """Weights were bitwise equal before too; the global RNG now is as well: no DataLoader
    iterator draws its workers' seed from it."""
    kw = dict(
        trainset=str(data / "train"),
        testset=str(data / "test"),
        patch_size=16,
        batch_size=2,
        total_epoch=2,
        num_workers=0,
        nf=4,
        nb=1,
        gc=2,
        progress=False,
        tensorboard=False,
        test_every=5,
    )
    assert Trainer(TrainConfig(ckpt_save=str(data / "a"), **kw)).run() == 0
    assert Trainer(TrainConfig(ckpt_save=str(data / "b"), stop_after=3, **kw)).run() == 0
    assert Trainer(TrainConfig(ckpt_save=str(data / "b"), resume=str(data / "b" / "last.pt"), **kw)).run() == 0
    a, b = (torch.load(data / r / "last.pt", weights_only=True) for r in ("a", "b"))
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert all(torch.equal(v, b["models"]["model_meta"][k]) for k, v in a["models"]["model_meta"].items())


# ------------------------------------------------------------------------------- locks
UNREADABLE_LOCKS = {"empty": "", "garbage": "garbage\n", "no_pid": "pid host\n", "binary": "\x00\x01"}


@pytest.mark.parametrize("content", list(UNREADABLE_LOCKS.values()), ids=list(UNREADABLE_LOCKS))
@pytest.mark.parametrize("auto_resume", [False, True], ids=["new", "auto_resume"])
def test_a_lock_file_that_names_no_run_is_taken_over_as_stale(data, content, auto_resume, monkeypatch, capfd):
    from dil_fast.train import run_folder

    monkeypatch.setattr(run_folder, "_WRITER_GRACE_S", 0.2)
    folder = data / "run"
    folder.mkdir()
    (folder / LOCK_NAME).write_bytes(content.encode("latin-1"))
    extra = ["--auto_resume"] if auto_resume else []
    assert main(train(data, "run", "--stop_after", "1", *extra)) == 0, capfd.readouterr().err
    assert "Took over the lock file .dil_fast.lock, which named no run" in (folder / "train.log").read_text()
    assert not (folder / LOCK_NAME).exists()


@pytest.mark.skipif(not os.path.exists("/proc/1/stat") or os.getpid() == 1, reason="process start times from /proc")
def test_a_lock_of_a_reused_pid_is_stale_and_one_of_another_host_says_how_to_free_it(data, capfd):
    folder = data / "run"
    folder.mkdir()
    lock = folder / LOCK_NAME
    lock.write_text(f"1 {socket.gethostname()}\n")  # PID 1 runs, but started long before this lock
    os.utime(lock, (2e9, 2e9))  # written "later" than PID 1 started: a fresh lock of PID 1 is live
    assert main(train(data, "run", "--stop_after", "1")) == 2
    assert "a run (PID 1 on" in capfd.readouterr().err
    os.utime(lock, (1e9, 1e9))  # 2001: long before PID 1 started, so not the run that wrote it
    taken = RunFolder(str(folder)).acquire()
    assert taken.report() == [
        "Took over the stale lock of PID 1 (the PID now belongs to a process started after the lock)"
    ]
    taken.release()
    lock.write_text("4242 another-host\n")
    assert main(train(data, "other", "--stop_after", "1")) == 0  # another folder is free
    line = one_line(capfd, main(train(data, "run", "--stop_after", "1")))
    assert f"if it is gone, delete {lock}" in line
