#!/usr/bin/env bash
# Set up (or reuse) the environment, then run the whole test suite (tiers T0-T2; T3 needs a GPU).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
# TRITON_INTERPRET must be set before Triton is imported: kernels then run on CPU tensors.
TRITON_INTERPRET=1 "$VPY" -m pytest -q "$@"
