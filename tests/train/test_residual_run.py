"""A network with a global input skip (``--arch_kwargs '{"residual": true}'``, the demo's) from the
command line: its model_N.pt carries the spec its weights cannot tell, so restore, convert and
--resume rebuild the skip from the file alone, wherever it is; the released network's files keep
exactly the released keys."""

from __future__ import annotations

import shutil

import torch

from dil_fast.cli import main
from dil_fast.data.images import image_to_tensor, read_image_rgb, tensor_to_uint8
from dil_fast.models import RRDBNet
from tests.conftest import make_png_folder
from tests.helpers import train_argv

RESIDUAL = ("--arch_kwargs", '{"residual": true}')


def _restored(ckpt, images, out) -> list:
    assert main(["restore", "--ckpt", str(ckpt), "--input", str(images), "--output", str(out), "--no_progress"]) == 0
    return [read_image_rgb(p) for p in sorted(out.iterdir())]


def test_a_residual_runs_model_file_says_so_anywhere(tmp_path):
    make_png_folder(tmp_path / "train", n=6, size=24, seed=1)
    make_png_folder(tmp_path / "test", n=2, size=20, seed=2)
    assert main(train_argv(tmp_path / "train", tmp_path / "test", tmp_path / "res", *RESIDUAL)) == 0
    assert main(train_argv(tmp_path / "train", tmp_path / "test", tmp_path / "plain")) == 0
    plain = torch.load(tmp_path / "plain" / "model_1.pt", weights_only=True)
    assert set(plain) == {"model_meta", "model_task"}  # the released layout, untouched
    ck = torch.load(tmp_path / "res" / "model_1.pt", weights_only=True)
    assert ck["model_config"]["arch"] == "rrdb" and ck["model_config"]["kwargs"]["residual"] is True
    # the network the file holds, built by hand: input + the released network's output
    net = RRDBNet(3, 3, nf=8, nb=1, gc=4, residual=True)
    net.load_state_dict(ck["model_meta"])
    inputs = sorted((tmp_path / "test").iterdir())
    with torch.no_grad():
        expect = [tensor_to_uint8(net(image_to_tensor(read_image_rgb(p))[None])[0]) for p in inputs]
    # moved out of its run folder (no options.json / last.pt beside it): the file alone says it
    (tmp_path / "moved").mkdir()
    shutil.copy(tmp_path / "res" / "model_1.pt", tmp_path / "moved" / "model_1.pt")
    got = _restored(tmp_path / "moved" / "model_1.pt", tmp_path / "test", tmp_path / "out_moved")
    assert all((a == b).all() for a, b in zip(got, expect))
    # without the entry the same weights are read as the released network: different outputs
    torch.save({k: v for k, v in ck.items() if k != "model_config"}, tmp_path / "moved" / "bare.pt")
    bare = _restored(tmp_path / "moved" / "bare.pt", tmp_path / "test", tmp_path / "out_bare")
    assert any((a != b).any() for a, b in zip(bare, expect))
    # convert --to dil keeps it, and --resume from the weights-only file trains the residual network
    assert main(["convert", "--ckpt", str(tmp_path / "moved" / "model_1.pt"), "--to", "dil", "--out",
                 str(tmp_path / "conv.pt")]) == 0  # fmt: skip
    assert torch.load(tmp_path / "conv.pt", weights_only=True)["model_config"] == ck["model_config"]
    resumed = train_argv(
        tmp_path / "train", tmp_path / "test", tmp_path / "again", "--resume", str(tmp_path / "conv.pt")
    )
    assert main(resumed) == 0
    again = torch.load(tmp_path / "again" / "last.pt", weights_only=True)
    assert again["model_config"]["kwargs"]["residual"] is True
