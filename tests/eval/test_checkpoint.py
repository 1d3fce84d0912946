"""``load_checkpoint(..., run_folder=True)``: a ``model_N.pt`` (weights only) is rebuilt as its run
folder recorded (``options.json``, else ``last.pt``); one's own ``package.module:Class`` still needs
``--arch``, refused in one short line that names it."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from dil_fast.errors import CheckpointError
from dil_fast.eval.checkpoint import load_checkpoint, run_folder_model
from dil_fast.eval.cli import add_eval_parser, run_eval
from dil_fast.models import RRDBNet, SwinIR
from tests.conftest import make_png_folder
from tests.models.test_interchange import _basicsr_state_dict

OWN = "tests.train.custom_arch:TinyNet"


def _same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def _released(folder, net, name="model_1.pt"):
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model_meta": net.state_dict(), "model_task": net.state_dict()}, folder / name)
    return str(folder / name)


def _options(folder, arch, kwargs):
    (folder / "options.json").write_text(
        json.dumps({"config": {}, "resolved": {"model": {"arch": arch, "kwargs": kwargs}}})
    )


@pytest.fixture
def own_run(tmp_path):
    """A real run of one's own architecture (TinyNet, width 3): its folder (options.json, model_1.pt, last.pt)."""
    from dil_fast.train import TrainConfig, Trainer

    make_png_folder(tmp_path / "train", n=2, size=24)
    make_png_folder(tmp_path / "test", n=1, size=24, seed=3)
    cfg = TrainConfig(
        ckpt_save=str(tmp_path / "run"),
        trainset=str(tmp_path / "train"),
        testset=str(tmp_path / "test"),
        arch=OWN,
        arch_kwargs='{"width": 3}',
        patch_size=16,
        batch_size=1,
        total_epoch=1,
        num_workers=0,
        progress=False,
    )
    assert Trainer(cfg).run() == 0
    return tmp_path / "run"


def test_ones_own_architecture_needs_the_flag_then_takes_the_runs_kwargs(own_run, tmp_path, capsys):
    path = str(own_run / "model_1.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint("m", path, run_folder=True)
    msg = str(info.value)
    assert msg == f"{path}: it was trained with --arch {OWN}; pass --arch {OWN} to rebuild it (dil_fast does not " + (
        "import code a checkpoint names)"
    )
    ck = load_checkpoint("m", path, arch=OWN, run_folder=True)
    assert ck.arch == OWN and ck.kwargs == {"width": 3} and ck.described_by == str(own_run / "options.json")
    assert ck.model.a.out_channels == 3
    assert ck.config is not None and ck.config["arch"] == OWN  # the run's config (a sweep's training range)
    # without the run folder (the API default) the file itself names the network (model_config: no
    # registered architecture recognises its weights), and the flag is still needed to import it
    with pytest.raises(CheckpointError, match=f"pass --arch {OWN} to rebuild it"):
        load_checkpoint("m", path)
    assert load_checkpoint("m", path, arch=OWN).kwargs == {"width": 3}
    bare = torch.load(path, weights_only=True)
    del bare["model_config"]
    torch.save(bare, tmp_path / "bare.pt")  # a file without it: its weights alone do not say how to build it
    with pytest.raises(CheckpointError, match="not a network dil_fast knows"):
        load_checkpoint("m", str(tmp_path / "bare.pt"))

    # the eval command: one error line naming the flag, then a run with it
    make_png_folder(tmp_path / "imgs", n=1, size=24, seed=4)
    argv = ["eval", "--device", "cpu", "--ckpt", path, "--testset", str(tmp_path / "imgs"), "--level", "10"]
    parser = argparse.ArgumentParser(prog="dil-fast")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    with pytest.raises(CheckpointError, match=f"pass --arch {OWN} to rebuild it"):
        run_eval(parser.parse_args(argv + ["--save", str(tmp_path / "e0")]))
    assert run_eval(parser.parse_args(argv + ["--save", str(tmp_path / "e1"), "--arch", OWN])) == 0
    assert f"model_1: {OWN} {{'width': 3}} (from {own_run / 'options.json'})" in capsys.readouterr().out


def test_a_registered_architecture_is_rebuilt_with_the_kwargs_its_weights_do_not_show(tmp_path):
    kwargs = {"img_size": 8, "embed_dim": 8, "depths": [1], "num_heads": [2], "window_size": 4, "img_range": 255.0}
    net = SwinIR(**kwargs)
    run = tmp_path / "run"
    path = _released(run, net)
    _options(run, "swinir", kwargs)
    ck = load_checkpoint("s", path, run_folder=True)
    assert ck.arch == "swinir" and ck.model.img_range == 255.0 and ck.described_by.endswith("options.json")
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(ck.model.eval()(x), net.eval()(x))
    assert load_checkpoint("s", path).model.img_range == 1.0  # from the keys alone: the default


def test_last_pt_records_the_network_when_there_is_no_options_json(tmp_path):
    run = tmp_path / "run"
    net = RRDBNet(nf=4, nb=1, gc=2)
    path = _released(run, net, "model_3.pt")
    torch.save(
        {
            "format": "dil_fast.train_state",
            "model_config": {"arch": "rrdb", "kwargs": {"in_nc": 3, "out_nc": 3, "nf": 4, "nb": 1, "gc": 2}},
            "models": {"model_meta": net.state_dict(), "model_task": net.state_dict()},
        },
        run / "last.pt",
    )
    assert run_folder_model(path)[0] == str(run / "last.pt")
    ck = load_checkpoint("r", path, run_folder=True)
    assert ck.arch == "rrdb" and ck.described_by == str(run / "last.pt") and _same(ck.model, net)
    assert run_folder_model(str(run / "last.pt")) is None  # a training state describes itself


def test_weights_the_record_does_not_fit_are_read_from_their_keys(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    _options(run, OWN, {"width": 3})
    torch.save({"params_ema": _basicsr_state_dict(in_ch=12, nf=4, nb=1, gc=2)}, run / "RealESRGAN_x2.pth")
    ck = load_checkpoint("x", str(run / "RealESRGAN_x2.pth"), run_folder=True)
    assert ck.arch == "rrdb_basicsr" and ck.model.upscale == 2 and ck.described_by is None
    # --arch naming another network than the run's: the record is not used
    net = RRDBNet(nf=4, nb=1, gc=2)
    path = _released(run, net, "model_2.pt")
    ck = load_checkpoint("r", path, arch="rrdb", run_folder=True)
    assert ck.arch == "rrdb" and ck.described_by is None and _same(ck.model, net)
    # an options.json that records no network (an API run with its own module) is no record
    (run / "options.json").write_text(json.dumps({"config": {}, "resolved": {"model": "TinyNet"}}))
    assert run_folder_model(path) is None
