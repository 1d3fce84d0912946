"""Autotune config lists for the degradation kernels, collapsed to one config where autotuning
cannot run: under the CPU interpreter (``TRITON_INTERPRET=1``: one big program is fastest there)
or when ``DIL_FAST_SKIP_AUTOTUNE=1`` (first GPU config). Read once, at import."""
from __future__ import annotations

import os

import triton

from dil_fast import backends

SKIP = backends.triton_interpret() or os.environ.get("DIL_FAST_SKIP_AUTOTUNE", "0").strip().lower() in ("1", "true", "yes", "on")


def configs(gpu: list[dict], interpreter: dict, num_warps=(4,)) -> list:
    """``triton.Config`` list: every gpu meta-dict x num_warps, or the single fallback config."""
    if backends.triton_interpret():
        return [triton.Config(dict(interpreter), num_warps=4)]
    out = [triton.Config(dict(m), num_warps=w) for m in gpu for w in num_warps]
    return out[:1] if SKIP else out
