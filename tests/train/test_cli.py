"""`dil-fast train` end to end on a generated dataset with a tiny model: checkpoints, logs,
exact resume, reference-checkpoint resume, and bad input."""

import os
import re
import subprocess
import sys

import pytest
import torch

from dil_fast.cli import main
from dil_fast.models import RRDBNet
from tests.conftest import make_png_folder
from tests.helpers import RRDB_NF8, train_argv


@pytest.fixture
def data(tmp_path):
    make_png_folder(tmp_path / "train", n=16, size=24, seed=1)
    make_png_folder(tmp_path / "test", n=2, size=20, seed=2)
    return tmp_path


def _train(data, out, *extra, epochs=2):
    flags = ("--num_workder", "0", "--print_every", "4", "--test_every", "1")  # the released misspelt flag
    return main(
        train_argv(
            data / "train", data / "test", out, *flags, *extra, epochs=epochs, num_workers=None, tensorboard=True
        )
    )


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_train_writes_reference_checkpoints_and_log(data):
    out = data / "run"
    assert _train(data, out) == 0
    for e in (1, 2):
        ck = _load(out / f"model_{e}.pt")
        assert set(ck) == {"model_meta", "model_task"}
        m = RRDBNet(3, 3, nf=8, nb=1, gc=4)
        m.load_state_dict(ck["model_meta"], strict=True)
        assert not any(k.startswith("module.") for k in ck["model_task"])
    assert (out / "last.pt").exists()
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
    log = (out / "train.log").read_text().splitlines()
    prefix = r"^\d\d-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} : "
    assert re.match(prefix + r"Set random seed to 1$", log[0])
    inner = [l for l in log if "Task loss" in l]
    # 8 iterations/epoch, print_every 4 -> iterations 0 and 4, 4 inner steps each, 2 epochs
    assert len(inner) == 2 * 2 * 4
    assert re.match(
        prefix + r"Epoch: 0\tIter: 0/8\tTask loss: [0-9.e-]+\tTask LR: 0\.000100\tMeta LR: 0\.000100$", inner[0]
    )
    assert sum(l.endswith(" : Meta net updated!") for l in log) == 4
    assert any(re.match(prefix + r"Epoch: 1, psnr: [0-9.]+\. ssim: [0-9.]+\.$", l) for l in log)
    assert sum(bool(re.match(prefix + r"000000\.png: [0-9.]+, [0-9.]+$", l)) for l in log) == 2
    assert log[-1].endswith(" : Done")


def test_interrupted_and_resumed_run_is_bitwise_identical(data):
    straight = data / "straight"
    assert _train(data, straight, epochs=3, *("--lr_step", "2")) == 0
    cut = data / "cut"
    # stop in the middle of epoch 0, then at the end of epoch 1 (a boundary), then finish
    assert _train(data, cut, "--stop_after", "5", "--lr_step", "2", epochs=3) == 0
    assert not (cut / "model_1.pt").exists() and (cut / "last.pt").exists()
    assert _train(data, cut, "--resume", str(cut / "last.pt"), "--stop_after", "11", "--lr_step", "2", epochs=3) == 0
    assert (cut / "model_2.pt").exists() and not (cut / "model_3.pt").exists()
    assert _train(data, cut, "--resume", str(cut / "last.pt"), "--lr_step", "2", epochs=3) == 0
    a, b = _load(straight / "model_3.pt"), _load(cut / "model_3.pt")
    for key in ("model_meta", "model_task"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    sa, sb = _load(straight / "last.pt"), _load(cut / "last.pt")
    assert sa["algorithm"]["meta_optimizer"]["param_groups"][0]["lr"] == 5e-5  # halved at epoch 2
    assert sb["algorithm"]["meta_optimizer"]["param_groups"][0]["lr"] == 5e-5
    ta = sa["algorithm"]["task_optimizer"]["state"][0]
    tb = sb["algorithm"]["task_optimizer"]["state"][0]
    assert torch.equal(ta["exp_avg_sq"], tb["exp_avg_sq"]) and int(ta["step"]) == int(tb["step"]) == 3 * 8 * 4


def test_resume_from_released_checkpoint_infers_model_size(data, capsys):
    ref = {
        "model_meta": RRDBNet(3, 3, nf=8, nb=2, gc=4).state_dict(),
        "model_task": RRDBNet(3, 3, nf=8, nb=2, gc=4).state_dict(),
    }
    torch.save(ref, data / "released.pt")
    out = data / "from_ref"
    resume = ("--resume", str(data / "released.pt"), "--test_every", "5")
    assert main(train_argv(data / "train", data / "test", out, *resume, size=(), tensorboard=True)) == 0
    ck = _load(out / "model_1.pt")
    assert "RRDB_trunk.1.RDB3.conv5.weight" in ck["model_meta"]
    assert ck["model_meta"]["conv_first.weight"].shape[0] == 8


def test_erm_variant_trains(data):
    out = data / "erm"
    assert _train(data, out, "--variant", "erm", epochs=1) == 0
    ck = _load(out / "model_1.pt")
    for k in ck["model_meta"]:
        assert torch.equal(ck["model_meta"][k], ck["model_task"][k])


def _run_cli(args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-m", "dil_fast", *args], capture_output=True, text=True, env=env, timeout=300
    )


def _assert_clean_error(res, *needles, out=None):
    assert res.returncode == 2, res.stderr
    lines = [l for l in res.stderr.strip().splitlines() if l]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    if out is not None and os.path.isdir(out):
        assert not [f for f in os.listdir(out) if f.endswith((".pt", ".tmp"))]


def test_python_m_entry_point_and_bad_inputs(data):
    out = str(data / "bad")

    def bad(trainset, *more, size=RRDB_NF8):
        return _run_cli(train_argv(data / trainset, data / "test", out, *more, size=size, tensorboard=True))

    # missing / empty trainset
    _assert_clean_error(bad("nope"), "--trainset", "nope")
    (data / "empty").mkdir()
    _assert_clean_error(bad("empty"), "--trainset")
    # a corrupt PNG among good ones is named
    make_png_folder(data / "corrupt", n=4, size=24)
    (data / "corrupt" / "000002.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    _assert_clean_error(bad("corrupt"), "000002.png", out=out)
    # patches smaller than --patch_size
    make_png_folder(data / "small", n=4, size=12)
    _assert_clean_error(bad("small"), "--patch_size", out=out)
    # invalid flag values
    _assert_clean_error(bad("train", "--batch_size", "0"), "--batch_size")
    _assert_clean_error(bad("train", "--variant", "maml"), "--variant")
    # --resume that is not a checkpoint, and one that does not fit the model
    (data / "junk.pt").write_text("hello")
    _assert_clean_error(bad("train", "--resume", str(data / "junk.pt")), "junk.pt")
    torch.save(
        {"model_meta": RRDBNet(3, 3, 8, 1, 4).state_dict(), "model_task": RRDBNet(3, 3, 8, 1, 4).state_dict()},
        data / "nf8.pt",
    )
    _assert_clean_error(bad("train", "--nf", "16", "--resume", str(data / "nf8.pt"), size=()), "nf8.pt", "do not fit")
    # argparse-level errors also exit 2 with one line naming the flag
    res = _run_cli(["train", "--levels", "a,b"])
    assert res.returncode == 2 and "--levels" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("variant", ["pf", "ss", "ps", "ss-fo"])
def test_every_variant_trains_and_resumes_exactly(data, variant):
    extra = [
        "--variant",
        variant,
        "--batch_size",
        "4",
        "--print_every",
        "2",
        "--test_every",
        "9",
        *(["--alpha", "1e-3"] if variant != "pf" else []),
    ]
    straight, cut = data / f"{variant}-a", data / f"{variant}-b"
    assert _train(data, straight, *extra, epochs=1) == 0
    assert _train(data, cut, *extra, "--stop_after", "2", epochs=1) == 0
    assert _train(data, cut, *extra, "--resume", str(cut / "last.pt"), epochs=1) == 0
    a, b = _load(straight / "model_1.pt"), _load(cut / "model_1.pt")
    for name in a["model_meta"]:
        assert torch.equal(a["model_meta"][name], b["model_meta"][name]), name
    state = _load(cut / "last.pt")
    assert state["algorithm"]["variant"] == variant
    assert "Task loss" in (straight / "train.log").read_text()


def test_progress_bar_shows_rate_and_loss_on_a_terminal(data, terminal, monkeypatch):
    pytest.importorskip("tqdm")  # optional at run time (tests/test_progress.py covers its absence)
    from dil_fast.train import TrainConfig, Trainer

    stream, read = terminal
    monkeypatch.setattr(sys, "stderr", stream)
    cfg = TrainConfig(
        ckpt_save=str(data / "bar"),
        trainset=str(data / "train"),
        testset=str(data / "test"),
        patch_size=16,
        batch_size=2,
        total_epoch=1,
        num_workers=0,
        device="cpu",
        nf=8,
        nb=1,
        gc=4,
        print_every=1,
        test_every=9,
    )
    assert Trainer(cfg).run() == 0
    shown = read()
    assert "epoch 0" in shown and "it/s" in shown and "loss=" in shown
