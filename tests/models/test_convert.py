"""dil-fast convert, and the registry's checkpoint -> model for every layout."""

from __future__ import annotations

import pytest
import torch

from dil_fast.cli import main
from dil_fast.errors import CheckpointError
from dil_fast.models import RRDBNet, RRDBNetX4, SwinIR
from dil_fast.models.convert import convert
from dil_fast.models.registry import model_from_checkpoint


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_convert_both_ways_keeps_the_weights(tmp_path):
    net = RRDBNetX4(nf=4, nb=2, gc=2)
    torch.save({"model_meta": net.state_dict(), "model_task": net.state_dict()}, tmp_path / "m.pt")
    assert convert(str(tmp_path / "m.pt"), str(tmp_path / "b.pth"), "basicsr") == "rrdb_x4"
    b = torch.load(tmp_path / "b.pth", weights_only=True)
    assert set(b) == {"params"} and "body.0.rdb1.conv1.weight" in b["params"]
    assert convert(str(tmp_path / "b.pth"), str(tmp_path / "d.pt"), "dil") == "rrdb_x4"
    back, arch, kw = model_from_checkpoint(torch.load(tmp_path / "d.pt", weights_only=True), "d.pt")
    assert arch == "rrdb_x4" and kw["nb"] == 2 and _same(back, net)


def test_convert_refuses_what_basicsr_cannot_hold(tmp_path):
    torch.save({"model_meta": RRDBNet(nf=4, nb=1, gc=2).state_dict()}, tmp_path / "x1.pt")
    with pytest.raises(CheckpointError, match="holds a rrdb network, which BasicSR does not have"):
        convert(str(tmp_path / "x1.pt"), str(tmp_path / "o.pth"), "basicsr")
    torch.save({"model_meta": {"foo.weight": torch.zeros(1)}}, tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="not a network dil_fast knows.*conv_first.weight"):
        convert(str(tmp_path / "junk.pt"), str(tmp_path / "o.pth"), "dil")


def test_official_swinir_params_rebuild_the_model():
    net = SwinIR(
        img_size=8, embed_dim=8, depths=(1,), num_heads=(2,), window_size=4, upscale=2, upsampler="pixelshuffle"
    )
    model, arch, kw = model_from_checkpoint({"params": net.state_dict()}, "swin.pth")
    assert arch == "swinir" and kw["upscale"] == 2 and _same(model, net)


def test_the_convert_command_writes_and_refuses_with_one_line(tmp_path, capsys):
    net = RRDBNetX4(nf=4, nb=1, gc=2)
    torch.save({"model_meta": net.state_dict(), "model_task": net.state_dict()}, tmp_path / "m.pt")
    assert main(["convert", "--ckpt", str(tmp_path / "m.pt"), "--to", "basicsr", "--out", str(tmp_path / "b.pth")]) == 0
    assert "rrdb_x4 in the basicsr layout" in capsys.readouterr().out
    assert set(torch.load(tmp_path / "b.pth", weights_only=True)) == {"params"}
    rc = main(["convert", "--ckpt", str(tmp_path / "none.pt"), "--to", "dil", "--out", str(tmp_path / "o.pt")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "none.pt" in err and not (tmp_path / "o.pt").exists()


class _Gadget:  # an object a weights-only load refuses
    pass


def test_a_checkpoint_that_carries_code_is_refused_in_a_sentence(tmp_path, capsys):
    torch.save({"model_meta": RRDBNet(nf=4, nb=1, gc=2).state_dict(), "extra": _Gadget()}, tmp_path / "code.pt")
    rc = main(["convert", "--ckpt", str(tmp_path / "code.pt"), "--to", "dil", "--out", str(tmp_path / "o.pt")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "refused: the file carries Python objects beyond tensors and plain containers" in err
    assert not (tmp_path / "o.pt").exists()
