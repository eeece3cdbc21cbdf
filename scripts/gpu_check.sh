#!/usr/bin/env bash
# On a GPU host: GPU kernel tests, then (optionally) a tuning sweep and the benchmark.
#   scripts/gpu_check.sh [tests] [train-tests] [sweep "<variants>"] [tune "<variants>"] [bench "<bench args>"]
# train-tests = the GPU tests of tests/train (bf16 training with the Triton attention,
# DeepSpeed and both LM-loss paths; the loss on CUDA), in one process (no xdist: the
# trainings share one module fixture).
# tune = sweep, then kernels.tuning.pick, then L2A_KERNEL_CONFIGS set for the later steps
# (so `tune "..." bench "..."` measures the table with the sweep's winners).
# Logs and JSON go to $OUT (default ./gpu_out).
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_COMPILE_THREADS=8
PY=${PY:-python3}
# The wheels of scripts/device_wheels.sh (carried as .whl/): DeepSpeed, Hydra, accelerate,
# pytest-xdist, which the GPU image lacks. SKIP_WHEELS=1 where the caller installed them
# (two instances started side by side must not install into /tmp/site at once).
if [ "${SKIP_WHEELS:-0}" != 1 ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >/dev/null 2>&1 || echo "wheel install failed" >&2
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
while [ $# -gt 0 ]; do
  case "$1" in
    tests)
      # Parallel workers where pytest-xdist is installed (.whl/): most of the time is
      # Triton compiling kernels on the CPU, and the GPU has room for several small cases.
      XDIST=$($PY -c "import xdist" 2>/dev/null && echo "-n ${TEST_WORKERS:-8}")
      timeout "${TEST_TIMEOUT:-400}" $PY -m pytest -q -m gpu -p no:warnings --durations=10 $XDIST \
        tests/kernels tests/l2a/test_gpu_model.py tests/l2a/test_routed_projections.py \
        tests/l2a/test_fused.py 2>&1 | tee "$OUT/tests.log" | tail -40
      shift ;;
    train-tests)
      timeout "${TEST_TIMEOUT:-400}" $PY -m pytest -q -m gpu -p no:warnings --durations=10 \
        tests/train 2>&1 | tee "$OUT/train_tests.log" | tail -40
      shift ;;
    sweep)
      $PY -m bench.attention --sweep $2 --out "$OUT/sweep.json" 2>&1 | tee "$OUT/sweep.log" | tail -40
      shift 2 ;;
    tune)
      $PY -m bench.attention --sweep $2 --out "$OUT/sweep.json" 2>&1 | tee "$OUT/sweep.log" | tail -40
      $PY -m kernels.tuning.pick "$OUT/sweep.json" --out "$OUT/tuned.json" 2>&1 | tee "$OUT/tuned.log" \
        && export L2A_KERNEL_CONFIGS="$OUT/tuned.json"
      shift 2 ;;
    bench)
      $PY -m bench.attention $2 --out "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log" | tail -60
      shift 2 ;;
    *) echo "unknown step $1"; exit 2 ;;
  esac
done
