"""BasicSR's RRDBNet (``basicsr/archs/rrdbnet_arch.py``, also Real-ESRGAN's ``RealESRGAN_x2plus``):
the ESRGAN trunk under BasicSR's parameter names, whose scales 1 and 2 pixel-unshuffle the input.

At ``scale=2`` / ``scale=1`` the input is pixel-unshuffled by 2 / 4 (``[N, C, H, W] -> [N, C*f², H/f,
W/f]``) before ``conv_first``, which therefore takes ``in_nc * 4`` / ``in_nc * 16`` channels; the
network then upsamples x4 as at scale 4, so the output is ``scale`` times the input. That is not
dil_fast's same-size :class:`~dil_fast.models.rrdb.RRDBNet` (no unshuffle, no upsampling), hence an
architecture of its own: ``--arch rrdb_basicsr --arch_kwargs '{"scale": 2}'``. A BasicSR /
Real-ESRGAN checkpoint of scale 1 or 2 is recognised from its keys (``conv_first`` taking 16x / 4x
``conv_last``'s output channels) and loads as it is, names unchanged; a scale-4 one is dil_fast's
``rrdb_x4`` (the same network under the released names, :mod:`dil_fast.models.interchange`).

Names (BasicSR's, each ``.weight`` and ``.bias``): ``conv_first``, ``body.{i}.rdb{1,2,3}.conv{1..5}``,
``conv_body``, ``conv_up1``, ``conv_up2``, ``conv_hr``, ``conv_last``.

Forward: the same operations in the same order as BasicSR's, so the outputs are bit-identical on
inputs whose sides are multiples of the unshuffle factor (BasicSR's network asserts that). Other
sizes are reflect-padded on the bottom and right to the next multiple and the output cropped back
to ``scale`` times the input, as Real-ESRGAN's ``RealESRGANer`` does around the network
(replicate-padded when the side is too short to reflect).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .interchange import basicsr_scale, basicsr_to_dil, detect_layout
from .regions import compiled_region
from .registry import SIZE_FLAGS, register_arch
from .rrdb import RRDB_DEFAULTS, ResidualDenseBlock, infer_rrdb_config

__all__ = ["RRDBNetBasicSR", "BasicSRRRDB", "UNSHUFFLE"]

UNSHUFFLE = {1: 4, 2: 2, 4: 1}  # BasicSR's scale -> the pixel-unshuffle factor of its input


class BasicSRRRDB(nn.Module):
    """BasicSR's RRDB: ``rdb1 -> rdb2 -> rdb3``, output = 0.2 * that + input.  ``[N, nf, H, W]``."""

    def __init__(self, nf: int, gc: int = 32, bias: bool = True):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(nf, gc, bias)
        self.rdb2 = ResidualDenseBlock(nf, gc, bias)
        self.rdb3 = ResidualDenseBlock(nf, gc, bias)

    @compiled_region  # --compile: one compilation serves every block
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


def _pad_to_multiple(x: torch.Tensor, m: int) -> torch.Tensor:
    """``x`` padded on the bottom and right to multiples of ``m`` (reflect, or replicate when a
    side is too short to reflect)."""
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % m, -w % m
    if not (pad_h or pad_w):
        return x
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


class RRDBNetBasicSR(nn.Module):
    """BasicSR's ``RRDBNet(num_in_ch=in_nc, num_out_ch=out_nc, scale, num_feat=nf, num_block=nb,
    num_grow_ch=gc)``.  ``[N, in_nc, H, W] -> [N, out_nc, scale*H, scale*W]``.

    ``scale`` 1, 2 or 4 (BasicSR's default 4); ``upscale`` is ``scale``. ``bias=False``: every
    convolution without its additive term (as :class:`~dil_fast.models.rrdb.RRDBNet`'s).
    """

    def __init__(
        self,
        in_nc: int = 3,
        out_nc: int = 3,
        nf: int = 64,
        nb: int = 23,
        gc: int = 32,
        scale: int = 4,
        bias: bool = True,
    ):
        super().__init__()
        for name, value in (("in_nc", in_nc), ("out_nc", out_nc), ("nf", nf), ("nb", nb), ("gc", gc)):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"RRDBNetBasicSR: {name} must be a positive integer, got {value!r}")
        if isinstance(scale, bool) or scale not in UNSHUFFLE:
            raise ValueError(f"RRDBNetBasicSR: scale must be 1, 2 or 4 (BasicSR RRDBNet's scales), got {scale!r}")
        if not isinstance(bias, bool):
            raise ValueError(f"RRDBNetBasicSR: bias must be true or false, got {bias!r}")
        self.scale = self.upscale = int(scale)
        self.unshuffle = UNSHUFFLE[self.scale]
        self.conv_first = nn.Conv2d(in_nc * self.unshuffle**2, nf, 3, 1, 1, bias=bias)
        self.body = nn.Sequential(*[BasicSRRRDB(nf, gc, bias) for _ in range(nb)])
        self.conv_body = nn.Conv2d(nf, nf, 3, 1, 1, bias=bias)
        self.conv_up1 = nn.Conv2d(nf, nf, 3, 1, 1, bias=bias)
        self.conv_up2 = nn.Conv2d(nf, nf, 3, 1, 1, bias=bias)
        self.conv_hr = nn.Conv2d(nf, nf, 3, 1, 1, bias=bias)
        self.conv_last = nn.Conv2d(nf, out_nc, 3, 1, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        feat = x
        if self.unshuffle > 1:
            feat = F.pixel_unshuffle(_pad_to_multiple(x, self.unshuffle), self.unshuffle)
        feat = self.conv_first(feat)
        feat = feat + self.conv_body(self.body(feat))
        feat = F.leaky_relu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        feat = F.leaky_relu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        out = self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))
        if out.shape[-2:] != (h * self.scale, w * self.scale):  # padded: crop back
            out = out[..., : h * self.scale, : w * self.scale]
        return out


# ---------------------------------------------------------------------------------- registration
def _recognise(sd: dict):
    """``(kwargs, state_dict)`` of a BasicSR-named RRDBNet of scale 1 or 2 (``conv_first`` taking
    16x / 4x ``conv_last``'s output channels), None for another network (a scale-4 one is rrdb_x4's)."""
    try:
        if detect_layout(sd) != "basicsr":
            return None
    except ValueError:
        return None
    scale = basicsr_scale(sd)
    if scale == 4:
        return None
    cfg = infer_rrdb_config(basicsr_to_dil(sd, scale=4))  # the sizes, read under the released names
    cfg.pop("x4")
    factor = UNSHUFFLE[scale]
    return {**cfg, "in_nc": cfg["in_nc"] // factor**2, "scale": scale}, sd


def _basicsr_names(sd: dict) -> dict:
    return dict(sd)  # its names are BasicSR's


register_arch(
    "rrdb_basicsr",
    RRDBNetBasicSR,
    defaults={**RRDB_DEFAULTS, "scale": 4},
    size_flags=SIZE_FLAGS,
    recognise=_recognise,
    keys_hint="BasicSR's conv_first.weight, body.0.rdb1.conv1.weight, conv_up1.weight, ... with conv_first taking "
    "4x / 16x conv_last's output channels (scale 2 / 1)",
    basicsr=_basicsr_names,
)
