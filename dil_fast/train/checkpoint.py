"""Checkpoints: atomic writes, safe loads, and the two formats.

* model checkpoint ``model_{epoch}.pt``: exactly ``{"model_meta": state_dict, "model_task": state_dict}``,
  loadable by the released scripts (plain state_dicts, no ``module.`` prefix).
* training state ``state_{epoch}.pt`` / ``last.pt``: ``{"format": "dil_fast.train_state", ...}`` with
  both networks, both optimizers, counters, learning rates, RNG states and the data position,
  enough for a bitwise-exact resume.

Every file is written to a temporary name in the same folder and renamed, so a crash leaves either
the old file or the new one, never half of one. Loads use ``weights_only=True``.
"""
from __future__ import annotations

import io
import os
import tempfile

import torch

from ..errors import CheckpointError

TRAIN_STATE_FORMAT = "dil_fast.train_state"


def atomic_save(obj, path: str) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(data: bytes, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_file(path: str) -> dict:
    """Load a checkpoint file safely (``weights_only=True``); one-line :class:`CheckpointError` on failure."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        with open(path, "rb") as f:
            data = f.read()
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
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


def model_weights(ckpt: dict, path: str, key: str = "model_meta") -> dict:
    """The state_dict of one network from any supported checkpoint layout.

    Accepts the reference layout (``model_meta``/``model_task``), our training state (whose
    ``models`` entry holds the same keys) and a bare state_dict.
    """
    if ckpt.get("format") == TRAIN_STATE_FORMAT:
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
