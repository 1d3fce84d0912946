"""Reading checkpoint files: safe loads (``weights_only=True``: a checkpoint that carries code is
refused), the layouts of a model's weights, strict loading with one-line errors. Writing is
:mod:`dil_fast.fileio`; the training state is :mod:`dil_fast.train.state`."""
from __future__ import annotations

import io
import os

import torch

from .errors import CheckpointError

__all__ = ["TRAIN_STATE_FORMAT", "load_file", "strip_module_prefix", "is_state_dict", "is_train_state", "model_weights",
           "load_into"]

TRAIN_STATE_FORMAT = "dil_fast.train_state"


def load_file(path: str) -> dict:
    """Load a checkpoint file safely (``weights_only=True``); one-line :class:`CheckpointError` on failure."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        with open(path, "rb") as f:
            data = f.read()
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        text = str(exc).strip()
        if "Weights only load failed" in text:
            raise CheckpointError(
                f"{path}: refused: the file carries Python objects beyond tensors and plain containers, and "
                "loading it would run their code; dil_fast loads only weights (save the model's state_dict, "
                "or convert the file in a Python session you trust)") from None
        first = text.splitlines()[0] if text else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({first[:160]})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a checkpoint (holds a {type(obj).__name__}, expected a dict)")
    return obj


def strip_module_prefix(sd: dict) -> dict:
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def is_train_state(ckpt: dict | None) -> bool:
    return bool(ckpt) and ckpt.get("format") == TRAIN_STATE_FORMAT


def model_weights(ckpt: dict, path: str, key: str = "model_meta") -> dict:
    """The state_dict of one network from any supported checkpoint layout.

    Accepts the reference layout (``model_meta``/``model_task``), our training state (whose
    ``models`` entry holds the same keys) and a bare state_dict.
    """
    if is_train_state(ckpt):
        ckpt = ckpt["models"]
    if key in ckpt and is_state_dict(ckpt[key]):
        return strip_module_prefix(ckpt[key])
    if is_state_dict(ckpt):
        return strip_module_prefix(ckpt)
    raise CheckpointError(
        f"{path}: not a model checkpoint (no '{key}' state_dict; keys: {', '.join(map(str, list(ckpt)[:6]))})"
    )


def load_into(model: torch.nn.Module, sd: dict, path: str, what: str = "model") -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming the file when it does not fit."""
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        msg = " ".join(str(exc).split())
        raise CheckpointError(f"{path}: the {what} weights do not fit the model ({msg[:200]})") from None
