"""Experiment tracking: the run's options, its scalars and its clock.

* ``options.json`` (and ``options.yaml`` when PyYAML is installed) in the run folder at start: every
  resolved option (the task's values filled in), the model, the backends that serve each op, the
  versions and the command line.
* ``metrics.csv``, always: one row per scalar, ``step, epoch, iteration, seconds, tag, value``
  (appended and flushed as they come, so a killed run keeps its curves), with the tags
  ``loss/<confounder>``, ``lr/task``, ``lr/meta``, ``speed/meta_it_s``, ``speed/images_s``,
  ``skipped/nonfinite`` and ``test/<degradation>/psnr|ssim``.
* TensorBoard event files under ``tb/`` too, when ``torch.utils.tensorboard`` can be imported (the
  ``tensorboard`` extra).
* With ``--wandb PROJECT`` (the ``wandb`` extra), the same scalars (tags and steps) to a Weights &
  Biases run named after the folder, with the run's options as its config, kept under ``wandb/``
  (:class:`WandbSink`).
* ``curves.png``, redrawn at the end of every epoch from those scalars (a resumed run continues
  them) with matplotlib: the training loss per confounder against the meta-iteration, and the
  periodic test's PSNR per test degradation (integer iteration ticks, a PSNR axis at least 1 dB
  tall, legends outside the curves).
* :class:`RunClock`: meta-iterations/s over the last log interval and the whole run's ETA, from
  host wall time only (no device synchronisation).
"""

from __future__ import annotations

import csv
import datetime as _dt
import importlib.util
import json
import os
import sys
import time
import warnings

from ..fileio import atomic_write_bytes, file_mode

__all__ = ["Tracker", "RunClock", "WandbSink", "check_wandb", "write_options", "format_duration"]

WANDB_EXTRA = "pip install 'dil-fast[wandb]'"


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return str(_dt.timedelta(seconds=seconds))


def write_options(folder: str, options: dict) -> list[str]:
    """Write ``options.json`` (and ``options.yaml`` if PyYAML is there); returns the file names."""
    names = ["options.json"]
    atomic_write_bytes(
        (json.dumps(options, indent=2, sort_keys=True, default=str) + "\n").encode(),
        os.path.join(folder, "options.json"),
    )
    try:
        import yaml
    except ImportError:
        return names
    atomic_write_bytes(
        yaml.safe_dump(json.loads(json.dumps(options, default=str)), sort_keys=True).encode(),
        os.path.join(folder, "options.yaml"),
    )
    return names + ["options.yaml"]


class Tracker:
    """Scalars to ``metrics.csv`` (always), to TensorBoard (when available) and to W&B (``wandb_project``,
    with ``options`` as the W&B run's config); see the module doc."""

    FIELDS = ("step", "epoch", "iteration", "seconds", "tag", "value")

    def __init__(
        self, folder: str, *, tensorboard: bool = True, wandb_project: str | None = None, options: dict | None = None
    ):
        self.folder = folder
        path = os.path.join(folder, "metrics.csv")
        new = not os.path.exists(path)
        # first: a W&B run that cannot start stops the run before metrics.csv is written
        self.wandb = WandbSink(folder, wandb_project, options or {}, continues=not new) if wandb_project else None
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, file_mode())
        self._file = os.fdopen(fd, "a", newline="", encoding="utf-8", buffering=1)
        self._csv = csv.writer(self._file)
        if new:
            self._csv.writerow(self.FIELDS)
        self._t0 = time.time()
        self.history: dict[str, list[tuple[float, float]]] = {}  # tag -> [(step, value)], for curves.png
        self._warned_no_plot = False
        if not new:
            self._read_history(path)
        self.tb = None
        self.tb_reason = "disabled"
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                self.tb_reason = f"TensorBoard is not installed ({exc}); pip install tensorboard for event files"
            else:
                self.tb = SummaryWriter(log_dir=os.path.join(folder, "tb"))
                self.tb_reason = ""

    def scalars(self, step: int, epoch: int, iteration: int, values: dict[str, float]) -> None:
        seconds = round(time.time() - self._t0, 3)
        for tag, value in values.items():
            self._csv.writerow((step, epoch, iteration, seconds, tag, value))
            if tag.startswith(("loss/", "test/")):
                self.history.setdefault(tag, []).append((float(step), float(value)))
            if self.tb is not None:
                self.tb.add_scalar(tag, value, step)
        if self.wandb is not None:
            self.wandb.log(step, values)
        self._file.flush()

    def _read_history(self, path: str) -> None:
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                tag = row.get("tag") or ""
                if tag.startswith(("loss/", "test/")):
                    try:
                        self.history.setdefault(tag, []).append((float(row["step"]), float(row["value"])))
                    except (TypeError, ValueError):
                        continue  # a row cut short by a killed run

    def draw_curves(self, title: str = "") -> str | None:
        """``curves.png`` (:func:`dil_fast.eval.plot.curves_figure`): loss per confounder (top) and
        test PSNR (bottom) against the meta-iteration; returns its path (``None`` before the first
        scalar, or without matplotlib: then one warning, and the run goes on)."""
        from ..eval.plot import curves_figure, matplotlib_missing, save_figure

        losses = {t[len("loss/") :]: v for t, v in self.history.items() if t.startswith("loss/")}
        psnr = {
            t[len("test/") : -len("/psnr")]: v
            for t, v in self.history.items()
            if t.startswith("test/") and t.endswith("/psnr")
        }
        if not losses and not psnr:
            return None
        why = matplotlib_missing()
        if why:
            if not self._warned_no_plot:
                self._warned_no_plot = True
                warnings.warn(f"no curves.png: {why}", stacklevel=2)
            return None
        path = os.path.join(self.folder, "curves.png")
        save_figure(curves_figure(losses, psnr, title), path)
        return path

    def close(self) -> None:
        self._file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.close()


def check_wandb(project: str) -> None:
    """``--wandb PROJECT`` before anything is written: a project name W&B accepts, and wandb installed;
    :class:`~dil_fast.errors.FlagError` naming the flag (and the extra)."""
    from ..errors import FlagError

    if not project.strip() or len(project) > 128 or set(project) & set("/\\#?%:"):
        raise FlagError(
            f"--wandb {project!r}: a W&B project name has 1 to 128 characters and none of / \\ # ? % : "
            "(the entity comes from WANDB_ENTITY)"
        )
    if not _wandb_installed():
        raise FlagError(f"--wandb needs wandb, an optional extra: {WANDB_EXTRA}")


def _wandb_installed() -> bool:
    if sys.modules.get("wandb") is not None:
        return True
    return importlib.util.find_spec("wandb") is not None


class WandbSink:
    """The tracker's scalars to a Weights & Biases run (``--wandb PROJECT``): the same tags and steps
    as TensorBoard, the run's options as its config, files under ``FOLDER/wandb/`` (``WANDB_MODE``,
    ``WANDB_ENTITY`` and wandb's other variables apply). A run that continues in its folder
    (``metrics.csv`` is there) continues its W&B run, whose id ``wandb/dil_fast_run_id`` keeps."""

    ID_FILE = os.path.join("wandb", "dil_fast_run_id")

    def __init__(self, folder: str, project: str, options: dict, *, continues: bool):
        from ..errors import FlagError

        try:
            import wandb
        except ImportError as exc:
            raise FlagError(f"--wandb needs wandb, an optional extra ({exc}): {WANDB_EXTRA}") from None
        id_path = os.path.join(folder, self.ID_FILE)
        run_id = None
        if continues and os.path.isfile(id_path):
            with open(id_path, encoding="utf-8") as f:
                run_id = f.read().strip() or None
        try:
            self.run = wandb.init(
                project=project,
                dir=folder,
                name=os.path.basename(os.path.abspath(folder)),
                config=json.loads(json.dumps(options, default=str)),
                id=run_id,
                resume="allow" if run_id else None,
            )
        except wandb.errors.Error as exc:  # no login, no network, a refused project: one line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise FlagError(
                f"--wandb {project}: W&B did not start ({first}); run `wandb login`, or set "
                "WANDB_MODE=offline to keep the run local"
            ) from None
        if run_id is None:
            os.makedirs(os.path.dirname(id_path), exist_ok=True)
            atomic_write_bytes(f"{self.run.id}\n".encode(), id_path)

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log({tag: float(value) for tag, value in values.items()}, step=step)

    def close(self) -> None:
        self.run.finish()


class RunClock:
    """Speed and ETA of the run from host wall time (``mark`` at every log point)."""

    def __init__(self, total_iterations: int, done: int = 0):
        self.total, self.start_done = total_iterations, done
        self.t0 = self.t_mark = time.time()
        self.done_mark = done

    def mark(self, done: int) -> dict:
        """``{"it_s", "elapsed", "eta"}`` after ``done`` meta-iterations of the run in all."""
        now = time.time()
        window = now - self.t_mark
        it_s = (done - self.done_mark) / window if window > 0 and done > self.done_mark else 0.0
        overall = (done - self.start_done) / (now - self.t0) if now > self.t0 and done > self.start_done else 0.0
        rate = it_s or overall
        self.t_mark, self.done_mark = now, done
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        return {"it_s": it_s, "elapsed": now - self.t0, "eta": eta}


def command_line() -> str:
    return " ".join(sys.argv)


class Monitor:
    """What happens at a log point, from host values only (they arrive asynchronously on CUDA):
    the released log lines, one labelled line (losses per confounder, speed, elapsed, the run's
    ETA, skipped steps), the scalars, and the count of consecutive non-finite steps."""

    def __init__(
        self,
        logger,
        tracker: Tracker | None,
        clock: RunClock,
        labels: list[str],
        *,
        images_per_it: int,
        max_bad_steps: int,
    ):
        self.logger, self.tracker, self.clock = logger, tracker, clock
        self.labels, self.images_per_it, self.max_bad_steps = labels, images_per_it, max_bad_steps
        self.bad_total = 0  # skipped meta-iterations reported so far
        self.bad_run = 0  # consecutive skipped meta-iterations at the last report
        self.stop_reason: str | None = None

    def log_point(
        self,
        bar,
        epoch: int,
        it: int,
        n_iter: int,
        step: int,
        done: int,
        order: list[int],
        task_lr: float,
        meta_lr: float,
    ):
        """The function :class:`~dil_fast.train.fast.LossLog` calls with ``[losses..., bad_total, bad_run]``."""

        def emit(values: list[float]) -> None:
            losses, (bad_total, bad_run) = values[:-2], values[-2:]
            for loss in losses:
                self.logger.info(
                    "Epoch: {}\tIter: {}/{}\tTask loss: {}\tTask LR: {:.6f}\tMeta LR: {:.6f}".format(
                        epoch, it, n_iter, loss, task_lr, meta_lr
                    )
                )
            self.logger.info("Meta net updated!")
            by_label = {self.labels[k]: loss for k, loss in zip(order, losses)}
            t = self.clock.mark(done)
            skipped = int(bad_total) - self.bad_total
            self._bad(bad_total, bad_run)
            parts = ", ".join(f"{name} {value:.5g}" for name, value in by_label.items())
            line = (
                f"Losses: {parts} | {t['it_s']:.3g} it/s, {t['it_s'] * self.images_per_it:.4g} images/s | "
                f"elapsed {format_duration(t['elapsed'])}, "
                f"ETA {format_duration(t['eta']) if t['eta'] == t['eta'] else '?'}"
            )
            if skipped:
                line += f" | skipped {skipped} non-finite step(s)"
            self.logger.info(line)
            if bar is not None and losses:
                bar.set_postfix(loss=f"{sum(losses) / len(losses):.4f}")
            if self.tracker is not None:
                scalars = {f"loss/{name}": value for name, value in by_label.items()}
                scalars.update(
                    {
                        "lr/task": task_lr,
                        "lr/meta": meta_lr,
                        "speed/meta_it_s": t["it_s"],
                        "speed/images_s": t["it_s"] * self.images_per_it,
                        "skipped/nonfinite": bad_total,
                    }
                )
                self.tracker.scalars(step, epoch, it, scalars)

        return emit

    def bad_check(self):
        """The function LossLog calls with ``[bad_total, bad_run]`` between log points."""
        return lambda values: self._bad(*values)

    def _bad(self, bad_total: float, bad_run: float) -> None:
        """``bad_run``: the longest run of consecutive skipped meta-iterations so far (kept on the
        device), so a run that reached ``max_bad_steps`` stops however the steps went on until it was read."""
        if int(bad_total) > self.bad_total:
            self.bad_total = int(bad_total)
        self.bad_run = int(bad_run)
        if self.max_bad_steps and self.bad_run >= self.max_bad_steps and self.stop_reason is None:
            self.stop_reason = (
                f"{self.max_bad_steps} consecutive meta-iterations had non-finite losses or gradients, or "
                f"gradients too large for the optimizer state (--max_bad_steps {self.max_bad_steps}); the run "
                "stops (lower --lr / --meta_lr?)"
            )


def versions() -> dict:
    """The versions options.json records."""
    import platform

    import torch

    from .. import __version__

    return {
        "dil_fast": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
    }
