"""The trainer behind ``dil-fast train``: the released DIL trainer's loop, arithmetic, logs and
checkpoints, plus exact resume, DDP and a progress bar.

Epoch ``e`` (0-based) runs ``len(trainset) // (batch_size * gpus)`` meta-iterations. At every
``lr_step``-th epoch the meta learning rate is halved (floor 1e-6, as released); the task learning
rate never changes. The order in which the confounders are visited is reshuffled every
meta-iteration from a numpy ``RandomState(1)`` re-created at each epoch start, so the sequence of
orders repeats every epoch (as released). After epoch ``e`` the model checkpoint
``model_{e+1}.pt`` is written when ``e % save_every == 0``; the meta model is evaluated at
sigma=``test_level`` when ``e % test_every == 0``. The full training state goes to ``last.pt``
after every epoch and when the run is interrupted (SIGINT/SIGTERM or ``--stop_after``).

Each meta-iteration runs through :class:`dil_fast.train.fast.FastPath` (``--precision``,
``--channels_last``, ``--compile``, ``--cuda_graphs``, ``--deterministic``; the CPU defaults leave
the computation unchanged) or, with ``--reference_mode``, the released trainer's computation
(:mod:`dil_fast.train.reference_mode`).
"""
from __future__ import annotations

import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .._progress import tqdm_available
from ..errors import CheckpointError, FlagError
from ..meta import VARIANTS, GradSync, MetaAlgorithm
from ..models import build_rrdb, infer_rrdb_config
from . import checkpoint as ckpt_io
from .log import make_logger

DEFAULT_RRDB = {"nf": 64, "nb": 23, "gc": 32}
LOADERS = ("auto", "reference", "store", "dali")


@dataclass
class TrainConfig:
    """Everything that defines a run (the CLI flags, parsed and validated)."""

    ckpt_save: str
    trainset: str | None = None
    testset: str = "default"
    resume: str | None = None
    variant: str = "sf"
    levels: tuple[float, ...] = (5.0, 10.0, 15.0, 20.0)
    patch_size: int = 64
    batch_size: int = 32
    total_epoch: int = 30
    save_every: int = 1
    test_every: int = 5
    print_every: int = 100
    num_workers: int = 8
    seed: int = 1
    gpus: int = 1
    distributed: bool = False
    local_rank: int = 0
    device: str | None = None
    nf: int | None = None
    nb: int | None = None
    gc: int | None = None
    lr: float = 1e-4
    meta_lr: float = 1e-4
    lr_step: int = 20
    test_level: float = 50.0
    loss: str = "l1"
    loader: str = "auto"
    confounders: str | None = None
    pairing: str = "independent"
    memory_budget: str | None = None
    backend: str | None = None  # kernel backend for sampling/degradation (None: dil_fast.backends chooses)
    stop_after: int | None = None
    progress: bool | None = None  # None: a bar when stderr is a terminal
    variant_options: dict = field(default_factory=dict)
    # the fast path (dil_fast.train.fast); None = the device's default
    precision: str | None = None  # fp32 | tf32 | bf16 (None: bf16 on CUDA, fp32 on CPU)
    channels_last: bool | None = None  # None: on for CUDA, off for CPU
    compile: bool = False
    cuda_graphs: bool = False
    deterministic: bool = False
    reference_mode: bool = False  # the released trainer's behaviour (dil_fast.train.reference_mode)


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
        return list(self._order)


def _check_positive(name: str, value, allow_zero: bool = False) -> None:
    if value is None:
        return
    if (value < 0) if allow_zero else (value <= 0):
        raise FlagError(f"--{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def validate(cfg: TrainConfig) -> None:
    for name in ("patch_size", "batch_size", "total_epoch", "save_every", "test_every", "print_every", "gpus",
                 "nf", "nb", "gc", "lr", "meta_lr", "lr_step", "stop_after"):
        _check_positive(name, getattr(cfg, name))
    _check_positive("num_workers", cfg.num_workers, allow_zero=True)
    _check_positive("test_level", cfg.test_level, allow_zero=True)
    if cfg.variant not in VARIANTS:
        raise FlagError(f"--variant must be one of {', '.join(VARIANTS)}, got {cfg.variant!r}")
    if not cfg.levels:
        raise FlagError("--levels needs at least one noise level")
    if any((not math.isfinite(s)) or s < 0 for s in cfg.levels):
        raise FlagError(f"--levels must be non-negative numbers, got {','.join(map(str, cfg.levels))}")
    if not cfg.ckpt_save:
        raise FlagError("--ckpt_save is required (the output folder)")
    if cfg.loader not in LOADERS:
        raise FlagError(f"--loader must be one of {', '.join(LOADERS)}, got {cfg.loader!r}")
    if cfg.backend not in (None, "torch", "triton", "cuda"):
        raise FlagError(f"--backend must be auto, torch, triton or cuda, got {cfg.backend!r}")
    if cfg.pairing not in ("independent", "shared"):
        raise FlagError(f"--pairing must be independent or shared, got {cfg.pairing!r}")
    from .fast import PRECISIONS

    if cfg.precision not in (None, *PRECISIONS):
        raise FlagError(f"--precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}")
    if cfg.reference_mode:
        from .reference_mode import check_flags

        check_flags(cfg)


class Trainer:
    def __init__(self, cfg: TrainConfig):
        validate(cfg)
        self.cfg = cfg
        self.rank, self.world_size = 0, 1
        self._setup_distributed()
        self.device = self._pick_device()
        self.is_main = self.rank == 0
        self.fast_options = self._fast_options()
        self._stop_signal: int | None = None

    # ------------------------------------------------------------------ set-up
    def _setup_distributed(self) -> None:
        cfg = self.cfg
        if not cfg.distributed:
            return
        import torch.distributed as dist

        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise FlagError("--distributed needs a launcher that sets RANK/WORLD_SIZE "
                            "(torchrun --nproc_per_node=N -m dil_fast train --distributed ...)")
        local_rank = int(os.environ.get("LOCAL_RANK", cfg.local_rank))
        cfg.local_rank = local_rank
        use_cuda = torch.cuda.is_available() and (cfg.device is None or cfg.device.startswith("cuda"))
        if use_cuda:
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        if cfg.gpus not in (1, self.world_size):
            raise FlagError(f"--gpus {cfg.gpus} does not match the {self.world_size} launched processes")
        cfg.gpus = self.world_size

    def _pick_device(self) -> torch.device:
        cfg = self.cfg
        if cfg.device is None:
            dev = f"cuda:{cfg.local_rank}" if torch.cuda.is_available() else "cpu"
        else:
            dev = cfg.device
            if cfg.distributed and dev == "cuda":
                dev = f"cuda:{cfg.local_rank}"
        try:
            device = torch.device(dev)
        except RuntimeError:
            raise FlagError(f"--device {dev!r} is not a torch device") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise FlagError(f"--device {dev}: CUDA is not available on this machine")
        return device

    def _fast_options(self):
        from .fast import FastOptions, resolve_options

        cfg = self.cfg
        if cfg.reference_mode:
            return FastOptions(precision=None, deterministic=cfg.deterministic)
        return resolve_options(self.device, precision=cfg.precision, channels_last=cfg.channels_last,
                               compile=cfg.compile, cuda_graphs=cfg.cuda_graphs, deterministic=cfg.deterministic,
                               variant=cfg.variant, world_size=self.world_size)

    def _model_config(self, resume_ckpt: dict | None) -> dict:
        cfg = self.cfg
        model_cfg = {"in_nc": 3, "out_nc": 3, **DEFAULT_RRDB, "x4": False}
        if resume_ckpt is not None:
            try:
                model_cfg = infer_rrdb_config(ckpt_io.model_weights(resume_ckpt, cfg.resume))
            except ValueError as exc:
                raise CheckpointError(f"{cfg.resume}: {exc}") from None
        for key in ("nf", "nb", "gc"):
            if getattr(cfg, key) is not None:
                model_cfg[key] = getattr(cfg, key)
        return model_cfg

    def _build_algorithm(self, model) -> MetaAlgorithm:
        cfg = self.cfg
        cls = VARIANTS[cfg.variant]
        if cfg.reference_mode:
            from .reference_mode import ReferenceSF

            return ReferenceSF(model, inner_lr=cfg.lr, meta_lr=cfg.meta_lr, loss=cfg.loss)
        if cfg.variant == "erm":
            return cls(model, lr=cfg.lr, loss=cfg.loss, **cfg.variant_options)
        if cfg.variant in ("sf", "pf"):
            return cls(model, inner_lr=cfg.lr, meta_lr=cfg.meta_lr, loss=cfg.loss, **cfg.variant_options)
        return cls(model, meta_lr=cfg.meta_lr, loss=cfg.loss, **cfg.variant_options)

    def _confounders(self):
        """The confounder specs: ``--confounders`` if given, else Gaussian noise at ``--levels``."""
        from ..degrade import GaussianNoise, parse_confounders

        cfg = self.cfg
        if cfg.confounders:
            try:
                return parse_confounders(cfg.confounders)
            except ValueError as exc:
                raise FlagError(f"--confounders: {exc}") from None
        return [GaussianNoise(float(s)) for s in cfg.levels]

    def _build_loader(self):
        """The training data as a PairLoader (``--loader``; ``auto``: a packed store if ``--trainset``
        is one, else the reference DataLoader path)."""
        from ..data.store import is_store

        cfg = self.cfg
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
            from ..data.reference import ReferencePairLoader

            return ReferencePairLoader(
                cfg.trainset, cfg.levels, patch_size=cfg.patch_size, batch_size=cfg.batch_size, seed=cfg.seed,
                num_workers=cfg.num_workers, device=self.device, rank=self.rank, world_size=self.world_size,
                gpus=cfg.gpus,
            )
        from ..data.pairs import DegradedPairs

        confounders = self._confounders()
        k = len(confounders)
        if kind == "store":
            from ..data.store import PatchStore, StoreLoader

            if not is_store(cfg.trainset):
                raise FlagError(f"--loader store: --trainset {cfg.trainset} is not a packed store (make one with "
                                "dil-fast pack)")
            store = PatchStore(cfg.trainset, self.device, cfg.memory_budget)
            clean = StoreLoader(store, cfg.batch_size, cfg.patch_size, k, seed=cfg.seed, rank=self.rank,
                                world_size=self.world_size, backend=cfg.backend)
        else:
            from ..data.dali import DaliLoader

            clean = DaliLoader(cfg.trainset, cfg.batch_size, cfg.patch_size, k, device=self.device, seed=cfg.seed,
                               rank=self.rank, world_size=self.world_size, num_threads=max(cfg.num_workers, 1))
        return DegradedPairs(clean, confounders, seed=cfg.seed, rank=self.rank, pairing=cfg.pairing,
                             backend=cfg.backend)

    def _load_testset(self):
        from ..data.builtin import builtin_testset
        from ..data.images import list_images, read_image_rgb

        folder = self.cfg.testset
        if folder == "default":
            folder = builtin_testset(os.path.join(self.cfg.ckpt_save, ".builtin_testset"))
        files = list_images(folder, exts=(".png", ".jpg", ".jpeg", ".bmp", ".webp"), flag="--testset")
        return [(os.path.basename(f), read_image_rgb(f)) for f in files]

    # ------------------------------------------------------------------ state
    def _train_state(self, algo: MetaAlgorithm, epoch: int, iteration: int) -> dict:
        cfg_d = asdict(self.cfg)
        cfg_d["levels"] = list(cfg_d["levels"])
        state = {
            "format": ckpt_io.TRAIN_STATE_FORMAT,
            "version": 1,
            "config": {k: v for k, v in cfg_d.items() if v is not None},
            "model_config": self.model_config,
            "models": {"model_meta": algo.meta_model.state_dict(), "model_task": algo.task_model.state_dict()},
            "algorithm": algo.state_dict(),
            "epoch": epoch,
            "iteration": iteration,
            "world_size": self.world_size,
            "loader": self.loader.state_dict(),
            "rng": {"torch": torch.get_rng_state()},
        }
        if torch.cuda.is_available():
            state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def _restore(self, algo: MetaAlgorithm, ckpt: dict) -> tuple[int, int]:
        """Load a resume checkpoint; returns (epoch, iteration) to continue from."""
        path = self.cfg.resume
        if ckpt.get("format") == ckpt_io.TRAIN_STATE_FORMAT:
            saved = ckpt.get("algorithm", {})
            if saved.get("variant") != algo.name:
                raise CheckpointError(f"{path}: a {saved.get('variant')!r} training state cannot resume "
                                      f"--variant {algo.name}")
            ckpt_io.load_into(algo.meta_model, ckpt_io.strip_module_prefix(saved["meta_model"]), path, "meta")
            try:
                algo.load_state_dict(saved)
            except (KeyError, ValueError, RuntimeError) as exc:
                raise CheckpointError(f"{path}: training state does not fit ({str(exc).splitlines()[0][:160]})") \
                    from None
            old_ws = ckpt.get("world_size", 1)
            if old_ws != self.world_size:
                raise CheckpointError(f"{path}: saved with {old_ws} process(es), resumed with {self.world_size}; "
                                      "the data order would differ")
            rng = ckpt.get("rng", {})
            if "torch" in rng:
                torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            return int(ckpt["epoch"]), int(ckpt["iteration"])
        # the released layout (or a bare state_dict): weights only, as the released --resume does
        meta_sd = ckpt_io.model_weights(ckpt, path, "model_meta")
        ckpt_io.load_into(algo.meta_model, meta_sd, path, "model_meta")
        if algo.task_model is not algo.meta_model:
            task_sd = ckpt_io.model_weights(ckpt, path, "model_task") if "model_task" in ckpt else meta_sd
            ckpt_io.load_into(algo.task_model, task_sd, path, "model_task")
        return 0, 0

    # ------------------------------------------------------------------ run
    def _on_signal(self, signum, _frame) -> None:
        self._stop_signal = signum

    def run(self) -> int:
        cfg = self.cfg
        if self.is_main:
            os.makedirs(cfg.ckpt_save, exist_ok=True)
        use_bar = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
        use_bar = use_bar and self.is_main and tqdm_available()
        logger = make_logger("train", os.path.join(cfg.ckpt_save, "train.log") if self.is_main else None,
                             console=self.is_main, progress_bar=use_bar)
        logger.info("Set random seed to {}".format(cfg.seed))
        torch.manual_seed(cfg.seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(cfg.seed)

        resume_ckpt = ckpt_io.load_file(cfg.resume) if cfg.resume else None
        self.model_config = self._model_config(resume_ckpt)
        model = build_rrdb(self.model_config).to(self.device)
        if resume_ckpt is not None and resume_ckpt.get("format") == ckpt_io.TRAIN_STATE_FORMAT:
            saved_cfg = resume_ckpt.get("model_config", {})
            if saved_cfg and saved_cfg != self.model_config:
                raise CheckpointError(f"{cfg.resume}: saved for model {saved_cfg}, not {self.model_config}")
        algo = self._build_algorithm(model)
        if self.world_size > 1:
            import torch.distributed as dist

            for t in list(algo.meta_model.parameters()) + list(algo.task_model.parameters()):
                dist.broadcast(t.data, 0)
            algo.grad_sync = GradSync(self.world_size)

        start_epoch, start_iter = 0, 0
        if resume_ckpt is not None:
            start_epoch, start_iter = self._restore(algo, resume_ckpt)
            logger.info(f"Resumed from {cfg.resume} at epoch {start_epoch}, iteration {start_iter}")
        resume_state = resume_ckpt if resume_ckpt and resume_ckpt.get("format") == ckpt_io.TRAIN_STATE_FORMAT else None

        loader = self.loader = self._build_loader()
        if resume_state is not None and "loader" in resume_state:
            try:
                loader.load_state_dict(resume_state["loader"])
            except (KeyError, ValueError) as exc:
                raise CheckpointError(f"{cfg.resume}: data position does not fit this run ({exc})") from None
        testset = self._load_testset() if self.is_main else None
        n_iter = len(loader)
        order = ConfounderOrder(loader.num_confounders)
        stop_left = cfg.stop_after

        from .fast import FastPath, LossLog

        fast = FastPath(algo, self.fast_options, self.device)
        if self.device.type == "cuda" or cfg.reference_mode:
            logger.info(("Reference mode (the released trainer's computation): " if cfg.reference_mode
                         else "Fast path: ") + fast.describe())
        loss_log = LossLog()
        old_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)} \
            if _in_main_thread() else {}
        try:
            for epoch in range(start_epoch, cfg.total_epoch):
                first = epoch == start_epoch
                skip = start_iter if first else 0
                if epoch and epoch % cfg.lr_step == 0 and not (first and skip):
                    lr = algo.meta_lr
                    algo.meta_lr = lr * 0.5 if lr > 1e-6 else 1e-6
                task_lr, meta_lr = algo.task_lr, algo.meta_lr
                loader.set_epoch(epoch)  # after a resume's load_state_dict: same epoch keeps the position
                order.reset(skip)
                bar = _progress(n_iter, skip, epoch, use_bar)
                it = skip
                for pairs in loader:
                    perm = order.next()
                    losses = fast.step([pairs[k] for k in perm])
                    if it % cfg.print_every == 0:
                        # CPU: written now; CUDA: copied asynchronously, written once on the host
                        loss_log.submit(losses, _log_losses(logger, bar, epoch, it, n_iter, task_lr, meta_lr))
                    loss_log.poll()
                    it += 1
                    if bar is not None:
                        bar.update(1)
                    if stop_left is not None:
                        stop_left -= 1
                    if self._stop_signal is not None or stop_left == 0:
                        loss_log.flush()
                        if bar is not None:
                            bar.close()
                        if it < n_iter:
                            return self._interrupt(algo, epoch, it, logger)
                        break
                loss_log.flush()
                if bar is not None:
                    bar.close()
                self._end_of_epoch(algo, epoch, testset, logger)
                if self._stop_signal is not None or stop_left == 0:
                    return self._interrupt(algo, epoch + 1, 0, logger) if epoch + 1 < cfg.total_epoch else 0
            if self.world_size > 1:
                self._check_ranks_in_sync(algo, logger)
            logger.info("Done")
            return 0
        finally:
            loss_log.flush()
            fast.close()
            for s, h in old_handlers.items():
                signal.signal(s, h)
            if self.world_size > 1:
                import torch.distributed as dist

                dist.barrier()

    def _check_ranks_in_sync(self, algo: MetaAlgorithm, logger) -> None:
        """Every rank must hold the same meta weights: compare a checksum across ranks (once, at the end)."""
        import torch.distributed as dist

        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1).double() for p in algo.meta_model.parameters()])
            pos = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device)
            checksum = torch.stack([flat.sum(), (flat * pos.remainder(97)).sum()])
        lo, hi = checksum.clone(), checksum.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        if torch.equal(lo, hi):
            logger.info(f"All {self.world_size} ranks hold identical meta weights")
        else:
            logger.warning(f"Meta weights differ across ranks (checksums {lo.tolist()} .. {hi.tolist()})")

    def _end_of_epoch(self, algo: MetaAlgorithm, epoch: int, testset, logger) -> None:
        cfg = self.cfg
        if not self.is_main:
            return
        if epoch % cfg.save_every == 0:
            ckpt_io.atomic_save(
                {"model_meta": algo.meta_model.state_dict(), "model_task": algo.task_model.state_dict()},
                os.path.join(cfg.ckpt_save, f"model_{epoch + 1}.pt"),
            )
        ckpt_io.atomic_save(self._train_state(algo, epoch + 1, 0), os.path.join(cfg.ckpt_save, "last.pt"))
        if epoch % cfg.test_every == 0:
            self._evaluate(algo, epoch, testset, logger)

    def _evaluate(self, algo: MetaAlgorithm, epoch: int, testset, logger) -> None:
        from .evaluate import evaluate_model

        model = algo.meta_model
        was_training = model.training
        model.eval()
        results = evaluate_model(model, testset, level=self.cfg.test_level, seed=self.cfg.seed, device=self.device)
        model.train(was_training)
        for name, psnr, ssim, _ in results:
            logger.info("{}: {}, {}".format(name, psnr, ssim))
        p = sum(r[1] for r in results) / len(results)
        s = sum(r[2] for r in results) / len(results)
        logger.info("Epoch: {}, psnr: {}. ssim: {}.".format(epoch, p, s))
        self.last_eval = (p, s)

    def _interrupt(self, algo: MetaAlgorithm, epoch: int, iteration: int, logger) -> int:
        if self.is_main:
            path = os.path.join(self.cfg.ckpt_save, "last.pt")
            ckpt_io.atomic_save(self._train_state(algo, epoch, iteration), path)
            logger.info(f"Stopped at epoch {epoch}, iteration {iteration}; resume with --resume {path}")
        if self._stop_signal is not None:
            return 128 + int(self._stop_signal)
        return 0


def _log_losses(logger, bar, epoch: int, it: int, n_iter: int, task_lr: float, meta_lr: float):
    """The released log lines of one --print_every iteration, for :class:`~dil_fast.train.fast.LossLog`."""
    def emit(values: list[float]) -> None:
        for loss in values:
            logger.info("Epoch: {}\tIter: {}/{}\tTask loss: {}\tTask LR: {:.6f}\tMeta LR: {:.6f}"
                        .format(epoch, it, n_iter, loss, task_lr, meta_lr))
        logger.info("Meta net updated!")
        if bar is not None and values:
            bar.set_postfix(loss=f"{sum(values) / len(values):.4f}")
    return emit


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _progress(total: int, initial: int, epoch: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=f"epoch {epoch}", unit="it", dynamic_ncols=True, leave=False)
