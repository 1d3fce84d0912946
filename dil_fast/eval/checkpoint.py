"""Checkpoints to evaluate: ``path`` or ``label=path``, any layout
:func:`dil_fast.models.registry.model_from_checkpoint` reads, with the training state's config
kept (a sweep reads its training range from it)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..checkpoints import is_train_state, load_file
from ..errors import CheckpointError
from ..models.registry import model_from_checkpoint

__all__ = ["EvalCheckpoint", "parse_ckpt_arg", "load_checkpoint"]


@dataclass
class EvalCheckpoint:
    """A loaded network: ``label`` (the file stem or the given label), ``arch`` and ``kwargs`` it
    was built with, ``config`` the training state's run config (None for other layouts)."""

    label: str
    path: str
    model: torch.nn.Module
    arch: str
    kwargs: dict
    config: dict | None


def parse_ckpt_arg(text: str) -> tuple[str, str]:
    """``(label, path)`` of a ``--ckpt`` value: ``label=path``, or a path labelled by its file stem
    (an existing file whose name holds '=' is a path)."""
    label, sep, path = text.partition("=")
    if sep and label and path and not os.path.exists(text):
        return label, path
    return os.path.splitext(os.path.basename(text))[0] or text, text


def load_checkpoint(
    label: str, path: str, *, arch: str | None = None, arch_kwargs: dict | None = None, key: str = "model_meta"
) -> EvalCheckpoint:
    """Load ``path`` and build its ``key`` network (``arch``/``arch_kwargs`` override what the
    checkpoint says); :class:`CheckpointError` (one line naming the file) when it cannot."""
    ckpt = load_file(path)
    try:
        model, built_arch, kwargs = model_from_checkpoint(ckpt, path, key=key, arch=arch, arch_kwargs=arch_kwargs)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    except (KeyError, TypeError, AttributeError) as exc:  # a dict of the wrong shape where a layout was expected
        raise CheckpointError(f"{path}: not a model checkpoint ({type(exc).__name__}: {exc})") from None
    config = ckpt.get("config") if is_train_state(ckpt) and isinstance(ckpt.get("config"), dict) else None
    if config is None:  # model_N.pt: weights only; its run folder's options.json has the run's config
        config = run_folder_config(path)
    return EvalCheckpoint(label, path, model, built_arch, kwargs, config)


def run_folder_config(path: str) -> dict | None:
    """The ``config`` of the dil_fast run whose folder holds ``path`` (``options.json``, written at
    the run's start: the same mapping as a training state's ``config``), None when there is none."""
    import json

    try:
        with open(os.path.join(os.path.dirname(os.path.abspath(path)), "options.json"), encoding="utf-8") as f:
            config = json.load(f).get("config")
    except (OSError, ValueError, AttributeError):
        return None
    return config if isinstance(config, dict) else None
