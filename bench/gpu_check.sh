#!/usr/bin/env bash
# The GPU check (../shared/DEVICE.md): ONE call on a cold, bare H200 that returns the whole verdict.
#
#   bash bench/gpu_check.sh --out DIR               # run it (on the GPU machine: --out $OUT)
#   bash bench/gpu_check.sh --dry-run               # print the plan: steps, caps, estimates
#   bash bench/gpu_check.sh --rehearse --out DIR    # the same script on a CPU: tiny sizes, CPU forms
#   bash bench/gpu_check.sh --out DIR --budget 300  # the same plan within a shorter budget
#
# What comes back. The device returns at most 8 files from $OUT (16 MiB each, at most two folders
# down, names of letters, digits, '.', '_', '-') plus the last 12,000 characters of output. This
# script leaves exactly three files in DIR, all at its top: summary.tsv (one line per step as it
# ends), gpu_check.log (everything printed here) and results.tar.gz (every step's log, every CSV row
# the benchmarks recorded and the test tier's junit XML), rewritten after each step so a run cut
# short still returns what it finished. Everything else is written to a scratch folder.
#
# Time. Steps run in the order below, each under its own `timeout` (TERM 5 s before its cap, KILL
# at it), and a step starts only when the budget's time left holds its whole cap, so the script
# never runs past the budget. The caps add up to the budget (420 s: call 1 of the device session,
# the machine's start and call 2 taking the rest of its 15 minutes). Each cap is the step's
# cold-start estimate (a bare machine: empty pip, Triton, cuDNN and Inductor caches) plus margin;
# the estimate is printed with the plan.
#
# --rehearse runs every step with its CPU form (tiny sizes, the CPU twin of each GPU step, the
# interpreter for Triton), proving the packaging, the caps logic and the file rule; CI runs it.
set -u -o pipefail

BUDGET=420
OUT=""
DRY_RUN=0
REHEARSE=0
PY="${PYTHON:-python3}"
usage() { sed -n '4,7p' "$0" | sed 's/^#  *//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || { echo "gpu_check.sh: --out needs a folder" >&2; exit 2; }; OUT="$2"; shift 2 ;;
    --out=*) OUT="${1#--out=}"; shift ;;
    --budget) [ $# -ge 2 ] || { echo "gpu_check.sh: --budget needs seconds" >&2; exit 2; }; BUDGET="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --rehearse) REHEARSE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
case "$BUDGET" in ''|*[!0-9]*) echo "gpu_check.sh: --budget must be whole seconds, got '$BUDGET'" >&2; exit 2 ;; esac

# name | cap s | cold-start estimate s (what the cap holds) | GPU command | its CPU form (--rehearse)
# Commands run under bash -c with PY (python), CSV (the CSV folder), LOGS and WORK set.
STEPS=(
  "setup-build|90|60: pip + nvcc for sm_90 on 16 cores|setup_build|setup_build"
  "setup-info|15|8: torch + Triton imports, CUDA init|\$PY -m dil_fast info|\$PY -m dil_fast info"
  "gpu-tier|85|65: collection 10, the GPU and Triton tiers (~200 tests, ~40 cold Triton compiles without autotuning, CUDA graphs)|DIL_FAST_SKIP_AUTOTUNE=1 \$PY -m pytest tests -m 'gpu or triton' -k 'not inductor' -v -rs -p no:cacheprovider --junitxml=\"\$WORK/junit-gpu.xml\"|TRITON_INTERPRET=1 \$PY -m pytest tests/ops tests/optim -m 'gpu or triton' -k 'noise or adam' -q -rs -p no:cacheprovider --junitxml=\"\$WORK/junit-gpu.xml\""
  "micro|45|30: copy + matmul ceilings, flat Adam 16.6 M x K 1/4, DIL_sf optimizer, noise autotune, sampler|\$PY bench/gpu_micro.py --out \"\$CSV\"|TRITON_INTERPRET=1 \$PY bench/gpu_micro.py --quick --device cpu --out \"\$CSV\""
  "bench-train|110|90: RRDB-23 8x4, 6 cases (floor, reference with 8 workers, default graph, 3 weight options, eager contrast) x (gate + cuDNN autotune + 20 its)|\$PY bench/bench_train.py --shapes 8x4 --iters 10 --weight_options cw,ws,cw+ws --out \"\$CSV\"|\$PY bench/bench_train.py --quick --precision bf16 --weight_options cw,ws,cw+ws --out \"\$CSV\""
  "bench-compile|40|30: regional torch.compile of one RRDB (Inductor cold) for the gate and the case|\$PY bench/bench_train.py --shapes 8x4 --iters 10 --compile --cases c --out \"\$CSV\"|\$PY bench/bench_train.py --quick --cases d --out \"\$CSV\""
  "smoke|35|25: dil-fast train of the six variants, --stop_after 20, default CUDA graphs, one process|\$PY bench/gpu_smoke.py --out \"\$CSV\"|\$PY bench/gpu_smoke.py --device cpu --tiny --out \"\$CSV\""
)

# Set-up without network: an editable install that builds dil_fast._C for sm_90 (unless an sm_90
# build is importable already), then the build must really hold sm_90 code: a CPU-only _C fails here.
setup_build() {
  if "$PY" -m dil_fast.ext_check sm_90 2>/dev/null; then
    echo "an sm_90 dil_fast._C is importable: nothing to build"
  else
    echo "building dil_fast._C for sm_90 (editable install)"
    DIL_FAST_CUDA_ARCHS=90 "$PY" -m pip install --no-build-isolation --no-deps -e . || return 1
    "$PY" -m dil_fast.ext_check sm_90 || return 1  # one line when the build holds no sm_90 code
  fi
}

plan() {
  local fixed=0 i=0 entry name cap est gpu cpu
  echo "gpu_check plan: ${#STEPS[@]} steps in order within a budget of ${BUDGET} s$([ "$REHEARSE" = 1 ] && echo ' (rehearsal: CPU forms)')"
  echo "a step starts only when the time left holds its whole cap; each is killed at its cap"
  printf '  %-4s  %-5s  %-14s  %s\n' step cap_s name "command  [cold-start estimate]"
  for entry in "${STEPS[@]}"; do
    i=$((i + 1))
    IFS='|' read -r name cap est gpu cpu <<<"$entry"
    fixed=$((fixed + cap))
    if [ "$REHEARSE" = 1 ]; then cmd="$cpu"; else cmd="$gpu"; fi
    printf '  %-4s  %-5s  %-14s  %s  [%s]\n' "$i" "$cap" "$name" "$cmd" "$est"
  done
  echo "caps total: ${fixed} s of the ${BUDGET} s budget"
}

# The device's rule for what comes back: at most 8 files, 16 MiB each, two folders deep, plain names.
check_out() {
  local n=0 bad=0 f rel depth size
  while IFS= read -r -d '' f; do
    n=$((n + 1))
    rel="${f#"$OUT"/}"
    depth=$(($(tr -cd '/' <<<"$rel" | wc -c)))
    size=$(stat -c %s "$f")
    if [ "$depth" -gt 2 ] || [ "$size" -gt $((16 * 1024 * 1024)) ] || ! [[ "$rel" =~ ^[A-Za-z0-9._/-]+$ ]]; then
      echo "gpu_check: $rel would not come back (depth $depth, $size bytes)"; bad=1
    fi
  done < <(find "$OUT" -type f -print0)
  [ "$n" -le 8 ] || { echo "gpu_check: $n files in the output folder; the device returns 8"; bad=1; }
  echo "output folder: $n files ($(cd "$OUT" && ls | tr '\n' ' '))"
  return "$bad"
}

if [ "$DRY_RUN" = 1 ]; then
  plan
  exit 0
fi
[ -n "$OUT" ] || { echo "gpu_check.sh: --out DIR is required (or --dry-run)" >&2; usage >&2; exit 2; }
if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT" 2>/dev/null)" ]; then
  echo "gpu_check.sh: --out $OUT is not empty; give an empty or new folder" >&2; exit 2
fi
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"
cd "$(dirname "$0")/.." || exit 2
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")" || exit 2
trap 'rm -rf "$WORK"' EXIT
CSV="$WORK/csv"
LOGS="$WORK/logs"
mkdir -p "$CSV" "$LOGS"
export OUT WORK CSV LOGS PY
export -f setup_build
# No index and no version check: pip must never wait on a network that is not there. A system
# Python marked externally managed still takes the editable install.
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_BREAK_SYSTEM_PACKAGES=1
export PYTHONUNBUFFERED=1 DIL_FAST_BENCH_OUT="$CSV"
# the rehearsal shares a small CPU with whatever else runs: OpenMP threads that spin-wait on a busy
# core slow a tiny model down a hundredfold, so one thread per process
[ "$REHEARSE" = 1 ] && export OMP_NUM_THREADS=1
MAIN="$OUT/gpu_check.log"
SUMMARY="$OUT/summary.tsv"
say() { echo "$*" | tee -a "$MAIN"; }
pack() {  # every log, CSV and junit file in one tarball, replaced atomically
  tar -czf "$WORK/results.tar.gz" -C "$WORK" logs csv $(cd "$WORK" && ls junit-*.xml 2>/dev/null) 2>/dev/null
  mv -f "$WORK/results.tar.gz" "$OUT/results.tar.gz"
}

start=$(date +%s)
say "gpu_check on $(hostname) at $(date -u +%Y-%m-%dT%H:%M:%SZ), revision $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem \
  --format=csv,noheader 2>&1 | tee -a "$MAIN"
plan | tee -a "$MAIN"
printf 'step\tname\tcap_s\tstatus\tseconds\n' >"$SUMMARY"
failed=0
i=0
for entry in "${STEPS[@]}"; do
  i=$((i + 1))
  IFS='|' read -r name cap est gpu cpu <<<"$entry"
  if [ "$REHEARSE" = 1 ]; then cmd="$cpu"; else cmd="$gpu"; fi
  left=$((BUDGET - ($(date +%s) - start)))
  log="$LOGS/$(printf '%02d' "$i")-$name.log"
  if [ "$left" -lt "$cap" ]; then
    say "== [$i] $name: skipped (${left} s left, cap ${cap} s)"
    printf '%s\t%s\t%s\tskipped\t0\n' "$i" "$name" "$cap" >>"$SUMMARY"
    failed=1
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
  tail -n 12 "$log" | cut -c1-240 >>"$MAIN"
  say "== [$i] $name: $status after ${dt} s"
  printf '%s\t%s\t%s\t%s\t%s\n' "$i" "$name" "$cap" "$status" "$dt" >>"$SUMMARY"
  pack
done

# The verdict last (the call's reply carries the end of the output): each step's status and the
# lines that hold its figures.
{
  echo
  echo "== verdict ($(($(date +%s) - start)) s of ${BUDGET} s)"
  column -t -s "$(printf '\t')" "$SUMMARY" 2>/dev/null || cat "$SUMMARY"
  for f in "$LOGS"/*.log; do
    [ -f "$f" ] || continue
    echo "-- $(basename "$f" .log)"
    grep -E "sm_90|archs:|^dil_fast|passed|failed|error|Error|copy .*GB/s|^  (flat Adam|fused K-way|PatchStore)|correctness|/a = |b/c = |GATE|^(sf|pf|erm|ss|ps|ss-fo) |variants ok" "$f" \
      | grep -v "^  File " | cut -c1-200 | tail -n 16
  done
  for csv in "$CSV"/*.csv; do
    [ -f "$csv" ] && echo "$(basename "$csv"): $(($(wc -l <"$csv") - 1)) rows"
  done
} 2>&1 | tee -a "$MAIN"
pack
check_out | tee -a "$MAIN" || failed=1
exit "$failed"
