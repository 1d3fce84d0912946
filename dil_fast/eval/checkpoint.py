"""Checkpoints to evaluate: ``path`` or ``label=path``, any layout
:func:`dil_fast.models.registry.model_from_checkpoint` reads, with the training state's config
kept (a sweep reads its training range from it).

A ``model_N.pt`` holds weights only; the dil_fast run whose folder holds it recorded which network
it is (``options.json``'s ``resolved.model``, else ``last.pt``'s model config). With
``run_folder=True`` that record builds the network when ``--arch`` is not given (or names the same
architecture): a registered architecture is rebuilt with the run's keyword arguments (those the
weights do not show, such as SwinIR's ``img_range``, included); one's own ``package.module:Class``
is refused in one line naming the ``--arch`` to pass (dil_fast imports no code that a file names),
and with that ``--arch`` it is built with the run's keyword arguments. A file the record does not
fit (weights from elsewhere dropped into the folder) is read from its keys as any other.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

from ..checkpoints import LAST, is_train_state, load_file, network_state
from ..errors import CheckpointError
from ..models.registry import model_from_checkpoint

__all__ = ["EvalCheckpoint", "parse_ckpt_arg", "load_checkpoint", "run_folder_config", "run_folder_model"]


@dataclass
class EvalCheckpoint:
    """A loaded network: ``label`` (the file stem or the given label), ``arch`` and ``kwargs`` it
    was built with, ``config`` the training state's run config (None for other layouts),
    ``described_by`` the run-folder file that said how to build it (None: the checkpoint itself)."""

    label: str
    path: str
    model: torch.nn.Module
    arch: str
    kwargs: dict
    config: dict | None
    described_by: str | None = None


def parse_ckpt_arg(text: str) -> tuple[str, str]:
    """``(label, path)`` of a ``--ckpt`` value: ``label=path``, or a path labelled by its file stem
    (an existing file whose name holds '=' is a path)."""
    label, sep, path = text.partition("=")
    if sep and label and path and not os.path.exists(text):
        return label, path
    return os.path.splitext(os.path.basename(text))[0] or text, text


def load_checkpoint(
    label: str,
    path: str,
    *,
    arch: str | None = None,
    arch_kwargs: dict | None = None,
    key: str = "model_meta",
    run_folder: bool = False,
) -> EvalCheckpoint:
    """Load ``path`` and build its ``key`` network (``arch``/``arch_kwargs`` override what the
    checkpoint says; ``run_folder``: a weights-only file's run folder says which network it is, see
    the module doc); :class:`CheckpointError` (one line naming the file) when it cannot."""
    ckpt = load_file(path)
    record = run_folder_model(path) if run_folder and not is_train_state(ckpt) else None
    if record is not None and arch not in (None, record[1]["arch"]):
        record = None  # --arch names another network than the run's
    try:
        model, built_arch, kwargs, described_by = _build(ckpt, path, key, arch, arch_kwargs, record)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    except (KeyError, TypeError, AttributeError) as exc:  # a dict of the wrong shape where a layout was expected
        raise CheckpointError(f"{path}: not a model checkpoint ({type(exc).__name__}: {exc})") from None
    config = ckpt.get("config") if is_train_state(ckpt) and isinstance(ckpt.get("config"), dict) else None
    if config is None:  # model_N.pt: weights only; its run folder's options.json has the run's config
        config = run_folder_config(path)
    return EvalCheckpoint(label, path, model, built_arch, kwargs, config, described_by)


def _build(ckpt: dict, path: str, key: str, arch, arch_kwargs, record) -> tuple:
    """``(model, arch, kwargs, described_by)``: as the run folder's ``record`` says when there is one
    and the weights fit it, else as the checkpoint says (the record's error when neither works)."""
    if record is None:
        return (*model_from_checkpoint(ckpt, path, key=key, arch=arch, arch_kwargs=arch_kwargs), None)
    try:
        return (
            *model_from_checkpoint(ckpt, path, key=key, arch=arch, arch_kwargs=arch_kwargs, spec=record[1]),
            record[0],
        )
    except ValueError as exc:
        first = exc
    try:  # weights the record does not fit (a foreign file dropped into the run folder)
        return (*model_from_checkpoint(ckpt, path, key=key, arch=arch, arch_kwargs=arch_kwargs), None)
    except ValueError:
        raise first from None


def run_folder_model(path: str) -> tuple[str, dict] | None:
    """``(file, {"arch", "kwargs"})``: the network the dil_fast run whose folder holds ``path``
    recorded (``options.json``'s ``resolved.model``, written at the run's start; else the model
    config of the folder's ``last.pt``); None when there is no such record."""
    folder = os.path.dirname(os.path.abspath(path))
    options = os.path.join(folder, "options.json")
    try:
        with open(options, encoding="utf-8") as f:
            spec = json.load(f).get("resolved", {}).get("model")
    except (OSError, ValueError, AttributeError):
        spec = None
    if _is_spec(spec):
        return options, spec
    last = os.path.join(folder, LAST)
    if os.path.abspath(path) == last or not os.path.isfile(last):
        return None
    try:
        state = load_file(last)
        spec = network_state(state)[1] if is_train_state(state) else None
    except (CheckpointError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return (last, spec) if _is_spec(spec) else None


def _is_spec(spec) -> bool:
    return isinstance(spec, dict) and isinstance(spec.get("arch"), str) and isinstance(spec.get("kwargs"), dict)


def run_folder_config(path: str) -> dict | None:
    """The ``config`` of the dil_fast run whose folder holds ``path`` (``options.json``, written at
    the run's start: the same mapping as a training state's ``config``), None when there is none."""
    try:
        with open(os.path.join(os.path.dirname(os.path.abspath(path)), "options.json"), encoding="utf-8") as f:
            config = json.load(f).get("config")
    except (OSError, ValueError, AttributeError):
        return None
    return config if isinstance(config, dict) else None
