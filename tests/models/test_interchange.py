"""BasicSR / Real-ESRGAN <-> dil_fast RRDBNet checkpoint interchange.

The BasicSR side is re-stated here from ``basicsr/archs/rrdbnet_arch.py``: its parameter names and
shapes (``_basicsr_state_dict``) and its forward at scales 1, 2 and 4 as a plain function over that
dict (``_basicsr_rrdbnet_forward``, with BasicSR's ``pixel_unshuffle`` as a view / permute /
reshape), so the conversion and ``rrdb_basicsr`` are checked against the other network's math, not
against themselves.
"""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

from dil_fast.models.interchange import (
    basicsr_to_dil,
    detect_layout,
    dil_to_basicsr,
    extract_state_dict,
    write_checkpoint,
)
from dil_fast.models.rrdb import RRDBNet, RRDBNetX4, build_rrdb, infer_rrdb_config
from tests.conftest import assert_close_verbose

NF, NB, GC = 8, 2, 4


def _basicsr_state_dict(in_ch=3, out_ch=3, nf=NF, nb=NB, gc=GC, seed=0) -> dict:
    """Random weights under BasicSR RRDBNet's names and shapes (``num_in_ch`` already unshuffled)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"conv_first": (nf, in_ch)}
    for i in range(nb):
        for k in (1, 2, 3):
            for j in range(1, 6):
                shapes[f"body.{i}.rdb{k}.conv{j}"] = (nf if j == 5 else gc, nf + (j - 1) * gc)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        shapes[name] = (nf, nf)
    shapes["conv_last"] = (out_ch, nf)
    sd = {}
    for name, (cout, cin) in shapes.items():
        sd[f"{name}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * (0.5 / (cin * 9) ** 0.5)
        sd[f"{name}.bias"] = torch.randn(cout, generator=g) * 0.05
    return sd


def _basicsr_pixel_unshuffle(x: torch.Tensor, f: int) -> torch.Tensor:
    """BasicSR's ``arch_util.pixel_unshuffle``: ``[N, C, fh, fw] -> [N, C*f*f, h, w]``, channel ``c*f*f + i*f + j``
    holding pixel ``(f*y + i, f*x + j)`` of channel ``c``."""
    n, c, hh, ww = x.shape
    assert hh % f == 0 and ww % f == 0, "BasicSR's pixel_unshuffle asserts divisible sides"
    return x.view(n, c, hh // f, f, ww // f, f).permute(0, 1, 3, 5, 2, 4).reshape(n, c * f * f, hh // f, ww // f)


def _basicsr_rrdbnet_forward(p: dict, x: torch.Tensor, nb: int, scale: int = 4) -> torch.Tensor:
    """BasicSR ``RRDBNet(scale=scale).forward`` over its named weights ``p``: ``[N, C, H, W] -> [N, C', sH, sW]``
    (scale 2 / 1 pixel-unshuffle the input by 2 / 4 first)."""

    def conv(name, t):
        return F.conv2d(t, p[f"{name}.weight"], p[f"{name}.bias"], stride=1, padding=1)

    def lrelu(t):
        return F.leaky_relu(t, negative_slope=0.2)

    def dense_block(prefix, t):
        feats = [t]
        for j in range(1, 5):
            feats.append(lrelu(conv(f"{prefix}.conv{j}", torch.cat(feats, 1))))
        return conv(f"{prefix}.conv5", torch.cat(feats, 1)) * 0.2 + t

    if scale in (1, 2):
        x = _basicsr_pixel_unshuffle(x, 4 // scale)
    feat = conv("conv_first", x)
    body = feat
    for i in range(nb):
        out = body
        for k in (1, 2, 3):
            out = dense_block(f"body.{i}.rdb{k}", out)
        body = out * 0.2 + body
    feat = feat + conv("conv_body", body)
    feat = lrelu(conv("conv_up1", F.interpolate(feat, scale_factor=2, mode="nearest")))
    feat = lrelu(conv("conv_up2", F.interpolate(feat, scale_factor=2, mode="nearest")))
    return conv("conv_last", lrelu(conv("conv_hr", feat)))


def _assert_same_tensors(actual: dict, expected: dict) -> None:
    assert list(actual) == list(expected)
    for key in expected:
        assert actual[key] is expected[key], key  # re-keyed, never copied


def test_round_trip_is_bitwise():
    model = RRDBNetX4(3, 3, nf=NF, nb=NB, gc=GC)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    sd = model.state_dict()
    bsr = dil_to_basicsr(sd)
    assert sorted(bsr) == sorted(_basicsr_state_dict())
    assert bsr["conv_body.weight"] is sd["trunk_conv.weight"]
    assert bsr["body.1.rdb3.conv5.bias"] is sd["RRDB_trunk.1.RDB3.conv5.bias"]
    assert bsr["conv_hr.weight"] is sd["HRconv.weight"]
    back = basicsr_to_dil(bsr)
    assert list(back) == list(sd)
    for key in sd:
        assert torch.equal(back[key], sd[key]), key
        assert back[key].dtype == sd[key].dtype


@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (2, 3, 9, 4)], ids=["1x5x7", "2x9x4"])
def test_converted_weights_match_basicsr_forward(shape):
    bsr = _basicsr_state_dict(seed=1)
    model = RRDBNetX4(3, 3, nf=NF, nb=NB, gc=GC).eval()
    model.load_state_dict(basicsr_to_dil(bsr), strict=True)
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = _basicsr_rrdbnet_forward(bsr, x, NB)
        actual = model(x)
    assert actual.shape == (shape[0], 3, 4 * shape[2], 4 * shape[3])
    assert expected.abs().max() > 0.05  # a non-trivial output, so a wrong wiring shows
    assert_close_verbose(actual, expected, atol=1e-6, rtol=0, name="RRDBNetX4 vs BasicSR forward")


def test_params_ema_preferred_over_params():
    plain, ema = _basicsr_state_dict(seed=3), _basicsr_state_dict(seed=4)
    sd, layout = extract_state_dict({"params": plain, "params_ema": ema})
    assert layout == "basicsr"
    assert sd["trunk_conv.weight"] is ema["conv_body.weight"]
    _assert_same_tensors(sd, basicsr_to_dil(ema))
    sd, layout = extract_state_dict({"params": plain})
    assert layout == "basicsr"
    _assert_same_tensors(sd, basicsr_to_dil(plain))
    assert detect_layout({"params_ema": ema}) == detect_layout(ema) == "basicsr"


def test_released_layout_takes_the_meta_network():
    meta = RRDBNet(3, 3, nf=NF, nb=NB, gc=GC).state_dict()
    task = RRDBNet(3, 3, nf=NF, nb=NB, gc=GC).state_dict()
    sd, layout = extract_state_dict({"model_meta": meta, "model_task": task})
    assert layout == "dil"
    _assert_same_tensors(sd, meta)
    assert detect_layout(meta) == "dil"
    model = build_rrdb(infer_rrdb_config(sd))
    model.load_state_dict(sd, strict=True)


def test_module_prefix():
    dil = RRDBNetX4(3, 3, nf=NF, nb=NB, gc=GC).state_dict()
    bsr = _basicsr_state_dict(seed=5)
    prefixed_dil = {f"module.{k}": v for k, v in dil.items()}
    prefixed_bsr = {f"module.{k}": v for k, v in bsr.items()}
    assert detect_layout(prefixed_dil) == "dil"
    assert detect_layout({"model_meta": prefixed_dil, "model_task": prefixed_dil}) == "dil"
    assert detect_layout({"params_ema": prefixed_bsr}) == "basicsr"
    _assert_same_tensors(extract_state_dict(prefixed_dil)[0], dil)
    _assert_same_tensors(extract_state_dict({"model_meta": prefixed_dil})[0], dil)
    _assert_same_tensors(extract_state_dict({"params": prefixed_bsr})[0], basicsr_to_dil(bsr))
    _assert_same_tensors(dil_to_basicsr(prefixed_dil), dil_to_basicsr(dil))


@pytest.mark.parametrize(
    "obj, got",
    [
        ({"foo.weight": torch.zeros(1), "bar.bias": torch.zeros(1)}, "got: foo.weight, bar.bias"),
        ({"params": {"encoder.0.weight": torch.zeros(1)}}, "got: encoder.0.weight"),
        ({f"layer{i}.weight": torch.zeros(1) for i in range(12)}, "layer7.weight ... (12 keys)"),
        ([torch.zeros(1)], "got a list, not a dict"),
    ],
    ids=["unknown", "unknown-under-params", "many-keys", "not-a-dict"],
)
def test_unknown_layout_is_one_line_naming_expected_keys(obj, got):
    for fn in (detect_layout, extract_state_dict):
        with pytest.raises(ValueError) as info:
            fn(obj)
        msg = str(info.value)
        assert "\n" not in msg
        assert msg.startswith("expected RRDBNet keys (conv_first.weight, RRDB_trunk.0.RDB1.conv1.weight")
        assert "BasicSR's conv_first.weight, body.0.rdb1.conv1.weight" in msg
        assert got in msg


@pytest.mark.parametrize("scale, in_ch", [(1, 48), (2, 12)], ids=["scale1", "scale2"])
def test_pixel_unshuffle_models_do_not_rename_onto_rrdbnetx4(scale, in_ch):
    """The renaming serves RRDBNetX4; scales 1 / 2 load as rrdb_basicsr (tests/models/test_rrdb_basicsr.py)."""
    bsr = _basicsr_state_dict(in_ch=in_ch, seed=6)
    assert detect_layout(bsr) == "basicsr"
    for call in (lambda: basicsr_to_dil(bsr), lambda: extract_state_dict({"params_ema": bsr})):
        with pytest.raises(ValueError) as info:
            call()
        msg = str(info.value)
        assert "\n" not in msg
        assert f"scale {scale} (conv_first takes {in_ch} input channels for 3 output channels)" in msg
        assert "needs BasicSR's pixel-unshuffle RRDBNet (dil_fast's rrdb_basicsr" in msg
        assert "not dil_fast's same-size RRDBNet" in msg
    with pytest.raises(ValueError, match="pixel-unshuffle RRDBNet"):
        basicsr_to_dil(_basicsr_state_dict(seed=6), scale=scale)
    # an explicit scale=4 overrides the channel heuristic
    assert basicsr_to_dil(bsr, scale=4)["conv_first.weight"].shape[1] == in_ch
    with pytest.raises(ValueError, match="scale must be 1, 2 or 4"):
        basicsr_to_dil(bsr, scale=3)


def test_same_size_rrdbnet_has_no_basicsr_counterpart():
    sd = RRDBNet(3, 3, nf=NF, nb=NB, gc=GC).state_dict()
    for call in (lambda: dil_to_basicsr(sd), lambda: write_checkpoint(sd, "basicsr")):
        with pytest.raises(ValueError, match="same-size RRDBNet .* has no BasicSR counterpart") as info:
            call()
        assert "\n" not in str(info.value)
    no_up = {k: v for k, v in _basicsr_state_dict().items() if not k.startswith("conv_up")}
    with pytest.raises(ValueError, match="no conv_up1/conv_up2"):
        basicsr_to_dil(no_up)


def test_unmapped_keys_refused():
    bsr = dict(_basicsr_state_dict(), **{"body.0.rdb1.conv6.weight": torch.zeros(1), "num_batches": torch.zeros(1)})
    with pytest.raises(
        ValueError,
        match=r"^BasicSR state_dict has keys that are not RRDBNet parameters: "
        r"body\.0\.rdb1\.conv6\.weight, num_batches$",
    ):
        basicsr_to_dil(bsr)
    dil = dict(RRDBNetX4(3, 3, nf=NF, nb=1, gc=GC).state_dict(), extra=torch.zeros(1))
    for call in (lambda: dil_to_basicsr(dil), lambda: write_checkpoint(dil, "dil")):
        with pytest.raises(ValueError, match="^dil state_dict has keys that are not RRDBNet parameters: extra$"):
            call()


def _save_load(obj) -> dict:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, map_location="cpu", weights_only=True)


def test_write_checkpoint_formats_round_trip():
    model = RRDBNetX4(3, 3, nf=NF, nb=NB, gc=GC)
    sd = model.state_dict()
    released = write_checkpoint(sd, "dil")
    assert list(released) == ["model_meta", "model_task"]
    _assert_same_tensors(released["model_meta"], sd)
    _assert_same_tensors(released["model_task"], sd)
    basicsr = write_checkpoint({f"module.{k}": v for k, v in sd.items()}, "basicsr")
    assert list(basicsr) == ["params"]
    _assert_same_tensors(basicsr["params"], dil_to_basicsr(sd))
    for obj, layout in ((released, "dil"), (basicsr, "basicsr")):
        loaded, found = extract_state_dict(_save_load(obj))
        assert found == layout
        assert list(loaded) == list(sd)
        for key in sd:
            assert torch.equal(loaded[key], sd[key]), (layout, key)
    with pytest.raises(ValueError, match="^fmt must be 'dil' or 'basicsr', got 'onnx'$"):
        write_checkpoint(sd, "onnx")
    with pytest.raises(ValueError, match="takes a state_dict in dil_fast names"):
        write_checkpoint(_basicsr_state_dict(), "dil")
