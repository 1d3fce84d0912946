"""Running it like the field runs experiments: run folders that never lose or mix work, tracking,
non-finite steps, files readable by collaborators, the released construction order."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys

import cv2
import pytest
import torch

from dil_fast.cli import main
from dil_fast.errors import FlagError, TrainingStopped
from dil_fast.models import RRDBNet
from dil_fast.train import TrainConfig, Trainer
from dil_fast.train.run_folder import LOCK_NAME
from tests.conftest import make_png_folder
from tests.helpers import RRDB_NF4, train_argv

TINY = dict(
    patch_size=16,
    batch_size=2,
    total_epoch=2,
    num_workers=0,
    progress=False,
    print_every=2,
    nf=4,
    nb=1,
    gc=2,
    test_every=1,
)


@pytest.fixture
def data(tmp_path):
    make_png_folder(tmp_path / "train", n=8, size=24, seed=1)
    make_png_folder(tmp_path / "test", n=1, size=20, seed=2)
    return tmp_path


def _cfg(data, name="run", **kw):
    return TrainConfig(
        ckpt_save=str(data / name), trainset=str(data / "train"), testset=str(data / "test"), **{**TINY, **kw}
    )


def _lock(folder, pid):
    os.makedirs(folder, exist_ok=True)
    import socket

    with open(os.path.join(folder, LOCK_NAME), "w") as f:
        f.write(f"{pid} {socket.gethostname()}\n")


def test_a_live_lock_refuses_and_a_stale_one_is_taken_over(data):
    folder = data / "run"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _lock(folder, live.pid)
        with pytest.raises(FlagError, match=f"a run \\(PID {live.pid} on .*\\) is using it"):
            Trainer(_cfg(data)).run()
    finally:
        live.kill()
        live.wait()
    _lock(folder, live.pid)  # now dead
    assert Trainer(_cfg(data)).run() == 0
    log = (folder / "train.log").read_text()
    assert f"Took over the stale lock of PID {live.pid}" in log
    assert not (folder / LOCK_NAME).exists()  # released at the end


def test_a_folder_holding_a_run_is_archived_unless_auto_resume(data):
    assert Trainer(_cfg(data, total_epoch=1)).run() == 0
    assert Trainer(_cfg(data, total_epoch=1)).run() == 0
    archived = [n for n in os.listdir(data) if n.startswith("run_archived_")]
    assert len(archived) == 1 and (data / archived[0] / "model_1.pt").exists()
    assert "was archived to" in (data / "run" / "train.log").read_text()
    assert Trainer(_cfg(data, total_epoch=2, auto_resume=True)).run() == 0
    log = (data / "run" / "train.log").read_text()
    assert "Resumed from" in log and "epoch 1, iteration 0" in log and (data / "run" / "model_2.pt").exists()
    assert len([n for n in os.listdir(data) if n.startswith("run_archived_")]) == 1
    with pytest.raises(FlagError, match="--auto_resume continues"):
        _cfg(data, auto_resume=True, resume=str(data / "run" / "last.pt")).validate()


def test_orphaned_temporary_files_are_removed_and_files_follow_the_umask(data):
    folder = data / "run"
    os.makedirs(folder)
    orphan = folder / ".last.pt.abc123.dil_fast.tmp"
    orphan.write_bytes(b"half a checkpoint")
    old = os.umask(0o022)
    try:
        assert Trainer(_cfg(data, total_epoch=1)).run() == 0
    finally:
        os.umask(old)
    assert not orphan.exists()
    for name in ("model_1.pt", "last.pt", "train.log", "metrics.csv", "options.json"):
        assert (os.stat(folder / name).st_mode & 0o777) == 0o644, name


def test_killed_run_then_restart_leaves_no_orphan(data):
    """kill -9 during training, then the same command again (--auto_resume): no temporary file stays."""
    flags = ("--auto_resume", "--test_every", "1000")
    argv = train_argv(
        data / "train", data / "test", data / "run", *flags, epochs=200, batch_size=1, size=RRDB_NF4, tensorboard=True
    )
    cmd = [sys.executable, "-m", "dil_fast", *argv]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import time

    deadline = time.time() + 60
    while time.time() < deadline and not (data / "run" / "last.pt").exists():
        time.sleep(0.2)
    time.sleep(0.3)
    proc.kill()
    proc.wait()
    assert (data / "run" / "last.pt").exists()
    (data / "run" / ".last.pt.killed.dil_fast.tmp").write_bytes(b"cut")  # as a kill inside a write leaves
    done = subprocess.run(
        cmd[: cmd.index("200")] + ["2"] + cmd[cmd.index("200") + 1 :], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert not [n for n in os.listdir(data / "run") if n.endswith(".tmp")]
    assert "Removed 1 orphaned temporary file" in (data / "run" / "train.log").read_text()


def test_tracking_writes_options_metrics_curves_and_labelled_lines(data):
    assert Trainer(_cfg(data, confounders="noise:5,15", loader="folder")).run() == 0
    folder = data / "run"
    opts = json.loads((folder / "options.json").read_text())
    assert opts["resolved"]["confounders"] == ["noise5", "noise15"] and opts["config"]["nf"] == 4
    assert opts["resolved"]["plan"]["backends"] and opts["versions"]["torch"] == torch.__version__
    assert "optimizer" in opts["resolved"]["plan"]["fast_path"]
    rows = list(csv.DictReader(open(folder / "metrics.csv")))
    tags = {r["tag"] for r in rows}
    assert {
        "loss/noise5",
        "loss/noise15",
        "lr/task",
        "lr/meta",
        "speed/meta_it_s",
        "speed/images_s",
        "skipped/nonfinite",
        "test/noise50/psnr",
        "test/noise50/ssim",
    } <= tags
    log = (folder / "train.log").read_text()
    assert "Losses: noise" in log and "it/s" in log and "ETA" in log and "elapsed" in log
    curves = cv2.imread(str(folder / "curves.png"))
    assert curves.shape == (840, 960, 3)  # loss panel over the test-PSNR panel
    # the loss lines are drawn in colour on the top panel, the PSNR line on the bottom one
    coloured = (curves.max(axis=2).astype(int) - curves.min(axis=2)) > 60
    assert coloured[:420].sum() > 200 and coloured[420:].sum() > 50
    if importlib.util.find_spec("tensorboard") is None:  # the tensorboard extra
        assert not (folder / "tb").exists()
    else:
        assert [n for n in os.listdir(folder / "tb") if n.startswith("events.out.tfevents")]


def test_a_diverging_run_stops_with_one_line_and_only_finite_checkpoints(data, capsys):
    flags = ("--lr", "1e30", "--meta_lr", "1e30", "--max_bad_steps", "3", "--print_every", "1", "--variant", "erm")
    argv = train_argv(
        data / "train", data / "test", data / "nan", *flags, epochs=50, batch_size=1, size=RRDB_NF4, tensorboard=True
    )
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 3 and len(err) == 1 and "consecutive meta-iterations had non-finite" in err[0]
    for name in os.listdir(data / "nan"):
        if name.endswith(".pt"):
            state = torch.load(data / "nan" / name, weights_only=True)
            sds = [state["models"]["model_meta"]] if "models" in state else [state["model_meta"]]
            assert all(torch.isfinite(t).all() for sd in sds for t in sd.values()), name
    assert "skipped" in (data / "nan" / "train.log").read_text()


def test_nonfinite_steps_are_skipped_on_the_device_and_the_weights_kept():
    from dil_fast.meta import SerialFirstOrder

    net = RRDBNet(3, 3, nf=4, nb=1, gc=2)
    algo = SerialFirstOrder(net)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.rand(1, 3, 8, 8)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    algo.step([(x, x), (bad, x)])
    assert algo.last_skipped.item() == 1.0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    algo.step([(x, x), (x, x)])
    assert algo.last_skipped.item() == 0.0 and not torch.equal(before["conv_first.weight"], net.conv_first.weight)
    with pytest.raises(TrainingStopped):
        raise TrainingStopped("x")


def test_the_released_construction_order_gives_the_same_initial_weights(data):
    """Same seed: the released trainer built model_task, then model_meta; so does the trainer."""
    torch.manual_seed(7)
    task = RRDBNet(3, 3, nf=4, nb=1, gc=2)
    meta = RRDBNet(3, 3, nf=4, nb=1, gc=2)
    trainer = Trainer(_cfg(data, seed=7)).open()
    for ours, theirs in ((trainer.algorithm.meta_model, meta), (trainer.algorithm.task_model, task)):
        assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))
    trainer.close()


def test_model_n_holds_the_task_network_after_the_last_inner_steps(data):
    """On the fused default path and in reference mode alike (the released file's model_task)."""
    assert Trainer(_cfg(data, "fused", total_epoch=1)).run() == 0
    assert Trainer(_cfg(data, "ref", total_epoch=1, reference_mode=True)).run() == 0
    fused = torch.load(data / "fused" / "model_1.pt", weights_only=True)
    ref = torch.load(data / "ref" / "model_1.pt", weights_only=True)
    k = "conv_first.weight"
    assert not torch.equal(fused["model_task"][k], fused["model_meta"][k])
    assert torch.allclose(fused["model_task"][k], ref["model_task"][k], atol=1e-5)
    assert torch.allclose(fused["model_meta"][k], ref["model_meta"][k], atol=1e-5)


def test_a_ckpt_save_that_is_a_file_is_refused_before_anything_is_written(data, capsys):
    (data / "afile").write_text("x")
    # a bare command: no --batch_size, --total_epoch, model size, --no_progress or --no_tensorboard
    bare = dict(epochs=None, batch_size=None, size=(), progress=True, tensorboard=True)
    rc = main(train_argv(data / "train", data / "test", data / "afile", **bare))
    err = capsys.readouterr().err
    assert rc == 2 and err == f"error: --ckpt_save {data / 'afile'}: is a file, not a folder\n"
    assert (data / "afile").read_text() == "x"


def test_a_save_that_fails_mid_run_is_one_line_and_keeps_the_last_checkpoint(data, monkeypatch, capsys):
    import errno

    from dil_fast import checkpoints

    real, calls = checkpoints.atomic_save, []

    def disk_full_after_epoch_one(obj, path):
        calls.append(os.path.basename(path))
        if len(calls) > 2:  # model_1.pt and last.pt of epoch 1 go through; epoch 2's do not
            raise OSError(errno.ENOSPC, "No space left on device")
        real(obj, path)

    monkeypatch.setattr(checkpoints, "atomic_save", disk_full_after_epoch_one)
    rc = main(train_argv(data / "train", data / "test", data / "run", epochs=2, size=RRDB_NF4))
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith(f"error: --ckpt_save: cannot write {data / 'run' / 'model_2.pt'} (No space left on device)")
    kept = torch.load(data / "run" / "last.pt", weights_only=True)
    assert kept["epoch"] == 1 and (data / "run" / "model_1.pt").exists() and not (data / "run" / "model_2.pt").exists()
