#!/usr/bin/env bash
# The GPU check (../shared/DEVICE.md, bench/RESULTS.md): ONE invocation that finishes within 8 minutes
# of wall time on one H100/H200 that starts cold and bare (no network, no DALI).
#
#   bash bench/gpu_check.sh --out DIR        # run it; logs and CSV rows land in DIR as they are made
#   bash bench/gpu_check.sh --dry-run        # print the plan and the per-step caps (any machine)
#   bash bench/gpu_check.sh --out DIR --budget 300   # the same plan within a shorter budget
#
# Steps run in priority order, each under its own `timeout` (TERM 5 s before its cap, KILL at it).
# A step starts only when the time left in the budget can hold its cap, so the run never exceeds
# the budget; the fixed caps add up to the budget (470 s of the 480 s), and the last step (the rest
# of the test suite) runs in whatever time the others left unused. Each step writes
# DIR/logs/NN-name.log; the benchmarks append their rows to DIR/<topic>.csv as each is measured (a
# killed step keeps them); DIR/summary.tsv gets one line per step as it ends; DIR/gpu_check.log is
# everything printed here.
set -u -o pipefail

BUDGET=470  # of the 480 s the device gives: 10 s stay for the shell, the transfers and the summary
SUITE_MIN=30  # the last step starts only with this much time left
OUT=""
DRY_RUN=0
usage() { sed -n '5,7p' "$0" | sed 's/^#  *//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || { echo "gpu_check.sh: --out needs a folder" >&2; exit 2; }; OUT="$2"; shift 2 ;;
    --out=*) OUT="${1#--out=}"; shift ;;
    --budget) [ $# -ge 2 ] || { echo "gpu_check.sh: --budget needs seconds" >&2; exit 2; }; BUDGET="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
case "$BUDGET" in ''|*[!0-9]*) echo "gpu_check.sh: --budget must be whole seconds, got '$BUDGET'" >&2; exit 2 ;; esac

# name | cap in seconds ("rest": the time left) | command (run by bash -c with $OUT set)
STEPS=(
  "setup-build|85|setup_build  # editable install building _C for sm_90, unless one is importable"
  "setup-info|20|python3 -m dil_fast info"
  "gpu-tier|70|DIL_FAST_SKIP_AUTOTUNE=1 python3 -m pytest tests -m gpu -k 'not inductor' -v -rs -p no:cacheprovider --junitxml=\"\$OUT/pytest-gpu.xml\""
  "bench-optim|40|python3 bench/bench_optim.py --sizes 16624131 --ks 1 4 --repeat 20 --out \"\$OUT\""
  "bench-noise|35|python3 bench/bench_degrade.py --families noise --sizes 256 --out \"\$OUT\""
  "bench-sampler|25|python3 bench/bench_loader.py --providers store-gpu --images 256 --iters 20 --out \"\$OUT\""
  "bench-train|90|python3 bench/bench_train.py --shapes 8x4 --out \"\$OUT\""
  "bench-host|20|python3 bench/bench_host.py --devices cuda --parts a,b,c --repeat 7 --warmup 3 --out \"\$OUT\""
  "bench-meta|30|python3 bench/bench_meta.py --models rrdb-23 --ks 4 --variants ss-fo ss sf --warmup 1 --repeat 2 --rounds 2 --out \"\$OUT\""
  "gpu-tier-compile|30|DIL_FAST_SKIP_AUTOTUNE=1 python3 -m pytest tests -m gpu -k inductor -v -rs -p no:cacheprovider"
  "bench-degrade-rest|15|DIL_FAST_SKIP_AUTOTUNE=1 python3 bench/bench_degrade.py --families noise1,blur1,blur,jpeg,hybrid --sizes 256 --repeat 10 --out \"\$OUT\""
  "bench-loader-rest|10|python3 bench/bench_loader.py --providers reference,store-cpu --images 256 --iters 10 --out \"\$OUT\""
  "suite-rest|rest|DIL_FAST_SKIP_AUTOTUNE=1 python3 -m pytest tests -m 'not gpu' -v -p no:cacheprovider"
)

# Set-up without network: build dil_fast._C for sm_90 in place unless an sm_90 build is already here.
setup_build() {
  local archs='import dil_fast._C as c, sys; sys.exit(0 if any(a.startswith("sm_90") for a in c.cuda_archs()) else 1)'
  if python3 -c "import dil_fast.kernels; $archs" 2>/dev/null; then
    echo "dil_fast (kernels + an sm_90 _C) is already importable: nothing to build"
  elif python3 -c "$archs" 2>/dev/null; then
    echo "an sm_90 dil_fast._C is here: editable install without rebuilding it"
    DIL_FAST_BUILD_EXT=0 python3 -m pip install --no-build-isolation --no-deps -e .
  else
    echo "building dil_fast._C for sm_90 (editable install)"
    DIL_FAST_CUDA_ARCHS=90 python3 -m pip install --no-build-isolation --no-deps -e .
  fi
}

plan() {
  local fixed=0 i=0 entry name cap cmd
  echo "gpu_check plan: ${#STEPS[@]} steps in priority order within a budget of ${BUDGET} s;"
  echo "a step is skipped when the time left cannot hold its cap; the last one gets the time that remains"
  printf '  %-4s  %-5s  %-18s  %s\n' step cap_s name command
  for entry in "${STEPS[@]}"; do
    i=$((i + 1))
    IFS='|' read -r name cap cmd <<<"$entry"
    [ "$cap" = rest ] || fixed=$((fixed + cap))
    printf '  %-4s  %-5s  %-18s  %s\n' "$i" "$cap" "$name" "$cmd"
  done
  echo "fixed caps total: ${fixed} s of the ${BUDGET} s budget; 'rest' = the time left (at least ${SUITE_MIN} s to start)"
}

if [ "$DRY_RUN" = 1 ]; then
  plan
  exit 0
fi
[ -n "$OUT" ] || { echo "gpu_check.sh: --out DIR is required (or --dry-run)" >&2; usage >&2; exit 2; }
mkdir -p "$OUT/logs"
OUT="$(cd "$OUT" && pwd)"
export OUT
cd "$(dirname "$0")/.." || exit 2
export -f setup_build
# No index and no version check: pip must never wait on a network that is not there. A system
# Python marked externally managed still takes the editable install.
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_BREAK_SYSTEM_PACKAGES=1
export PYTHONUNBUFFERED=1 DIL_FAST_BENCH_OUT="$OUT"
MAIN="$OUT/gpu_check.log"
SUMMARY="$OUT/summary.tsv"
say() { echo "$*" | tee -a "$MAIN"; }

start=$(date +%s)
plan | tee -a "$MAIN"
printf 'step\tname\tcap_s\tstatus\tseconds\n' >"$SUMMARY"
failed=0
i=0
for entry in "${STEPS[@]}"; do
  i=$((i + 1))
  IFS='|' read -r name cap cmd <<<"$entry"
  left=$((BUDGET - ($(date +%s) - start)))
  if [ "$cap" = rest ]; then
    cap=$((left - 2))
    [ "$cap" -ge "$SUITE_MIN" ] || cap=0
  fi
  log="$OUT/logs/$(printf '%02d' "$i")-$name.log"
  if [ "$cap" -le 0 ] || [ "$left" -lt "$cap" ]; then
    say "== [$i] $name: skipped (${left} s left, cap ${cap} s)"
    printf '%s\t%s\t%s\tskipped\t0\n' "$i" "$name" "$cap" >>"$SUMMARY"
    continue
  fi
  say "== [$i] $name (cap ${cap} s, ${left} s left): $cmd"
  t0=$(date +%s)
  timeout -k 5 $((cap - 5)) bash -c "$cmd" >"$log" 2>&1
  rc=$?
  dt=$(($(date +%s) - t0))
  case "$rc" in
    0) status=ok ;;
    124|137) status="timeout"; failed=1 ;;
    *) status="failed rc=$rc"; failed=1 ;;
  esac
  tail -n 25 "$log" | tee -a "$MAIN"
  say "== [$i] $name: $status after ${dt} s"
  printf '%s\t%s\t%s\t%s\t%s\n' "$i" "$name" "$cap" "$status" "$dt" >>"$SUMMARY"
done

say "== summary ($(($(date +%s) - start)) s of ${BUDGET} s)"
column -t -s "$(printf '\t')" "$SUMMARY" 2>/dev/null | tee -a "$MAIN" || tee -a "$MAIN" <"$SUMMARY"
for csv in "$OUT"/*.csv; do
  [ -f "$csv" ] && say "$(basename "$csv"): $(($(wc -l <"$csv") - 1)) rows"
done
exit "$failed"
