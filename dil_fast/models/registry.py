"""Architectures by name (``--arch``) and the one way to turn any supported checkpoint into a model.

:data:`ARCHS` holds every architecture; each model module registers its own with
:func:`register_arch` (its class, default keyword arguments, which of ``--nf --nb --gc`` size it,
and how to recognise its state_dict). ``--arch NAME`` with ``--arch_kwargs`` (JSON keyword
arguments), or ``--arch package.module:Class`` for one's own ``nn.Module`` (or a registered one from
a ``--plugin`` module). The training state stores the
architecture and its keyword arguments (:func:`model_spec`), so evaluation and resume rebuild it.
A checkpoint that names one's own class is rebuilt only when ``--arch`` names it again: dil_fast
never imports code because a checkpoint asks for it.

Checkpoints read by :func:`model_from_checkpoint`: our training state; the released layout
(``model_meta`` / ``model_task``); a bare state_dict; BasicSR / Real-ESRGAN (``params`` /
``params_ema``, keys ``body.N.rdbK.convJ``: scale 4 as ``rrdb_x4`` through
:mod:`dil_fast.models.interchange`, the pixel-unshuffle scales 1 and 2 as ``rrdb_basicsr``);
official or BasicSR SwinIR (``params``). The layout is detected from the keys.
"""

from __future__ import annotations

import importlib
import json

from torch import nn

from ..registry import Registry

__all__ = [
    "ARCHS",
    "register_arch",
    "build_model",
    "model_spec",
    "parse_arch_kwargs",
    "arch_from_state_dict",
    "model_from_checkpoint",
    "model_scale",
    "is_custom_arch",
    "size_kwargs",
]

#: architectures by ``--arch`` name (see :func:`register_arch`)
ARCHS = Registry("architecture", "--arch")
SIZE_FLAGS = ("nf", "nb", "gc")  # the released trainer's RRDB size flags


def register_arch(
    name: str,
    cls: type,
    *,
    defaults: dict | None = None,
    size_flags: tuple[str, ...] = (),
    recognise=None,
    keys_hint: str = "",
    basicsr=None,
) -> type:
    """Register architecture ``name``: ``cls`` built with ``defaults`` updated by ``--arch_kwargs``;
    ``size_flags``: which of ``--nf --nb --gc`` it takes as keyword arguments of the same names;
    ``recognise(state_dict) -> (kwargs, state_dict in its own names) or None``: its checkpoints,
    told from the keys (``keys_hint``: what it looks for, for the refusal of an unknown one);
    ``basicsr(state_dict) -> state_dict in BasicSR's names``: the same network in BasicSR's
    ``basicsr/archs`` (``dil-fast convert --to basicsr``), None when BasicSR has no such network."""
    return ARCHS.register(
        name,
        cls,
        defaults=dict(defaults or {}),
        size_flags=tuple(size_flags),
        recognise=recognise,
        keys_hint=keys_hint,
        basicsr=basicsr,
    )


def size_kwargs(arch: str, overrides: dict) -> dict:
    """The ``--nf/--nb/--gc`` values (``overrides``) that size ``arch``; ValueError when it takes none."""
    if not overrides:
        return {}
    takes = ARCHS[arch].size_flags if arch in ARCHS else ()
    if not takes:
        raise ValueError(f"--nf/--nb/--gc size an RRDB; --arch {arch} takes --arch_kwargs")
    return {k: v for k, v in overrides.items() if k in takes}


def is_custom_arch(arch: str) -> bool:
    return ":" in arch


def parse_arch_kwargs(text: str | None, flag: str = "--arch_kwargs") -> dict:
    """``--arch_kwargs`` JSON -> dict (ValueError with one line naming the flag)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f'{flag}: not JSON ({exc.msg} at character {exc.pos}); e.g. \'{{"nf": 32, "nb": 4}}\''
        ) from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag}: expected a JSON object of keyword arguments, got {type(value).__name__}")
    return value


def _custom_class(arch: str) -> type:
    module, _, name = arch.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError, TypeError) as exc:  # ".x" / "" raise ValueError/TypeError
        raise ValueError(f"--arch {arch}: cannot import {name} from {module} ({exc})") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"--arch {arch}: {name} is not an nn.Module class")
    return cls


def build_model(arch: str, kwargs: dict | None = None) -> nn.Module:
    """The network ``arch`` names, built with its registered defaults updated by ``kwargs``."""
    kwargs = dict(kwargs or {})
    if is_custom_arch(arch):
        cls = _custom_class(arch)
    elif arch in ARCHS:
        entry = ARCHS[arch]
        cls, kwargs = entry.obj, {**entry.defaults, **kwargs}
    else:
        raise ValueError(f"--arch {arch}: not one of {', '.join(ARCHS.names())} (or package.module:Class)")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"--arch {arch}: bad --arch_kwargs ({exc})") from None


def model_spec(arch: str, kwargs: dict) -> dict:
    """What the training state stores to rebuild the model: the architecture and its keyword
    arguments, the registered defaults filled in (so two specs of one network compare equal)."""
    defaults = ARCHS[arch].defaults if arch in ARCHS else {}
    return {"arch": arch, "kwargs": {**defaults, **kwargs}}


def spec_to_carry(spec: dict | None, sd: dict) -> dict | None:
    """``spec`` (``{"arch", "kwargs"}``) when a model checkpoint must carry it, None when its weights
    ``sd`` alone rebuild the same network: a registered architecture recognises them with the same
    keyword arguments (the class's and the registered defaults filled in on both sides). An RRDB
    with a global skip (``residual``) has the weights of one without, and a ``--arch
    package.module:Class`` network is recognised by none: their checkpoints carry the spec."""
    if spec is None:
        return None
    try:
        found, kwargs, _ = arch_from_state_dict(sd)
    except ValueError:
        return model_spec(spec["arch"], spec["kwargs"])
    if found == spec["arch"] and _full_kwargs(found, kwargs) == _full_kwargs(found, spec["kwargs"]):
        return None
    return model_spec(spec["arch"], spec["kwargs"])


def _full_kwargs(arch: str, kwargs: dict) -> dict:
    """``kwargs`` with the class's signature defaults and the registered defaults filled in."""
    import inspect

    params = inspect.signature(ARCHS[arch].obj).parameters.values() if arch in ARCHS else ()
    signature = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    return {**signature, **(ARCHS[arch].defaults if arch in ARCHS else {}), **kwargs}


def model_scale(model: nn.Module) -> int:
    """The network's output / input size (an ``upscale`` attribute, 1 when absent)."""
    return int(getattr(model, "upscale", 1) or 1)


def arch_from_state_dict(sd: dict) -> tuple[str, dict, dict]:
    """``(arch, kwargs, state_dict in the architecture's names)`` of a state_dict a registered
    architecture recognises (an RRDB in dil_fast's or BasicSR's names, a SwinIR, ...); ValueError
    with the keys each one looks for otherwise."""
    from ..checkpoints import strip_module_prefix

    sd = strip_module_prefix(sd)
    for entry in ARCHS.entries():
        if entry.recognise is None:
            continue
        found = entry.recognise(sd)
        if found is not None:
            kwargs, own = found
            return entry.name, kwargs, own
    hints = "; ".join(f"{e.name}: {e.keys_hint}" for e in ARCHS.entries() if e.keys_hint)
    raise ValueError(f"not a network dil_fast knows (keys {', '.join(list(sd)[:3])}, ...; expected {hints})")


def model_from_checkpoint(
    ckpt: dict,
    path: str,
    *,
    key: str = "model_meta",
    arch: str | None = None,
    arch_kwargs: dict | None = None,
    spec: dict | None = None,
) -> tuple[nn.Module, str, dict]:
    """``(model with the weights loaded, arch, kwargs)`` from a loaded checkpoint of any supported
    layout (see the module docstring). ``arch``/``arch_kwargs`` (``--arch``) override what the
    checkpoint says; ``spec`` (``{"arch", "kwargs"}``, e.g. the run folder's record of a
    ``model_N.pt``) stands for the training state's model config when the checkpoint carries none.
    ValueError (one line, naming ``path``) when it cannot be done."""
    from ..checkpoints import network_state

    try:
        sd, saved = network_state(ckpt, key)
        saved = saved or spec
        if arch is None and saved is not None:
            if is_custom_arch(saved["arch"]):
                raise ValueError(
                    f"it was trained with --arch {saved['arch']}; pass --arch {saved['arch']} to rebuild "
                    "it (dil_fast does not import code a checkpoint names)"
                )
            arch, kwargs = saved["arch"], dict(saved["kwargs"])
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
        raise ValueError(
            f"{path}: the {key} weights do not fit {arch} {kwargs} (missing {missing[:4]}, unexpected {unexpected[:4]})"
        )
    return model, arch, kwargs


def _load(model: nn.Module, sd: dict) -> tuple[list[str], list[str]]:
    try:
        result = model.load_state_dict(sd, strict=False)
    except RuntimeError as exc:  # shape mismatches
        msg = " ".join(str(exc).split())
        return [msg[:160]], []
    return list(result.missing_keys), list(result.unexpected_keys)
