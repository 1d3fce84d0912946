"""Training one study run (a method at a seed) through the trainer, with its curve.

The run is :class:`dil_fast.train.Trainer` opened on the study's config and driven by
:meth:`~dil_fast.train.Trainer.meta_iterations`: the trainer's fast path as ``dil-fast train``
runs it (on CUDA: bf16 autocast, channels-last, the fused optimizers and the whole meta-iteration
as one CUDA graph), with the study's schedule and evaluations between iterations:

* **learning rates**: every optimizer of the run (ERM's; the task and the meta optimizer of
  sf/pf; the meta optimizer of ss/ps/ss-fo) follows the same factor of its base rate: 1 until
  ``decay_from`` of the budget, then a half cosine down to ``lr_floor``. The released meta-LR
  halving every 20 epochs is not used. Rates change on the host between iterations (a CUDA-graph
  replay reads them from the device tensors they are written to: no sync).
* **curve points**: every ``eval_every`` meta-iterations and at the end, the meta network is
  scored by the :class:`~dil_fast.study.evaluator.BatchedEvaluator` (one device sync per point; the
  wall time between points, synchronised, is the training time).
* **time limit**: a ``budget_hook`` may shrink the budget from the second curve point on (the
  study fits it to ``--time_limit`` from what the first run measured, for every run alike); and
  given ``end_by`` (a callable returning the ``time.monotonic`` value by which this run must end,
  the time left less what the runs after it need) the run stops at a curve point when the next
  interval would end past it, the study then comparing the methods at the last point every run
  reached.

``erm-steps`` is ERM at batch ``B/K`` for ``K`` trainer iterations per meta-iteration; ``NAME-bf``
trains ``NAME`` on the bias-free RRDB (``--arch_kwargs '{"bias": false}'``).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InputError
from .methods import MethodRun, Preset, StudyTask, base_method, is_bias_free, steps_per_meta_iteration

__all__ = ["CurvePoint", "RunResult", "Timing", "lr_factor", "train_run"]


@dataclass
class CurvePoint:
    """One evaluation of a run: after ``meta_iteration`` meta-iterations, ``seconds`` of training."""

    meta_iteration: int
    images_seen: int
    seconds: float
    loss: float  # mean training loss since the previous point
    psnr: list[np.ndarray]  # per test set [levels, images]
    ssim: list[np.ndarray] | None = None


@dataclass
class RunResult:
    run: MethodRun
    points: list[CurvePoint] = field(default_factory=list)


def lr_factor(meta_iteration: int, budget: int, decay_from: float, floor: float) -> float:
    """The learning-rate factor at ``meta_iteration`` (0-based) of ``budget``: 1, then from
    ``decay_from * budget`` a half cosine that reaches ``floor`` at the budget."""
    start = decay_from * budget
    if meta_iteration < start or budget <= start:
        return 1.0
    t = min(1.0, (meta_iteration - start) / (budget - start))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def _optimizers(algo) -> list[tuple[object, str]]:
    """(optimizer, which base rate: ``lr`` or ``meta``) of every optimizer the algorithm steps."""
    if algo.name == "erm":
        return [(algo.meta_optimizer, "lr")]
    pairs = [(algo.meta_optimizer, "meta")]
    task = algo.task_optimizer
    if task is not None and task is not algo.meta_optimizer:
        pairs.append((task, "lr"))
    return pairs


def train_config(
    method: str, task: StudyTask, preset: Preset, store: str, out: str, *, seed: int, device: str | None, budget: int
):
    """The :class:`~dil_fast.train.TrainConfig` of one run (``runs/<task>/<method>/seed<N>`` under ``out``)."""
    from ..data.store import PatchStore
    from ..train import TrainConfig

    k = len(task.seen)
    base = base_method(method)
    batch, iterations, variant = preset.batch_size, budget, base
    if base == "erm-steps":
        batch, iterations, variant = preset.batch_size // k, budget * k, "erm"
    count = PatchStore(store, "cpu", verify=False).count
    if count // batch < 1:
        raise InputError(f"{store}: {count} patches, fewer than one batch of {batch}")
    arch_kwargs = json.dumps({"bias": False}) if is_bias_free(method) else None
    return TrainConfig(
        ckpt_save=os.path.join(out, "runs", task.name, method, f"seed{seed}"),
        trainset=store,
        testset="default",
        variant=variant,
        task=task.name,
        order=task.order,
        confounders=task.confounders,
        loader="store",
        patch_size=preset.patch_size,
        batch_size=batch,
        total_epoch=10**6,
        save_every=10**6,
        test_every=10**6,
        print_every=10**6,
        num_workers=0,
        seed=seed,
        device=device,
        nf=preset.nf,
        nb=preset.nb,
        gc=preset.gc,
        arch_kwargs=arch_kwargs,
        lr=preset.lr,
        meta_lr=preset.meta_lr,
        lr_step=10**9,
        stop_after=iterations,
        progress=False,
        tensorboard=False,
    ), iterations


@dataclass
class Timing:
    """What a run measured by its curve points, for fitting the budget to a time limit."""

    seconds_per_meta_iteration: float  # training only, from the last interval (the first one holds the set-up)
    eval_s: float  # the last evaluation's wall time
    setup_s: float  # opening the trainer and everything of the first interval beyond its iterations


def train_run(
    method: str,
    task: StudyTask,
    preset: Preset,
    store: str,
    out: str,
    evaluator,
    *,
    seed: int,
    device: str | None,
    budget: int,
    eval_every: int,
    end_by=None,
    log=print,
    on_point=None,
    budget_hook=None,
) -> RunResult:
    """Train ``method`` at ``seed`` for ``budget`` meta-iterations, scoring it every ``eval_every``
    (and at the end); ``end_by()``: the ``time.monotonic`` value this run must end by (None: no limit).
    ``on_point(point)`` is called after each evaluation; ``budget_hook(done, budget, timing)`` after
    each from the second on may return a smaller budget (the schedule follows it). Saves the final
    training state as ``last.pt`` in the run folder (``dil-fast eval --ckpt`` reads it)."""
    from ..train import Trainer
    from ..train import state as state_io

    k = len(task.seen)
    cfg, iterations = train_config(method, task, preset, store, out, seed=seed, device=device, budget=budget)
    per_meta = iterations // budget  # trainer iterations per meta-iteration (K for erm-steps, else 1)
    t_open = time.monotonic()
    trainer = Trainer(cfg).open()
    algo = trainer.algorithm
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    bases = {"lr": preset.lr, "meta": preset.meta_lr}
    opts = _optimizers(algo)
    result = RunResult(MethodRun(method, 0, 0, cfg.batch_size, 0, 0, 0.0, seed=seed))
    loss_sum = torch.zeros((), dtype=torch.float64, device=trainer.device)
    n_loss, train_s, done, stopped, setup_s = 0, 0.0, 0, "", 0.0
    images_per_meta = k * preset.batch_size
    stream = trainer.meta_iterations()
    try:
        tick = time.monotonic()
        prev_done = 0
        while done < budget:
            lr_every = max(1, budget // 500)  # a few hundred distinct rates along the cosine are plenty
            if done % lr_every == 0:
                f = lr_factor(done, budget, preset.decay_from, preset.lr_floor)
                for opt, which in opts:
                    for g in opt.param_groups:
                        g["lr"] = bases[which] * f
            for _ in range(per_meta):
                losses = next(stream)
                loss_sum += losses.detach().double().mean()
                n_loss += 1
            done += 1
            if done % eval_every == 0 or done == budget:
                sync()
                now = time.monotonic()
                interval = now - tick
                train_s += interval
                final = done == budget
                psnr, ssim = evaluator(algo.meta_model, ssim=final)
                loss = float(loss_sum.item()) / max(1, n_loss)
                loss_sum.zero_()
                n_loss = 0
                point = CurvePoint(done, done * images_per_meta, train_s, loss, psnr, ssim)
                result.points.append(point)
                if on_point is not None:
                    on_point(point)
                eval_s = time.monotonic() - now
                if len(result.points) == 1:
                    setup_s = now - t_open  # opening the trainer, warm-up, capture and the first interval
                tick = time.monotonic()
                if final:
                    break
                if budget_hook is not None and len(result.points) >= 2:
                    rate = interval / (done - prev_done)
                    timing = Timing(rate, eval_s, max(0.0, setup_s - rate * result.points[0].meta_iteration))
                    new = budget_hook(done, budget, timing)
                    if new is not None and done < new < budget:
                        budget = new
                prev_done = done
                limit = None if end_by is None else end_by()
                if limit is not None and tick + interval > limit:
                    stopped = f"time limit: stopped at {done} of {budget} meta-iterations"
                    point.psnr, point.ssim = evaluator(algo.meta_model, ssim=True)  # the last point carries SSIM
                    log(
                        f"    {method} seed {seed}: {stopped} ({tick - t_open:.0f} s; the next interval would end "
                        f"{tick + interval - limit:.0f} s past its time)"
                    )
                    break
        if not result.points:
            raise InputError(f"{method} seed {seed}: no evaluation was made")
        state = state_io.capture(
            config=cfg.to_dict(),
            model_config=trainer.model_config,
            algo=algo,
            loader=trainer.loader,
            epoch=trainer.loader.epoch,
            iteration=trainer.loader.position,
            world_size=1,
        )
        state_io.save_in(cfg.ckpt_save, state, "last.pt")
    finally:
        stream.close()
        trainer.close()
    result.run = MethodRun(
        method,
        done,
        done * per_meta,
        cfg.batch_size,
        steps_per_meta_iteration(method, k) * done,
        done * images_per_meta,
        train_s,
        seed=seed,
        stopped=stopped,
    )
    return result
