"""RRDBNet checkpoint interchange with BasicSR / Real-ESRGAN.

dil_fast's :class:`~dil_fast.models.rrdb.RRDBNet` / :class:`~dil_fast.models.rrdb.RRDBNetX4` use the
released DIL trainer's (and original ESRGAN's) parameter names; BasicSR's ``RRDBNet``
(``basicsr/archs/rrdbnet_arch.py``, also what Real-ESRGAN ships) holds the same network under
other names. The renaming, each with ``.weight`` and ``.bias``::

    dil / ESRGAN                     BasicSR
    conv_first                       conv_first
    RRDB_trunk.{i}.RDB{k}.conv{j}    body.{i}.rdb{k}.conv{j}     (k = 1..3, j = 1..5)
    trunk_conv                       conv_body
    upconv1, upconv2                 conv_up1, conv_up2
    HRconv                           conv_hr
    conv_last                        conv_last

BasicSR's forward: ``feat = conv_first(x); feat = feat + conv_body(body(feat))``, then twice
``lrelu(conv_up(nearest x2 (feat)))`` with LeakyReLU(0.2), then ``conv_last(lrelu(conv_hr(feat)))``:
at ``scale=4`` that is :class:`RRDBNetX4` tensor for tensor. At ``scale=2`` / ``scale=1`` BasicSR
first pixel-unshuffles the input by 2 / 4, so ``conv_first`` takes 4x / 16x the input channels and
the network still ends in the two x2 upsampling stages; dil_fast's same-size ``RRDBNet`` (no
unshuffle, no upsampling) is a different network. Those checkpoints are dil_fast's ``rrdb_basicsr``
architecture (:mod:`dil_fast.models.rrdb_basicsr`, BasicSR's names kept), so the renaming here
refuses them, as it refuses the reverse direction for a same-size ``RRDBNet``.

Checkpoint layouts read: the released ``{"model_meta": sd, "model_task": sd}`` (the meta network is
taken), a bare state_dict, BasicSR's ``{"params": sd}`` / ``{"params_ema": sd}`` (``params_ema``
preferred when both exist, as Real-ESRGAN's ``RealESRGANer`` does), each possibly with DataParallel's
``module.`` prefix. Tensors are never copied or changed, only re-keyed.
"""

from __future__ import annotations

import re

from ..checkpoints import basicsr_checkpoint, network_state, released_checkpoint, strip_module_prefix

__all__ = [
    "detect_layout",
    "basicsr_scale",
    "basicsr_to_dil",
    "dil_to_basicsr",
    "extract_state_dict",
    "write_checkpoint",
]

# wrapper keys holding the network, in order of preference
# keys every RRDBNet of a layout holds, whatever its depth
_DIL_SIGNATURE = ("conv_first.weight", "trunk_conv.weight", "HRconv.weight", "conv_last.weight")
_BASICSR_SIGNATURE = ("conv_first.weight", "conv_body.weight", "conv_hr.weight", "conv_last.weight")
_DIL_TOP = {
    "conv_first": "conv_first",
    "trunk_conv": "conv_body",
    "upconv1": "conv_up1",
    "upconv2": "conv_up2",
    "HRconv": "conv_hr",
    "conv_last": "conv_last",
}
_BASICSR_TOP = {v: k for k, v in _DIL_TOP.items()}
_DIL_BLOCK = re.compile(r"RRDB_trunk\.(\d+)\.RDB([123])\.conv([1-5])\.(weight|bias)")
_BASICSR_BLOCK = re.compile(r"body\.(\d+)\.rdb([123])\.conv([1-5])\.(weight|bias)")
_DIL_BLOCK_NAME = "RRDB_trunk.{}.RDB{}.conv{}.{}"
_BASICSR_BLOCK_NAME = "body.{}.rdb{}.conv{}.{}"
_TOP = re.compile(r"(\w+)\.(weight|bias)")
_EXPECTED = (
    "expected RRDBNet keys (conv_first.weight, RRDB_trunk.0.RDB1.conv1.weight, trunk_conv.weight, "
    "HRconv.weight, conv_last.weight, or BasicSR's conv_first.weight, body.0.rdb1.conv1.weight, "
    "conv_body.weight, conv_hr.weight, conv_last.weight; possibly under model_meta, params_ema or params)"
)


def _key_list(keys, limit: int = 8) -> str:
    keys = [str(k) for k in keys]
    if not keys:
        return "(none)"
    return ", ".join(keys[:limit]) + (f" ... ({len(keys)} keys)" if len(keys) > limit else "")


def _network_dict(obj) -> dict:
    """The network's state_dict inside a checkpoint object (meta / EMA network), ``module.`` removed
    (the file layouts are :mod:`dil_fast.checkpoints`')."""
    if not isinstance(obj, dict):
        raise ValueError(f"{_EXPECTED}; got a {type(obj).__name__}, not a dict")
    return network_state(obj)[0]


def _layout_of(sd: dict) -> str:
    if all(k in sd for k in _DIL_SIGNATURE):
        return "dil"
    if all(k in sd for k in _BASICSR_SIGNATURE):
        return "basicsr"
    raise ValueError(f"{_EXPECTED}; got: {_key_list(sd)}")


def detect_layout(obj) -> str:
    """``"dil"`` or ``"basicsr"``: the parameter names of the RRDBNet in a checkpoint or state_dict.

    ``obj`` is a loaded checkpoint (released ``model_meta``/``model_task``, BasicSR
    ``params``/``params_ema``) or a bare state_dict, ``module.`` prefix allowed. Raises a one-line
    ``ValueError`` naming the expected keys and the ones found when it is neither.
    """
    return _layout_of(_network_dict(obj))


def _renamed_key(key, block: re.Pattern, block_name: str, top: dict):
    """``key`` in the other layout's names, or ``None`` when it is not an RRDBNet parameter."""
    if not isinstance(key, str):
        return None
    m = block.fullmatch(key)
    if m:
        return block_name.format(*m.groups())
    t = _TOP.fullmatch(key)
    if t and t.group(1) in top:
        return f"{top[t.group(1)]}.{t.group(2)}"
    return None


def _rename(sd: dict, block: re.Pattern, block_name: str, top: dict, source: str) -> dict:
    """Every key of ``sd`` renamed; one-line ``ValueError`` listing the keys that do not map."""
    renamed = {key: _renamed_key(key, block, block_name, top) for key in sd}
    unmapped = [key for key, new in renamed.items() if new is None]
    if unmapped:
        raise ValueError(f"{source} state_dict has keys that are not RRDBNet parameters: {_key_list(unmapped)}")
    return {renamed[key]: tensor for key, tensor in sd.items()}


def basicsr_scale(sd: dict) -> int:
    """BasicSR's ``scale`` of a BasicSR-named RRDBNet state_dict, read off ``conv_first``'s input
    channels: 4x / 16x ``conv_last``'s outputs -> 2 / 1, else 4 (a scale-4 model with that many input
    channels is told apart only by saying so)."""
    try:
        in_ch = int(sd["conv_first.weight"].shape[1])
        out_ch = int(sd["conv_last.weight"].shape[0])
    except (KeyError, AttributeError, IndexError, TypeError):
        raise ValueError(f"{_EXPECTED}; got: {_key_list(sd)}") from None
    if in_ch == 16 * out_ch:
        return 1
    if in_ch == 4 * out_ch:
        return 2
    return 4


def basicsr_to_dil(sd: dict, scale: int | None = None) -> dict:
    """BasicSR ``RRDBNet(scale=4)`` state_dict -> dil_fast ``RRDBNetX4`` names; tensors unchanged.

    ``scale`` is BasicSR's constructor argument; ``None`` reads it off the channels (``conv_first``
    taking 4x / 16x ``conv_last``'s output channels is the pixel-unshuffled input of scale 2 / 1;
    pass ``scale=4`` for a scale-4 model that really has that many input channels). A ``module.``
    prefix is dropped. Raises a one-line ``ValueError`` for scale 1 / 2, a dict without
    ``conv_up1``/``conv_up2``, or keys that do not map.
    """
    if scale not in (None, 1, 2, 4):
        raise ValueError(f"scale must be 1, 2 or 4 (BasicSR RRDBNet's scales), got {scale!r}")
    sd = strip_module_prefix(sd)
    if scale is None:
        scale = basicsr_scale(sd)
        why = (
            f"conv_first takes {sd['conv_first.weight'].shape[1]} input channels for "
            f"{sd['conv_last.weight'].shape[0]} output channels"
        )
    else:
        why = f"scale={scale} was given"
    if scale != 4:
        raise ValueError(
            f"BasicSR RRDBNet of scale {scale} ({why}): it pixel-unshuffles its input by {4 // scale} before "
            "conv_first, so it needs BasicSR's pixel-unshuffle RRDBNet (dil_fast's rrdb_basicsr, which loads it "
            "under its own names), not dil_fast's same-size RRDBNet; only scale-4 BasicSR models map onto RRDBNetX4"
        )
    if "conv_up1.weight" not in sd or "conv_up2.weight" not in sd:
        raise ValueError(f"not a BasicSR RRDBNet state_dict (no conv_up1/conv_up2); got: {_key_list(sd)}")
    return _rename(sd, _BASICSR_BLOCK, _DIL_BLOCK_NAME, _BASICSR_TOP, "BasicSR")


def dil_to_basicsr(sd: dict) -> dict:
    """dil_fast ``RRDBNetX4`` state_dict -> BasicSR ``RRDBNet(scale=4)`` names; tensors unchanged.

    A ``module.`` prefix is dropped. Raises a one-line ``ValueError`` for a same-size ``RRDBNet``
    (no ``upconv1``/``upconv2``: BasicSR has no such network, its scale 1 pixel-unshuffles) or keys
    that do not map.
    """
    sd = strip_module_prefix(sd)
    if "upconv1.weight" not in sd or "upconv2.weight" not in sd:
        raise ValueError(
            "a same-size RRDBNet (no upconv1/upconv2) has no BasicSR counterpart: BasicSR's scale-1 "
            "RRDBNet pixel-unshuffles its input and upsamples x4 (dil_fast's rrdb_basicsr); only RRDBNetX4 "
            "maps (onto scale=4)"
        )
    return _rename(sd, _DIL_BLOCK, _BASICSR_BLOCK_NAME, _DIL_TOP, "dil")


def extract_state_dict(ckpt) -> tuple[dict, str]:
    """``(state_dict in dil_fast names, layout)`` of the meta / EMA network in a loaded checkpoint.

    ``layout`` is :func:`detect_layout`'s answer for ``ckpt``; a ``"basicsr"`` network is renamed by
    :func:`basicsr_to_dil`. The result has no ``module.`` prefix and loads into the
    :func:`~dil_fast.models.rrdb.build_rrdb` of its :func:`~dil_fast.models.rrdb.infer_rrdb_config`.
    """
    sd = _network_dict(ckpt)
    layout = _layout_of(sd)
    return (sd if layout == "dil" else basicsr_to_dil(sd)), layout


def write_checkpoint(sd_dil: dict, fmt: str) -> dict:
    """The object to ``torch.save`` for a state_dict in dil_fast names.

    ``fmt="dil"``: ``{"model_meta": sd, "model_task": sd}`` (the released layout, one network in
    both roles, no ``module.`` prefix); ``fmt="basicsr"``: ``{"params": sd in BasicSR names}``
    (RRDBNetX4 only). Raises a one-line ``ValueError`` for another ``fmt``, a state_dict not in
    dil_fast names, or keys that are not RRDBNet parameters.
    """
    if fmt not in ("dil", "basicsr"):
        raise ValueError(f"fmt must be 'dil' or 'basicsr', got {fmt!r}")
    sd = strip_module_prefix(sd_dil)
    if _layout_of(sd) != "dil":
        raise ValueError("write_checkpoint takes a state_dict in dil_fast names; convert it with basicsr_to_dil first")
    if fmt == "basicsr":
        return basicsr_checkpoint(dil_to_basicsr(sd))
    _rename(sd, _DIL_BLOCK, _BASICSR_BLOCK_NAME, _DIL_TOP, "dil")  # only for its check of the keys
    return released_checkpoint(sd)
