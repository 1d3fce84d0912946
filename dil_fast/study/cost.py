"""The study's cost model: FLOPs per meta-iteration of every method, and the time that makes at a
stated efficiency, so a preset is sized before it runs (``--dry-run`` prints the plan).

**Counting.** Only the convolutions are counted (2 FLOP per multiply-add); the rest (LeakyReLU,
concatenations, the residual sums, the loss, the optimizers) is memory traffic that the stated
efficiency absorbs. :func:`rrdb_macs_per_pixel` is exact for RRDBNet (``tests/study`` checks it
against ``torch.utils.flop_counter``); at the defaults it is the 16.6 M of docs/released-trainer.md.
Training a patch costs its forward plus a backward of twice the forward (the gradients with
respect to inputs and to weights), ``3 x forward``; the first convolution's input gradient, which
is never computed, is left in (0.01 % of RRDB-2).

**Patches through forward + backward per meta-iteration**, K confounders of B patches
(``query=mixture``: the outer batch is B patches drawn from the given ones):

========== ============= =============================================================
method     patches       why
========== ============= =============================================================
erm        K B           one step on the union
erm-steps  K B           K steps of B (B/K per confounder)
sf         K B           K inner steps of B
pf         (K + 1) B     the union, then the query
ss-fo      2 K B         K virtual steps of B, a query of B at each of the K virtual models
ss         ~2.7 K B      ss-fo with each virtual step differentiated through (x 5/3, assumed)
ps         ~(1.7 K+1) B  the union differentiated through (x 5/3, assumed), then the query
========== ============= =============================================================

A ``-bf`` method (the bias-free network) costs what its biased twin costs.

**Rates.** ``cuda``: an H100/H200's dense bf16 peak, 790 TFLOP/s (../shared/DEVICE.md measures
770-800 on an 8192^3 matmul), at :data:`GPU_EFFICIENCY` (25 %: RRDB's 3x3 convolutions have 32-192
channels and every block adds concatenations and LeakyReLUs that are memory-bound; the issue's
example is 35 % for the convolutions alone); evaluation in float32 (TF32 convolutions, 395 TFLOP/s
dense) at the same efficiency. ``cpu``: :data:`CPU_GFLOPS_PER_THREAD` per torch thread, measured on
this project's 2-core machine for RRDB nf 16 (docs/RESULTS-generalization.md). Fixed costs per
run (building the trainer, cuDNN autotuning, the CUDA-graph capture) are :data:`RUN_SETUP_S`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "rrdb_macs_per_pixel",
    "patches_per_meta_iteration",
    "Rates",
    "rates_for",
    "RunCost",
    "run_cost",
    "GPU_BF16_TFLOPS",
    "GPU_TF32_TFLOPS",
    "GPU_EFFICIENCY",
    "CPU_GFLOPS_PER_THREAD",
    "RUN_SETUP_S",
]

GPU_BF16_TFLOPS = 790.0
GPU_TF32_TFLOPS = 395.0
GPU_EFFICIENCY = 0.25
CPU_GFLOPS_PER_THREAD = 38.0
RUN_SETUP_S = {"cuda": 4.0, "cpu": 1.0}
_SECOND_ORDER = 5.0 / 3.0


def rrdb_macs_per_pixel(nf: int, nb: int, gc: int, in_nc: int = 3, out_nc: int = 3, scale: int = 1) -> int:
    """Multiply-adds per input pixel of one RRDBNet forward (x1, or x4 with ``scale=4``)."""
    rdb = 9 * (nf * gc + (nf + gc) * gc + (nf + 2 * gc) * gc + (nf + 3 * gc) * gc + (nf + 4 * gc) * nf)
    low = 9 * (in_nc * nf + nf * nf) + nb * 3 * rdb  # conv_first, trunk_conv, the blocks
    if scale == 1:
        return low + 9 * (nf * nf + nf * out_nc)  # HRconv, conv_last
    if scale != 4:
        raise ValueError(f"RRDBNet is x1 or x4, not x{scale}")
    # upconv1 at 2x (4 pixels per input pixel), upconv2, HRconv and conv_last at 4x (16 pixels)
    return low + 4 * 9 * nf * nf + 16 * 9 * (nf * nf + nf * nf + nf * out_nc)


def patches_per_meta_iteration(method: str, k: int, batch: int) -> float:
    """Patches through forward + backward in one meta-iteration (the table in the module docstring)."""
    base = method[:-3] if method.endswith("-bf") else method
    per = {
        "erm": k,
        "erm-steps": k,
        "sf": k,
        "pf": k + 1,
        "ss-fo": 2 * k,
        "ss": k * (1 + _SECOND_ORDER),
        "ps": k * _SECOND_ORDER + 1,
    }
    if base not in per:
        raise ValueError(f"no cost model for method {method!r}")
    return per[base] * batch


@dataclass(frozen=True)
class Rates:
    """Effective FLOP/s for training and for evaluation on one device kind, and the words that say so."""

    train: float
    evaluate: float
    setup_s: float
    note: str


def rates_for(device_type: str, threads: int = 1, efficiency: float | None = None) -> Rates:
    """The rates the estimate assumes on ``device_type`` (``cuda`` or ``cpu``)."""
    if device_type == "cuda":
        eff = GPU_EFFICIENCY if efficiency is None else efficiency
        return Rates(
            GPU_BF16_TFLOPS * 1e12 * eff,
            GPU_TF32_TFLOPS * 1e12 * eff,
            RUN_SETUP_S["cuda"],
            f"{eff:.0%} of {GPU_BF16_TFLOPS:.0f} TFLOP/s bf16 (training) and of {GPU_TF32_TFLOPS:.0f} "
            f"TFLOP/s TF32 (evaluation), H100/H200",
        )
    scale = 1.0 if efficiency is None else efficiency
    rate = CPU_GFLOPS_PER_THREAD * 1e9 * max(1, threads) * scale
    return Rates(
        rate,
        rate,
        RUN_SETUP_S["cpu"],
        f"{rate / 1e9:.0f} GFLOP/s ({CPU_GFLOPS_PER_THREAD:.0f} GFLOP/s "
        f"per thread x {max(1, threads)} thread(s){'' if efficiency is None else f' x {scale:g}'}, "
        f"measured for RRDB nf 16 on the project's 2-core machine)",
    )


@dataclass(frozen=True)
class RunCost:
    """One training run (a method at one seed): FLOPs and the estimated seconds."""

    method: str
    flops_per_meta_iteration: float
    train_flops: float
    eval_flops: float
    train_s: float
    eval_s: float
    setup_s: float

    @property
    def total_s(self) -> float:
        return self.train_s + self.eval_s + self.setup_s


def run_cost(
    method: str,
    *,
    macs_per_pixel: int,
    k: int,
    batch: int,
    patch: int,
    budget: int,
    evals: int,
    eval_pixels: int,
    rates: Rates,
) -> RunCost:
    """The cost of training ``method`` for ``budget`` meta-iterations and evaluating it ``evals``
    times on ``eval_pixels`` input pixels (every test image at every level)."""
    per_it = patches_per_meta_iteration(method, k, batch) * patch * patch * macs_per_pixel * 2 * 3
    train = per_it * budget
    ev = float(eval_pixels) * macs_per_pixel * 2 * evals
    return RunCost(method, per_it, train, ev, train / rates.train, ev / rates.evaluate, rates.setup_s)
