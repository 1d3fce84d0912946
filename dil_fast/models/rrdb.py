"""RRDBNet (ESRGAN's Residual-in-Residual Dense Block network), state_dict-compatible with the
released DIL trainer's ``RRDB.py``: same constructor, parameter names, shapes and initialisation.

Parameter names: ``conv_first``, ``RRDB_trunk.{i}.RDB{1,2,3}.conv{1..5}``, ``trunk_conv``,
``HRconv``, ``conv_last`` (+ ``upconv1``, ``upconv2`` for :class:`RRDBNetX4`), each ``.weight`` and
``.bias``. At the defaults (nf=64, nb=23, gc=32, 3->3) that is 698 tensors, 16,624,131 parameters.

``bias=False`` builds the *bias-free* network of Mohan et al. (ICLR 2020, "Robust and interpretable
blind image denoising via bias-free CNNs"): every convolution without its additive term (no
``.bias`` tensors: 349 tensors at the defaults, 16,610,688 parameters). RRDBNet has no
normalisation layers, and LeakyReLU, the dense concatenations, the 0.2 scalings, the residual sums
and nearest upsampling are all positively homogeneous, so the bias-free network satisfies
``f(a x) = a f(x)`` for every ``a > 0``. A state_dict without biases is recognised as such
(:func:`infer_rrdb_config` gives ``bias=False``), so it saves and loads like the biased one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .interchange import basicsr_scale, basicsr_to_dil, detect_layout, dil_to_basicsr
from .regions import compiled_region
from .registry import SIZE_FLAGS, register_arch


def _scaled_kaiming_(conv: nn.Conv2d, scale: float) -> None:
    """Kaiming-normal (fan_in, a=0) weights scaled by ``scale``; the bias keeps PyTorch's default."""
    nn.init.kaiming_normal_(conv.weight, a=0, mode="fan_in")
    with torch.no_grad():
        conv.weight.mul_(scale)


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convs; output = 0.2 * conv5 + input.  ``[N, nf, H, W]``."""

    def __init__(self, nf: int = 64, gc: int = 32, bias: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(nf, gc, 3, 1, 1, bias=bias)
        self.conv2 = nn.Conv2d(nf + gc, gc, 3, 1, 1, bias=bias)
        self.conv3 = nn.Conv2d(nf + 2 * gc, gc, 3, 1, 1, bias=bias)
        self.conv4 = nn.Conv2d(nf + 3 * gc, gc, 3, 1, 1, bias=bias)
        self.conv5 = nn.Conv2d(nf + 4 * gc, nf, 3, 1, 1, bias=bias)
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4, self.conv5):
            _scaled_kaiming_(conv, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = F.leaky_relu(self.conv1(x), 0.2)
        x2 = F.leaky_relu(self.conv2(torch.cat((x, x1), 1)), 0.2)
        x3 = F.leaky_relu(self.conv3(torch.cat((x, x1, x2), 1)), 0.2)
        x4 = F.leaky_relu(self.conv4(torch.cat((x, x1, x2, x3), 1)), 0.2)
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    """Three dense blocks in sequence; output = 0.2 * blocks(x) + x."""

    def __init__(self, nf: int, gc: int = 32, bias: bool = True):
        super().__init__()
        self.RDB1 = ResidualDenseBlock(nf, gc, bias)
        self.RDB2 = ResidualDenseBlock(nf, gc, bias)
        self.RDB3 = ResidualDenseBlock(nf, gc, bias)

    @compiled_region  # --compile: one compilation serves every RRDB
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.RDB3(self.RDB2(self.RDB1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """Same-resolution RRDBNet used by DIL for denoising/deblurring.  ``[N, in_nc, H, W] -> [N, out_nc, H, W]``.

    conv_first -> nb RRDBs -> trunk_conv; fea = conv_first + trunk; HRconv -> LeakyReLU(0.2) ->
    conv_last. No global input skip (as released) unless ``residual`` (output = input + the above).
    ``bias=False``: every convolution without its additive term (the bias-free network; see the
    module docstring).
    """

    upscale = 1

    def __init__(
        self,
        in_nc: int = 3,
        out_nc: int = 3,
        nf: int = 64,
        nb: int = 23,
        gc: int = 32,
        bias: bool = True,
        residual: bool = False,
    ):
        super().__init__()
        for name, value in (("in_nc", in_nc), ("out_nc", out_nc), ("nf", nf), ("nb", nb), ("gc", gc)):
            if int(value) != value or value < 1:
                raise ValueError(f"RRDBNet: {name} must be a positive integer, got {value!r}")
        if not isinstance(bias, bool):
            raise ValueError(f"RRDBNet: bias must be true or false, got {bias!r}")
        if not isinstance(residual, bool):
            raise ValueError(f"RRDBNet: residual must be true or false, got {residual!r}")
        if residual and (self.upscale != 1 or in_nc != out_nc):
            raise ValueError(
                f"{type(self).__name__}: residual (a global input skip) needs the same size and channels in and out"
            )
        self.config = {"in_nc": in_nc, "out_nc": out_nc, "nf": nf, "nb": nb, "gc": gc}
        if not bias:
            self.config["bias"] = False
        self.residual = residual
        if residual:
            self.config["residual"] = True
        self.conv_first = nn.Conv2d(in_nc, nf, 3, 1, 1, bias=bias)
        self.RRDB_trunk = nn.Sequential(*[RRDB(nf, gc, bias) for _ in range(nb)])
        self.trunk_conv = nn.Conv2d(nf, nf, 3, 1, 1, bias=bias)
        self._build_upsampler(nf, bias)
        self.HRconv = nn.Conv2d(nf, nf, 3, 1, 1, bias=bias)
        self.conv_last = nn.Conv2d(nf, out_nc, 3, 1, 1, bias=bias)

    def _build_upsampler(self, nf: int, bias: bool) -> None:
        pass

    def _upsample(self, fea: torch.Tensor) -> torch.Tensor:
        return fea

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fea = self.conv_first(x)
        fea = fea + self.trunk_conv(self.RRDB_trunk(fea))
        fea = self._upsample(fea)
        out = self.conv_last(F.leaky_relu(self.HRconv(fea), 0.2))
        return out + x if self.residual else out


class RRDBNetX4(RRDBNet):
    """The x4 super-resolution RRDBNet: two (nearest x2 -> 3x3 conv -> LeakyReLU) stages before HRconv."""

    upscale = 4

    def _build_upsampler(self, nf: int, bias: bool) -> None:
        self.upconv1 = nn.Conv2d(nf, nf, 3, 1, 1, bias=bias)
        self.upconv2 = nn.Conv2d(nf, nf, 3, 1, 1, bias=bias)

    def _upsample(self, fea: torch.Tensor) -> torch.Tensor:
        fea = F.leaky_relu(self.upconv1(F.interpolate(fea, scale_factor=2, mode="nearest")), 0.2)
        return F.leaky_relu(self.upconv2(F.interpolate(fea, scale_factor=2, mode="nearest")), 0.2)


def infer_rrdb_config(state_dict: dict) -> dict:
    """Recover ``in_nc, out_nc, nf, nb, gc`` and the class (x1 / x4) from an RRDBNet state_dict,
    plus ``bias: False`` when it holds no bias tensors (the bias-free network).

    Raises ``ValueError`` when the dict is not an RRDBNet's, or has biases on some convolutions only.
    """
    sd = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    try:
        w_first = sd["conv_first.weight"]
        w_last = sd["conv_last.weight"]
        blocks = {int(k.split(".")[1]) for k in sd if k.startswith("RRDB_trunk.")}
        nb = max(blocks) + 1 if blocks else 0
        gc = sd["RRDB_trunk.0.RDB1.conv1.weight"].shape[0] if nb else 32
    except (KeyError, AttributeError, IndexError, ValueError) as exc:
        raise ValueError(f"not an RRDBNet state_dict (missing {exc})") from None
    if nb and blocks != set(range(nb)):
        raise ValueError("not an RRDBNet state_dict (RRDB_trunk indices are not contiguous)")
    weights = sum(k.endswith(".weight") for k in sd)
    biases = sum(k.endswith(".bias") for k in sd)
    if biases and biases != weights:
        raise ValueError(
            f"not an RRDBNet state_dict ({biases} bias tensors for {weights} convolutions: "
            "either every convolution has one or none does)"
        )
    cfg = {
        "in_nc": int(w_first.shape[1]),
        "out_nc": int(w_last.shape[0]),
        "nf": int(w_first.shape[0]),
        "nb": int(nb),
        "gc": int(gc),
        "x4": "upconv1.weight" in sd,
    }
    if not biases:
        cfg["bias"] = False
    return cfg


def build_rrdb(config: dict) -> RRDBNet:
    """Construct the RRDBNet (or RRDBNetX4 when ``config['x4']``) a config describes."""
    cfg = dict(config)
    cls = RRDBNetX4 if cfg.pop("x4", False) else RRDBNet
    return cls(**cfg)


# ---------------------------------------------------------------------------------- registration
RRDB_DEFAULTS = {"in_nc": 3, "out_nc": 3, "nf": 64, "nb": 23, "gc": 32}  # the released trainer's
_RRDB_KEYS = "conv_first.weight, RRDB_trunk.0.RDB1.conv1.weight, ... (BasicSR: conv_first, body.0.rdb1.conv1)"


def _recognise(x4: bool):
    """The recogniser of RRDBNet (``x4`` False) or RRDBNetX4: ``(kwargs, state_dict in dil_fast's
    names)`` of an RRDB state_dict in dil_fast's or BasicSR's names, None for another network."""

    def recognise(sd: dict):
        try:
            layout = detect_layout(sd)
        except ValueError:
            return None
        if layout == "basicsr" and basicsr_scale(sd) != 4:
            return None  # BasicSR's pixel-unshuffle scales 1 / 2: rrdb_basicsr's
        own = basicsr_to_dil(sd) if layout == "basicsr" else sd
        cfg = infer_rrdb_config(own)
        return (cfg, own) if cfg.pop("x4") == x4 else None

    return recognise


register_arch(
    "rrdb", RRDBNet, defaults=RRDB_DEFAULTS, size_flags=SIZE_FLAGS, recognise=_recognise(False), keys_hint=_RRDB_KEYS
)
register_arch(
    "rrdb_x4",
    RRDBNetX4,
    defaults=RRDB_DEFAULTS,
    size_flags=SIZE_FLAGS,
    recognise=_recognise(True),
    keys_hint=_RRDB_KEYS + " with upconv1/upconv2",
    basicsr=dil_to_basicsr,  # BasicSR's RRDBNet(scale=4)
)
