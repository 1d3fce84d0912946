#!/usr/bin/env bash
# The checks for a lent GPU (see ../shared/DEVICE.md), in calls that each fit the 10-minute limit:
#   run(command="bash bench/gpu_check.sh tests")            # build + GPU tier + rest of the suite
#   run(command="bash bench/gpu_check.sh bench optim degrade loader")
#   run(command="bash bench/gpu_check.sh bench meta train")
# (issue the calls back to back: a machine idle for 30 s goes back, and the next one builds again).
# Every phase first builds the native core for Hopper in place unless a build with sm_90 is there.
# tests: the GPU tier (T3), then the rest of the suite on the device's torch 2.11 + Triton 3.6 (the
#   compatibility check; the device has no DALI, scikit-image or tqdm: their tests skip and
#   progress bars stay off). SUITE=0 skips the rest of the suite.
# bench [TOPIC...]: the benchmarks (default all: optim degrade loader meta train), CSVs under
#   $OUT/results; QUICK=1 runs the small sizes only. A short summary is printed last.
set -o pipefail
OUT="${OUT:-/tmp/dil_fast_out}"
mkdir -p "$OUT"
export DIL_FAST_BENCH_OUT="$OUT/results"
phase="${1:-tests}"
shift || true
{
  if ! python3 -c "import dil_fast, sys; sys.exit('sm_90' not in dil_fast.info().get('cuda_archs', ''))" 2>/dev/null; then
    echo "== build (sm_90)"
    DIL_FAST_CUDA_ARCHS=90 python3 -m pip install -q --no-build-isolation --no-deps -e . || exit 1
  fi
  python3 -m dil_fast info
  case "$phase" in
    tests)
      echo "== GPU tier (T3)"
      python3 -m pytest -m gpu -q -p no:cacheprovider -rs 2>&1 | tail -30
      if [ "${SUITE:-1}" = 1 ]; then
        echo "== the rest of the suite on this torch/Triton"
        timeout 300 python3 -m pytest -m "not gpu" -q -p no:cacheprovider 2>&1 | tail -15
      fi
      ;;
    bench)
      q=""; [ "${QUICK:-0}" = 1 ] && q="--quick"
      topics=("$@"); [ ${#topics[@]} -eq 0 ] && topics=(optim degrade loader meta train)
      for topic in "${topics[@]}"; do
        [ -f "bench/bench_$topic.py" ] || { echo "no bench/bench_$topic.py"; continue; }
        echo "-- bench_$topic"
        timeout 170 python3 "bench/bench_$topic.py" $q 2>&1 | tail -30
      done
      ;;
    *) echo "usage: bash bench/gpu_check.sh tests | bench [TOPIC...]" >&2; exit 2 ;;
  esac
} 2>&1 | tee "$OUT/log-$phase"
echo "== summary"; ls -la "$OUT/results" 2>/dev/null
