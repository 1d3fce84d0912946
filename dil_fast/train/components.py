"""The stages a validated :class:`~dil_fast.train.config.TrainConfig` asks for: the model, the DIL
algorithm, the loader, the confounders and the test images. The loop
(:mod:`dil_fast.train.loop`) composes them; API users may hand it their own model and loader."""

from __future__ import annotations

import os

import numpy as np
from torch import nn

from ..checkpoints import is_train_state, network_state
from ..errors import CheckpointError, FlagError, InputError
from ..meta import MetaAlgorithm
from ..models.registry import (
    arch_from_state_dict,
    build_model,
    is_custom_arch,
    model_scale,
    model_spec,
    parse_arch_kwargs,
    size_kwargs,
)
from .config import TrainConfig


def model_spec_for(cfg: TrainConfig, resume_ckpt: dict | None) -> tuple[dict, dict | None]:
    """``(spec, weights)``: the architecture and keyword arguments to build (the training state's
    when resuming one, inferred from a released / BasicSR / SwinIR checkpoint's keys, else
    ``--arch`` / ``--arch_kwargs`` / ``--nf --nb --gc``), and the weights a weights-only
    checkpoint gives (in dil_fast's names), or None."""
    arch = cfg.arch_name()
    kwargs = {**parse_arch_kwargs(cfg.arch_kwargs), **size_kwargs(arch, cfg.model_overrides())}
    if resume_ckpt is None:
        return model_spec(arch, kwargs), None
    meta, saved = network_state(resume_ckpt, "model_meta")
    if is_train_state(resume_ckpt):
        wanted = model_spec(arch, kwargs)
        if saved and (cfg.arch or cfg.arch_kwargs or cfg.model_overrides()) and saved != wanted:
            raise CheckpointError(f"{cfg.resume}: saved for model {saved}, not {wanted}")
        if saved and is_custom_arch(saved["arch"]) and not cfg.arch:
            raise CheckpointError(
                f"{cfg.resume} was trained with --arch {saved['arch']}; pass it again to resume "
                "(dil_fast does not import code a checkpoint names)"
            )
        return (saved or wanted), None
    try:
        if saved is not None and not is_custom_arch(saved["arch"]):  # a model_N.pt that says which network
            found, found_kwargs, weights = saved["arch"], dict(saved["kwargs"]), meta
        else:
            found, found_kwargs, weights = arch_from_state_dict(meta)
    except ValueError as exc:
        raise CheckpointError(f"{cfg.resume}: {exc}") from None
    if cfg.arch and cfg.arch != found:
        raise CheckpointError(f"{cfg.resume}: holds a {found} network, not --arch {cfg.arch}")
    try:
        found_kwargs.update(size_kwargs(found, cfg.model_overrides()))
    except ValueError as exc:
        raise CheckpointError(f"{cfg.resume}: holds a {found} network: {exc}") from None
    return model_spec(found, found_kwargs), weights


def build_models(spec: dict, cfg: TrainConfig, device=None) -> tuple[nn.Module, nn.Module | None]:
    """``(meta model, task model or None)``. As the released trainer, the task network is built
    first and the meta network second from the seeded RNG, so the same ``--seed`` gives the same
    initial weights of both; variants without a task network use the second draw alike.

    A network that cannot be built is one :class:`FlagError` naming the flags that sized it: bad
    keyword arguments, and a network too large for the memory, refused by its parameter count
    (counted on the meta device, which allocates nothing) before any allocation: two float32
    copies must fit the host's memory, where they are built, and one network's weights, gradients
    and Adam moments the training ``device``'s."""
    source = _model_source(cfg, spec)
    _check_model_fits(spec, source, device)
    try:
        task = build_model(spec["arch"], spec["kwargs"])
        meta = build_model(spec["arch"], spec["kwargs"])
    except (ValueError, TypeError) as exc:
        text = " ".join(str(exc).split())
        raise FlagError(text if text.startswith("--") else f"{source}: {text}") from None
    except (RuntimeError, MemoryError) as exc:  # an allocation the count did not foresee (a custom network)
        if not isinstance(exc, MemoryError) and "allocate" not in str(exc):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise FlagError(f"{source}: the network does not fit in memory ({first[:200]})") from None
    return meta, task


def _model_source(cfg: TrainConfig, spec: dict) -> str:
    """The flags (or the checkpoint) that chose the network's size, for an error line."""
    if cfg.arch_kwargs:
        return f"--arch_kwargs {cfg.arch_kwargs}"
    if cfg.model_overrides():
        return " ".join(f"--{k} {v}" for k, v in cfg.model_overrides().items())
    if cfg.resume:
        return f"--resume {cfg.resume} (a {spec['arch']} network of {spec['kwargs']})"
    return f"--arch {spec['arch']}"


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def _check_model_fits(spec: dict, source: str, device) -> None:
    import torch

    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):  # no memory, and no draw from the seeded RNG
            count = sum(p.numel() for p in build_model(spec["arch"], spec["kwargs"]).parameters())
    except Exception:  # noqa: BLE001 - a network that cannot be built this way is checked when it is built
        return
    try:
        host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        host = None
    need = 2 * 4 * count  # the task and the meta network, float32
    if host and need > host:
        raise FlagError(
            f"{source}: the {spec['arch']} network has {count:,} parameters; its two float32 copies need "
            f"{_gib(need)}, more than this machine's {_gib(host)} of memory"
        )
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        if 4 * 4 * count > total:
            raise FlagError(
                f"{source}: the {spec['arch']} network has {count:,} parameters; its weights, gradients and "
                f"Adam moments need {_gib(16 * count)}, more than the {_gib(total)} of {device}"
            )


def check_scale(model: nn.Module, cfg: TrainConfig) -> None:
    scale = cfg.effective_scale()
    if model_scale(model) != scale:
        raise FlagError(
            f"--arch {cfg.arch_name()} outputs x{model_scale(model)} its input; the data is x{scale} "
            f"(--scale / --task {cfg.task}): use an architecture that upsamples by {scale}"
        )


def build_algorithm(
    cfg: TrainConfig, model: nn.Module, task_model: nn.Module | None = None, *, fused: bool | None = None
) -> MetaAlgorithm:
    """The ``--variant`` algorithm around ``model`` (its released computation with ``--reference_mode``),
    as the variant's registry entry builds it; ``fused``: the run plan's optimizer decision."""
    return cfg.variant_entry().obj.from_config(cfg, model, task_model, fused=fused)


def sr_confounders(specs, scale: int, size: tuple[int, int]):
    """The confounders of an x``scale`` run end with the 1/scale resize: kept when a spec already
    does (Real-ESRGAN's pipelines), appended (bicubic) when it keeps the size."""
    from ..degrade import Compose, bicubic

    if scale == 1:
        return list(specs)
    h, w = size
    lr = (h // scale, w // scale)
    out = []
    for s in specs:
        got = s.output_size(h, w)
        if got == lr:
            out.append(s)
        elif got == (h, w):
            out.append(Compose((s, bicubic(scale)), label=f"{s.name}+x1/{scale}"))
        else:
            raise FlagError(
                f"--confounders: {s.name} gives {got} from {w}x{h} images; an x{scale} run needs "
                f"{lr[1]}x{lr[0]} (or the size kept, to append the 1/{scale} resize)"
            )
    return out


CLEAN_LOADERS = ("folder", "store", "dali")  # the kinds that yield clean batches (the rest yield pairs)


def training_confounders(cfg: TrainConfig, confounders=None) -> list:
    """The confounders the degradation stage applies to clean batches: ``confounders`` (an API
    user's) or the config's, ending with the 1/scale resize of an x``scale`` run."""
    specs = confounders if confounders is not None else cfg.confounder_specs()
    return sr_confounders(specs, cfg.effective_scale(), (cfg.patch_size, cfg.patch_size))


def stage_ops(cfg: TrainConfig, loader=None, confounders=None) -> tuple[str, ...]:
    """The dispatcher ops the run's loader and degradation will run (``loader``: an API user's,
    else the one the config asks for), known before either is built: the run plan's input."""
    from ..data.store import StoreLoader
    from ..degrade import confounder_ops

    if loader is not None:
        ops, clean = tuple(getattr(loader, "ops", tuple)()), loader.yields == "clean"
    else:
        kind = loader_kind(cfg)
        ops, clean = (StoreLoader.OPS if kind == "store" else ()), kind in CLEAN_LOADERS
    return ops + (confounder_ops(training_confounders(cfg, confounders)) if clean else ())


def loader_kind(cfg: TrainConfig) -> str:
    """``--loader`` with ``auto`` decided (see the flag's help)."""
    from ..data.folders import is_paired_folder
    from ..data.store import is_store

    sets = cfg.trainsets()
    if not sets:
        raise FlagError("--trainset is required (a folder of images, a packed store, or paired folders)")
    kind = cfg.loader
    if kind == "auto":
        if all(is_paired_folder(s) for s in sets):
            kind = "paired"
        elif is_store(sets[0]):
            kind = "store"
        else:
            kind = "reference" if cfg.uses_released_noise() else "folder"
    if len(sets) > 1 and kind != "paired":
        raise FlagError(
            f"several --trainset folders are read as paired folders (GT/ and LQ/ each); {sets[0]} is not one"
        )
    if cfg.reference_mode and kind != "reference":
        raise FlagError(
            f"--reference_mode reads a folder of PNG patches as released; --trainset {sets[0]} is "
            f"read by --loader {kind}"
        )
    if kind == "reference":
        if not cfg.uses_released_noise():
            raise FlagError(
                "--loader reference is the released path: Gaussian noise at --levels at scale 1; "
                "other confounders or scales need --loader folder, store or dali"
            )
        if cfg.pairing != "independent":
            raise FlagError("--pairing shared needs a clean loader (--loader folder, store or dali)")
    if kind in ("store", "dali", "folder") and is_paired_folder(sets[0]):
        raise FlagError(
            f"--trainset {sets[0]} is a paired folder (GT/, LQ/): it is read by --loader paired "
            f"(the default for it); --loader {kind} takes clean images"
        )
    return kind


def build_loader(
    cfg: TrainConfig, device, rank: int, world_size: int, num_confounders: int, *, channels_last: bool = False
):
    """The data source: clean batches for ``num_confounders`` confounders, or pairs (the released
    path's noisy pairs; paired folders, one confounder each). ``channels_last``: the run's model
    takes channels-last input, so the PatchStore sampler writes its crops NHWC (the fused noise
    keeps that layout: no copy before the model)."""
    kind = loader_kind(cfg)
    sets = cfg.trainsets()
    shard = dict(device=device, rank=rank, world_size=world_size)
    if kind == "reference":
        from ..data.released import ReleasedPairLoader

        return ReleasedPairLoader(
            sets[0],
            cfg.levels,
            patch_size=cfg.patch_size,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            num_workers=cfg.num_workers,
            gpus=cfg.gpus,
            **shard,
        )
    if kind == "paired":
        from ..data.folders import PairedLoader

        return PairedLoader(
            sets,
            patch_size=cfg.patch_size,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            scale=cfg.effective_scale(),
            **({"filename_tmpl": cfg.filename_tmpl} if cfg.filename_tmpl else {}),
            num_workers=cfg.num_workers,
            gpus=cfg.gpus,
            **shard,
        )
    if kind == "folder":
        from ..data.folders import FolderCleanLoader

        return FolderCleanLoader(
            sets[0],
            num_confounders,
            patch_size=cfg.patch_size,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            num_workers=cfg.num_workers,
            gpus=cfg.gpus,
            **shard,
        )
    if kind == "store":
        from ..data.store import PatchStore, StoreLoader, is_store

        if not is_store(sets[0]):
            raise FlagError(f"--loader store: --trainset {sets[0]} is not a packed store (make one with dil-fast pack)")
        store = PatchStore(sets[0], device, cfg.memory_budget)
        return StoreLoader(
            store,
            cfg.batch_size,
            cfg.patch_size,
            num_confounders,
            seed=cfg.seed,
            rank=rank,
            world_size=world_size,
            backend=cfg.backend,
            channels_last=channels_last,
        )
    from ..data.dali import DaliLoader

    return DaliLoader(
        sets[0],
        cfg.batch_size,
        cfg.patch_size,
        num_confounders,
        device=device,
        seed=cfg.seed,
        rank=rank,
        world_size=world_size,
        num_threads=max(cfg.num_workers, 1),
    )


def test_results(model: nn.Module, images, spec, *, seed: int, device, y: bool, crop_border: int, scale: int):
    """The periodic test at one degradation ``spec``: ``[(name, psnr, ssim, restored)]``.

    It is :func:`dil_fast.eval.evaluate` itself, so the training log's numbers are those of
    ``dil-fast eval`` on the written checkpoint at the same level, seed, metric and scale (plain
    Gaussian noise through the released numpy path; an x``scale`` test resizes the degraded image
    to ``1/scale`` in a call of its own)."""
    from ..eval import evaluate

    return evaluate(model, images, spec, seed=seed, device=device, y=y, crop_border=crop_border, scale=scale)


def testset_name(folder: str) -> str:
    """A test set's name in the log and the metrics' tags: the folder's name (``default``: builtin)."""
    return "builtin" if folder == "default" else os.path.basename(os.path.normpath(folder)) or folder


def check_test_images(images, cfg: TrainConfig, folder: str | None = None) -> None:
    """Refuse, before anything is written, a test image the periodic test could not score: SSIM's
    11x11 window must fit after the crop border, and an SR image must hold one LR pixel per side."""
    scale, crop = cfg.effective_scale(), cfg.metric_crop_border()
    need = max(11 + 2 * crop, 2 * scale)
    for name, img in images:
        if min(img.shape[:2]) < need:
            raise InputError(
                f"--testset {folder or cfg.testset}: {name} is {img.shape[1]}x{img.shape[0]}; the periodic test "
                f"needs at least {need}x{need} (SSIM's 11x11 window after --crop_border {crop})"
            )


def load_testset(testset: str) -> list[tuple[str, "object"]]:
    """``[(file name, HxWx3 uint8)]`` sorted by name; ``"default"``: the built-in test images."""
    from ..eval import load_test_images

    return load_test_images(testset)


class ConfounderOrder:
    """The released order of visiting confounders: ``RandomState(1)`` per epoch, one in-place
    shuffle of the same list per meta-iteration."""

    def __init__(self, k: int, seed: int = 1):
        self.k, self.seed = k, seed
        self.reset()

    def reset(self, skip: int = 0) -> None:
        self._rs = np.random.RandomState(self.seed)
        self._order = list(range(self.k))
        for _ in range(skip):
            self.next()

    def next(self) -> list[int]:
        self._rs.shuffle(self._order)
        self.last = list(self._order)
        return self.last


def confounder_labels(cfg: TrainConfig, loader, degrade) -> list[str]:
    """The name of each confounder, for the labelled log line and the metrics' tags."""
    if degrade is not None:
        return [c.name for c in degrade.confounders]
    names = getattr(loader, "confounder_names", None)  # a pair loader may name what it degrades with
    if names:
        return list(names)
    return [f"k{k}" for k in range(loader.num_confounders)]
