"""The trainer behind ``dil-fast train``: the released DIL trainer's loop, arithmetic, logs and
checkpoints, plus exact resume, DDP and a progress bar.

One meta-iteration composes the stages forward only: loader (clean batches, or the released
path's noisy pairs) -> counterfactual degradation (:class:`~dil_fast.degrade.CounterfactualPairs`)
-> the DIL algorithm through the fast path (:class:`~dil_fast.train.fast.FastPath`) -> logging
(:class:`~dil_fast.train.fast.LossLog`, no host sync). Checkpointing is :mod:`dil_fast.train.state`.

Epoch ``e`` (0-based) runs ``len(loader)`` meta-iterations (``len(trainset) // (batch_size *
gpus)`` for the built-in loaders). At every ``lr_step``-th epoch the meta learning rate is halved
(floor 1e-6, as released); the task learning rate never changes. The order in which the
confounders are visited is reshuffled every meta-iteration from a numpy ``RandomState(1)``
re-created at each epoch start, so the sequence of orders repeats every epoch (as released).
After epoch ``e`` the model checkpoint ``model_{e+1}.pt`` is written when ``e % save_every == 0``;
the meta model is evaluated at sigma=``test_level`` when ``e % test_every == 0``. The full
training state goes to ``last.pt`` after every epoch and when the run is interrupted
(SIGINT/SIGTERM or ``--stop_after``).

API use: ``Trainer(cfg, model=my_net, loader=my_loader).run()`` trains any ``nn.Module`` on any
object implementing :class:`dil_fast.data.base.Loader`, with the same checkpoints, exact resume,
evaluation and DDP as the command line.
"""
from __future__ import annotations

import contextlib
import inspect
import os
import signal
import sys
import threading

import numpy as np
import torch
from torch import nn

from .. import backends
from .._progress import tqdm_available
from ..checkpoints import load_file
from ..data.base import YIELDS
from ..degrade import CounterfactualPairs
from ..errors import FlagError
from ..meta import MetaAlgorithm
from . import components, distributed
from . import state as state_io
from ..devices import resolve_device
from .config import TrainConfig
from .fast import FastOptions, FastPath, LossLog, resolve_options
from .log import make_logger

__all__ = ["Trainer", "ConfounderOrder"]


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


class Trainer:
    """Runs a validated config. ``model`` (any ``nn.Module``), ``loader`` (any
    :class:`~dil_fast.data.base.Loader`) and ``confounders`` (specs for a clean loader) replace the
    ones the config would build; the rest (algorithm, checkpoints, resume, evaluation, DDP) is the same."""

    def __init__(self, cfg: TrainConfig, *, model: nn.Module | None = None, loader=None, confounders=None):
        self.cfg = cfg.validate()
        self.rank, self.world_size, self.local_rank = distributed.setup(cfg)
        if cfg.distributed:
            cfg.gpus = self.world_size
        self.device = resolve_device(cfg.device, local_rank=self.local_rank if cfg.distributed else None)
        self.is_main = self.rank == 0
        self._user_model, self._user_loader, self._user_confounders = model, loader, confounders
        if loader is not None:
            _check_loader(loader)
        self.fast_options = (FastOptions(precision=None, deterministic=cfg.deterministic) if cfg.reference_mode else
                             resolve_options(self.device, precision=cfg.precision, channels_last=cfg.channels_last,
                                             compile=cfg.compile, cuda_graphs=cfg.cuda_graphs,
                                             deterministic=cfg.deterministic))
        self.algorithm: MetaAlgorithm | None = None
        self.last_eval: tuple[float, float] | None = None
        self._stop_signal: int | None = None

    @property
    def meta_model(self) -> nn.Module:
        """The trained network (after :meth:`run`, or while it runs)."""
        if self.algorithm is None:
            raise RuntimeError("the trainer has not built its algorithm yet; call run()")
        return self.algorithm.meta_model

    # ------------------------------------------------------------------ set-up
    def _build(self, resume_ckpt: dict | None):
        cfg = self.cfg
        self._resume_weights = None
        if self._user_model is not None:
            self.model_config = None
            model, task_model = self._user_model, None
        else:
            self.model_config, self._resume_weights = components.model_spec_for(cfg, resume_ckpt)
            model, task_model = components.build_models(self.model_config, cfg)
            components.check_scale(model, cfg)
        algo = components.build_algorithm(cfg, model.to(self.device), task_model)
        confounders = self._user_confounders
        loader = self._user_loader
        if loader is None:
            k = len(confounders) if confounders is not None else len(cfg.confounder_specs())
            loader = components.build_loader(cfg, self.device, self.rank, self.world_size, k)
        degrade = None
        if loader.yields == "clean":
            specs = confounders if confounders is not None else cfg.confounder_specs()
            specs = components.sr_confounders(specs, cfg.effective_scale(), (cfg.patch_size, cfg.patch_size))
            degrade = CounterfactualPairs(specs, seed=cfg.seed, rank=self.rank, pairing=cfg.pairing,
                                          backend=cfg.backend)
            if degrade.num_confounders != loader.num_confounders:
                raise FlagError(f"{degrade.num_confounders} confounders for a loader drawing "
                                f"{loader.num_confounders} clean batches")
        ops = list(getattr(loader, "ops", tuple)()) + list(degrade.ops() if degrade else ())
        if getattr(algo, "fused", False) or getattr(algo, "_use_fused", False):
            ops += components.ALGORITHM_OPS.get(algo.name, ())
        self.backend_plan = backends.plan(ops, self.device, backends.check_forced(ops, self.device, cfg.backend))
        return algo, loader, degrade

    def _on_signal(self, signum, _frame) -> None:
        self._stop_signal = signum

    # ------------------------------------------------------------------ run
    def open(self, logger=None) -> "Trainer":
        """Build the stages (model, algorithm, loader, degradation, fast path) and restore
        ``--resume``; :meth:`run` calls it, benchmarks call it to drive :meth:`meta_iterations`."""
        cfg = self.cfg
        logger = logger or make_logger("train", None, console=False)
        torch.manual_seed(cfg.seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(cfg.seed)
        resume_ckpt = load_file(cfg.resume) if cfg.resume else None
        algo, loader, degrade = self._build(resume_ckpt)
        self.algorithm, self.loader, self.degrade = algo, loader, degrade
        if self.world_size > 1:
            distributed.share_weights(algo, self.world_size)
        self.start = (0, 0)
        if resume_ckpt is not None:
            self.start = state_io.restore(algo, resume_ckpt, cfg.resume, world_size=self.world_size,
                                          weights=self._resume_weights)
            logger.info(f"Resumed from {cfg.resume} at epoch {self.start[0]}, iteration {self.start[1]}")
            state_io.restore_loader(loader, resume_ckpt, cfg.resume)
        self.order = ConfounderOrder(loader.num_confounders)
        self.fast = FastPath(algo, self.fast_options, self.device)
        self._step_times_phases = "timer" in inspect.signature(self.fast.step).parameters
        return self

    def close(self) -> None:
        if getattr(self, "fast", None) is not None:
            self.fast.close()
            self.fast = None

    def epoch_iterations(self, epoch: int, skip: int = 0, timer=None):
        """The meta-iterations of ``epoch`` from iteration ``skip``: yields ``(iteration, losses)``
        (losses ``[K]`` on the device). ``timer(phase)`` (optional) is a context manager around the
        "data" and "degradation" stages and is handed to the algorithm's step for its own phases."""
        loader, degrade, order = self.loader, self.degrade, self.order
        phase = timer or _no_phase
        n_iter = len(loader)
        loader.set_epoch(epoch)  # after a resume's load_state_dict: same epoch keeps the position
        order.reset(skip)
        data = iter(loader)
        it = skip
        while True:
            with phase("data"):
                batch = next(data, None)
            if batch is None:
                return
            with phase("degradation"):
                # the meta-iteration this batch belongs to keys the degradation's randomness
                pairs = batch if degrade is None else degrade(batch, loader.epoch * n_iter + loader.position - 1)
            batches = [pairs[k] for k in order.next()]
            if timer is None:
                losses = self.fast.step(batches)
            elif self._step_times_phases:
                losses = self.fast.step(batches, timer=timer)
            else:  # a step that does not time its phases (a CUDA graph replay): all of it is fwd_bwd
                with phase("fwd_bwd"):
                    losses = self.fast.step(batches)
            yield it, losses
            it += 1

    def meta_iterations(self, timer=None):
        """Endless meta-iterations, epoch after epoch, without checkpoints, evaluation or LR steps
        (what a benchmark times): yields the losses of each."""
        epoch, skip = self.start
        while True:
            for _, losses in self.epoch_iterations(epoch, skip, timer):
                yield losses
            epoch, skip = epoch + 1, 0

    def run(self) -> int:
        cfg = self.cfg
        if self.is_main:
            os.makedirs(cfg.ckpt_save, exist_ok=True)
        use_bar = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
        use_bar = use_bar and self.is_main and tqdm_available()
        logger = make_logger("train", os.path.join(cfg.ckpt_save, "train.log") if self.is_main else None,
                             console=self.is_main, progress_bar=use_bar)
        logger.info("Set random seed to {}".format(cfg.seed))
        self.open(logger)
        algo, loader = self.algorithm, self.loader
        start_epoch, start_iter = self.start
        testset = components.load_testset(cfg.testset) if self.is_main else None
        n_iter = len(loader)
        stop_left = cfg.stop_after
        if self.device.type == "cuda" or cfg.reference_mode:
            logger.info(("Reference mode (the released trainer's computation): " if cfg.reference_mode
                         else "Fast path: ") + self.fast.describe())
        loss_log = LossLog()
        old_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)} \
            if threading.current_thread() is threading.main_thread() else {}
        try:
            for epoch in range(start_epoch, cfg.total_epoch):
                first = epoch == start_epoch
                skip = start_iter if first else 0
                if epoch and epoch % cfg.lr_step == 0 and not (first and skip):
                    lr = algo.meta_lr
                    algo.meta_lr = lr * 0.5 if lr > 1e-6 else 1e-6
                task_lr, meta_lr = algo.task_lr, algo.meta_lr
                bar = _progress(n_iter, skip, epoch, use_bar)
                for it, losses in self.epoch_iterations(epoch, skip):
                    if it % cfg.print_every == 0:
                        # CPU: written now; CUDA: copied asynchronously, written once on the host
                        loss_log.submit(losses, _log_losses(logger, bar, epoch, it, n_iter, task_lr, meta_lr))
                    loss_log.poll()
                    if bar is not None:
                        bar.update(1)
                    if stop_left is not None:
                        stop_left -= 1
                    if self._stop_signal is not None or stop_left == 0:
                        loss_log.flush()
                        if bar is not None:
                            bar.close()
                        if it + 1 < n_iter:
                            return self._interrupt(algo, epoch, it + 1, logger)
                        break
                loss_log.flush()
                if bar is not None:
                    bar.close()
                self._end_of_epoch(algo, epoch, testset, logger)
                if self._stop_signal is not None or stop_left == 0:
                    return self._interrupt(algo, epoch + 1, 0, logger) if epoch + 1 < cfg.total_epoch else 0
            if self.world_size > 1:
                distributed.check_in_sync(algo, self.world_size, logger)
            logger.info("Done")
            return 0
        finally:
            loss_log.flush()
            self.close()
            for s, h in old_handlers.items():
                signal.signal(s, h)
            if self.world_size > 1:
                distributed.barrier()

    # ------------------------------------------------------------------ epoch ends
    def _state(self, algo: MetaAlgorithm, epoch: int, iteration: int) -> dict:
        return state_io.capture(config=self.cfg.to_dict(), model_config=self.model_config, algo=algo,
                                loader=self.loader, epoch=epoch, iteration=iteration, world_size=self.world_size)

    def _end_of_epoch(self, algo: MetaAlgorithm, epoch: int, testset, logger) -> None:
        cfg = self.cfg
        if not self.is_main:
            return
        if epoch % cfg.save_every == 0:
            state_io.atomic_save(
                {"model_meta": algo.meta_model.state_dict(), "model_task": algo.task_model.state_dict()},
                os.path.join(cfg.ckpt_save, f"model_{epoch + 1}.pt"),
            )
        state_io.atomic_save(self._state(algo, epoch + 1, 0), os.path.join(cfg.ckpt_save, "last.pt"))
        if epoch % cfg.test_every == 0:
            self._evaluate(algo, epoch, testset, logger)

    def _evaluate(self, algo: MetaAlgorithm, epoch: int, testset, logger) -> None:
        cfg = self.cfg
        specs = cfg.test_specs()
        for spec in specs:
            results = components.test_results(algo.meta_model, testset, spec, seed=cfg.seed, device=self.device,
                                              y=cfg.metric_y(), crop_border=cfg.metric_crop_border(),
                                              scale=cfg.effective_scale())
            if len(specs) > 1:
                logger.info(f"Test: {spec.name}")
            for name, psnr, ssim, _ in results:
                logger.info("{}: {}, {}".format(name, psnr, ssim))
            p = sum(r[1] for r in results) / len(results)
            s = sum(r[2] for r in results) / len(results)
            logger.info("Epoch: {}, psnr: {}. ssim: {}.".format(epoch, p, s))
            self.last_eval = (p, s)

    def _interrupt(self, algo: MetaAlgorithm, epoch: int, iteration: int, logger) -> int:
        if self.is_main:
            path = os.path.join(self.cfg.ckpt_save, "last.pt")
            state_io.atomic_save(self._state(algo, epoch, iteration), path)
            logger.info(f"Stopped at epoch {epoch}, iteration {iteration}; resume with --resume {path}")
        if self._stop_signal is not None:
            return 128 + int(self._stop_signal)
        return 0


def _no_phase(_name):
    return contextlib.nullcontext()


def _check_loader(loader) -> None:
    """A user's loader must declare what the trainer uses (data/base.py's Loader protocol)."""
    missing = [m for m in ("yields", "num_confounders", "epoch", "position", "__len__", "__iter__", "set_epoch",
                           "state_dict", "load_state_dict") if not hasattr(loader, m)]
    if missing:
        raise TypeError(f"the loader {type(loader).__name__} lacks {', '.join(missing)} of dil_fast.data.base.Loader")
    if loader.yields not in YIELDS:
        raise TypeError(f"loader.yields must be one of {YIELDS}, got {loader.yields!r}")


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


def _progress(total: int, initial: int, epoch: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=f"epoch {epoch}", unit="it", dynamic_ncols=True, leave=False)
