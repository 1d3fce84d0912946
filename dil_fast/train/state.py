"""Checkpoint files and the training state: save, load, restore, resume.

Two formats:

* model checkpoint ``model_{epoch}.pt``: exactly ``{"model_meta": state_dict, "model_task": state_dict}``,
  loadable by the released scripts (plain state_dicts, no ``module.`` prefix);
* training state ``last.pt``: ``{"format": "dil_fast.train_state", ...}`` with both networks, the
  algorithm (both optimizers, counters, learning rates), the model config, the RNG states and the
  data position: enough for a bitwise-exact resume.

Every file is written atomically (:mod:`dil_fast.fileio`). Loads use ``weights_only=True``, so a
checkpoint that carries code is refused.
"""
from __future__ import annotations

import io
import os

import torch

from ..errors import CheckpointError
from ..fileio import atomic_save

__all__ = [
    "TRAIN_STATE_FORMAT", "atomic_save", "load_file", "strip_module_prefix", "is_state_dict", "model_weights",
    "load_into", "is_train_state", "capture", "restore",
]

TRAIN_STATE_FORMAT = "dil_fast.train_state"
STATE_VERSION = 1


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


# ------------------------------------------------------------------------------ the training state
def capture(*, config: dict, model_config: dict | None, algo, loader, epoch: int, iteration: int,
            world_size: int) -> dict:
    """The training state of a run at (epoch, iteration) of the loop."""
    state = {
        "format": TRAIN_STATE_FORMAT,
        "version": STATE_VERSION,
        "config": config,
        "model_config": model_config,
        "models": {"model_meta": algo.meta_model.state_dict(), "model_task": algo.task_model.state_dict()},
        "algorithm": algo.state_dict(),
        "epoch": epoch,
        "iteration": iteration,
        "world_size": world_size,
        "loader": loader.state_dict(),
        "rng": {"torch": torch.get_rng_state()},
    }
    if torch.cuda.is_available():
        state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(algo, ckpt: dict, path: str, *, world_size: int) -> tuple[int, int]:
    """Load a resume checkpoint into ``algo``; returns the (epoch, iteration) to continue from.

    A training state restores everything (the loader's position separately: :func:`restore_loader`);
    the released layout (or a bare state_dict) restores the weights only, as the released
    ``--resume`` does, and the run starts at epoch 0.
    """
    if is_train_state(ckpt):
        saved = ckpt.get("algorithm", {})
        if saved.get("variant") != algo.name:
            raise CheckpointError(f"{path}: a {saved.get('variant')!r} training state cannot resume "
                                  f"--variant {algo.name}")
        load_into(algo.meta_model, strip_module_prefix(saved["meta_model"]), path, "meta")
        try:
            algo.load_state_dict(saved)
        except (KeyError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: training state does not fit ({str(exc).splitlines()[0][:160]})") \
                from None
        old_ws = ckpt.get("world_size", 1)
        if old_ws != world_size:
            raise CheckpointError(f"{path}: saved with {old_ws} process(es), resumed with {world_size}; "
                                  "the data order would differ")
        rng = ckpt.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        return int(ckpt["epoch"]), int(ckpt["iteration"])
    meta_sd = model_weights(ckpt, path, "model_meta")
    load_into(algo.meta_model, meta_sd, path, "model_meta")
    if algo.task_model is not algo.meta_model:
        task_sd = model_weights(ckpt, path, "model_task") if "model_task" in ckpt else meta_sd
        load_into(algo.task_model, task_sd, path, "model_task")
    return 0, 0


def restore_loader(loader, ckpt: dict | None, path: str) -> None:
    """Put ``loader`` at the data position a training state saved (no-op for other checkpoints)."""
    if not is_train_state(ckpt) or "loader" not in ckpt:
        return
    try:
        loader.load_state_dict(ckpt["loader"])
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: data position does not fit this run ({exc})") from None
