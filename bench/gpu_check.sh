#!/usr/bin/env bash
# One device call that checks everything on a lent GPU (see ../shared/DEVICE.md):
#   run(command="bash bench/gpu_check.sh", timeout_s=600)
# 1. builds the native core for Hopper in place; 2. runs the GPU tier (and the rest of the suite);
# 3. runs the benchmarks with their CSVs under $OUT; 4. prints a short summary last.
# QUICK=1 runs the small benchmark sizes only.
set -o pipefail
OUT="${OUT:-/tmp/dil_fast_out}"
mkdir -p "$OUT"
export DIL_FAST_BENCH_OUT="$OUT/results"
{
  echo "== build (sm_90)"
  DIL_FAST_CUDA_ARCHS=90 python3 -m pip install -q --no-build-isolation --no-deps -e . || exit 1
  python3 -m dil_fast info
  echo "== GPU tier"
  python3 -m pytest -m gpu -q -p no:cacheprovider 2>&1 | tail -25
  echo "== benchmarks"
  q=""; [ "${QUICK:-0}" = 1 ] && q="--quick"
  for topic in optim degrade loader meta train; do
    [ -f "bench/bench_$topic.py" ] || continue
    echo "-- bench_$topic"
    timeout 150 python3 "bench/bench_$topic.py" $q 2>&1 | tail -30
  done
} 2>&1 | tee "$OUT/log"
echo "== summary"; ls -la "$OUT/results" 2>/dev/null
