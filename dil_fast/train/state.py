"""The training state's content: what :func:`capture` puts in ``last.pt`` (both networks, the
algorithm with both optimizers, counters and learning rates, the model config, the RNG states and
the data position: enough for a bitwise-exact resume) and how :func:`restore` puts it back. File
names, layouts, reading and writing are :mod:`dil_fast.checkpoints`'.
"""

from __future__ import annotations

import torch

from ..checkpoints import TRAIN_STATE_FORMAT, is_train_state, load_into, model_weights, save, strip_module_prefix
from ..errors import CheckpointError, TrainingStopped

__all__ = ["capture", "check_finite_weights", "restore", "restore_ema", "restore_loader", "save_in"]

STATE_VERSION = 1


# ------------------------------------------------------------------------------ the training state
def capture(
    *, config: dict, model_config: dict | None, algo, loader, epoch: int, iteration: int, world_size: int, ema=None
) -> dict:
    """The training state of a run at (epoch, iteration) of the loop (``ema``: the run's
    :class:`~dil_fast.train.ema.ModelEMA`, saved as ``models["params_ema"]``)."""
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
    if ema is not None:
        state["models"]["params_ema"] = ema.state_dict()
    if torch.cuda.is_available():
        state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_ema(ema, ckpt: dict, path: str) -> None:
    """Put back the EMA a training state saved; a checkpoint without one (weights only, or a run
    without ``--ema``) starts the average from the restored weights."""
    saved = ckpt.get("models", {}).get("params_ema") if is_train_state(ckpt) else ckpt.get("params_ema")
    if not isinstance(saved, dict):
        ema.reset()
        return
    load_into(ema.model, strip_module_prefix(saved), path, "params_ema")


def restore(algo, ckpt: dict, path: str, *, world_size: int, weights: dict | None = None) -> tuple[int, int]:
    """Load a resume checkpoint into ``algo``; returns the (epoch, iteration) to continue from.

    A training state restores everything (the loader's position separately: :func:`restore_loader`);
    the released layout (or a bare state_dict) restores the weights only, as the released
    ``--resume`` does, and the run starts at epoch 0. ``weights``: the meta network's weights
    already in dil_fast's names (a BasicSR / SwinIR checkpoint, renamed by the model registry).
    """
    if is_train_state(ckpt):
        saved = ckpt.get("algorithm", {})
        if saved.get("variant") != algo.name:
            raise CheckpointError(
                f"{path}: a {saved.get('variant')!r} training state cannot resume --variant {algo.name}"
            )
        load_into(algo.meta_model, strip_module_prefix(saved["meta_model"]), path, "meta")
        try:
            algo.load_state_dict(saved)
        except (KeyError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: training state does not fit ({str(exc).splitlines()[0][:160]})") from None
        old_ws = ckpt.get("world_size", 1)
        if old_ws != world_size:
            raise CheckpointError(
                f"{path}: saved with {old_ws} process(es), resumed with {world_size}; the data order would differ"
            )
        rng = ckpt.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        return int(ckpt["epoch"]), int(ckpt["iteration"])
    meta_sd = weights if weights is not None else model_weights(ckpt, path, "model_meta")
    load_into(algo.meta_model, meta_sd, path, "model_meta")
    if algo.task_model is not algo.meta_model:
        task_sd = model_weights(ckpt, path, "model_task") if isinstance(ckpt.get("model_task"), dict) else meta_sd
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


def save_in(folder: str, obj, name: str) -> None:
    """``obj`` to ``folder/name`` (:func:`dil_fast.checkpoints.save`: atomic, one line when it fails)."""
    save(obj, folder, name)


def check_finite_weights(algo, folder: str) -> None:
    """No checkpoint is written with a non-finite value: the weights and buffers of both networks
    and the whole algorithm state (both optimizers' moments, inner-step moments) are checked
    before a write, with one host sync per device (at a checkpoint, never per step)."""
    named = dict(_float_tensors(algo.state_dict(), "algorithm"))  # holds both networks' state_dicts too
    by_device: dict = {}
    for t in named.values():
        by_device.setdefault(t.device, []).append(t)
    if all(bool(torch.stack([torch.isfinite(t).all() for t in ts]).all()) for ts in by_device.values()):
        return
    bad = [name for name, t in named.items() if not bool(torch.isfinite(t).all())]
    nets = ("algorithm.meta_model.", "algorithm.task_model.")
    what = "weights" if all(n.startswith(nets) for n in bad) else "optimizer state"
    raise TrainingStopped(
        f"the {what} became non-finite ({len(bad)} tensor(s), e.g. {bad[0]}); no checkpoint was written with "
        f"them (the last good one in {folder} is kept); lower --lr / --meta_lr"
    )


def _float_tensors(obj, prefix: str):
    """``(dotted name, tensor)`` of every floating-point tensor in nested dicts and lists."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and obj.numel():
            yield prefix, obj.detach()
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _float_tensors(value, f"{prefix}.{key}")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _float_tensors(value, f"{prefix}.{i}")


def resume_notes(ckpt: dict, config: dict, algo) -> list[str]:
    """Lines saying which learning-rate flags a resumed training state does not take: it continues
    with the rates its optimizers saved (an exact resume), so a ``--lr`` or ``--meta_lr`` that
    differs from the one the run started with is not used."""
    if not is_train_state(ckpt):
        return []
    saved = ckpt.get("config", {})
    notes = []
    for flag, now in (("lr", algo.task_lr), ("meta_lr", algo.meta_lr)):
        given, before = config.get(flag), saved.get(flag)
        if given is not None and before is not None and float(given) != float(before):
            notes.append(
                f"--{flag} {float(given):g} is not used: the training state continues at its own {now:g} "
                f"(it was started with --{flag} {float(before):g}; an exact resume keeps the optimizer state); "
                "to change it, start a new run from the weights (--resume model_N.pt)"
            )
    return notes
