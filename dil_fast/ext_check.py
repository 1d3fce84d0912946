"""``python -m dil_fast.ext_check sm_90 [sm_80 ...]``: exit 0 when the native core ``dil_fast._C``
carries SASS for every named CUDA arch, else exit 2 with one line saying what is missing and how to
rebuild.

For the set-up step of a GPU machine, which must not go on with a ``_C`` built without CUDA (the
optimizer ops would quietly serve CUDA tensors with the torch references). ``_C`` is loaded through
:mod:`dil_fast.backends`, the only module that imports it; no CUDA runtime is started.
"""

from __future__ import annotations

import argparse
import sys
from typing import Iterable

from . import backends

REBUILD = "DIL_FAST_CUDA_ARCHS={archs} pip install --no-build-isolation -e ."


def arch_name(spec: str) -> str:
    """The target name ``dil_fast._C.cuda_archs()`` uses: ``"sm_90"``, ``"90"`` and ``"9.0"`` give
    ``"sm_90"``, ``"90a"`` gives ``"sm_90a"``, ``"compute_90"`` (PTX) stays as it is."""
    tok = spec.strip().lower()
    kind = "compute_" if tok.startswith("compute_") else "sm_"
    tok = tok.removeprefix("compute_").removeprefix("sm_").replace(".", "")
    digits = tok.rstrip("af")
    if not digits.isdigit() or len(digits) < 2 or len(tok) - len(digits) > 1:
        raise ValueError(f"{spec!r} is not a CUDA arch such as sm_90, 90, 8.6 or sm_90a")
    return kind + tok


def missing_archs(required: Iterable[str], compiled: Iterable[str]) -> list[str]:
    """The archs of ``required`` (any spelling :func:`arch_name` takes) absent from ``compiled``."""
    have = set(compiled)
    return [name for name in dict.fromkeys(arch_name(r) for r in required) if name not in have]


def check(required: Iterable[str]) -> str:
    """``""`` when ``dil_fast._C`` loads and carries every arch of ``required``; else the reason, one line."""
    required = list(required)
    wanted = [arch_name(r) for r in required]
    rebuild = REBUILD.format(archs=",".join(w.removeprefix("sm_").removeprefix("compute_") for w in wanted))
    status = backends.native_status()
    if not status.available:
        return f"dil_fast._C is not available: {status.reason}"
    compiled = list(status.module.cuda_archs())
    if not compiled:
        return (
            f"dil_fast._C was built without CUDA kernels (CPU twins only), so it has no "
            f"{', '.join(wanted)}; rebuild it where nvcc and the static CUDA runtime are found: {rebuild}"
        )
    missing = missing_archs(wanted, compiled)
    if missing:
        return (
            f"dil_fast._C has no {', '.join(missing)} (it carries {', '.join(compiled)}); "
            f"rebuild it for them: {rebuild}"
        )
    return ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dil_fast.ext_check", description=__doc__.splitlines()[0])
    ap.add_argument("archs", nargs="+", help="CUDA archs the build must carry, e.g. sm_90")
    args = ap.parse_args(argv)
    try:
        problem = check(args.archs)
    except ValueError as exc:
        print(f"dil_fast.ext_check: {exc}", file=sys.stderr)
        return 2
    if problem:
        print(f"dil_fast.ext_check: {problem}", file=sys.stderr)
        return 2
    archs = ", ".join(backends.native_cuda_archs())
    print(f"dil_fast.ext_check: dil_fast._C carries {', '.join(arch_name(a) for a in args.archs)} ({archs})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
