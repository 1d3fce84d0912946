"""The stages a validated :class:`~dil_fast.train.config.TrainConfig` asks for: the model, the DIL
algorithm, the loader, the degradation stage and the test images. The loop
(:mod:`dil_fast.train.loop`) composes them; API users may hand it their own model and loader."""
from __future__ import annotations

import torch
from torch import nn

from ..checkpoints import is_train_state, model_weights
from ..errors import CheckpointError, FlagError
from ..meta import VARIANTS, MetaAlgorithm
from ..models import build_rrdb, infer_rrdb_config
from .config import DEFAULT_RRDB, TrainConfig

# the dispatcher ops each algorithm runs on its fused path (a forced backend must serve them)
ALGORITHM_OPS = {"sf": ("adam_step", "meta_step"), "pf": ("adam_step", "meta_step"), "erm": ("adam_step",),
                 "ss-fo": ("sgd_step",), "ss": (), "ps": ()}


def model_config(cfg: TrainConfig, resume_ckpt: dict | None) -> dict:
    """The RRDB configuration: inferred from ``--resume`` when given, ``--nf/--nb/--gc`` on top."""
    config = {"in_nc": 3, "out_nc": 3, **DEFAULT_RRDB, "x4": False}
    if resume_ckpt is not None:
        try:
            config = infer_rrdb_config(model_weights(resume_ckpt, cfg.resume))
        except ValueError as exc:
            raise CheckpointError(f"{cfg.resume}: {exc}") from None
    config.update(cfg.model_overrides())
    if is_train_state(resume_ckpt):
        saved = resume_ckpt.get("model_config") or {}
        if saved and saved != config:
            raise CheckpointError(f"{cfg.resume}: saved for model {saved}, not {config}")
    return config


def build_model(config: dict) -> nn.Module:
    return build_rrdb(config)


def build_algorithm(cfg: TrainConfig, model: nn.Module) -> MetaAlgorithm:
    """The ``--variant`` algorithm around ``model`` (the released computation with ``--reference_mode``)."""
    if cfg.reference_mode:
        from .reference_mode import ReferenceSF

        return ReferenceSF(model, inner_lr=cfg.lr, meta_lr=cfg.meta_lr, loss=cfg.loss)
    cls = VARIANTS[cfg.variant]
    common = dict(loss=cfg.loss, backend=cfg.backend, **cfg.variant_options)
    if cfg.variant == "erm":
        return cls(model, lr=cfg.lr, **common)
    if cfg.variant in ("sf", "pf"):
        return cls(model, inner_lr=cfg.lr, meta_lr=cfg.meta_lr, **common)
    return cls(model, meta_lr=cfg.meta_lr, **common)


def loader_kind(cfg: TrainConfig) -> str:
    """``--loader`` with ``auto`` decided: a packed store if ``--trainset`` is one, else the reference path."""
    from ..data.store import is_store

    if not cfg.trainset:
        raise FlagError("--trainset is required (a folder of PNG patches or a packed store)")
    kind = cfg.loader
    if kind == "auto":
        kind = "store" if is_store(cfg.trainset) else "reference"
    if cfg.reference_mode and kind != "reference":
        raise FlagError(f"--reference_mode reads a folder of PNG patches as released; --trainset {cfg.trainset} "
                        "is a packed store")
    if kind == "reference":
        if cfg.confounders:
            raise FlagError("--confounders needs --loader store or dali (the reference path only adds noise "
                            "at --levels, as released)")
        if cfg.pairing != "independent":
            raise FlagError("--pairing shared needs --loader store or dali")
    return kind


def build_loader(cfg: TrainConfig, device: torch.device, rank: int, world_size: int, num_confounders: int):
    """The ``--loader`` data source (``num_confounders`` clean batches per meta-iteration, or the
    released path's K noisy pairs)."""
    kind = loader_kind(cfg)
    if kind == "reference":
        from ..data.reference import ReferencePairLoader

        return ReferencePairLoader(
            cfg.trainset, cfg.levels, patch_size=cfg.patch_size, batch_size=cfg.batch_size, seed=cfg.seed,
            num_workers=cfg.num_workers, device=device, rank=rank, world_size=world_size, gpus=cfg.gpus,
        )
    if kind == "store":
        from ..data.store import PatchStore, StoreLoader, is_store

        if not is_store(cfg.trainset):
            raise FlagError(f"--loader store: --trainset {cfg.trainset} is not a packed store (make one with "
                            "dil-fast pack)")
        store = PatchStore(cfg.trainset, device, cfg.memory_budget)
        return StoreLoader(store, cfg.batch_size, cfg.patch_size, num_confounders, seed=cfg.seed, rank=rank,
                           world_size=world_size, backend=cfg.backend)
    from ..data.dali import DaliLoader

    return DaliLoader(cfg.trainset, cfg.batch_size, cfg.patch_size, num_confounders, device=device, seed=cfg.seed,
                      rank=rank, world_size=world_size, num_threads=max(cfg.num_workers, 1))


def load_testset(testset: str) -> list[tuple[str, "object"]]:
    """``[(file name, HxWx3 uint8)]`` sorted by name; ``"default"``: the built-in test images."""
    from .evaluate import load_test_images

    return load_test_images(testset)
