"""SwinIR (Liang et al., "SwinIR: Image Restoration Using Swin Transformer", ICCVW 2021),
state_dict-compatible with the official ``models/network_swinir.py``: same constructor keywords and
defaults, parameter and buffer names, shapes and order, so an official checkpoint
(``torch.load(path)["params"]``) loads with ``strict=True`` and gives the same outputs.

Network (``[N, C, H, W] -> [N, C, s*H, s*W]``): the input is reflect-padded to a multiple of
``window_size`` (cropped back at the end), shifted by the RGB mean and scaled by ``img_range``;
``conv_first`` -> tokens ``[N, H*W, D]`` -> ``patch_embed.norm`` -> RSTBs (``layers.{i}``: a group of
Swin Transformer blocks, a conv, a residual) -> ``norm`` -> image -> ``conv_after_body`` + the
shallow features -> the reconstruction of ``upsampler``.

Names (official): ``conv_first``, ``patch_embed.norm``, ``layers.{i}.residual_group.blocks.{j}.``
``{attn_mask, norm1, attn.relative_position_bias_table, attn.relative_position_index, attn.qkv,
attn.proj, norm2, mlp.fc1, mlp.fc2}`` (``attn_mask`` only in shifted blocks), ``layers.{i}.conv``
(``.0/.2/.4`` for ``3conv``), ``norm``, ``conv_after_body``, then ``conv_last`` (``''``),
``conv_before_upsample.0`` + ``upsample.{0,2,..}`` + ``conv_last`` (``pixelshuffle``),
``upsample.0`` (``pixelshuffledirect``), ``conv_before_upsample.0`` + ``conv_up1`` + ``conv_up2`` +
``conv_hr`` + ``conv_last`` (``nearest+conv``); ``absolute_pos_embed`` first when ``ape``.
The RGB mean is a non-persistent buffer ``mean`` (officially a plain tensor attribute): it follows
``.to(device)`` and stays out of the state_dict.

Where this differs from the official code, it is where that code fails or mutates itself: unknown
keywords raise (officially swallowed by ``**kwargs``); ``img_size`` need not be a multiple of the
window; ``use_checkpoint`` works (officially it drops ``x_size``) and gives correct higher-order
gradients under ``torch.func.functional_call``; the forward assigns nothing to the module (no
``self.mean = ...``), and masks for other sizes are built on the input's device.

torch.func: the forward is a pure function of parameters and buffers (shape-only Python control
flow, no buffer writes), so ``functional_call`` and ``vmap`` over K-stacked parameters work, with
double backward. Random ops run only in training with a nonzero ``drop_path_rate`` /
``drop_rate`` / ``attn_drop_rate``: there ``vmap`` needs ``randomness="different"`` (or
``"same"``); the default ``"error"`` raises. ``use_checkpoint`` does not compose with ``vmap``.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_arch
from .swinir_blocks import (  # noqa: F401
    MASK_VALUE,
    RECONSTRUCTION_FEATURES,
    RESI_CONNECTIONS,
    RGB_MEAN,
    UPSAMPLERS,
    DropPath,
    Mlp,
    PatchEmbed,
    ResidualSwinTransformerBlock,
    SwinTransformerBlock,
    SwinTransformerLayer,
    WindowAttention,
    dropout,
    pair_size,
    relative_position_index,
    residual_conv,
    shifted_window_mask,
    to_image,
    window_partition,
    window_reverse,
)


class SwinIR(nn.Module):
    """SwinIR with the official constructor. ``[N, in_chans, H, W] -> [N, in_chans, s*H, s*W]``
    with ``s = upscale`` for the SR upsamplers and 1 for ``upsampler=''``.

    ``upsampler``: ``''`` same-size restoration (denoising / JPEG; output = input + conv_last(...)),
    ``'pixelshuffle'`` classical SR (x2^n or x3), ``'pixelshuffledirect'`` lightweight SR (one conv +
    pixel shuffle, any integer scale), ``'nearest+conv'`` real-world SR (x4 only);
    ``None`` is ``''`` (KAIR's option files write null). ``resi_connection``: ``'1conv'`` or
    ``'3conv'``. ``img_size`` (int or (H, W)) fixes the ``attn_mask`` buffers (and
    ``absolute_pos_embed``); other input sizes work (the masks are recomputed) unless ``ape``. The
    defaults (``img_size=64``, ``window_size=7``) build, with masks for the padded 70 x 70, where
    the official constructor raises.
    Inputs are reflect-padded on the bottom/right to a multiple of ``window_size`` and the output is
    cropped back, as the official forward does (reflection needs each pad smaller than the side).
    ``drop_path_rate`` (stochastic depth, linear in the block index from 0) acts only in training.

    Attributes: ``upscale`` (the output/input size ratio, 1 for ``''``, where the official model
    ignores the argument too), ``window_size``, ``img_range``, ``upsampler``, ``config`` (the
    constructor arguments except ``norm_layer``).
    """

    def __init__(
        self,
        img_size=64,
        patch_size=1,
        in_chans: int = 3,
        embed_dim: int = 96,
        depths: Sequence[int] = (6, 6, 6, 6),
        num_heads: Sequence[int] = (6, 6, 6, 6),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        ape: bool = False,
        patch_norm: bool = True,
        use_checkpoint: bool = False,
        upscale: int = 2,
        img_range: float = 1.0,
        upsampler: str | None = "",
        resi_connection: str = "1conv",
    ):
        super().__init__()
        upsampler = upsampler or ""
        depths, num_heads = tuple(int(d) for d in depths), tuple(int(h) for h in num_heads)
        self._check_arguments(in_chans, embed_dim, depths, num_heads, window_size, upscale, upsampler, resi_connection)
        self.config = {
            "img_size": img_size,
            "patch_size": patch_size,
            "in_chans": in_chans,
            "embed_dim": embed_dim,
            "depths": depths,
            "num_heads": num_heads,
            "window_size": window_size,
            "mlp_ratio": mlp_ratio,
            "qkv_bias": qkv_bias,
            "qk_scale": qk_scale,
            "drop_rate": drop_rate,
            "attn_drop_rate": attn_drop_rate,
            "drop_path_rate": drop_path_rate,
            "ape": ape,
            "patch_norm": patch_norm,
            "use_checkpoint": use_checkpoint,
            "upscale": upscale,
            "img_range": img_range,
            "upsampler": upsampler,
            "resi_connection": resi_connection,
        }
        self.img_range = float(img_range)
        self.upsampler = upsampler
        self.upscale = int(upscale) if upsampler else 1
        self.window_size = int(window_size)
        self.ape = bool(ape)
        self.drop_rate = float(drop_rate)
        mean = torch.tensor(RGB_MEAN) if in_chans == 3 else torch.zeros(1)
        self.register_buffer("mean", mean.reshape(1, -1, 1, 1), persistent=False)

        height, width = pair_size(img_size)
        patch_h, patch_w = pair_size(patch_size)
        self.patches_resolution = (height // patch_h, width // patch_w)

        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(embed_dim, norm_layer if patch_norm else None)
        if self.ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, height // patch_h * (width // patch_w), embed_dim))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        drop_path = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            start = sum(depths[:i])
            self.layers.append(
                ResidualSwinTransformerBlock(
                    embed_dim,
                    resi_connection,
                    input_resolution=self.patches_resolution,
                    depth=depth,
                    num_heads=heads,
                    window_size=window_size,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    qk_scale=qk_scale,
                    drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=drop_path[start : start + depth],
                    norm_layer=norm_layer,
                    use_checkpoint=use_checkpoint,
                )
            )
        self.norm = norm_layer(embed_dim)
        self.conv_after_body = residual_conv(embed_dim, resi_connection)
        self._build_reconstruction(embed_dim, in_chans, int(upscale))
        self.apply(self._init_weights)

    @staticmethod
    def _check_arguments(in_chans, embed_dim, depths, num_heads, window_size, upscale, upsampler, resi_connection):
        if upsampler not in UPSAMPLERS:
            raise ValueError(f"SwinIR: upsampler must be one of {', '.join(map(repr, UPSAMPLERS))}, got {upsampler!r}")
        if resi_connection not in RESI_CONNECTIONS:
            raise ValueError(f"SwinIR: resi_connection must be '1conv' or '3conv', got {resi_connection!r}")
        for name, value in (
            ("in_chans", in_chans),
            ("embed_dim", embed_dim),
            ("window_size", window_size),
            ("upscale", upscale),
        ):
            if int(value) != value or value < 1:
                raise ValueError(f"SwinIR: {name} must be a positive integer, got {value!r}")
        if not depths or len(depths) != len(num_heads) or min(depths) < 1:
            raise ValueError(
                f"SwinIR: depths {depths} and num_heads {num_heads} must be equally long lists of positive integers"
            )
        if any(h < 1 or embed_dim % h for h in num_heads):
            raise ValueError(f"SwinIR: embed_dim {embed_dim} must be divisible by every num_heads {num_heads}")
        if resi_connection == "3conv" and embed_dim < 4:
            raise ValueError(f"SwinIR: resi_connection='3conv' needs embed_dim >= 4, got {embed_dim}")
        if upsampler == "pixelshuffle" and int(upscale) & (int(upscale) - 1) and upscale != 3:
            raise ValueError(f"SwinIR: upsampler='pixelshuffle' supports upscale 2^n or 3, got {upscale}")
        if upsampler == "nearest+conv" and upscale != 4:
            raise ValueError(f"SwinIR: upsampler='nearest+conv' supports upscale 4 only, got {upscale}")

    def _build_reconstruction(self, embed_dim: int, out_chans: int, upscale: int) -> None:
        feat = RECONSTRUCTION_FEATURES
        if self.upsampler == "pixelshuffle":
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, feat, 3, 1, 1), nn.LeakyReLU())
            stages = []
            if upscale == 3:
                stages += [nn.Conv2d(feat, 9 * feat, 3, 1, 1), nn.PixelShuffle(3)]
            else:
                for _ in range(int(math.log2(upscale))):
                    stages += [nn.Conv2d(feat, 4 * feat, 3, 1, 1), nn.PixelShuffle(2)]
            self.upsample = nn.Sequential(*stages)
            self.conv_last = nn.Conv2d(feat, out_chans, 3, 1, 1)
        elif self.upsampler == "pixelshuffledirect":
            self.upsample = nn.Sequential(
                nn.Conv2d(embed_dim, upscale * upscale * out_chans, 3, 1, 1), nn.PixelShuffle(upscale)
            )
        elif self.upsampler == "nearest+conv":
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, feat, 3, 1, 1), nn.LeakyReLU())
            self.conv_up1 = nn.Conv2d(feat, feat, 3, 1, 1)
            self.conv_up2 = nn.Conv2d(feat, feat, 3, 1, 1)
            self.conv_hr = nn.Conv2d(feat, feat, 3, 1, 1)
            self.conv_last = nn.Conv2d(feat, out_chans, 3, 1, 1)
        else:
            self.conv_last = nn.Conv2d(embed_dim, out_chans, 3, 1, 1)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """The official initialisation: Linear weights truncated-normal (std 0.02), biases 0; LayerNorm 1 / 0."""
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def pad_to_window(self, x: torch.Tensor) -> torch.Tensor:
        """Reflect-pad ``[N, C, H, W]`` on the bottom and right to multiples of ``window_size``."""
        h, w = x.shape[-2:]
        pad_h = -h % self.window_size
        pad_w = -w % self.window_size
        return F.pad(x, (0, pad_w, 0, pad_h), mode="reflect") if pad_h or pad_w else x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The deep features: ``[N, D, H, W] -> [N, D, H, W]`` (H, W multiples of the window)."""
        x_size = (x.shape[-2], x.shape[-1])
        tokens = self.patch_embed(x)
        if self.ape:
            if tokens.shape[1] != self.absolute_pos_embed.shape[1]:
                raise ValueError(
                    f"SwinIR(ape=True) takes inputs of img_size {self.patches_resolution} (after "
                    f"padding to the window), got {x_size}"
                )
            tokens = tokens + self.absolute_pos_embed
        tokens = dropout(tokens, self.drop_rate, self.training)
        for layer in self.layers:
            tokens = layer(tokens, x_size)
        return to_image(self.norm(tokens), x_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W] -> [N, C, upscale*H, upscale*W]``."""
        h, w = x.shape[-2:]
        mean = self.mean.to(x.dtype)
        x = (self.pad_to_window(x) - mean) * self.img_range
        shallow = self.conv_first(x)
        feat = self.conv_after_body(self.forward_features(shallow)) + shallow
        if self.upsampler == "pixelshuffle":
            out = self.conv_last(self.upsample(self.conv_before_upsample(feat)))
        elif self.upsampler == "pixelshuffledirect":
            out = self.upsample(feat)
        elif self.upsampler == "nearest+conv":
            feat = self.conv_before_upsample(feat)
            feat = F.leaky_relu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
            feat = F.leaky_relu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
            out = self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))
        else:
            out = x + self.conv_last(feat)
        out = out / self.img_range + mean
        return out[..., : h * self.upscale, : w * self.upscale]


def _unwrap_checkpoint(state_dict: dict) -> dict:
    """The state_dict inside an official checkpoint (``params`` / ``params_ema``), ``module.`` stripped."""
    for key in ("params", "params_ema"):
        if isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
            break
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state_dict.items()}


def _mask_resolution(mask: torch.Tensor, window: int) -> tuple[int, int]:
    """``(H, W)`` of the map an ``attn_mask [nW, window², window²]`` was built for: windows are in
    raster order and the first one holding masked pairs ends the first window row."""
    nw = mask.shape[0]
    masked = (mask != 0).flatten(1).any(1).nonzero().flatten()
    cols = int(masked[0]) + 1 if len(masked) else nw
    if nw % cols:
        raise ValueError(f"not a SwinIR state_dict (attn_mask of {nw} windows has no {cols}-wide window grid)")
    return (nw // cols) * window, cols * window


def swinir_config_from_state_dict(state_dict: dict) -> dict:
    """The :class:`SwinIR` keyword arguments a state_dict (or an official checkpoint holding it under
    ``params`` / ``params_ema``) was built with.

    Inferred from shapes: ``in_chans`` and ``embed_dim`` (``conv_first``), ``depths`` (block
    indices), ``num_heads`` (``relative_position_bias_table [(2w-1)², heads]``), ``window_size``
    (its rows), ``mlp_ratio`` (``mlp.fc1``), ``qkv_bias``, ``patch_norm``, ``ape``,
    ``resi_connection``, ``upsampler`` and ``upscale`` (the reconstruction keys), ``img_size`` from an
    ``attn_mask`` (or ``absolute_pos_embed`` when square); without either it is the official 64
    (it then shapes nothing). A model built with ``img_size <= window_size`` has blocks of window
    ``img_size`` and no mask: the table then gives that reduced window and ``img_size = window_size``
    is returned (same tensors; the original ``window_size``, which only sets the input padding, is
    lost). ``img_range`` and the dropout rates leave no trace.
    Raises ``ValueError`` (one line) when the dict is not a SwinIR's.
    """
    if not isinstance(state_dict, dict):
        raise ValueError(f"not a SwinIR state_dict (got {type(state_dict).__name__})")
    sd = _unwrap_checkpoint(state_dict)
    block_key = "layers.{}.residual_group.blocks.{}."
    try:
        first = sd["conv_first.weight"]
        embed_dim, in_chans = int(first.shape[0]), int(first.shape[1])
        layer_ids = sorted({int(k.split(".")[1]) for k in sd if k.startswith("layers.") and ".residual_group." in k})
        if not layer_ids or layer_ids != list(range(len(layer_ids))):
            raise ValueError("not a SwinIR state_dict (no contiguous layers.{i}.residual_group)")
        depths, num_heads, tables = [], [], []
        for i in layer_ids:
            prefix = f"layers.{i}.residual_group.blocks."
            blocks = sorted({int(k[len(prefix) :].split(".")[0]) for k in sd if k.startswith(prefix)})
            if blocks != list(range(len(blocks))):
                raise ValueError(f"not a SwinIR state_dict (layer {i} has blocks {blocks})")
            table = sd[block_key.format(i, 0) + "attn.relative_position_bias_table"]
            depths.append(len(blocks))
            num_heads.append(int(table.shape[1]))
            tables.append(int(table.shape[0]))
        hidden = int(sd[block_key.format(0, 0) + "mlp.fc1.weight"].shape[0])
    except (KeyError, AttributeError, IndexError, TypeError) as exc:
        raise ValueError(f"not a SwinIR state_dict (missing or malformed {exc})") from None
    side = math.isqrt(tables[0])
    if len(set(tables)) != 1 or side * side != tables[0] or side % 2 == 0:
        raise ValueError(f"not a SwinIR state_dict (relative_position_bias_table rows {tables} are not one (2w-1)²)")
    window = (side + 1) // 2

    if "conv_up1.weight" in sd:
        upsampler, upscale = "nearest+conv", 4
    elif "conv_before_upsample.0.weight" in sd:
        stages = [
            sd[k]
            for k in sorted(
                (k for k in sd if k.startswith("upsample.") and k.endswith(".weight")),
                key=lambda k: int(k.split(".")[1]),
            )
        ]
        if not stages:
            raise ValueError("not a SwinIR state_dict (conv_before_upsample without upsample convs)")
        ratio = int(stages[0].shape[0]) // int(stages[0].shape[1])
        upsampler, upscale = "pixelshuffle", 3 if ratio == 9 else 2 ** len(stages)
    elif "upsample.0.weight" in sd:
        upscale = math.isqrt(int(sd["upsample.0.weight"].shape[0]) // in_chans)
        upsampler = "pixelshuffledirect"
    else:
        upsampler, upscale = "", 1

    masks = [k for k in sd if k.endswith(".attn_mask")]
    patches = int(sd["absolute_pos_embed"].shape[1]) if "absolute_pos_embed" in sd else 0
    if masks:
        h, w = _mask_resolution(sd[masks[0]], window)
    elif patches and math.isqrt(patches) ** 2 == patches:
        h = w = math.isqrt(patches)
    elif max(depths) > 1:  # shifted blocks without a mask: the map was not larger than the window
        h = w = window
    else:
        h = w = 64 if window < 64 else 2 * window
    return {
        "img_size": h if h == w else (h, w),
        "in_chans": in_chans,
        "embed_dim": embed_dim,
        "depths": tuple(depths),
        "num_heads": tuple(num_heads),
        "window_size": window,
        "mlp_ratio": hidden / embed_dim,
        "qkv_bias": block_key.format(0, 0) + "attn.qkv.bias" in sd,
        "ape": "absolute_pos_embed" in sd,
        "patch_norm": "patch_embed.norm.weight" in sd,
        "upscale": upscale,
        "upsampler": upsampler,
        "resi_connection": "3conv" if "conv_after_body.0.weight" in sd else "1conv",
    }


def _recognise(sd: dict):
    """``(kwargs, state_dict)`` of an official-layout SwinIR state_dict, None for another network."""
    if not any(k.startswith("layers.0.residual_group.") for k in sd):
        return None
    return swinir_config_from_state_dict(sd), sd


register_arch(
    "swinir",
    SwinIR,
    recognise=_recognise,
    keys_hint="layers.0.residual_group.blocks.0.attn.qkv.weight, conv_after_body.weight, ...",
    basicsr=dict,  # BasicSR's basicsr/archs/swinir_arch.py keeps the official names
)
