"""`dil-fast train` over a packed store (+ the degradation library) and the loader choice."""

import pytest
import torch

from dil_fast.cli import main
from tests.conftest import make_png_folder
from tests.helpers import train_argv

# the Triton kernels are tested on their own; the interpreter is slow
FLAGS = ("--print_every", "2", "--test_every", "9", "--backend", "torch")


@pytest.fixture
def store(tmp_path):
    make_png_folder(tmp_path / "png", n=12, size=20, seed=5)
    make_png_folder(tmp_path / "test", n=1, size=16, seed=6)
    assert main(["pack", "--input", str(tmp_path / "png"), "--output", str(tmp_path / "store"), "--no_progress"]) == 0
    return tmp_path


def _run(tmp, out, *extra, epochs=2, trainset="store"):
    return main(train_argv(tmp / trainset, tmp / "test", tmp / out, *FLAGS, *extra, epochs=epochs, tensorboard=True))


def test_store_loader_trains_and_resumes_exactly(store):
    assert _run(store, "a", "--confounders", "noise:5,15;blur:1") == 0
    assert _run(store, "b", "--confounders", "noise:5,15;blur:1", "--stop_after", "4") == 0
    assert _run(store, "b", "--confounders", "noise:5,15;blur:1", "--resume", str(store / "b" / "last.pt")) == 0
    a = torch.load(store / "a" / "model_2.pt", weights_only=True)
    b = torch.load(store / "b" / "model_2.pt", weights_only=True)
    for k in a["model_meta"]:
        assert torch.equal(a["model_meta"][k], b["model_meta"][k]), k
    log = (store / "a" / "train.log").read_text()
    assert "Iter: 0/6" in log  # 12 patches // batch 2
    assert log.count("Task loss") == 2 * 3 * 3  # 3 confounders x iterations 0, 2, 4 x 2 epochs


def test_shared_pairing_and_auto_loader(store):
    assert _run(store, "s", "--pairing", "shared", epochs=1) == 0


def test_loader_flag_errors(store, capsys):
    assert _run(store, "x", "--loader", "reference") == 2  # a store is not a PNG folder
    # any confounders on a plain folder: the clean folder loader serves them; the released path refuses them
    assert _run(store, "y", "--confounders", "blur:1", epochs=None, trainset="png") == 0
    assert _run(store, "y2", "--confounders", "blur:1", "--loader", "reference", epochs=None, trainset="png") == 2
    err = capsys.readouterr().err
    assert "--loader reference is the released path" in err
    assert _run(store, "z", "--confounders", "noise:abc") == 2
    assert "--confounders" in capsys.readouterr().err


def test_dali_loader_trains(store):
    from dil_fast.data.dali import dali_available

    ok, why = dali_available()
    if not ok:
        pytest.skip(f"DALI not installed: {why}")
    rc = _run(store, "dali", "--loader", "dali", epochs=1, trainset="png")
    assert rc == 0
    ck = torch.load(store / "dali" / "model_1.pt", weights_only=True)
    assert set(ck) == {"model_meta", "model_task"}
    assert "Iter: 0/6" in (store / "dali" / "train.log").read_text()
