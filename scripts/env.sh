# Sourced by demo.sh / test.sh: create or reuse a virtual environment and install dil_fast into it.
# DIL_FAST_VENV (default .venv) picks the folder; DIL_FAST_TORCH (default torch==2.13.0, the CPU
# build) is installed first when the environment has no torch yet, so pip never pulls CUDA wheels
# by accident. An existing torch (e.g. a cluster's CUDA build) is kept. DIL_FAST_EXTRAS (default
# "test") names the extras installed with the package (CI adds "dali" to test the DALI loader).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DIL_FAST_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
"$VPY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
  "$VPY" -m pip install -q "${DIL_FAST_TORCH:-torch==2.13.0}"
fi
# pybind11/setuptools/wheel are the build requirements; installed here so the build can reuse this
# environment's torch-free toolchain without build isolation.
"$VPY" -m pip install -q "setuptools>=77" wheel "pybind11>=2.10"
"$VPY" -m pip install -q --no-build-isolation -e "$ROOT[${DIL_FAST_EXTRAS:-test}]"
