"""Architectures by name (``--arch``) and the one way to turn any supported checkpoint into a model.

``--arch rrdb | rrdb_x4 | swinir`` with ``--arch_kwargs`` (JSON keyword arguments), or
``--arch package.module:Class`` for one's own ``nn.Module``. The training state stores the
architecture and its keyword arguments (:func:`model_spec`), so evaluation and resume rebuild it.
A checkpoint that names one's own class is rebuilt only when ``--arch`` names it again: dil_fast
never imports code because a checkpoint asks for it.

Checkpoints read by :func:`model_from_checkpoint`: our training state; the released layout
(``model_meta`` / ``model_task``); a bare state_dict; BasicSR / Real-ESRGAN (``params`` /
``params_ema``, keys ``body.N.rdbK.convJ``, :mod:`dil_fast.models.interchange`); official SwinIR
(``params``). The layout is detected from the keys.
"""
from __future__ import annotations

import importlib
import json

from torch import nn

from .interchange import basicsr_to_dil, detect_layout
from .rrdb import RRDBNet, RRDBNetX4, infer_rrdb_config
from .swinir import SwinIR, swinir_config_from_state_dict

__all__ = ["ARCHS", "build_model", "model_spec", "parse_arch_kwargs", "arch_from_state_dict", "model_from_checkpoint",
           "model_scale", "is_custom_arch"]

ARCHS = {"rrdb": RRDBNet, "rrdb_x4": RRDBNetX4, "swinir": SwinIR}
RRDB_DEFAULTS = {"in_nc": 3, "out_nc": 3, "nf": 64, "nb": 23, "gc": 32}
_WRAPPERS = ("params_ema", "params")


def is_custom_arch(arch: str) -> bool:
    return ":" in arch


def parse_arch_kwargs(text: str | None, flag: str = "--arch_kwargs") -> dict:
    """``--arch_kwargs`` JSON -> dict (ValueError with one line naming the flag)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{flag}: not JSON ({exc.msg} at character {exc.pos}); e.g. '{{\"nf\": 32, \"nb\": 4}}'")\
            from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag}: expected a JSON object of keyword arguments, got {type(value).__name__}")
    return value


def _custom_class(arch: str) -> type:
    module, _, name = arch.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"--arch {arch}: cannot import {name} from {module} ({exc})") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"--arch {arch}: {name} is not an nn.Module class")
    return cls


def build_model(arch: str, kwargs: dict | None = None) -> nn.Module:
    """The network ``arch`` names, built with ``kwargs`` (RRDB defaults: nf 64, nb 23, gc 32)."""
    kwargs = dict(kwargs or {})
    if is_custom_arch(arch):
        cls = _custom_class(arch)
    elif arch in ARCHS:
        cls = ARCHS[arch]
        if arch != "swinir":
            kwargs = {**RRDB_DEFAULTS, **kwargs}
    else:
        raise ValueError(f"--arch {arch}: not one of {', '.join(ARCHS)} (or package.module:Class)")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"--arch {arch}: bad --arch_kwargs ({exc})") from None


def model_spec(arch: str, kwargs: dict) -> dict:
    """What the training state stores to rebuild the model."""
    return {"arch": arch, "kwargs": dict(kwargs)}


def model_scale(model: nn.Module) -> int:
    """The network's output / input size (an ``upscale`` attribute, 1 when absent)."""
    return int(getattr(model, "upscale", 1) or 1)


def _unwrap(ckpt: dict) -> dict:
    for key in _WRAPPERS:
        if isinstance(ckpt.get(key), dict):
            return ckpt[key]
    return ckpt


def arch_from_state_dict(sd: dict) -> tuple[str, dict, dict]:
    """``(arch, kwargs, state_dict in dil_fast's names)`` of an RRDB (dil or BasicSR names) or a
    SwinIR state_dict; ValueError with the keys expected otherwise."""
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    if any(k.startswith("layers.0.residual_group.") for k in sd):
        cfg = swinir_config_from_state_dict(sd)
        return "swinir", cfg, sd
    try:
        layout = detect_layout(sd)
    except ValueError as exc:
        raise ValueError(f"not a network dil_fast knows: {exc}; or SwinIR's layers.0.residual_group.blocks.0.attn.qkv.weight, "
                         "conv_after_body.weight, ...") from None
    if layout == "basicsr":
        sd = basicsr_to_dil(sd)
    cfg = infer_rrdb_config(sd)
    x4 = cfg.pop("x4")
    return ("rrdb_x4" if x4 else "rrdb"), cfg, sd


def model_from_checkpoint(ckpt: dict, path: str, *, key: str = "model_meta", arch: str | None = None,
                          arch_kwargs: dict | None = None) -> tuple[nn.Module, str, dict]:
    """``(model with the weights loaded, arch, kwargs)`` from a loaded checkpoint of any supported
    layout (see the module docstring). ``arch``/``arch_kwargs`` (``--arch``) override what the
    checkpoint says; ValueError (one line, naming ``path``) when it cannot be done."""
    saved = None
    if ckpt.get("format") == "dil_fast.train_state":
        saved = ckpt.get("model_config")
        sd = ckpt["models"][key]
    else:
        body = _unwrap(ckpt)
        sd = body[key] if isinstance(body.get(key), dict) else body
    if isinstance(saved, dict) and "arch" not in saved:  # training states before --arch: an RRDB config
        saved = {"arch": "rrdb_x4" if saved.get("x4") else "rrdb",
                 "kwargs": {k: v for k, v in saved.items() if k != "x4"}}
    try:
        if arch is None and saved is not None:
            if is_custom_arch(saved["arch"]):
                raise ValueError(f"it was trained with --arch {saved['arch']}; pass --arch {saved['arch']} to rebuild "
                                 "it (dil_fast does not import code a checkpoint names)")
            arch, kwargs = saved["arch"], dict(saved["kwargs"])
            sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
        elif arch is not None and is_custom_arch(arch):
            kwargs = dict(saved["kwargs"]) if saved is not None and saved.get("arch") == arch else {}
        else:
            found, kwargs, sd = arch_from_state_dict(sd)
            if arch is not None and arch != found:
                raise ValueError(f"it holds a {found} network, not --arch {arch}")
            arch = found
        kwargs.update(arch_kwargs or {})
        model = build_model(arch, kwargs)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    missing, unexpected = _load(model, sd)
    if missing or unexpected:
        raise ValueError(f"{path}: the {key} weights do not fit {arch} {kwargs} (missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]})")
    return model, arch, kwargs


def _load(model: nn.Module, sd: dict) -> tuple[list[str], list[str]]:
    try:
        result = model.load_state_dict(sd, strict=False)
    except RuntimeError as exc:  # shape mismatches
        msg = " ".join(str(exc).split())
        return [msg[:160]], []
    return list(result.missing_keys), list(result.unexpected_keys)
