"""BasicSR's RRDBNet at scales 1, 2 and 4 (``rrdb_basicsr``; scale 4 also as ``rrdb_x4``): recognised
from BasicSR / Real-ESRGAN keys, outputs bit-identical with BasicSR's forward (re-stated in
tests/models/test_interchange.py), and read by eval, restore, ``--resume`` and convert both ways."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dil_fast.cli import main
from dil_fast.data.images import image_to_tensor, read_image_rgb, tensor_to_uint8
from dil_fast.errors import CheckpointError
from dil_fast.models import ARCHS, RRDBNet, RRDBNetBasicSR, RRDBNetX4, SwinIR
from dil_fast.models.convert import convert
from dil_fast.models.registry import arch_from_state_dict, build_model, model_from_checkpoint
from tests.conftest import make_png_folder
from tests.models.test_interchange import _basicsr_rrdbnet_forward, _basicsr_state_dict

NF, NB, GC = 8, 2, 4
IN_CH = {1: 48, 2: 12, 4: 3}  # conv_first's input channels of a 3-channel BasicSR RRDBNet per scale


def _bsr(scale: int, seed: int = 0, **kw) -> dict:
    return _basicsr_state_dict(in_ch=IN_CH[scale], seed=seed, **kw)


def _same(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "scale, shape",
    [(1, (1, 3, 8, 12)), (1, (2, 3, 4, 16)), (2, (1, 3, 6, 10)), (2, (2, 3, 2, 14)), (4, (1, 3, 5, 7))],
    ids=["x1-8x12", "x1-b2-4x16", "x2-6x10", "x2-b2-2x14", "x4-5x7"],
)
def test_loaded_from_params_ema_it_is_bit_identical_to_basicsr(scale, shape):
    bsr = _bsr(scale, seed=scale)
    model, arch, kwargs = model_from_checkpoint({"params": _bsr(scale, seed=99), "params_ema": bsr}, "net.pth")
    assert arch == ("rrdb_x4" if scale == 4 else "rrdb_basicsr")
    assert model.upscale == scale and kwargs["nf"] == NF and kwargs["nb"] == NB and kwargs["gc"] == GC
    if scale != 4:
        assert kwargs["scale"] == scale and kwargs["in_nc"] == 3
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = _basicsr_rrdbnet_forward(bsr, x, NB, scale)
        actual = model.eval()(x)
    assert actual.shape == (shape[0], 3, scale * shape[2], scale * shape[3])
    assert expected.abs().max() > 0.01 and expected.std() > 1e-3  # non-trivial, so a wrong wiring shows
    assert torch.equal(actual, expected), f"max |diff| {(actual - expected).abs().max().item():.3e}"


def test_scale_4_built_by_name_is_bit_identical_too():
    bsr = _bsr(4, seed=4)
    model = RRDBNetBasicSR(nf=NF, nb=NB, gc=GC, scale=4).eval()
    model.load_state_dict(bsr, strict=True)
    x = torch.rand(1, 3, 5, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(x), _basicsr_rrdbnet_forward(bsr, x, NB, 4))


@pytest.mark.parametrize("scale, hw", [(1, (7, 10)), (1, (5, 3)), (2, (5, 9)), (1, (2, 3))], ids=str)
def test_other_sizes_are_padded_as_realesrgan_and_cropped_back(scale, hw):
    """BasicSR's network asserts divisible sides; RealESRGANer reflect-pads bottom/right to the
    unshuffle factor and crops the output: the same numbers here (replicate when too short to reflect)."""
    bsr = _bsr(scale, seed=11)
    model = RRDBNetBasicSR(nf=NF, nb=NB, gc=GC, scale=scale).eval()
    model.load_state_dict(bsr, strict=True)
    h, w = hw
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(3))
    f = 4 // scale
    pad = (0, -w % f, 0, -h % f)
    mode = "reflect" if pad[1] < w and pad[3] < h else "replicate"
    with torch.no_grad():
        expected = _basicsr_rrdbnet_forward(bsr, F.pad(x, pad, mode=mode), NB, scale)[..., : scale * h, : scale * w]
        actual = model(x)
    assert actual.shape == (1, 3, scale * h, scale * w)
    assert torch.equal(actual, expected)


def test_recognised_with_module_prefix_and_without_biases():
    bsr = {f"module.{k}": v for k, v in _bsr(2).items()}
    arch, kwargs, own = arch_from_state_dict(bsr)
    assert arch == "rrdb_basicsr" and "conv_first.weight" in own and kwargs["scale"] == 2
    bias_free = {k: v for k, v in _bsr(1).items() if k.endswith(".weight")}
    model, arch, kwargs = model_from_checkpoint({"params": bias_free}, "bf.pth")
    assert arch == "rrdb_basicsr" and kwargs["bias"] is False and kwargs["scale"] == 1
    assert not any(k.endswith(".bias") for k in model.state_dict())
    # a one-channel (grayscale) BasicSR model of scale 2: conv_first takes 4 channels for 1 output
    gray = _basicsr_state_dict(in_ch=4, out_ch=1)
    assert arch_from_state_dict(gray)[1] == {"in_nc": 1, "out_nc": 1, "nf": NF, "nb": NB, "gc": GC, "scale": 2}


def test_other_rrdbs_keep_their_architectures():
    same_size = RRDBNet(nf=4, nb=1, gc=2).state_dict()
    x4 = RRDBNetX4(nf=4, nb=1, gc=2).state_dict()
    assert arch_from_state_dict(same_size)[0] == "rrdb"
    assert arch_from_state_dict(x4)[0] == "rrdb_x4"
    assert arch_from_state_dict(_bsr(4))[0] == "rrdb_x4"
    with pytest.raises(ValueError, match="holds a rrdb_basicsr network, not --arch rrdb_x4"):
        model_from_checkpoint({"params": _bsr(2)}, "x2.pth", arch="rrdb_x4")
    # an explicit scale overrides the channel reading (a scale-4 model with 12 input channels)
    model, arch, kwargs = model_from_checkpoint({"params": _bsr(2)}, "x.pth", arch_kwargs={"scale": 4, "in_nc": 12})
    assert arch == "rrdb_basicsr" and model.upscale == 4


def test_constructor_checks_and_registry_facts():
    for bad in ({"scale": 3}, {"scale": True}, {"nf": 0}, {"bias": "no"}):
        with pytest.raises(ValueError, match="RRDBNetBasicSR: "):
            RRDBNetBasicSR(**bad)
    net = build_model("rrdb_basicsr", {"nf": 4, "nb": 1, "gc": 2, "scale": 2})
    assert net.upscale == 2 and net.conv_first.in_channels == 12
    assert ARCHS["rrdb_basicsr"].size_flags == ("nf", "nb", "gc")
    assert ARCHS.where(lambda e: e.facts.get("basicsr") is not None) == ("rrdb_x4", "rrdb_basicsr", "swinir")
    x = torch.rand(2, 3, 5, 7, requires_grad=True)  # training: forward and backward through the padding
    net.train()(x).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# ------------------------------------------------------------------------------------------- convert
@pytest.mark.parametrize("scale", [1, 2, 4])
def test_convert_both_ways_keeps_every_tensor(scale, tmp_path):
    bsr = _bsr(scale, seed=20 + scale)
    torch.save({"params_ema": bsr}, tmp_path / "in.pth")
    arch = convert(str(tmp_path / "in.pth"), str(tmp_path / "d.pt"), "dil")
    assert arch == ("rrdb_x4" if scale == 4 else "rrdb_basicsr")
    dil = torch.load(tmp_path / "d.pt", weights_only=True)
    assert list(dil) == ["model_meta", "model_task"]
    assert convert(str(tmp_path / "d.pt"), str(tmp_path / "b.pth"), "basicsr") == arch
    back = torch.load(tmp_path / "b.pth", weights_only=True)
    assert list(back) == ["params"] and _same(back["params"], bsr)
    model, again, _ = model_from_checkpoint(dil, "d.pt")
    assert again == arch and model.upscale == scale


def test_convert_swinir_to_basicsr_keeps_the_official_names(tmp_path):
    net = SwinIR(
        img_size=8, embed_dim=8, depths=(2,), num_heads=(2,), window_size=4, upscale=2, upsampler="pixelshuffle"
    )
    torch.save({"model_meta": net.state_dict(), "model_task": net.state_dict()}, tmp_path / "s.pt")
    assert convert(str(tmp_path / "s.pt"), str(tmp_path / "s.pth"), "basicsr") == "swinir"
    out = torch.load(tmp_path / "s.pth", weights_only=True)
    assert list(out) == ["params"] and _same(out["params"], net.state_dict())
    assert any(k.endswith("attn_mask") for k in out["params"])  # the shifted block's mask, as BasicSR keeps it


def test_convert_refuses_a_same_size_rrdb_for_basicsr_in_one_line(tmp_path, capsys):
    torch.save({"model_meta": RRDBNet(nf=4, nb=1, gc=2).state_dict()}, tmp_path / "x1.pt")
    with pytest.raises(CheckpointError, match=r"holds a rrdb network, which BasicSR does not have") as info:
        convert(str(tmp_path / "x1.pt"), str(tmp_path / "o.pth"), "basicsr")
    assert "(--to basicsr: rrdb_x4, rrdb_basicsr, swinir)" in str(info.value)
    rc = main(["convert", "--ckpt", str(tmp_path / "x1.pt"), "--to", "basicsr", "--out", str(tmp_path / "o.pth")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and not (tmp_path / "o.pth").exists()


# ------------------------------------------------------------------------------ eval, restore, resume
@pytest.fixture
def x2_pth(tmp_path):
    """``(path, state_dict)``: a Real-ESRGAN x2plus-type checkpoint (tiny)."""
    bsr = _bsr(2, seed=31)
    path = tmp_path / "RealESRGAN_x2_tiny.pth"
    torch.save({"params_ema": bsr}, path)
    return str(path), bsr


def test_restore_runs_a_scale_2_basicsr_model(x2_pth, tmp_path):
    path, bsr = x2_pth
    photos = tmp_path / "photos"
    make_png_folder(photos, n=1, size=9, seed=2)  # odd sides: padded and cropped back
    out = tmp_path / "out"
    rc = main(
        ["restore", "--device", "cpu", "--no_progress", "--ckpt", path, "--input", str(photos), "--output", str(out)]
    )
    assert rc == 0
    img = read_image_rgb(photos / "000000.png")
    got = read_image_rgb(out / "000000.png")
    assert got.shape == (18, 18, 3)
    model = RRDBNetBasicSR(nf=NF, nb=NB, gc=GC, scale=2).eval()
    model.load_state_dict(bsr)
    with torch.no_grad():
        want = tensor_to_uint8(model(image_to_tensor(img).unsqueeze(0))[0])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("scale", [1, 2])
def test_eval_scores_a_basicsr_model_at_its_scale(scale, tmp_path):
    torch.save({"params": _bsr(scale, seed=40)}, tmp_path / "m.pth")
    make_png_folder(tmp_path / "test", n=2, size=24, seed=1)
    argv = ["eval", "--device", "cpu", "--ckpt", str(tmp_path / "m.pth"), "--testset", str(tmp_path / "test")]
    argv += ["--save", str(tmp_path / "res")] + (["--level", "10"] if scale == 1 else ["--confounders", "bicubic:2"])
    assert main(argv) == 0
    assert (tmp_path / "res" / "results.csv").exists()
    assert read_image_rgb(tmp_path / "res" / "000000.png").shape == (24, 24, 3)


@pytest.mark.parametrize("scale", [1, 2])
def test_resume_takes_the_weights_of_a_basicsr_model(scale, tmp_path):
    from dil_fast.train import TrainConfig, Trainer

    make_png_folder(tmp_path / "train", n=4, size=32)
    make_png_folder(tmp_path / "test", n=1, size=24, seed=3)
    bsr = _bsr(scale, seed=50)
    torch.save({"params_ema": bsr}, tmp_path / "b.pth")
    cfg = TrainConfig(
        ckpt_save=str(tmp_path / "run"),
        trainset=str(tmp_path / "train"),
        testset=str(tmp_path / "test"),
        confounders="noise:5,10",
        scale=scale,
        resume=str(tmp_path / "b.pth"),
        patch_size=16,
        batch_size=1,
        total_epoch=1,
        num_workers=0,
        progress=False,
    )
    trainer = Trainer(cfg).open()
    try:
        assert type(trainer.meta_model).__name__ == "RRDBNetBasicSR" and trainer.meta_model.upscale == scale
        assert _same(trainer.meta_model.state_dict(), bsr)
    finally:
        trainer.close()
