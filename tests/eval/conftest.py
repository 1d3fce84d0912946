"""Tiny checkpoints and test folders for the eval tests (RRDB nf 4 nb 1 gc 2, its x4 twin, a tiny SwinIR)."""

from __future__ import annotations

import os

import pytest
import torch

from dil_fast.models.rrdb import RRDBNet, RRDBNetX4
from dil_fast.models.swinir import SwinIR

TINY_RRDB = dict(in_nc=3, out_nc=3, nf=4, nb=1, gc=2)
TINY_SWINIR = dict(
    img_size=8, embed_dim=12, depths=(2,), num_heads=(2,), window_size=4, mlp_ratio=2.0, upsampler="", upscale=1
)


@pytest.fixture
def rrdb_ckpt(tmp_path):
    """``(path, model)``: a released-layout checkpoint of a tiny RRDBNet."""
    torch.manual_seed(0)
    model = RRDBNet(**TINY_RRDB)
    path = tmp_path / "tiny.pt"
    torch.save({"model_meta": model.state_dict(), "model_task": model.state_dict()}, path)
    return str(path), model.eval()


@pytest.fixture
def x4_ckpt(tmp_path):
    """``(path, model)``: a BasicSR-wrapped (``params_ema``) tiny RRDBNetX4 in dil_fast's names."""
    torch.manual_seed(1)
    model = RRDBNetX4(**TINY_RRDB)
    path = tmp_path / "tiny_x4.pt"
    torch.save({"params_ema": model.state_dict()}, path)
    return str(path), model.eval()


@pytest.fixture
def swinir_ckpt(tmp_path):
    """``(path, model)``: an official-layout (``params``) tiny same-size SwinIR."""
    torch.manual_seed(2)
    model = SwinIR(**TINY_SWINIR)
    path = tmp_path / "swinir.pt"
    torch.save({"params": model.state_dict()}, path)
    return str(path), model.eval()


@pytest.fixture
def train_state_ckpt(tmp_path):
    """``(path, model)``: a dil_fast training state of a tiny RRDBNet trained on noise 5..20."""
    torch.manual_seed(3)
    model = RRDBNet(**TINY_RRDB)
    sd = model.state_dict()
    path = tmp_path / "last.pt"
    torch.save(
        {
            "format": "dil_fast.train_state",
            "version": 1,
            "config": {"levels": [5.0, 10.0, 15.0, 20.0]},
            "model_config": {"arch": "rrdb", "kwargs": {"nf": 4, "nb": 1, "gc": 2}},
            "models": {"model_meta": sd, "model_task": sd},
        },
        path,
    )
    return str(path), model.eval()


@pytest.fixture
def testset(png_folder):
    """A folder of three 24 x 24 PNGs."""
    return os.path.dirname(png_folder(n=3, size=24, seed=3, name="test")[0])
