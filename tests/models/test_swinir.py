"""SwinIR against an in-test, pixel-by-pixel re-statement of the official network
(JingyunLiang/SwinIR ``models/network_swinir.py``), its official parameter names, and the
torch.func paths the DIL variants take."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from dil_fast.models.swinir import DropPath, SwinIR, shifted_window_mask, swinir_config_from_state_dict
from tests.conftest import assert_close_verbose

TINY = dict(img_size=8, embed_dim=12, depths=(2,), num_heads=(2,), window_size=4, mlp_ratio=2.0, drop_path_rate=0.0)


def tiny(**overrides) -> SwinIR:
    return SwinIR(**{**TINY, **overrides})


# ---- the official block, restated one query pixel at a time (not imported from the package) ----
def reference_block(p: dict, x: torch.Tensor, h: int, w: int, *, window: int, shift: int, heads: int):
    """One Swin block with parameters ``p`` (names relative to the block) on tokens ``[B, h*w, C]``.

    Shifting the map by ``-shift`` and cutting it into windows means: the query at (r, c) sits at
    (r - shift, c - shift) mod (h, w) of the shifted map; its keys are the pixels of the shifted
    window holding it. A key is masked (-100) when exactly one of query and key wrapped around an
    edge on some axis (they were not neighbours). The bias of a pair is the table row of its
    in-window offset (dy, dx): (dy + window - 1) * (2 window - 1) + (dx + window - 1).
    """
    b, _, c = x.shape
    d = c // heads
    y = F.layer_norm(x, (c,), p["norm1.weight"], p["norm1.bias"]).reshape(b, h, w, c)
    qkv = F.linear(y, p["attn.qkv.weight"], p.get("attn.qkv.bias"))
    q, k, v = qkv[..., :c], qkv[..., c : 2 * c], qkv[..., 2 * c :]
    table = p["attn.relative_position_bias_table"]

    def wrapped_row(shifted_row):
        return shift > 0 and shifted_row >= h - shift

    def wrapped_col(shifted_col):
        return shift > 0 and shifted_col >= w - shift

    outputs = []
    for r in range(h):
        for col in range(w):
            sr, sc = (r - shift) % h, (col - shift) % w
            top, left = sr - sr % window, sc - sc % window
            keys = [(top + i, left + j) for i in range(window) for j in range(window)]
            rows = [(kr + shift) % h for kr, _ in keys]
            cols = [(kc + shift) % w for _, kc in keys]
            bias_rows = [(sr - kr + window - 1) * (2 * window - 1) + (sc - kc + window - 1) for kr, kc in keys]
            masked = torch.tensor(
                [(wrapped_row(sr) != wrapped_row(kr)) or (wrapped_col(sc) != wrapped_col(kc)) for kr, kc in keys],
                dtype=torch.bool,
            )
            heads_out = []
            for hd in range(heads):
                qh = q[:, r, col, hd * d : (hd + 1) * d]  # [B, d]
                kh = k[:, rows, cols, hd * d : (hd + 1) * d]  # [B, n, d]
                vh = v[:, rows, cols, hd * d : (hd + 1) * d]
                logits = (kh @ qh.unsqueeze(-1)).squeeze(-1) * d**-0.5 + table[bias_rows, hd]
                logits = logits + masked.to(logits.dtype) * -100.0
                heads_out.append((logits.softmax(-1).unsqueeze(-1) * vh).sum(1))
            outputs.append(torch.cat(heads_out, -1))
    attn = F.linear(torch.stack(outputs, 1), p["attn.proj.weight"], p["attn.proj.bias"])
    x = x + attn
    hidden = F.gelu(
        F.linear(F.layer_norm(x, (c,), p["norm2.weight"], p["norm2.bias"]), p["mlp.fc1.weight"], p["mlp.fc1.bias"])
    )
    return x + F.linear(hidden, p["mlp.fc2.weight"], p["mlp.fc2.bias"])


def reference_swinir(sd: dict, x: torch.Tensor, *, depths, heads, window, upsampler, upscale, rgb_mean):
    """The official forward ('1conv', patch_norm, no ape) from a state_dict, on ``[N, 3, H, W]``."""
    h, w = x.shape[-2:]
    x = F.pad(x, (0, (window - w % window) % window, 0, (window - h % window) % window), mode="reflect")
    mean = torch.tensor(rgb_mean).to(x.dtype).view(1, -1, 1, 1)  # official: a float32 tensor cast to the input
    x = x - mean
    hp, wp = x.shape[-2:]

    def conv(name, t):
        weight = sd[name + ".weight"]
        return F.conv2d(t, weight, sd[name + ".bias"], padding=weight.shape[-1] // 2)

    shallow = conv("conv_first", x)
    c = shallow.shape[1]
    tokens = F.layer_norm(
        shallow.flatten(2).transpose(1, 2), (c,), sd["patch_embed.norm.weight"], sd["patch_embed.norm.bias"]
    )
    for i, depth in enumerate(depths):
        group = tokens
        for j in range(depth):
            prefix = f"layers.{i}.residual_group.blocks.{j}."
            p = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
            group = reference_block(p, group, hp, wp, window=window, shift=window // 2 if j % 2 else 0, heads=heads[i])
        image = group.transpose(1, 2).reshape(-1, c, hp, wp)
        tokens = tokens + conv(f"layers.{i}.conv", image).flatten(2).transpose(1, 2)
    tokens = F.layer_norm(tokens, (c,), sd["norm.weight"], sd["norm.bias"])
    feat = conv("conv_after_body", tokens.transpose(1, 2).reshape(-1, c, hp, wp)) + shallow
    if upsampler == "":
        out = x + conv("conv_last", feat)
    else:  # pixelshuffle x2
        feat = F.leaky_relu(conv("conv_before_upsample.0", feat), 0.01)
        out = conv("conv_last", F.pixel_shuffle(conv("upsample.0", feat), 2))
    return (out + mean)[..., : h * upscale, : w * upscale]


# ------------------------------------------------------------------------------ (a) the block math
@pytest.mark.parametrize("size", [(8, 8), (12, 16)], ids=["img_size", "other_size"])
@pytest.mark.parametrize("j", [0, 1], ids=["unshifted", "shifted"])
def test_block_matches_pixelwise_reference(size, j):
    model = tiny().double()
    block = model.layers[0].residual_group.blocks[j]
    h, w = size
    x = torch.randn(2, h * w, 12, dtype=torch.double, requires_grad=True)
    params = dict(block.named_parameters())
    out = block(x, size)
    ref = reference_block(params, x, h, w, window=4, shift=2 * j, heads=2)
    assert_close_verbose(out, ref, atol=1e-12, rtol=1e-10, name="block output")

    names = [
        "attn.relative_position_bias_table",
        "attn.qkv.weight",
        "attn.proj.bias",
        "norm1.weight",
        "mlp.fc1.weight",
        "norm2.bias",
    ]
    cotangent = torch.randn_like(out)
    got = torch.autograd.grad(out, [x] + [params[n] for n in names], cotangent)
    want = torch.autograd.grad(ref, [x] + [params[n] for n in names], cotangent)
    for name, g, e in zip(["input"] + names, got, want):
        assert g.abs().sum() > 0, name
        assert_close_verbose(g, e, atol=1e-11, rtol=1e-9, name=f"grad {name}")


def test_shifted_block_masks_wrapped_pairs():
    """The shift matters: a shifted block differs from the same weights unshifted, and its mask has
    masked pairs exactly in the last window row / column."""
    mask = shifted_window_mask(8, 12, 4, 2)
    assert mask.shape == (6, 16, 16)
    has_masked = (mask != 0).flatten(1).any(1).tolist()
    assert has_masked == [False, False, True, True, True, True]
    assert set(mask.unique().tolist()) == {0.0, -100.0}


@pytest.mark.parametrize("upsampler,upscale", [("", 1), ("pixelshuffle", 2)])
def test_model_matches_reference_forward_and_grads(upsampler, upscale):
    torch.manual_seed(1)
    model = tiny(upsampler=upsampler, upscale=upscale).double()
    x = torch.rand(2, 3, 9, 13, dtype=torch.double, requires_grad=True)
    params = dict(model.named_parameters())
    out = model(x)
    assert out.shape == (2, 3, 9 * upscale, 13 * upscale)
    ref = reference_swinir(
        params,
        x,
        depths=(2,),
        heads=(2,),
        window=4,
        upsampler=upsampler,
        upscale=upscale,
        rgb_mean=(0.4488, 0.4371, 0.4040),
    )
    assert_close_verbose(out, ref, atol=1e-12, rtol=1e-10, name="output")
    names = [
        "conv_first.weight",
        "layers.0.residual_group.blocks.1.attn.relative_position_bias_table",
        "layers.0.conv.weight",
        "conv_last.bias",
    ]
    cotangent = torch.randn_like(out)
    got = torch.autograd.grad(out, [x] + [params[n] for n in names], cotangent)
    want = torch.autograd.grad(ref, [x] + [params[n] for n in names], cotangent)
    for name, g, e in zip(["input"] + names, got, want):
        assert_close_verbose(g, e, atol=1e-11, rtol=1e-9, name=f"grad {name}")


def test_img_range_and_grey_mean():
    """img_range scales the mean-shifted input; one channel has a zero mean (official)."""
    torch.manual_seed(2)
    a, b = tiny(in_chans=1, img_range=1.0), tiny(in_chans=1, img_range=255.0)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.mean, torch.zeros(1, 1, 1, 1))
    x = torch.rand(1, 1, 8, 8)
    with torch.no_grad():
        ya, yb = a(x), b(x)
        shallow = b.conv_first(x * 255.0)
        residual = b.conv_last(b.conv_after_body(b.forward_features(shallow)) + shallow)
        assert_close_verbose(yb, x + residual / 255.0, atol=1e-5, name="img_range 255")
    assert not torch.allclose(ya, yb)


# ------------------------------------------------------------------ (b) official names, round trip
def official_names(depths=(6, 6, 6, 6), upsampler="", resi="1conv"):
    """The official state_dict keys in order: a module's own tensors before its children's, so a
    shifted block's ``attn_mask`` comes first and the bias table before the index."""
    names = ["conv_first.weight", "conv_first.bias", "patch_embed.norm.weight", "patch_embed.norm.bias"]

    def convs(prefix):
        if resi == "1conv":
            return [f"{prefix}.weight", f"{prefix}.bias"]
        return [f"{prefix}.{i}.{t}" for i in (0, 2, 4) for t in ("weight", "bias")]

    for i, depth in enumerate(depths):
        for j in range(depth):
            p = f"layers.{i}.residual_group.blocks.{j}."
            names += [p + "attn_mask"] if j % 2 else []
            names += [
                p + n
                for n in (
                    "norm1.weight",
                    "norm1.bias",
                    "attn.relative_position_bias_table",
                    "attn.relative_position_index",
                    "attn.qkv.weight",
                    "attn.qkv.bias",
                    "attn.proj.weight",
                    "attn.proj.bias",
                    "norm2.weight",
                    "norm2.bias",
                    "mlp.fc1.weight",
                    "mlp.fc1.bias",
                    "mlp.fc2.weight",
                    "mlp.fc2.bias",
                )
            ]
        names += convs(f"layers.{i}.conv")
    names += ["norm.weight", "norm.bias"] + convs("conv_after_body")
    tail = {
        "": ["conv_last"],
        "pixelshuffle": ["conv_before_upsample.0", "upsample.0", "upsample.2", "conv_last"],
        "nearest+conv": ["conv_before_upsample.0", "conv_up1", "conv_up2", "conv_hr", "conv_last"],
    }[upsampler]
    return names + [f"{m}.{t}" for m in tail for t in ("weight", "bias")]


def test_default_config_has_official_names_and_shapes():
    model = SwinIR()
    sd = model.state_dict()
    assert list(sd) == official_names()
    buffers = [n for n, _ in model.named_buffers()]
    assert buffers == ["mean"] + [n for n in official_names() if n.endswith(("attn_mask", "relative_position_index"))]
    assert "mean" not in sd  # non-persistent: official checkpoints have no such key
    block = "layers.3.residual_group.blocks.5."
    shapes = {
        "attn.relative_position_bias_table": (169, 6),
        "attn.relative_position_index": (49, 49),
        "attn_mask": (100, 49, 49),
        "attn.qkv.weight": (288, 96),
        "mlp.fc1.weight": (384, 96),
        "mlp.fc2.weight": (96, 384),
    }
    for name, shape in shapes.items():
        assert tuple(sd[block + name].shape) == shape, name
    assert sd[block + "attn.relative_position_index"].dtype == torch.int64
    assert tuple(sd["conv_first.weight"].shape) == (96, 3, 3, 3)
    assert sum(p.numel() for p in model.parameters()) == 3_129_363


@pytest.mark.parametrize("upsampler,resi", [("pixelshuffle", "3conv"), ("nearest+conv", "1conv")])
def test_sr_config_names(upsampler, resi):
    model = SwinIR(
        img_size=16,
        embed_dim=16,
        depths=(2, 3),
        num_heads=(2, 4),
        window_size=4,
        upscale=4,
        upsampler=upsampler,
        resi_connection=resi,
    )
    assert list(model.state_dict()) == official_names((2, 3), upsampler, resi)


def test_state_dict_round_trip_strict():
    torch.manual_seed(3)
    src, dst = tiny(upsampler="pixelshuffle", upscale=2), tiny(upsampler="pixelshuffle", upscale=2)
    checkpoint = {"params": src.state_dict()}
    dst.load_state_dict(checkpoint["params"], strict=True)
    x = torch.rand(1, 3, 9, 13)
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))
    with pytest.raises(RuntimeError):
        tiny(upsampler="pixelshuffle", upscale=4).load_state_dict(checkpoint["params"], strict=True)


# ---------------------------------------------------------------------------- (c) upsampler shapes
@pytest.mark.parametrize(
    "upsampler,upscale",
    [
        ("", 1),
        ("pixelshuffle", 2),
        ("pixelshuffle", 3),
        ("pixelshuffle", 4),
        ("pixelshuffledirect", 2),
        ("pixelshuffledirect", 3),
        ("pixelshuffledirect", 4),
        ("nearest+conv", 4),
    ],
)
def test_upsampler_output_shape(upsampler, upscale):
    model = tiny(upsampler=upsampler, upscale=upscale)
    assert model.upscale == upscale
    with torch.no_grad():
        out = model(torch.rand(2, 3, 9, 13))
    assert out.shape == (2, 3, 9 * upscale, 13 * upscale)
    assert torch.isfinite(out).all()


def test_same_size_restoration_ignores_upscale():
    """upsampler='' with the default upscale=2 restores at the input size, as officially."""
    model = tiny(upscale=2)
    assert model.upscale == 1 and model(torch.rand(1, 3, 8, 8)).shape == (1, 3, 8, 8)
    assert tiny(upsampler=None).upsampler == ""


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(upsampler="pixelshuffle", upscale=5), "2\\^n or 3"),
        (dict(upsampler="nearest+conv", upscale=2), "upscale 4 only"),
        (dict(upsampler="bicubic"), "upsampler must be one of"),
        (dict(resi_connection="2conv"), "resi_connection"),
        (dict(num_heads=(5,)), "divisible"),
        (dict(depths=(2, 2)), "equally long"),
    ],
    ids=["ps_x5", "nearest_x2", "bad_upsampler", "bad_resi", "heads", "depths"],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kwargs)


# ---------------------------------------------------------------------------- (d) config inference
@pytest.mark.parametrize(
    "overrides",
    [
        dict(),
        dict(upsampler="pixelshuffle", upscale=4, resi_connection="3conv", depths=(2, 1), num_heads=(2, 3)),
        dict(upsampler="pixelshuffle", upscale=3, img_size=(8, 12)),
        dict(upsampler="pixelshuffledirect", upscale=3, in_chans=1, qkv_bias=False),
        dict(upsampler="nearest+conv", upscale=4, patch_norm=False, ape=True, mlp_ratio=4.0),
        dict(depths=(1,), window_size=2, img_size=6),
    ],
    ids=["denoise", "ps_x4_3conv", "ps_x3_nonsquare", "direct_x3_grey", "realsr_ape", "no_mask"],
)
def test_config_inference_round_trip(overrides):
    model = tiny(**overrides)
    cfg = swinir_config_from_state_dict({"params": {"module." + k: v for k, v in model.state_dict().items()}})
    expected = {
        **TINY,
        "in_chans": 3,
        "qkv_bias": True,
        "ape": False,
        "patch_norm": True,
        "upscale": 1,
        "upsampler": "",
        "resi_connection": "1conv",
        **overrides,
    }
    if "depths" in overrides and "num_heads" not in overrides:
        expected["num_heads"] = (2,)
    if overrides.get("img_size") == 6:  # no attn_mask, no ape: img_size leaves no trace
        expected["img_size"] = 64
    for key, value in cfg.items():
        assert value == expected[key], f"{key}: inferred {value!r}, built with {expected[key]!r}"
    rebuilt = SwinIR(**cfg)
    rebuilt.load_state_dict(model.state_dict(), strict=True)


def test_config_inference_rejects_other_dicts():
    from dil_fast.models import RRDBNet

    only_first_conv = {"params": {"conv_first.weight": torch.zeros(8, 3, 3, 3)}}
    for bad in ({}, RRDBNet(nf=8, nb=1, gc=4).state_dict(), only_first_conv, [1]):
        with pytest.raises(ValueError, match="not a SwinIR state_dict"):
            swinir_config_from_state_dict(bad)
    sd = tiny().state_dict()
    sd["layers.0.residual_group.blocks.0.attn.relative_position_bias_table"] = torch.zeros(50, 2)
    with pytest.raises(ValueError, match="relative_position_bias_table"):
        swinir_config_from_state_dict(sd)


# ----------------------------------------------------------------------------------- (e) padding
def test_padding_equals_manual_reflect_and_crop():
    """9x13 is padded (reflect, bottom/right) to 12x16, run, and cropped back."""
    torch.manual_seed(4)
    model = tiny(upsampler="pixelshuffledirect", upscale=2).eval()
    x = torch.rand(2, 3, 9, 13)
    padded = F.pad(x, (0, 3, 0, 3), mode="reflect")
    assert model.pad_to_window(x).shape == (2, 3, 12, 16) and model.pad_to_window(padded) is padded
    with torch.no_grad():
        assert_close_verbose(model(x), model(padded)[..., :18, :26], atol=0, rtol=0, name="pad + crop")


def test_other_size_recomputes_the_mask():
    """A model built for 8x8 run on 12x16 equals one built for 12x16 (which uses its buffer)."""
    torch.manual_seed(5)
    small, large = tiny().eval(), tiny(img_size=(12, 16)).eval()
    large.load_state_dict(dict(small.named_parameters()), strict=False)
    assert torch.equal(large.layers[0].residual_group.blocks[1].attn_mask, shifted_window_mask(12, 16, 4, 2))
    x = torch.rand(1, 3, 12, 16)
    with torch.no_grad():
        assert_close_verbose(small(x), large(x), atol=0, rtol=0, name="recomputed mask")


def test_default_img_size_builds_and_uses_padded_mask():
    """img_size 64, window 7 (the official defaults) pads to 70: the buffer is the 70x70 mask."""
    block = SwinIR(embed_dim=6, depths=(2,), num_heads=(1,)).layers[0].residual_group.blocks[1]
    assert block.mask_resolution == (70, 70)
    assert torch.equal(block.attn_mask, shifted_window_mask(70, 70, 7, 3))


# ------------------------------------------------------------------- (f) second order, torch.func
def as_function(model):
    """The model as a pure function ``(params in parameters() order, x) -> out``, the form
    dil_fast.meta.batched.FunctionalModel evaluates (looped) and vmaps (batched)."""
    names = [n for n, _ in model.named_parameters()]

    def run(params, x):
        return functional_call(model, dict(zip(names, params)), (x,))

    return run


def inner_outer_meta_gradient(model, params, x, y, alpha=0.5):
    """∇θ L(f_φ(x), y) with φ = θ − α ∇θ L(f_θ(x), y): one differentiable virtual step (looped path)."""
    run = as_function(model)
    inner = F.l1_loss(run(params, x), y)
    grads = torch.autograd.grad(inner, params, create_graph=True)
    phi = [p - alpha * g for p, g in zip(params, grads)]
    outer = F.mse_loss(run(phi, x), y)
    return torch.autograd.grad(outer, params)


def test_double_backward_matches_finite_difference():
    torch.manual_seed(6)
    model = tiny(upsampler="pixelshuffle", upscale=2).double()
    names = [n for n, _ in model.named_parameters()]
    theta = [p.detach().clone().requires_grad_() for p in model.parameters()]
    x = torch.rand(1, 3, 5, 7, dtype=torch.double)
    y = torch.rand(1, 3, 10, 14, dtype=torch.double)
    meta = inner_outer_meta_gradient(model, theta, x, y)
    for name in ("layers.0.residual_group.blocks.1.attn.relative_position_bias_table", "conv_first.weight"):
        assert meta[names.index(name)].abs().sum() > 0, name
    direction = [torch.randn_like(p) for p in theta]
    run = as_function(model)

    def outer_at(eps):
        ps = [(p + eps * d).detach().requires_grad_() for p, d in zip(theta, direction)]
        g = torch.autograd.grad(F.l1_loss(run(ps, x), y), ps)
        with torch.no_grad():
            return F.mse_loss(run([p - 0.5 * gi for p, gi in zip(ps, g)], x), y)

    eps = 1e-6
    numeric = (outer_at(eps) - outer_at(-eps)) / (2 * eps)
    analytic = sum((m * d).sum() for m, d in zip(meta, direction))
    assert math.isclose(float(analytic), float(numeric), rel_tol=1e-5), (float(analytic), float(numeric))


def test_checkpointed_blocks_give_the_same_meta_gradient():
    """use_checkpoint recomputes each block with the tensors functional_call swapped in."""
    torch.manual_seed(7)
    model = tiny().double()
    names = [n for n, _ in model.named_parameters()]
    theta = [p.detach().clone().requires_grad_() for p in model.parameters()]
    x, y = torch.rand(1, 3, 9, 13, dtype=torch.double), torch.rand(1, 3, 9, 13, dtype=torch.double)
    plain = inner_outer_meta_gradient(model, theta, x, y)
    model.layers[0].residual_group.use_checkpoint = True
    checkpointed = inner_outer_meta_gradient(model, theta, x, y)
    for name, a, b in zip(names, checkpointed, plain):
        assert_close_verbose(a, b, atol=1e-12, rtol=1e-10, name=name)


@pytest.mark.parametrize("shared_input", [False, True], ids=["per_model_batch", "shared_batch"])
def test_vmap_over_stacked_params_matches_loop(shared_input):
    """dil_fast's batched path: vmap(functional_call) over K-stacked parameters, differentiated twice."""
    torch.manual_seed(8)
    model = tiny(upsampler="nearest+conv", upscale=4).double()
    names = [n for n, _ in model.named_parameters()]
    k = 2
    theta_k = [
        torch.stack([p.detach(), p.detach() + 0.01 * torch.randn_like(p)]).requires_grad_() for p in model.parameters()
    ]
    x = torch.rand(2, 3, 5, 6, dtype=torch.double) if shared_input else torch.rand(k, 2, 3, 5, 6, dtype=torch.double)
    run = as_function(model)
    batched = vmap(run, in_dims=(0, None if shared_input else 0))(theta_k, x)
    looped = torch.stack([run([p[i] for p in theta_k], x if shared_input else x[i]) for i in range(k)])
    assert_close_verbose(batched, looped, atol=1e-12, rtol=1e-10, name="batched output")
    g = torch.autograd.grad(batched.square().mean(), theta_k, create_graph=True)
    second = torch.autograd.grad(sum(t.square().sum() for t in g), theta_k)
    g_loop = torch.autograd.grad(looped.square().mean(), theta_k, create_graph=True)
    second_loop = torch.autograd.grad(sum(t.square().sum() for t in g_loop), theta_k)
    for name, a, b in zip(names, second, second_loop):
        assert_close_verbose(a, b, atol=1e-10, rtol=1e-8, name=f"second order {name}")


def test_drop_path_drops_whole_samples():
    """Stochastic depth zeroes a sample's whole branch with probability p, scales survivors by 1/(1-p)."""
    drop = DropPath(0.25).train()
    out = drop(torch.ones(4000, 3, 2)).flatten(1)
    assert ((out == 0).all(1) | (out == 1 / 0.75).all(1)).all()
    assert abs(float((out[:, 0] == 0).double().mean()) - 0.25) < 0.03
    assert torch.equal(drop.eval()(torch.ones(2, 3, 2)), torch.ones(2, 3, 2))


def test_drop_path_under_vmap_needs_a_randomness_mode():
    """Stochastic depth in training draws random numbers: vmap's default randomness='error'
    refuses them; 'different' (each virtual model its own masks, as the loop) runs."""
    model = tiny(drop_path_rate=0.5).train()
    theta_k = [torch.stack([p.detach()] * 2) for p in model.parameters()]
    run = as_function(model)
    x = torch.rand(8, 3, 8, 8)
    with pytest.raises(RuntimeError, match="randomness"):
        vmap(run, in_dims=(0, None))(theta_k, x)
    out = vmap(run, in_dims=(0, None), randomness="different")(theta_k, x)
    assert not torch.equal(out[0], out[1])  # same weights, different drop masks
    model.eval()
    out = vmap(run, in_dims=(0, None))(theta_k, x)
    assert torch.equal(out[0], out[1])
