"""The study's statistics: mean +- standard deviation over seeds, and the paired difference of two
methods with a 95 % interval and a verdict that never rests on one number.

A *paired sample* is one (seed, test image): both methods were trained with that seed on the same
data from the same initial weights and are scored on the same degraded image, so their difference
removes what the seed and the image share. The interval is Student's t over those ``n = seeds x
images`` differences: ``mean +- t(0.975, n - 1) * sd / sqrt(n)``. It treats the pairs as
independent, which they are not quite (the images of one seed share a network; the seeds of one
image share its content): read it as the spread the study can see, not as a population claim.
The verdict per level is ``better`` when the whole interval is above zero, ``worse`` when it is
below, else ``not distinguishable``; with one pair there is no interval and the verdict says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Paired", "paired_difference", "t_quantile_975", "mean_std", "VERDICTS"]

VERDICTS = ("better", "worse", "not distinguishable", "one sample: no interval")

# Student's t quantile at 0.975 for 1..30 degrees of freedom (standard tables, 4 decimals)
_T975 = (
    12.7062,
    4.3027,
    3.1824,
    2.7764,
    2.5706,
    2.4469,
    2.3646,
    2.3060,
    2.2622,
    2.2281,
    2.2010,
    2.1788,
    2.1604,
    2.1448,
    2.1314,
    2.1199,
    2.1098,
    2.1009,
    2.0930,
    2.0860,
    2.0796,
    2.0739,
    2.0687,
    2.0639,
    2.0595,
    2.0555,
    2.0518,
    2.0484,
    2.0452,
    2.0423,
)
_Z975 = 1.959963984540054


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (``df >= 1``): the table up
    to 30, then the Cornish-Fisher expansion in 1/df (error below 1e-4 there)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / df + g2 / df**2 + g3 / df**3


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


@dataclass(frozen=True)
class Paired:
    """``a - b`` over paired samples: mean, the 95 % interval (``lo``, ``hi``; NaN with one
    sample), the number of pairs and the verdict."""

    mean: float
    lo: float
    hi: float
    n: int
    verdict: str

    def cell(self) -> str:
        """``+0.42 [+0.10, +0.74]`` (the interval left out when there is none)."""
        if self.n < 2:
            return f"{self.mean:+.2f}"
        return f"{self.mean:+.2f} [{self.lo:+.2f}, {self.hi:+.2f}]"


def paired_difference(a, b) -> Paired:
    """``a - b`` for equally shaped arrays of paired scores (e.g. ``[seeds, images]``)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired scores must have the same shape, got {a.shape} and {b.shape}")
    d = (a - b).ravel()
    n = int(d.size)
    if n == 0:
        raise ValueError("no paired samples")
    mean = float(d.mean())
    if n < 2:
        return Paired(mean, math.nan, math.nan, n, VERDICTS[3])
    half = t_quantile_975(n - 1) * float(d.std(ddof=1)) / math.sqrt(n)
    lo, hi = mean - half, mean + half
    verdict = VERDICTS[0] if lo > 0 else VERDICTS[1] if hi < 0 else VERDICTS[2]
    return Paired(mean, lo, hi, n, verdict)
