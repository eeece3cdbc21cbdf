#!/usr/bin/env bash
# On a GPU host, from the repository root: the GPU kernel tests, then (optionally) a tuning
# sweep and the attention benchmark, in the order given.
#
#   scripts/gpu_check.sh [--results-dir DIR] STEP...
#
# STEP
#   tests                  the GPU tests of the kernels and the L2A layer (pytest -m gpu;
#                          pytest-xdist workers where installed: most of the time is Triton
#                          compiling kernels on the CPU, and the GPU has room for several
#                          small cases) -> tests.log
#   train-tests            the GPU tests of tests/train (bf16 training with the Triton
#                          attention, DeepSpeed and both LM-loss paths), in one process (the
#                          trainings share one module fixture) -> train_tests.log
#   sweep "<variants>"     bench.attention --sweep <variants> -> sweep.json, sweep.log
#   tune "<variants>"      sweep, then kernels.tuning.pick -> tuned.json, and
#                          L2A_KERNEL_CONFIGS set to it for the later steps (so that
#                          `tune "..." bench "..."` measures the table with the sweep's winners)
#   bench "<args>"         bench.attention <args> -> bench.json, bench.log
# (docs/KERNELS.md: the variant syntax, e.g. "fwd:-kv_desc;dq:-kv_desc dkdv:64,128,8,2".)
#
# Results: DIR (or RESULTS_DIR; default gpu_results/<gpu>-x<count>-<date>-<time>/) gets the
# files above and gpu.txt (GPU, driver, torch and Triton versions).
# Optional (environment): WHEELHOUSE=DIR installs the wheels of scripts/offline_wheels.sh
# first; TEST_TIMEOUT=N stops each test step after N seconds; TEST_WORKERS (default 8);
# PYTHON (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_host_lib.sh

usage() { echo "usage: scripts/gpu_check.sh [--results-dir DIR] tests | train-tests | sweep \"<variants>\" | tune \"<variants>\" | bench \"<args>\" ..."; }
gpu_host_options "$@"; shift "$OPTIONS_USED"
STEPS=()  # step, argument (empty for tests and train-tests), step, argument, ...
while [ $# -gt 0 ]; do
  case "$1" in
    tests|train-tests) STEPS+=("$1" ""); shift ;;
    sweep|tune|bench)
      [ $# -ge 2 ] && [ -n "$2" ] || { echo "error: $1: give its argument in quotes" >&2; usage >&2; exit 2; }
      STEPS+=("$1" "$2"); shift 2 ;;
    *) echo "error: unknown step '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
[ ${#STEPS[@]} -gt 0 ] || { usage >&2; exit 2; }
gpu_host_check_seconds TEST_TIMEOUT
gpu_host_check_wheelhouse
gpu_host_require_gpu
RESULTS=${RESULTS:-$(gpu_host_default_results)}
mkdir -p "$RESULTS" || exit 2
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-8}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} L2A_RESULTS_DIR=$RESULTS
echo "results in $RESULTS"
gpu_host_install_wheelhouse "$PY" || { echo "error: installing from WHEELHOUSE=$WHEELHOUSE failed" >&2; exit 3; }
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv | tee "$RESULTS/gpu.txt"
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$RESULTS/gpu.txt"

# `capped cmd...`: cmd, stopped after TEST_TIMEOUT seconds where set.
capped() { if [ -n "${TEST_TIMEOUT:-}" ]; then timeout "$TEST_TIMEOUT" "$@"; else "$@"; fi; }
STATUS=0
for (( i = 0; i < ${#STEPS[@]}; i += 2 )); do
  step=${STEPS[i]}
  read -r -a arg <<< "${STEPS[i + 1]}"  # the variants or the bench args, one word each
  case "$step" in
    tests)
      xdist=()
      "$PY" -c "import xdist" 2>/dev/null && xdist=(-n "${TEST_WORKERS:-8}")
      capped "$PY" -m pytest -q -m gpu -p no:warnings --durations=10 "${xdist[@]}" \
        tests/kernels tests/l2a/test_gpu_model.py tests/l2a/test_routed_projections.py \
        tests/l2a/test_fused.py 2>&1 | tee "$RESULTS/tests.log" | tail -40
      rc=${PIPESTATUS[0]} ;;
    train-tests)
      capped "$PY" -m pytest -q -m gpu -p no:warnings --durations=10 \
        tests/train 2>&1 | tee "$RESULTS/train_tests.log" | tail -40
      rc=${PIPESTATUS[0]} ;;
    sweep|tune)
      "$PY" -m bench.attention --sweep "${arg[@]}" --out "$RESULTS/sweep.json" 2>&1 \
        | tee "$RESULTS/sweep.log" | tail -40
      rc=${PIPESTATUS[0]}
      if [ "$step" = tune ] && [ "$rc" = 0 ]; then
        "$PY" -m kernels.tuning.pick "$RESULTS/sweep.json" --out "$RESULTS/tuned.json" 2>&1 \
          | tee "$RESULTS/tuned.log"
        rc=${PIPESTATUS[0]}
        [ "$rc" != 0 ] || export L2A_KERNEL_CONFIGS="$RESULTS/tuned.json"
      fi ;;
    bench)
      "$PY" -m bench.attention "${arg[@]}" --out "$RESULTS/bench.json" 2>&1 \
        | tee "$RESULTS/bench.log" | tail -60
      rc=${PIPESTATUS[0]} ;;
  esac
  if [ "$rc" != 0 ]; then echo "$step: failed (exit status $rc)" >&2; STATUS=1; fi
done
exit $STATUS
