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
import os
import signal
import sys
import threading

import torch
from torch import nn

from .. import checkpoints
from .._progress import tqdm_available
from ..checkpoints import load_file
from ..data.base import check_loader
from ..degrade import CounterfactualPairs
from ..devices import resolve_device
from ..errors import FlagError, SamplesUnavailable, TrainingStopped
from ..meta import MetaAlgorithm
from ..models.registry import spec_to_carry
from . import components, distributed
from . import state as state_io
from .components import ConfounderOrder
from .config import TrainConfig
from .ema import ModelEMA
from .fast import FastOptions, FastPath, LossLog, prepare_model, resolve_options
from .log import NoteLogger, make_logger
from .plan import RunPlan
from .run_folder import LOG_NAME, RunFolder
from .tracking import Monitor, RunClock, Tracker, versions, write_options

__all__ = ["Trainer", "ConfounderOrder"]


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
            check_loader(loader)
        self.plan: RunPlan | None = None  # resolved by open(), before anything is written
        self.ema: ModelEMA | None = None  # --ema: built by open()
        self.algorithm: MetaAlgorithm | None = None
        self.last_eval: tuple[float, float] | None = None
        self._test_note: str | None = None
        self._tracker = None
        self._stop_signal: int | None = None

    @property
    def fast_options(self) -> FastOptions:
        """The fast-path options of the run plan (:attr:`plan`, resolved by :meth:`open`)."""
        if self.plan is None:
            raise RuntimeError("the run plan is resolved by open() (or run())")
        return self.plan.fast

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
            model, task_model = components.build_models(self.model_config, cfg, self.device)
            components.check_scale(model, cfg)
        # what model_N.pt carries beside the released keys when its weights alone would mislead (decided once)
        self._carried_config = spec_to_carry(self.model_config, model.state_dict())
        self.plan = RunPlan.resolve(
            cfg, self.device, components.stage_ops(cfg, self._user_loader, self._user_confounders)
        )
        prepare_model(model.to(self.device), self.plan.fast)
        if task_model is not None:
            prepare_model(task_model.to(self.device), self.plan.fast)
        algo = components.build_algorithm(cfg, model, task_model, fused=self.plan.fused)
        loader = self._user_loader
        if loader is None:
            k = len(self._user_confounders) if self._user_confounders is not None else len(cfg.confounder_specs())
            loader = components.build_loader(
                cfg, self.device, self.rank, self.world_size, k, channels_last=self.plan.fast.channels_last
            )
        degrade = None
        if loader.yields == "clean":
            degrade = CounterfactualPairs(
                components.training_confounders(cfg, self._user_confounders),
                seed=cfg.seed,
                rank=self.rank,
                pairing=cfg.pairing,
                backend=cfg.backend,
            )
            if degrade.num_confounders != loader.num_confounders:
                raise FlagError(
                    f"{degrade.num_confounders} confounders for a loader drawing {loader.num_confounders} clean batches"
                )
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
            distributed.attach(algo, self.world_size, self.device)
        self.start = (0, 0)
        if resume_ckpt is not None:
            self.start = state_io.restore(
                algo, resume_ckpt, cfg.resume, world_size=self.world_size, weights=self._resume_weights
            )
            logger.info(f"Resumed from {cfg.resume} at epoch {self.start[0]}, iteration {self.start[1]}")
            for line in state_io.resume_notes(resume_ckpt, cfg.to_dict(), algo):
                logger.info(line)
            state_io.restore_loader(loader, resume_ckpt, cfg.resume)
        self.ema = ModelEMA(algo.meta_model, cfg.ema) if cfg.ema is not None else None
        if self.ema is not None and resume_ckpt is not None:
            state_io.restore_ema(self.ema, resume_ckpt, cfg.resume)
        self.order = ConfounderOrder(loader.num_confounders)
        self.fast = FastPath(algo, self.plan.fast, self.device)
        return self

    def close(self) -> None:
        if getattr(self, "fast", None) is not None:
            self.fast.close()
            self.fast = None

    def epoch_iterations(self, epoch: int, skip: int = 0, timer=None, *, keep_task_at_end: bool = False):
        """The meta-iterations of ``epoch`` from iteration ``skip``: yields ``(iteration, losses)``
        (losses ``[K]`` on the device; ``self.order.last`` is the order they were visited in).
        ``timer(phase)`` (optional) is a context manager around the "data" and "degradation"
        stages and is handed to the algorithm's step for its own phases. ``keep_task_at_end``: the
        epoch's last meta step leaves the task network as its inner steps left it (the released
        ``model_N.pt`` holds that network)."""
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
            if (
                keep_task_at_end
                and loader.position == n_iter
                and self.algorithm.task_model is not self.algorithm.meta_model
            ):
                self.algorithm.keep_task_weights = True  # only a separate task network has weights to keep
            losses = self.fast.step(batches, timer=timer)
            if self.ema is not None:
                self.ema.update()  # device ops after the step (outside a captured graph): no sync
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
        """Train to ``--total_epoch`` (or a stop); 0 on success. Distributed: a failed collective
        (a peer died, or hangs past ``--ddp_timeout``) ends this rank with one line naming it."""
        if self.world_size == 1:
            return self._run()
        with distributed.collective_errors(self.rank, self.world_size, self.cfg.ddp_timeout):
            return self._run()

    def _run(self) -> int:
        cfg = self.cfg
        continues = bool(cfg.resume) and os.path.dirname(os.path.abspath(cfg.resume)) == os.path.abspath(cfg.ckpt_save)
        folder = RunFolder(cfg.ckpt_save, auto_resume=cfg.auto_resume, continues=continues)
        if cfg.auto_resume and cfg.resume is None:
            cfg.resume = folder.resume_path()
        # everything that can be refused is checked before anything is written
        testset = self._testset() if self.is_main else None
        notes: list[str] = []
        self.open(NoteLogger(notes))
        if self.is_main:
            folder.acquire()
        if self.world_size > 1:
            distributed.barrier()
        use_bar = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
        use_bar = use_bar and self.is_main and tqdm_available()
        logger = make_logger(
            "train",
            os.path.join(cfg.ckpt_save, LOG_NAME) if self.is_main else None,
            console=self.is_main,
            progress_bar=use_bar,
        )
        tracker = None
        try:
            logger.info("Set random seed to {}".format(cfg.seed))
            for line in (folder.report() if self.is_main else []) + notes + self._setup_notes():
                logger.info(line)
            if self.is_main:
                options = self.options()
                tracker = Tracker(cfg.ckpt_save, tensorboard=cfg.tensorboard, wandb_project=cfg.wandb, options=options)
                if tracker.tb_reason and cfg.tensorboard:
                    logger.info(tracker.tb_reason)
                write_options(cfg.ckpt_save, options)
            return self._train(logger, tracker, testset, use_bar)
        finally:
            if tracker is not None:
                tracker.close()
            folder.release()

    def _notes_fast_path(self) -> bool:
        """On CUDA, in reference mode, or on the CPU when asked for more than the plain fp32 path (the
        released log otherwise): the log names the fast path."""
        return self.device.type == "cuda" or self.cfg.reference_mode or self.plan.fast != resolve_options(self.device)

    def _setup_notes(self) -> list[str]:
        notes = []
        if self._notes_fast_path():
            notes.append(
                ("Reference mode (the released trainer's computation): " if self.cfg.reference_mode else "Fast path: ")
                + self.plan.describe()
            )
        note = getattr(self.loader, "worker_note", None)
        if note:
            notes.append(note)
        if self._test_note:
            notes.append(self._test_note)
        if self.ema is not None:
            notes.append(
                f"EMA of the weights, decay {self.cfg.ema}: the periodic test scores it; model_N.pt "
                "carries it as params_ema"
            )
        return notes

    def _testset(self):
        """The test sets ``[(name, images)]``, validated now (None, with a note, when the built-in
        images are not installed)."""
        self._test_note = None
        sets = []
        for folder in self.cfg.testsets():
            try:
                images = components.load_testset(folder)
            except SamplesUnavailable as exc:
                self._test_note = f"warning: the periodic test is skipped: {exc}"
                return None
            components.check_test_images(images, self.cfg, folder)
            sets.append((components.testset_name(folder), images))
        return sets

    def options(self) -> dict:
        """The resolved options of the run (``options.json``)."""
        cfg = self.cfg
        return {
            "config": cfg.to_dict(),
            "resolved": {
                "task": cfg.task,
                "confounders": [c.name for c in self.degrade.confounders] if self.degrade else None,
                "test": [c.name for c in cfg.test_specs()],
                "model": self.model_config or type(self.meta_model).__name__,
                "scale": cfg.effective_scale(),
                "metric": {"y": cfg.metric_y(), "crop_border": cfg.metric_crop_border()},
                "loader": type(self.loader).__name__,
                "device": str(self.device),
                "world_size": self.world_size,
                "plan": self.plan.to_dict(),
            },
            "versions": versions(),
            "command": " ".join(sys.argv),
        }

    def _train(self, logger, tracker, testset, use_bar) -> int:
        old_handlers = (
            {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
            if threading.current_thread() is threading.main_thread()
            else {}
        )
        try:
            rc = self._epochs(logger, tracker, testset, use_bar)
        finally:
            self.close()
            for s, h in old_handlers.items():
                signal.signal(s, h)
        if self.world_size > 1:  # not after an error: a peer that is gone would make it wait
            distributed.barrier()
        return rc

    def _epochs(self, logger, tracker, testset, use_bar) -> int:
        cfg = self.cfg
        algo, loader = self.algorithm, self.loader
        start_epoch, start_iter = self.start
        n_iter = len(loader)
        stop_left = cfg.stop_after
        batch = cfg.batch_size if self._user_loader is None else 1
        done = start_epoch * n_iter + start_iter
        clock = RunClock(cfg.total_epoch * n_iter, done)
        monitor = Monitor(
            logger,
            tracker,
            clock,
            components.confounder_labels(self.cfg, self.loader, self.degrade),
            images_per_it=loader.num_confounders * batch * self.world_size,
            max_bad_steps=cfg.max_bad_steps,
        )
        self._monitor, self._tracker = monitor, tracker
        # [skipped in all, the longest run of consecutive skips]: the run stops once that reaches
        # --max_bad_steps, read at the next log or check point (no sync per step), however it goes on
        bad = torch.zeros(2, dtype=torch.float32, device=self.device)
        run = torch.zeros(1, dtype=torch.float32, device=self.device)  # the current run of skips
        loss_log = LossLog()
        try:
            for epoch in range(start_epoch, cfg.total_epoch):
                first = epoch == start_epoch
                skip = start_iter if first else 0
                if epoch and epoch % cfg.lr_step == 0 and not (first and skip):
                    lr = algo.meta_lr
                    algo.meta_lr = lr * 0.5 if lr > 1e-6 else 1e-6
                task_lr, meta_lr = algo.task_lr, algo.meta_lr
                keep_task = self.is_main and checkpoints.saves_model_checkpoint(epoch, cfg.save_every)  # its model_task
                with _progress(n_iter, skip, epoch, use_bar) as bar:  # a failing epoch erases its bar
                    for it, losses in self.epoch_iterations(epoch, skip, keep_task_at_end=keep_task):
                        done += 1
                        skipped = algo.last_skipped
                        if skipped is not None:  # device arithmetic: no sync
                            one = skipped[0].to(bad.device)
                            bad[0] += one
                            run.add_(one).mul_(one)  # reset by a good step
                            torch.maximum(bad[1:], run, out=bad[1:])
                        if it % cfg.print_every == 0:
                            # CPU: written now; CUDA: copied asynchronously, written once on the host
                            loss_log.submit(
                                torch.cat([losses.detach().float().to(bad.device), bad]),
                                monitor.log_point(
                                    bar, epoch, it, n_iter, done, done, self.order.last, task_lr, meta_lr
                                ),
                            )
                        elif cfg.max_bad_steps and (it % cfg.max_bad_steps == 0 or it + 1 == n_iter):
                            loss_log.submit(bad.clone(), monitor.bad_check())
                        loss_log.poll()
                        bar.update(1)
                        if stop_left is not None:
                            stop_left -= 1
                        if monitor.stop_reason is not None:
                            raise TrainingStopped(monitor.stop_reason)
                        if self._stop_signal is not None or stop_left == 0:
                            loss_log.flush()
                            bar.close()
                            if it + 1 < n_iter:
                                return self._interrupt(algo, epoch, it + 1, logger)
                            break
                    loss_log.flush()
                if monitor.stop_reason is not None:
                    raise TrainingStopped(monitor.stop_reason)
                self._end_of_epoch(algo, epoch, testset, logger)
                if self._stop_signal is not None or stop_left == 0:
                    return self._interrupt(algo, epoch + 1, 0, logger) if epoch + 1 < cfg.total_epoch else 0
            if self.world_size > 1:
                distributed.check_in_sync(algo, self.world_size, logger)
            logger.info("Done")
            return 0
        finally:
            loss_log.flush()
            if self.is_main and self._notes_fast_path():
                # the path the steps took (a capture that failed mid-run fell back to eager launches)
                logger.info("Fast path taken: " + self.plan.describe(self.fast.fallback_reason))

    # ------------------------------------------------------------------ epoch ends
    def _state(self, algo: MetaAlgorithm, epoch: int, iteration: int) -> dict:
        return state_io.capture(
            config=self.cfg.to_dict(),
            model_config=self.model_config,
            algo=algo,
            loader=self.loader,
            epoch=epoch,
            iteration=iteration,
            world_size=self.world_size,
            ema=self.ema,
        )

    def _end_of_epoch(self, algo: MetaAlgorithm, epoch: int, testset, logger) -> None:
        cfg = self.cfg
        if not self.is_main:
            return
        state_io.check_finite_weights(algo, self.cfg.ckpt_save)
        if checkpoints.saves_model_checkpoint(epoch, cfg.save_every):
            checkpoints.save_model_checkpoint(
                cfg.ckpt_save,
                epoch + 1,
                algo.meta_model.state_dict(),
                algo.task_model.state_dict(),
                ema_sd=None if self.ema is None else self.ema.state_dict(),
                model_config=self._carried_config,
            )
        checkpoints.save_train_state(cfg.ckpt_save, self._state(algo, epoch + 1, 0))
        if epoch % cfg.test_every == 0 and testset is not None:
            self._evaluate(algo, epoch, testset, logger)
        if self._tracker is not None:
            self._tracker.draw_curves(f"{cfg.task}, {algo.name}: ")

    def _evaluate(self, algo: MetaAlgorithm, epoch: int, testsets, logger) -> None:
        """The periodic test of the meta network (its EMA with ``--ema``) on every test set at every
        test degradation; with one set the released log lines, with several a ``Test set:`` header
        each and the set's name in the metrics' tags."""
        cfg = self.cfg
        specs = cfg.test_specs()
        model = algo.meta_model if self.ema is None else self.ema.model
        for set_name, images in testsets:
            if len(testsets) > 1:
                logger.info(f"Test set: {set_name}")
            for spec in specs:
                results = components.test_results(
                    model,
                    images,
                    spec,
                    seed=cfg.seed,
                    device=self.device,
                    y=cfg.metric_y(),
                    crop_border=cfg.metric_crop_border(),
                    scale=cfg.effective_scale(),
                )
                if len(specs) > 1:
                    logger.info(f"Test: {spec.name}")
                for name, psnr, ssim, _ in results:
                    logger.info("{}: {}, {}".format(name, psnr, ssim))
                p = sum(r[1] for r in results) / len(results)
                s = sum(r[2] for r in results) / len(results)
                logger.info("Epoch: {}, psnr: {}. ssim: {}.".format(epoch, p, s))
                if set_name == testsets[0][0]:
                    self.last_eval = (p, s)
                if self._tracker is not None:
                    step = (epoch + 1) * len(self.loader)
                    tag = spec.name if len(testsets) == 1 else f"{set_name}/{spec.name}"
                    self._tracker.scalars(step, epoch, 0, {f"test/{tag}/psnr": p, f"test/{tag}/ssim": s})

    def _interrupt(self, algo: MetaAlgorithm, epoch: int, iteration: int, logger) -> int:
        if self.is_main:
            state_io.check_finite_weights(algo, self.cfg.ckpt_save)
            path = checkpoints.save_train_state(self.cfg.ckpt_save, self._state(algo, epoch, iteration))
            logger.info(f"Stopped at epoch {epoch}, iteration {iteration}; resume with --resume {path}")
        if self._stop_signal is not None:
            return 128 + int(self._stop_signal)
        return 0


def _no_phase(_name):
    return contextlib.nullcontext()


def _progress(total: int, initial: int, epoch: int, enabled: bool):
    """The reporter of one epoch's meta-iterations ``initial .. total`` by the rule of
    :func:`dil_fast._progress.progress`: a tqdm bar on a terminal, erased when the epoch ends.
    ``enabled`` is False with ``--no_progress``, on ranks other than 0, and by default when stderr
    is no terminal: there the Monitor's lines already say progress (iteration, it/s, elapsed and
    ETA every ``--print_every``), so a plain line every 30 s would only repeat them. Forced on
    (``TrainConfig.progress=True``) without a terminal, the plain lines go to stderr, never to
    train.log."""
    from .._progress import progress

    return progress(total, desc=f"epoch {epoch}", unit="it", enabled=enabled, initial=initial, leave=False)
