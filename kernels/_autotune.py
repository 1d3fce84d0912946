"""Autotune config lists for the Triton kernels, collapsed to one config where autotuning cannot
run (see :func:`dil_fast.backends.skip_autotune`): under the CPU interpreter one big program is
fastest, and with ``DIL_FAST_SKIP_AUTOTUNE=1`` the first GPU config is used."""
from __future__ import annotations

import triton

from dil_fast import backends


def configs(gpu: list[dict], interpreter: dict, num_warps=(4,)) -> list:
    """``triton.Config`` list: every gpu meta-dict x num_warps, or the single fallback config."""
    if backends.triton_interpret():
        return [triton.Config(dict(interpreter), num_warps=4)]
    out = [triton.Config(dict(m), num_warps=w) for m in gpu for w in num_warps]
    return out[:1] if backends.skip_autotune() else out
