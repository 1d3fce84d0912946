#!/usr/bin/env bash
# The generalization study's gpu preset as ONE device call (../shared/DEVICE.md, call 2): ERM, DIL_sf
# and the bias-free ERM on RRDB nf 64 / nb 2, data made on the device from the built-in images (training)
# and the built-in test pair + Set5 (testing), within about 200 s of wall time, start-up included.
#
#   bash bench/gpu_study.sh --out DIR                  # run it (builds dil_fast._C first when it cannot be imported)
#   bash bench/gpu_study.sh --dry-run                  # print the plan and the cost model's estimate (any machine)
#   bash bench/gpu_study.sh --rehearse --out DIR       # the same script on the CPU at a tiny size, in seconds
#   options: --set5 DIR (default .device_data/Set5; skipped with one line when absent), --budget S (default 200)
#
# DIR receives at most 4 files: results.md, curves.csv, generalization_denoise.png and gpu_study.log
# (everything printed here, the build's tail and the study's log). The study works in a temporary folder
# outside DIR (the packed store, checkpoints), removed at the end. The study gets --time_limit = the budget
# left after the set-up, less a margin, so it ends in time even when the device is slower than the estimate
# (a run then stops at a curve point and the methods are compared at the last point all reached).
set -u -o pipefail

BUDGET=200
OUT=""
SET5=".device_data/Set5"
MODE=run
usage() { sed -n '6,9p' "$0" | sed 's/^#  *//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || { echo "gpu_study.sh: --out needs a folder" >&2; exit 2; }; OUT="$2"; shift 2 ;;
    --out=*) OUT="${1#--out=}"; shift ;;
    --set5) [ $# -ge 2 ] || { echo "gpu_study.sh: --set5 needs a folder" >&2; exit 2; }; SET5="$2"; shift 2 ;;
    --budget) [ $# -ge 2 ] || { echo "gpu_study.sh: --budget needs seconds" >&2; exit 2; }; BUDGET="$2"; shift 2 ;;
    --dry-run) MODE=dry; shift ;;
    --rehearse) MODE=rehearse; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_study.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
case "$BUDGET" in ''|*[!0-9]*) echo "gpu_study.sh: --budget must be whole seconds, got '$BUDGET'" >&2; exit 2 ;; esac
start=$(date +%s)
cd "$(dirname "$0")/.." || exit 2
PY="${PYTHON:-}"  # default: the checkout's .venv when there is one (this project's CPU machine), else python3
[ -n "$PY" ] || { [ -x .venv/bin/python ] && PY=.venv/bin/python || PY=python3; }
export PYTHONUNBUFFERED=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_BREAK_SYSTEM_PACKAGES=1
export DIL_FAST_SKIP_AUTOTUNE=1  # one Triton config per kernel: no autotuning inside a 200 s call

# the preset's command; the rehearsal shrinks the sizes and runs on the CPU (the same code path otherwise)
STUDY=(-m dil_fast study generalization --scale gpu --task denoise)
if [ "$MODE" = rehearse ]; then
  STUDY+=(--device cpu --threads 1 --nf 8 --nb 1 --gc 4 --patch_size 24 --batch_size 4 --budget 4 --eval_every 2
          --last_evals 2 --crop 64 --stride 64 --test_max_side 48)
else
  STUDY+=(--device cuda --workers 8)
fi
TESTSETS=(default)
if [ -d "$SET5" ]; then TESTSETS+=("$SET5"); else SET5_NOTE="test set $SET5: not found, skipped (the built-in pair only)"; fi

if [ "$MODE" = dry ]; then
  echo "gpu_study plan: within ${BUDGET} s of command wall time on one H200 (a device call returns at most 4 files)"
  echo "  1. set-up: editable install building dil_fast._C for sm_90 unless 'import dil_fast._C, dil_fast.kernels' works"
  echo "     (about 60 s; capped at 150 s; a failed build leaves the study on the torch fallbacks)"
  echo "  2. the study below with --time_limit = ${BUDGET} s - the set-up - 15 s (about $((BUDGET - 75)) s after a 60 s"
  echo "     build): training store from the built-in images, test sets ${TESTSETS[*]}"
  [ -n "${SET5_NOTE:-}" ] && echo "     $SET5_NOTE"
  echo "  3. copy results.md, curves.csv, generalization_denoise.png into --out beside gpu_study.log"
  "$PY" "${STUDY[@]}" --device cuda --testset "${TESTSETS[@]}" --time_limit "$((BUDGET - 75))" --dry-run
  exit $?
fi
[ -n "$OUT" ] || { echo "gpu_study.sh: --out DIR is required (or --dry-run)" >&2; usage >&2; exit 2; }
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"
LOG="$OUT/gpu_study.log"
: >"$LOG"
say() { echo "[gpu_study $(date +%H:%M:%S) +$(($(date +%s) - start))s] $*" | tee -a "$LOG"; }
WORK="$(mktemp -d "${TMPDIR:-/tmp}/dil_fast_gpu_study.XXXXXX")" || exit 2
trap 'rm -rf "$WORK"' EXIT
say "mode $MODE, budget ${BUDGET} s, python $PY, work folder $WORK"
[ -n "${SET5_NOTE:-}" ] && say "$SET5_NOTE"

# set-up without network: build dil_fast._C for sm_90 in place unless the package already imports whole
if "$PY" -c "import dil_fast._C, dil_fast.kernels" 2>/dev/null; then
  say "dil_fast (with dil_fast._C and the kernels) imports: nothing to build"
elif [ "$MODE" = rehearse ]; then
  say "rehearsal: dil_fast._C does not import here; the study runs on the torch fallbacks"
else
  say "building dil_fast._C for sm_90 (editable install, at most 150 s)"
  DIL_FAST_CUDA_ARCHS=90 timeout -k 5 150 "$PY" -m pip install --no-build-isolation --no-deps -e . >"$WORK/build.log" 2>&1
  rc=$?
  tail -n 5 "$WORK/build.log" | tee -a "$LOG"
  [ "$rc" = 0 ] && say "build done" || say "build failed (rc $rc): the study runs without the native core (slower)"
fi

left=$((BUDGET - ($(date +%s) - start)))
limit=$((left - 15))  # the interpreter's start and exit, the copy
if [ "$limit" -lt 30 ]; then
  say "only ${left} s left after the set-up: no study"
  exit 1
fi
say "study: --time_limit ${limit} s; test sets: ${TESTSETS[*]}"
timeout -k 5 $((left - 5)) "$PY" "${STUDY[@]}" --testset "${TESTSETS[@]}" --time_limit "$limit" --out "$WORK/study" 2>&1 \
  | tee -a "$LOG"
rc=${PIPESTATUS[0]}
for f in results.md curves.csv generalization_denoise.png; do
  if [ -f "$WORK/study/$f" ]; then cp "$WORK/study/$f" "$OUT/$f"; else say "missing: $f"; fi
done
[ -f "$OUT/results.md" ] && sed -n '/^## Verdict/,/^## Summary/p' "$OUT/results.md" | sed '$d' | tee -a "$LOG"
say "study exit status $rc; $(ls "$OUT" | tr '\n' ' ')"
exit "$rc"
