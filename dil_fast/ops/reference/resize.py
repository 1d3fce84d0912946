"""Pure-torch reference of the resize op (:mod:`dil_fast.ops.resize`): separable resampling by index /
weight tables that fix the convention (torch ``antialias=True`` bilinear/bicubic, 'area' pooling);
the oracle of ``kernels/resize.py`` and its CPU path."""

from __future__ import annotations

import torch

__all__ = ["resample_tables", "resample_ref"]


def _cubic_aa(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    x = x.abs()
    return torch.where(
        x < 1,
        ((a + 2) * x - (a + 3)) * x * x + 1,
        torch.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, torch.zeros_like(x)),
    )


def resample_tables(n_in: int, n_out: int, mode: str, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Index and weight tables ``[n_out, T]`` of a 1-D resampling (zero weights pad short rows).

    Convention: torch ``F.interpolate(size=..., align_corners=False, antialias=True)`` for
    'bilinear' and 'bicubic' (PIL-style: filter stretched by the scale when shrinking, cubic
    a = -0.5, taps cut at the border and renormalised), and ``F.interpolate(mode='area')``
    (adaptive average pooling) for 'area'.
    """
    scale = n_in / n_out
    rows_i, rows_w = [], []
    if mode == "area":
        for i in range(n_out):
            s = (i * n_in) // n_out
            e = -((-(i + 1) * n_in) // n_out)
            rows_i.append(list(range(s, e)))
            rows_w.append([1.0 / (e - s)] * (e - s))
    elif mode in ("bilinear", "bicubic"):
        half = 1.0 if mode == "bilinear" else 2.0
        support = half * scale if scale >= 1.0 else half
        inv = 1.0 / scale if scale >= 1.0 else 1.0
        for i in range(n_out):
            center = scale * (i + 0.5)
            xmin = max(int(center - support + 0.5), 0)
            xmax = min(int(center + support + 0.5), n_in)
            j = torch.arange(xmin, xmax, dtype=torch.float64)
            arg = (j - center + 0.5) * inv
            w = (1.0 - arg.abs()).clamp_min(0.0) if mode == "bilinear" else _cubic_aa(arg)
            total = float(w.sum())
            w = w / total if total != 0.0 else w
            rows_i.append(list(range(xmin, xmax)))
            rows_w.append(w.tolist())
    else:
        raise ValueError(f"resize mode {mode!r} is not one of 'area', 'bilinear', 'bicubic'")
    T = max(len(r) for r in rows_i)
    idx = torch.zeros(n_out, T, dtype=torch.int32)
    wt = torch.zeros(n_out, T, dtype=torch.float32)
    for i, (ri, rw) in enumerate(zip(rows_i, rows_w)):
        idx[i, : len(ri)] = torch.tensor(ri, dtype=torch.int32)
        idx[i, len(ri) :] = ri[-1]
        wt[i, : len(rw)] = torch.tensor(rw, dtype=torch.float32)
    return idx.to(device), wt.to(device)


def resample_ref(x: torch.Tensor, idx: torch.Tensor, wt: torch.Tensor, dim: int) -> torch.Tensor:
    """One separable resampling pass along dim (2 or 3): ``out[.., i, ..] = sum_t wt[i,t] x[.., idx[i,t], ..]``."""
    n_out, T = idx.shape
    xf = x.float()
    out = None
    for t in range(T):
        g = xf.index_select(dim, idx[:, t].long())
        shape = [1, 1, 1, 1]
        shape[dim] = n_out
        term = wt[:, t].reshape(shape) * g
        out = term if out is None else out + term
    return out
