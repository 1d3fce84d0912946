"""Autotune config lists for the Triton kernels, collapsed to one config where autotuning cannot
run (see :func:`dil_fast.backends.skip_autotune`): under the CPU interpreter one big program is
fastest, and with ``DIL_FAST_SKIP_AUTOTUNE=1`` the first GPU config is used."""

from __future__ import annotations

import triton

from dil_fast import backends


def configs(gpu: list[dict], interpreter: dict, num_warps=(4,)) -> list:
    """``triton.Config`` list: every gpu meta-dict x num_warps (a dict with its own ``num_warps``
    entry gives that one config), or the single fallback config."""
    if backends.triton_interpret():
        return [triton.Config(dict(interpreter), num_warps=4)]
    out = []
    for meta in gpu:
        meta = dict(meta)
        warps = (meta.pop("num_warps"),) if "num_warps" in meta else num_warps
        out += [triton.Config(dict(meta), num_warps=w) for w in warps]
    return out[:1] if backends.skip_autotune() else out
