"""Checkpoint files, in one place: their names, their layouts, reading them, writing them, and when
the trainer writes which.

Names: ``model_{epoch}.pt`` (:func:`model_file`) and ``last.pt`` (:data:`LAST`) in a run folder.

Layouts (:func:`layout_of`) of what a file holds:

* ``"train_state"``: dil_fast's training state (``{"format": TRAIN_STATE_FORMAT, "models": {...},
  "algorithm": ..., "model_config": ...}``: both networks, the optimizers, the RNG and data
  position; an exact resume, :mod:`dil_fast.train.state` fills it);
* ``"released"``: the released trainer's model checkpoint, exactly ``{"model_meta": state_dict,
  "model_task": state_dict}``, loadable by the released scripts (dil_fast may add ``params_ema`` and,
  for a network its weights alone would be read as another one, ``model_config``: the released
  scripts read only their two keys);
* ``"basicsr"``: BasicSR / Real-ESRGAN / SwinIR's ``{"params": ..., "params_ema": ...}``
  (``params_ema`` preferred);
* ``"state_dict"``: a bare state_dict.

The parameter *names* inside (dil_fast's or BasicSR's RRDB names, SwinIR's) belong to each
architecture (:data:`dil_fast.models.ARCHS` recognises them). Reads are safe loads
(``weights_only=True``: a file that carries code is refused) with one-line errors; writes are
atomic (:mod:`dil_fast.fileio`), and a failed write is one line that keeps the last checkpoint.
"""

from __future__ import annotations

import io
import os
import warnings

import torch

from .errors import CheckpointError, InputError
from .fileio import atomic_save

__all__ = [
    "TRAIN_STATE_FORMAT",
    "LAST",
    "LAYOUTS",
    "model_file",
    "is_checkpoint_name",
    "saves_model_checkpoint",
    "load_file",
    "layout_of",
    "network_state",
    "strip_module_prefix",
    "is_state_dict",
    "is_train_state",
    "model_weights",
    "load_into",
    "released_checkpoint",
    "basicsr_checkpoint",
    "save",
    "save_model_checkpoint",
    "save_train_state",
]

TRAIN_STATE_FORMAT = "dil_fast.train_state"
LAST = "last.pt"  # the training state of a run folder, after every epoch and at every stop
LAYOUTS = ("train_state", "released", "basicsr", "state_dict")
_WRAPPERS = ("params_ema", "params")  # BasicSR's keys, the EMA network preferred


# ---------------------------------------------------------------------------------- names, policy
def model_file(epoch: int) -> str:
    """The model checkpoint after ``epoch`` epochs: ``model_{epoch}.pt`` (the released name)."""
    return f"model_{int(epoch)}.pt"


def is_checkpoint_name(name: str) -> bool:
    """True for the names the trainer writes checkpoints under (``last.pt``, ``model_N.pt``)."""
    return name == LAST or (name.startswith("model_") and name.endswith(".pt"))


def saves_model_checkpoint(epoch: int, save_every: int) -> bool:
    """The save policy (as released): ``model_{epoch + 1}.pt`` after 0-based epoch ``epoch`` when
    ``epoch % save_every == 0``; the training state goes to ``last.pt`` after every epoch."""
    return epoch % save_every == 0


# ---------------------------------------------------------------------------------- reading
def load_file(path: str) -> dict:
    """Load a checkpoint file safely (``weights_only=True``); one-line :class:`CheckpointError` on failure."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        with open(path, "rb") as f:
            data = f.read()
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": chatter before the one line
            warnings.simplefilter("ignore")
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        text = str(exc).strip()
        if "Weights only load failed" in text:
            raise CheckpointError(
                f"{path}: refused: the file carries Python objects beyond tensors and plain containers, and "
                "loading it would run their code; dil_fast loads only weights (save the model's state_dict, "
                "or convert the file in a Python session you trust)"
            ) from None
        first = text.splitlines()[0] if text else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({first[:160]})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a checkpoint (holds a {type(obj).__name__}, expected a dict)")
    return obj


def strip_module_prefix(sd: dict) -> dict:
    """A state_dict without DDP's ``module.`` prefix."""
    return {k[len("module.") :] if isinstance(k, str) and k.startswith("module.") else k: v for k, v in sd.items()}


def is_state_dict(obj) -> bool:
    return (
        isinstance(obj, dict)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def is_train_state(ckpt: dict | None) -> bool:
    return bool(ckpt) and ckpt.get("format") == TRAIN_STATE_FORMAT


def layout_of(ckpt: dict) -> str:
    """Which of :data:`LAYOUTS` a loaded checkpoint is (see the module doc)."""
    if is_train_state(ckpt):
        return "train_state"
    if isinstance(ckpt.get("model_meta"), dict):
        return "released"  # (with params_ema beside when the run kept an EMA)
    if any(isinstance(ckpt.get(k), dict) for k in _WRAPPERS):
        return "basicsr"
    return "state_dict"


def network_state(ckpt: dict, key: str = "model_meta") -> tuple[dict, dict | None]:
    """``(state_dict, saved model config or None)`` of one network of a loaded checkpoint of any
    layout: ``key`` ("model_meta" / "model_task" / "params_ema") of a training state or a released
    checkpoint, ``params_ema`` / ``params`` of a BasicSR one, else the bare state_dict; no
    ``module.`` prefix. The model config is the training state's (``{"arch": ..., "kwargs": ...}``).
    ValueError when ``key`` is ``params_ema`` and the checkpoint holds no EMA."""
    layout = layout_of(ckpt)
    saved = None
    if key == "params_ema":
        found = ckpt.get("models", {}).get(key) if layout == "train_state" else ckpt.get(key)
        if not isinstance(found, dict):
            raise ValueError("it holds no EMA weights (params_ema): the run was trained without --ema")
        if layout == "train_state":
            return network_state({**ckpt, "models": {**ckpt["models"], "model_meta": found}})
        return strip_module_prefix(found), _carried_config(ckpt)
    if layout == "train_state":
        saved = ckpt.get("model_config")
        if isinstance(saved, dict) and saved and "arch" not in saved:  # states from before --arch: an RRDB
            saved = {
                "arch": "rrdb_x4" if saved.get("x4") else "rrdb",
                "kwargs": {k: v for k, v in saved.items() if k != "x4"},
            }
        sd = ckpt["models"][key]
    elif layout == "basicsr":
        sd = next(ckpt[k] for k in _WRAPPERS if isinstance(ckpt.get(k), dict))
        sd = sd.get(key, sd) if isinstance(sd.get(key), dict) else sd
    elif layout == "released":
        sd = ckpt[key] if isinstance(ckpt.get(key), dict) else ckpt["model_meta"]
        saved = _carried_config(ckpt)
    else:
        sd = ckpt
    return strip_module_prefix(sd), (saved or None)


def _carried_config(ckpt: dict) -> dict | None:
    """The ``model_config`` a released-layout checkpoint of dil_fast's carries (see
    :func:`released_checkpoint`), None when it carries none or something else under that key."""
    spec = ckpt.get("model_config")
    ok = isinstance(spec, dict) and isinstance(spec.get("arch"), str) and isinstance(spec.get("kwargs"), dict)
    return {"arch": spec["arch"], "kwargs": dict(spec["kwargs"])} if ok else None


def model_weights(ckpt: dict, path: str, key: str = "model_meta") -> dict:
    """The state_dict of one network (the released layout, a training state or a bare state_dict);
    one-line :class:`CheckpointError` naming ``path`` otherwise."""
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


# ---------------------------------------------------------------------------------- writing
def _plain(sd: dict) -> dict:
    """A state_dict of standard (NCHW-contiguous) tensors: weights kept channels-last in the flat
    buffers (``--channels_last_weights``) are written in the layout every reader expects."""
    return {k: (v if not isinstance(v, torch.Tensor) or v.is_contiguous() else v.contiguous()) for k, v in sd.items()}


def released_checkpoint(
    meta_sd: dict, task_sd: dict | None = None, ema_sd: dict | None = None, model_config: dict | None = None
) -> dict:
    """The released layout: ``{"model_meta": ..., "model_task": ...}`` (one network in both roles
    when ``task_sd`` is None), plus ``params_ema`` (BasicSR's name) when there is an EMA and
    ``model_config`` (``{"arch", "kwargs"}``) when given: :func:`dil_fast.models.registry.spec_to_carry`
    gives it for a network its weights alone would be read as another one (an RRDB with a global
    skip), so eval, restore, convert and ``--resume`` rebuild the right one from the file alone. The
    released scripts read only their two keys."""
    meta = _plain(strip_module_prefix(meta_sd))
    out = {"model_meta": meta, "model_task": meta if task_sd is None else _plain(strip_module_prefix(task_sd))}
    if ema_sd is not None:
        out["params_ema"] = _plain(strip_module_prefix(ema_sd))
    if model_config is not None:
        out["model_config"] = {"arch": str(model_config["arch"]), "kwargs": dict(model_config["kwargs"])}
    return out


def basicsr_checkpoint(sd: dict) -> dict:
    """BasicSR's layout, ``{"params": state_dict}`` (the names already BasicSR's)."""
    return {"params": _plain(strip_module_prefix(sd))}


def save(obj, folder: str, name: str, flag: str = "--ckpt_save") -> str:
    """``obj`` to ``folder/name`` atomically; returns the path. A write that fails (a folder that is
    not writable or not a folder, a name that is a folder, a full disk) is one :class:`InputError`
    line naming ``flag`` and the reason, and nothing is left half-written (an earlier file of that
    name is kept)."""
    path = os.path.join(folder, name)
    if os.path.isdir(path):
        raise InputError(f"{flag}: cannot write {path}: it is a folder (give a file name)")
    try:
        atomic_save(obj, path)
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError
        raise InputError(
            f"{flag}: cannot write {path} ({_write_failure(exc, folder)}); nothing was written "
            f"(an earlier {name} there is kept)"
        ) from None
    return path


def _write_failure(exc: BaseException, folder: str) -> str:
    """Why a write failed, in words: the OS error behind it (torch.save wraps the one its file
    raised, e.g. a full disk, in a RuntimeError about stream positions), else the first line."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        return f"{folder} is a file, not a folder"
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    return " ".join(str(exc).split())[:160] or type(exc).__name__


def save_model_checkpoint(
    folder: str,
    epoch: int,
    meta_sd: dict,
    task_sd: dict,
    ema_sd: dict | None = None,
    model_config: dict | None = None,
) -> str:
    """``model_{epoch}.pt`` in the released layout (the released scripts load it), with
    ``params_ema`` when the run keeps an EMA and ``model_config`` when given (see
    :func:`released_checkpoint`)."""
    return save(released_checkpoint(meta_sd, task_sd, ema_sd, model_config), folder, model_file(epoch))


def save_train_state(folder: str, state: dict) -> str:
    """The training state (:func:`dil_fast.train.state.capture`) as ``last.pt``."""
    return save(state, folder, LAST)
