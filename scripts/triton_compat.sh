#!/usr/bin/env bash
# The Triton kernels against another Triton release (default 3.6.0, the lent GPUs' version; CI and
# our machines run 3.9): a side environment with that Triton and the CPU torch, then the compile
# report (bench/bench_compile.py: every kernel x autotune config compiled for sm_90 by Triton's real
# compiler, no GPU needed; rows appended to the benchmarks' --out folder) and the Triton tier under
# the interpreter, whose tests/ops/test_compile.py fails on any spill, int32 offset product,
# excess Philox work, or approximate math (approximate division/sqrt/transcendentals, FMA
# contraction) in a kernel claimed bit-exact (bench_compile.NUMERICS).
# Usage: bash scripts/triton_compat.sh [TRITON_VERSION]
#
# Triton <= 3.6's interpreter converts size-1 arrays to Python ints, which NumPy >= 2.4 refuses
# ("only 0-dimensional arrays can be converted to Python scalars"); the side environment therefore
# pins numpy < 2.4. Compiled kernels (any GPU run) are not affected.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="${1:-3.6.0}"
VENV="${DIL_FAST_COMPAT_VENV:-$ROOT/.venv-triton${VERSION//./}}"
PY="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
VPY="$VENV/bin/python"
"$VPY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
"$VPY" -m pip install -q "${DIL_FAST_TORCH:-torch==2.13.0}" "triton==$VERSION" "numpy<2.4" pytest \
  opencv-python-headless tqdm packaging "setuptools>=77" wheel "pybind11>=2.10"
# Pure-Python install of this checkout: the Triton kernels are what is under test here.
DIL_FAST_BUILD_EXT=0 "$VPY" -m pip install -q --no-build-isolation --no-deps -e "$ROOT"
cd "$ROOT"
got="$("$VPY" -c 'import triton; print(triton.__version__)')"
if [ "$got" != "$VERSION" ]; then
  echo "triton_compat: wanted triton $VERSION, the environment has $got" >&2
  exit 1
fi
echo "== Triton $got: compile report for sm_90"
report=0
env -u TRITON_INTERPRET -u DIL_FAST_SKIP_AUTOTUNE "$VPY" bench/bench_compile.py || report=$?
echo "== Triton $got: Triton tier under the interpreter (with the sm_90 compile test)"
TRITON_INTERPRET=1 "$VPY" -m pytest -q -p no:cacheprovider -m triton \
  -W "ignore:Conversion of an array with ndim:DeprecationWarning" tests
if [ "$report" -ne 0 ]; then
  echo "triton_compat: the compile report failed on triton $got (exit status $report)" >&2
  exit "$report"
fi
