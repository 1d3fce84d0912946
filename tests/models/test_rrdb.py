"""RRDBNet against an in-test re-statement of the released architecture."""

import pytest
import torch
import torch.nn as tnn
import torch.nn.functional as F

from dil_fast.models import RRDBNet, RRDBNetX4, build_rrdb, infer_rrdb_config


# ---- the released RRDB.py, re-stated from docs/released-trainer.md (not imported from the package) ----
class _RDB(tnn.Module):
    def __init__(self, nf, gc):
        super().__init__()
        self.conv1 = tnn.Conv2d(nf, gc, 3, 1, 1)
        self.conv2 = tnn.Conv2d(nf + gc, gc, 3, 1, 1)
        self.conv3 = tnn.Conv2d(nf + 2 * gc, gc, 3, 1, 1)
        self.conv4 = tnn.Conv2d(nf + 3 * gc, gc, 3, 1, 1)
        self.conv5 = tnn.Conv2d(nf + 4 * gc, nf, 3, 1, 1)
        self.lrelu = tnn.LeakyReLU(negative_slope=0.2, inplace=True)
        for m in [self.conv1, self.conv2, self.conv3, self.conv4, self.conv5]:
            tnn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            m.weight.data *= 0.1

    def forward(self, x):
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class _RRDB(tnn.Module):
    def __init__(self, nf, gc):
        super().__init__()
        self.RDB1, self.RDB2, self.RDB3 = _RDB(nf, gc), _RDB(nf, gc), _RDB(nf, gc)

    def forward(self, x):
        return self.RDB3(self.RDB2(self.RDB1(x))) * 0.2 + x


class _RefNet(tnn.Module):
    def __init__(self, in_nc, out_nc, nf, nb, gc=32, x4=False):
        super().__init__()
        self.x4 = x4
        self.conv_first = tnn.Conv2d(in_nc, nf, 3, 1, 1, bias=True)
        self.RRDB_trunk = tnn.Sequential(*[_RRDB(nf, gc) for _ in range(nb)])
        self.trunk_conv = tnn.Conv2d(nf, nf, 3, 1, 1, bias=True)
        if x4:
            self.upconv1 = tnn.Conv2d(nf, nf, 3, 1, 1, bias=True)
            self.upconv2 = tnn.Conv2d(nf, nf, 3, 1, 1, bias=True)
        self.HRconv = tnn.Conv2d(nf, nf, 3, 1, 1, bias=True)
        self.conv_last = tnn.Conv2d(nf, out_nc, 3, 1, 1, bias=True)
        self.lrelu = tnn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x):
        fea = self.conv_first(x)
        fea = fea + self.trunk_conv(self.RRDB_trunk(fea))
        if self.x4:
            fea = self.lrelu(self.upconv1(F.interpolate(fea, scale_factor=2, mode="nearest")))
            fea = self.lrelu(self.upconv2(F.interpolate(fea, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.HRconv(fea)))


def test_default_size_matches_reference_counts():
    m = RRDBNet(3, 3)
    sd = m.state_dict()
    assert len(sd) == 698
    assert sum(p.numel() for p in m.parameters()) == 16_624_131
    assert list(sd)[:2] == ["conv_first.weight", "conv_first.bias"]
    assert "RRDB_trunk.22.RDB3.conv5.bias" in sd and list(sd)[-2:] == ["conv_last.weight", "conv_last.bias"]


@pytest.mark.parametrize("cls,x4", [(RRDBNet, False), (RRDBNetX4, True)], ids=["x1", "x4"])
@pytest.mark.parametrize("nf,nb,gc", [(8, 2, 4), (16, 1, 8)], ids=["nf8nb2", "nf16nb1"])
def test_reference_checkpoint_loads_strict_and_matches(cls, x4, nf, nb, gc):
    torch.manual_seed(3)
    ref = _RefNet(3, 3, nf, nb, gc, x4=x4).eval()
    ours = cls(3, 3, nf=nf, nb=nb, gc=gc).eval()
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.rand(2, 3, 13, 17)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)
    if x4:
        assert ours(x).shape == (2, 3, 52, 68)


def test_initialisation_statistics_match_reference():
    """Same init scheme: RDB convs Kaiming(fan_in)*0.1, others PyTorch default (compare spreads)."""
    torch.manual_seed(0)
    ours = RRDBNet(3, 3, nf=32, nb=2, gc=16)
    torch.manual_seed(0)
    ref = _RefNet(3, 3, 32, 2, 16)
    for (name, a), (_, b) in zip(ours.state_dict().items(), ref.state_dict().items()):
        # identical construction order -> identical draws
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    w = ours.RRDB_trunk[0].RDB1.conv1.weight
    expected_std = 0.1 * (2.0 / (32 * 9)) ** 0.5
    assert abs(w.std().item() - expected_std) / expected_std < 0.15


def test_infer_config_roundtrip():
    for cls in (RRDBNet, RRDBNetX4):
        m = cls(3, 1, nf=12, nb=3, gc=5)
        cfg = infer_rrdb_config(m.state_dict())
        assert cfg == {"in_nc": 3, "out_nc": 1, "nf": 12, "nb": 3, "gc": 5, "x4": cls is RRDBNetX4}
        m2 = build_rrdb(cfg)
        m2.load_state_dict(m.state_dict(), strict=True)
    prefixed = {"module." + k: v for k, v in RRDBNet(3, 3, 8, 1, 4).state_dict().items()}
    assert infer_rrdb_config(prefixed)["nf"] == 8


def test_infer_config_rejects_other_models():
    with pytest.raises(ValueError, match="not an RRDBNet"):
        infer_rrdb_config(tnn.Conv2d(3, 3, 3).state_dict())


@pytest.mark.parametrize("bad", [dict(nf=0), dict(nb=-1), dict(gc=2.5)])
def test_invalid_sizes_raise(bad):
    with pytest.raises(ValueError):
        RRDBNet(3, 3, **{**dict(nf=8, nb=1, gc=4), **bad})


# ---- the bias-free network (Mohan et al., ICLR 2020): every convolution without its additive term ----
@pytest.mark.parametrize("cls", [RRDBNet, RRDBNetX4], ids=["x1", "x4"])
def test_bias_free_has_no_bias_and_is_positively_homogeneous(cls):
    torch.manual_seed(0)
    m = cls(3, 3, nf=8, nb=2, gc=4, bias=False).double().eval()
    sd = m.state_dict()
    assert not [k for k in sd if k.endswith(".bias")]
    assert len(sd) == len(cls(3, 3, nf=8, nb=2, gc=4).state_dict()) // 2
    assert all(isinstance(c, tnn.Conv2d) and c.bias is None for c in m.modules() if isinstance(c, tnn.Conv2d))
    x = torch.rand(2, 3, 11, 13, dtype=torch.float64)
    with torch.no_grad():
        for a in (0.25, 3.0):  # f(a x) = a f(x) for a > 0
            torch.testing.assert_close(m(a * x), a * m(x), rtol=1e-12, atol=1e-12)
        assert m(torch.zeros_like(x)).abs().max() == 0  # no bias: zero in, zero out


def test_bias_free_default_size_and_same_weight_draws():
    m = RRDBNet(3, 3, bias=False)
    assert len(m.state_dict()) == 349 and sum(p.numel() for p in m.parameters()) == 16_610_688
    # the weights are drawn as in the biased network up to the bias draws: the first conv matches
    torch.manual_seed(4)
    a = RRDBNet(3, 3, nf=8, nb=1, gc=4)
    torch.manual_seed(4)
    b = RRDBNet(3, 3, nf=8, nb=1, gc=4, bias=False)
    torch.testing.assert_close(a.conv_first.weight, b.conv_first.weight, rtol=0, atol=0)


@pytest.mark.parametrize("cls", [RRDBNet, RRDBNetX4], ids=["x1", "x4"])
def test_bias_free_config_roundtrip_and_checkpoint(cls, tmp_path):
    m = cls(3, 3, nf=8, nb=2, gc=4, bias=False)
    cfg = infer_rrdb_config(m.state_dict())
    assert cfg == {"in_nc": 3, "out_nc": 3, "nf": 8, "nb": 2, "gc": 4, "x4": cls is RRDBNetX4, "bias": False}
    assert m.config["bias"] is False and "bias" not in cls(3, 3, nf=8, nb=2, gc=4).config
    m2 = build_rrdb(cfg)
    m2.load_state_dict(m.state_dict(), strict=True)
    # the released checkpoint layout loads it back through the registry, like the biased network
    from dil_fast.models.registry import build_model, model_from_checkpoint

    path = tmp_path / "bf.pt"
    torch.save({"model_meta": m.state_dict(), "model_task": m.state_dict()}, path)
    loaded, arch, kwargs = model_from_checkpoint(torch.load(path), str(path))
    assert arch == ("rrdb_x4" if cls is RRDBNetX4 else "rrdb") and kwargs["bias"] is False
    x = torch.rand(1, 3, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), m(x), rtol=0, atol=0)
    # --arch_kwargs '{"bias": false}' builds it by name
    assert build_model("rrdb", {"nf": 8, "nb": 1, "gc": 4, "bias": False}).conv_first.bias is None


def test_bias_must_be_all_or_none():
    sd = RRDBNet(3, 3, nf=8, nb=1, gc=4).state_dict()
    del sd["conv_first.bias"]
    with pytest.raises(ValueError, match="either every convolution has one or none"):
        infer_rrdb_config(sd)
    with pytest.raises(ValueError, match="bias must be true or false"):
        RRDBNet(3, 3, nf=8, nb=1, gc=4, bias="no")


# ---- residual=True: a global input skip (the demo's network) ----
def test_residual_adds_the_input_to_the_released_networks_output():
    torch.manual_seed(0)
    plain = RRDBNet(3, 3, nf=8, nb=1, gc=4)
    res = RRDBNet(3, 3, nf=8, nb=1, gc=4, residual=True)
    res.load_state_dict(plain.state_dict(), strict=True)  # the same tensors: nothing new to learn
    assert res.config["residual"] is True and "residual" not in plain.config
    x = torch.rand(2, 3, 11, 13)
    with torch.no_grad():
        torch.testing.assert_close(res(x), plain(x) + x, rtol=0, atol=0)
    # infer_rrdb_config cannot see the skip: the weights are the released network's
    assert "residual" not in infer_rrdb_config(res.state_dict())


def test_residual_needs_a_same_size_network_and_a_bool():
    with pytest.raises(ValueError, match="same size and channels"):
        RRDBNetX4(3, 3, nf=8, nb=1, gc=4, residual=True)
    with pytest.raises(ValueError, match="same size and channels"):
        RRDBNet(1, 3, nf=8, nb=1, gc=4, residual=True)
    with pytest.raises(ValueError, match="residual must be true or false"):
        RRDBNet(3, 3, nf=8, nb=1, gc=4, residual=1)


def test_checkpoints_carry_the_spec_only_when_the_weights_would_mislead(tmp_path):
    from dil_fast import checkpoints
    from dil_fast.models.registry import model_from_checkpoint, model_spec, spec_to_carry

    kw = {"nf": 8, "nb": 1, "gc": 4}
    plain, res, bf = RRDBNet(**kw), RRDBNet(**kw, residual=True), RRDBNet(**kw, bias=False)
    assert spec_to_carry(model_spec("rrdb", kw), plain.state_dict()) is None
    assert spec_to_carry(model_spec("rrdb", {**kw, "bias": True}), plain.state_dict()) is None  # a default, said
    assert spec_to_carry(model_spec("rrdb", {**kw, "bias": False}), bf.state_dict()) is None  # seen in the keys
    carried = spec_to_carry(model_spec("rrdb", {**kw, "residual": True}), res.state_dict())
    assert carried == model_spec("rrdb", {**kw, "residual": True})
    ck = checkpoints.released_checkpoint(res.state_dict(), model_config=carried)
    assert set(ck) == {"model_meta", "model_task", "model_config"}
    torch.save(ck, tmp_path / "model_3.pt")
    loaded, arch, kwargs = model_from_checkpoint(torch.load(tmp_path / "model_3.pt"), "model_3.pt")
    assert arch == "rrdb" and kwargs["residual"] is True
    x = torch.rand(1, 3, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), res(x), rtol=0, atol=0)
    # a released file without the entry is the released network, as before
    assert set(checkpoints.released_checkpoint(plain.state_dict())) == {"model_meta", "model_task"}
