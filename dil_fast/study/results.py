"""The study's numbers, aggregated from the curves: what the tables, the CSV files and the plots show.

Every run (a method at a seed) has a curve: per evaluation point, per test set, the PSNR of every
image at every level. Runs are compared at the **horizon**, the last meta-iteration every run
reached (the budget, unless a time limit stopped one early), so every method has seen the same
number of images. A run's **score** is the mean of its last ``last_evals`` points up to the horizon
(one point's value swings with the iteration: the global colour offset of the meta network), per
image and level; the table shows its mean over the images, then mean +- standard deviation over
seeds; the paired differences (:mod:`dil_fast.study.stats`) pair the scores of two methods by
(seed, image). SSIM is the last point's (at the horizon).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .methods import StudyTask
from .runner import RunResult
from .stats import Paired, mean_std, paired_difference

__all__ = ["StudyResults", "comparisons", "read_curves"]


def comparisons(methods: list[str]) -> list[tuple[str, str]]:
    """The ``(method, baseline)`` pairs the report shows: every method against ``erm``, and every
    DIL method (and the bias-free ERM) against ``erm-steps`` when it ran."""
    out = []
    for base in ("erm", "erm-steps"):
        if base not in methods:
            continue
        for m in methods:
            if m == base or (base == "erm-steps" and m == "erm"):
                continue
            out.append((m, base))
    return out


@dataclass
class StudyResults:
    task: StudyTask
    testsets: list  # [TestSet]
    runs: list[RunResult]
    input_psnr: list[np.ndarray]  # per test set [levels, images]: the do-nothing baseline
    input_ssim: list[np.ndarray]
    last_evals: int

    # ------------------------------------------------------------------ structure
    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(r.run.method for r in self.runs))

    @property
    def seeds(self) -> list[int]:
        return sorted({r.run.seed for r in self.runs})

    def runs_of(self, method: str) -> list[RunResult]:
        return sorted((r for r in self.runs if r.run.method == method), key=lambda r: r.run.seed)

    @property
    def horizon(self) -> int:
        """The last meta-iteration every run was evaluated at."""
        ends = [max(p.meta_iteration for p in r.points) for r in self.runs if r.points]
        return min(ends) if ends else 0

    def points_upto(self, r: RunResult) -> list:
        h = self.horizon
        return [p for p in r.points if p.meta_iteration <= h]

    # ------------------------------------------------------------------ scores
    def run_score(self, r: RunResult, t: int) -> np.ndarray:
        """``[levels, images]``: the mean of the run's last ``last_evals`` points up to the horizon."""
        pts = self.points_upto(r)[-self.last_evals :]
        return np.mean([p.psnr[t] for p in pts], axis=0)

    def run_ssim(self, r: RunResult, t: int) -> np.ndarray | None:
        pts = self.points_upto(r)
        return pts[-1].ssim[t] if pts and pts[-1].ssim is not None else None

    def scores(self, method: str, t: int) -> dict[int, np.ndarray]:
        """seed -> ``[levels, images]`` scores of ``method`` on test set ``t``."""
        return {r.run.seed: self.run_score(r, t) for r in self.runs_of(method)}

    def level_groups(self) -> list[tuple[str, list[int]]]:
        """(column name, level indices): each level, then the seen and the unseen means."""
        k = len(self.task.seen)
        groups = [("mean seen", list(range(k)))]
        if self.task.unseen:
            groups.append(("mean unseen", list(range(k, len(self.task.levels)))))
        return groups

    def cell(self, method: str, t: int, rows: list[int]) -> tuple[float, float]:
        """Mean and std over seeds of the image-mean PSNR over the levels ``rows``."""
        if method == "input":
            return float(self.input_psnr[t][rows].mean()), 0.0
        per_seed = [s[rows].mean() for s in self.scores(method, t).values()]
        return mean_std(per_seed)

    def ssim_cell(self, method: str, t: int, row: int) -> float:
        if method == "input":
            return float(self.input_ssim[t][row].mean())
        vals = [self.run_ssim(r, t) for r in self.runs_of(method)]
        vals = [v[row].mean() for v in vals if v is not None]
        return float(np.mean(vals)) if vals else float("nan")

    def paired(self, method: str, base: str, t: int, rows: list[int]) -> Paired:
        """``method - base`` over (seed, image) pairs of the mean over the levels ``rows``."""
        a, b = self.scores(method, t), self.scores(base, t)
        seeds = sorted(set(a) & set(b))
        return paired_difference([a[s][rows].mean(0) for s in seeds], [b[s][rows].mean(0) for s in seeds])

    # ------------------------------------------------------------------ curves
    def mean_curve(self, method: str, t: int, rows: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(meta-iterations, mean, std) over seeds of the image-mean PSNR over ``rows`` at the
        points every seed of the method has, up to the horizon."""
        runs = self.runs_of(method)
        common = sorted(set.intersection(*[{p.meta_iteration for p in self.points_upto(r)} for r in runs]))
        means, stds = [], []
        for it in common:
            vals = [next(p for p in r.points if p.meta_iteration == it).psnr[t][rows].mean() for r in runs]
            m, s = mean_std(vals)
            means.append(m)
            stds.append(s)
        return np.array(common), np.array(means), np.array(stds)

    def train_seconds(self, method: str) -> tuple[float, float]:
        return mean_std([r.run.seconds for r in self.runs_of(method)])


def read_curves(paths: list[str], task: StudyTask, testsets: list, *, batch_size: int) -> tuple:
    """``(runs, input_psnr, input_ssim)`` from ``curves.csv`` files of studies of ``task`` on the
    same test sets (several files: runs split across processes, e.g. one seed each). A run found in
    two files, or an image a test set does not have, is a :class:`~dil_fast.errors.InputError`."""
    import csv

    from ..errors import InputError
    from .methods import MethodRun, steps_per_meta_iteration
    from .runner import CurvePoint

    k = len(task.seen)
    level_index = {(lv.family, lv.level): i for i, lv in enumerate(task.levels)}
    set_index = {ts.label: t for t, ts in enumerate(testsets)}
    image_index = [{n: i for i, (n, _) in enumerate(ts.images)} for ts in testsets]

    def blank():
        return [np.full((len(task.levels), len(ts.images)), np.nan) for ts in testsets]

    input_psnr, input_ssim = blank(), blank()
    points: dict[tuple[str, int], dict[int, dict]] = {}
    owner: dict[tuple[str, int], str] = {}
    for path in paths:
        try:
            rows = list(csv.DictReader(open(path, encoding="utf-8")))
        except OSError as exc:
            raise InputError(f"--from_curves {path}: cannot read it ({exc.strerror or exc})") from None
        for row in rows:
            if row["task"] != task.name:
                raise InputError(f"--from_curves {path}: a row of task {row['task']}, not --task {task.name}")
            try:
                t = set_index[row["testset"]]
                li = level_index[(row["confounder"], row["level"])]
                ii = image_index[t][row["image"]]
            except KeyError as exc:
                raise InputError(
                    f"--from_curves {path}: {exc.args[0]} is not among this study's test sets, levels "
                    "or images (give the --testset, --test_max_side and --test_confounders it ran with)"
                ) from None
            ssim = float(row["ssim"]) if row["ssim"] else np.nan
            if row["method"] == "input":
                input_psnr[t][li, ii], input_ssim[t][li, ii] = float(row["psnr"]), ssim
                continue
            key = (row["method"], int(row["seed"]))
            if owner.setdefault(key, path) != path:
                raise InputError(
                    f"--from_curves: {row['method']} seed {row['seed']} is in both {owner[key]} and {path}"
                )
            it = int(row["meta_iteration"])
            p = points.setdefault(key, {}).setdefault(
                it,
                {
                    "images": int(row["images_seen"]),
                    "seconds": float(row["train_seconds"]),
                    "loss": float(row["loss"]),
                    "psnr": blank(),
                    "ssim": blank(),
                    "has_ssim": False,
                },
            )
            p["psnr"][t][li, ii] = float(row["psnr"])
            if row["ssim"]:
                p["ssim"][t][li, ii] = ssim
                p["has_ssim"] = True
    runs = []
    for (method, seed), by_it in points.items():
        pts = [
            CurvePoint(it, p["images"], p["seconds"], p["loss"], p["psnr"], p["ssim"] if p["has_ssim"] else None)
            for it, p in sorted(by_it.items())
        ]
        last = pts[-1]
        per_meta = k if method.startswith("erm-steps") else 1
        batch = batch_size // k if per_meta > 1 else batch_size
        run = MethodRun(
            method,
            last.meta_iteration,
            last.meta_iteration * per_meta,
            batch,
            steps_per_meta_iteration(method, k) * last.meta_iteration,
            last.images_seen,
            last.seconds,
            seed=seed,
        )
        runs.append(RunResult(run, pts))
    if not runs:
        raise InputError(f"--from_curves {' '.join(paths)}: no training run in them")
    return runs, input_psnr, input_ssim
