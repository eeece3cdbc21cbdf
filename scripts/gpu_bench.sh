#!/usr/bin/env bash
# The fast path's GPU tests and benchmarks (FlashAttention-4 backends, routed projections,
# fused regions; docs/BENCHMARKS.md, "The fast path") on a host of one or more NVIDIA GPUs,
# from the repository root, in a Python environment with requirements.txt and
# flash-attn-4 (requirements-gpu.txt) installed:
#
#   scripts/gpu_bench.sh [--results-dir DIR] JOB [bench.train_throughput args]
#
# JOB
#   tests    the fast path's GPU tests (pytest -m gpu; junit in tests.xml).
#   batch    the tests on GPU 0 while GPU 1 times bench.attention at 128K, 20% routed,
#            fwd+bwd (attention.json); on a one-GPU host one after the other, so that the
#            tests do not share the GPU with the timings. Then, on two or more GPUs (one
#            GPU: only with BATCH_TRAIN=1), the training comparison of `train`.
#   train    bench.train_throughput at 128K, Qwen3-8B shape, sequence parallel over every
#            GPU, l2a_fused and dense, 3 steps (1 untimed), routed fraction pinned at the
#            target (--pin-sparsity), unless the args say otherwise (argparse keeps the
#            last): e.g. `--variants l2a,dense_sdpa --steps 5 --skip-steps 2`; one GPU at
#            32K: `--model qwen3_1p7b_random --seq-len 32768` (train.json).
#   compare  before / after, each step profiled (--profile): the L2A layer as first measured
#            (l2a_fused, Triton global branch, Ulysses local branch: train_before.json),
#            then the args' variants, by default l2a_routed_fused and dense (FlashAttention-4
#            both branches, routed projections, halo local branch: train.json). The args go
#            to both runs (model, length), before their own.
#
# Results: DIR (or RESULTS_DIR; default gpu_results/<gpu>-x<count>-<date>-<time>/) gets
# log.txt (every step's output, prefixed by its step), summary.json (bench.fast_path_summary,
# also printed last) and, by job, tests.xml and attention.json (tests, batch), train.json,
# train_before.json (compare), profile_<variant>.txt (--profile), train.oom_<variant>.json
# (a variant that ran out of GPU memory). The training runs' own directories (checkpoints)
# go to WORK_DIR (default $TMPDIR/gpu_bench_train), not into the results.
#
# Optional (environment):
#   WHEELHOUSE=DIR    install the wheels of scripts/offline_wheels.sh from DIR first (a host
#                     without internet access); without it the environment is used as it is.
#   DEADLINE_S=N      your scheduler's time limit: every step ends within N seconds of the
#                     start (a training run is not started with under 120 s left).
#   PHASE_A_S=N       stop the tests and the attention timings after N seconds each (SIGINT:
#                     pytest and bench.attention keep what finished).
#   BEFORE_S=N        compare: stop the before run after N seconds.
#   REQUIRE_FA4=0     run without flash-attn-4 (every fa4 test skips, `dense` is SDPA).
#   PYTHON            the interpreter (default python3); TEST_WORKERS (default 6) pytest-xdist
#                     workers where pytest-xdist is installed.
# Exit status: 0, 1 if a step failed (a step stopped by one of the limits above is not a
# failure), 2 on bad arguments, 3 without a GPU or a package the job needs.
set -uo pipefail
START=$(date +%s)
cd "$(dirname "$0")/.."
source scripts/gpu_host_lib.sh

usage() { echo "usage: scripts/gpu_bench.sh [--results-dir DIR] tests|batch|train|compare [bench.train_throughput args]"; }
gpu_host_options "$@"; shift "$OPTIONS_USED"
JOB=${1:-}; shift || true
case "$JOB" in
  tests|batch|train|compare) ;;
  "") usage >&2; exit 2 ;;
  *) echo "error: unknown job '$JOB'" >&2; usage >&2; exit 2 ;;
esac
gpu_host_check_seconds DEADLINE_S PHASE_A_S BEFORE_S
gpu_host_check_wheelhouse
gpu_host_require_gpu
GPUS=$(gpu_host_gpus)
RESULTS=${RESULTS:-$(gpu_host_default_results)}
mkdir -p "$RESULTS" || exit 2
LOG="$RESULTS/log.txt"
PY=${PYTHON:-python3}
WORK_DIR=${WORK_DIR:-${TMPDIR:-/tmp}/gpu_bench_train}
# L2A_RESULTS_DIR: where a benchmark given no --out writes (bench/results_dir.py).
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} L2A_RESULTS_DIR=$RESULTS
FAILED=()

say() { echo "[gpu_bench $(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }
# `cmd | tagged NAME`: output into the log, each line prefixed (two steps run side by side).
tagged() { sed -u "s/^/[$1] /" >> "$LOG"; }
# `capped SECONDS SIGNAL cmd...`: cmd, sent SIGNAL after SECONDS if SECONDS is set (then
# killed 30 s later); exit status 124 when stopped so.
capped() {
  local seconds=$1 signal=$2; shift 2
  if [ -n "$seconds" ]; then timeout -s "$signal" -k 30 "$seconds" "$@"; else "$@"; fi
}
# `record NAME STATUS`: a step's exit status into the log; non-zero and not 124 is a failure.
record() {
  case "$2" in
    0) say "$1: done" ;;
    124) say "$1: stopped by its time limit (kept what it had finished)" ;;
    *) say "$1: failed (exit status $2)"; FAILED+=("$1") ;;
  esac
}

say "results in $RESULTS"
if ! gpu_host_install_wheelhouse "$PY" 2>&1 | tagged pip; then
  say "error: installing from WHEELHOUSE=$WHEELHOUSE failed (log: $LOG)"; exit 3
fi
nvidia-smi --query-gpu=index,name,driver_version,memory.total,memory.used --format=csv,noheader 2>&1 | tagged gpu
# The packages of the jobs; without FlashAttention-4 every fa4 test skips and `dense` is SDPA,
# so the results would not be those of the fast path (REQUIRE_FA4=0 accepts that).
REQUIRE_FA4=${REQUIRE_FA4:-1} "$PY" - <<'EOF' 2>&1 | tagged env
import os, platform
missing = []
for name in ("torch", "triton", "transformers", "deepspeed", "hydra", "pytest"):
    try:
        __import__(name)
    except ImportError as e:
        missing.append(f"{name} ({e})")
if missing:
    print("error: not importable:", ", ".join(missing), "(pip install -r requirements.txt, or "
          "WHEELHOUSE= a folder of scripts/offline_wheels.sh)")
    raise SystemExit(3)
import deepspeed, torch, triton, transformers
from kernels.backends import fa4_installed
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "triton", triton.__version__, "transformers", transformers.__version__,
      "deepspeed", deepspeed.__version__, "gpus", torch.cuda.device_count(),
      "flash_attn.cute", fa4_installed())
if torch.cuda.device_count() < 1:
    print("error: torch sees no CUDA device (a CPU build of torch?)")
    raise SystemExit(3)
if not fa4_installed() and os.environ["REQUIRE_FA4"] != "0":
    print("error: flash-attn-4 does not import (requirements-gpu.txt; offline: "
          "scripts/offline_wheels.sh --with-fa4); REQUIRE_FA4=0 runs without it")
    raise SystemExit(3)
EOF
if [ "${PIPESTATUS[0]}" != 0 ]; then
  ERR=$(grep '^\[env\] error' "$LOG" | tail -1)
  if [ -n "$ERR" ]; then echo "${ERR#\[env\] }" >&2; else tail -3 "$LOG" >&2; fi
  exit 3
fi

# The fast path's GPU tests, junit into tests.xml (pytest-xdist workers where installed:
# most of the time is kernels compiling on the CPU).
run_tests() {
  local xdist=()
  "$PY" -c "import xdist" 2>/dev/null && xdist=(-n "${TEST_WORKERS:-6}")
  CUDA_VISIBLE_DEVICES=0 TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-4} \
    capped "${PHASE_A_S:-}" INT "$PY" -m pytest -q -m gpu -p no:cacheprovider "${xdist[@]}" \
      --durations=15 -rfE --junitxml="$RESULTS/tests.xml" \
      tests/l2a/test_fused.py tests/l2a/test_fused_recompiles.py tests/train/test_dense_attn.py \
      tests/kernels/test_dense_path_backends.py tests/l2a/test_routed_projections.py \
      tests/kernels/test_backends.py 2>&1 | tagged tests
  return "${PIPESTATUS[0]}"
}

run_attention() {
  CUDA_VISIBLE_DEVICES=$1 TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-8} \
    capped "${PHASE_A_S:-}" INT "$PY" -m bench.attention --lengths 131072 --fractions 0.2 \
      --passes fwdbwd --kernels sdpa fa4 flex ours local auto --out "$RESULTS/attention.json" \
      2>&1 | tagged attention
  return "${PIPESTATUS[0]}"
}

# `left MARGIN`: seconds left before DEADLINE_S less MARGIN; empty without a deadline.
left() { [ -z "${DEADLINE_S:-}" ] || echo $(( DEADLINE_S - ($(date +%s) - START) - $1 )); }
# `smaller A B`: the smaller of the two that are set (empty if neither is).
smaller() { if [ -z "$1" ] || { [ -n "$2" ] && [ "$2" -lt "$1" ]; }; then echo "$2"; else echo "$1"; fi; }

# `train_run NAME SECONDS OUT_JSON [args]`: bench.train_throughput at 128K, Qwen3-8B shape,
# sequence parallel over every GPU (the args may override any of these: argparse keeps the
# last), stopped (SIGTERM) after SECONDS where given.
train_run() {
  local name=$1 seconds=$2 out=$3; shift 3
  if [ -n "$seconds" ] && [ "$seconds" -lt 120 ]; then
    say "$name: not started, ${seconds}s left before DEADLINE_S"; return
  fi
  say "$name: bench.train_throughput into $out${seconds:+ (at most ${seconds}s)}: $*"
  capped "$seconds" TERM "$PY" -m torch.distributed.run --nproc_per_node="$GPUS" -m bench.train_throughput \
    --model qwen3_8b_random --seq-len 131072 --sequence-parallel "$GPUS" --override train.tiled_mlp=auto \
    --variants l2a_fused,dense --steps 3 --skip-steps 1 --pin-sparsity --work-dir "$WORK_DIR/$name" \
    --out "$out" "$@" 2>&1 | tagged "$name"
  record "$name" "${PIPESTATUS[0]}"
}

if [ "$JOB" = tests ]; then
  say "GPU tests on GPU 0${PHASE_A_S:+ (at most ${PHASE_A_S}s)}"
  run_tests; record tests $?
elif [ "$JOB" = batch ]; then
  if [ "$GPUS" -ge 2 ]; then
    say "GPU tests on GPU 0 beside bench.attention on GPU 1${PHASE_A_S:+ (at most ${PHASE_A_S}s each)}"
    run_tests & TESTS=$!
    run_attention 1 & ATTN=$!
    wait $TESTS; record tests $?
    wait $ATTN; record attention $?
  else
    say "one GPU: the GPU tests, then bench.attention${PHASE_A_S:+ (at most ${PHASE_A_S}s each)}"
    run_tests; record tests $?
    run_attention 0; record attention $?
  fi
  grep -E "^\[tests\] .*(passed|failed|error)" "$LOG" | tail -3
fi

if [ "$JOB" = compare ]; then
  train_run train_before "$(smaller "${BEFORE_S:-}" "$(left 10)")" "$RESULTS/train_before.json" "$@" --variants l2a_fused --profile \
    --override l2a.attn_backend=triton --override train.sequence_parallel_window=ulysses
  train_run train "$(left 10)" "$RESULTS/train.json" --variants l2a_routed_fused,dense --profile "$@"
elif [ "$JOB" = train ] || { [ "$JOB" = batch ] && { [ "$GPUS" -ge 2 ] || [ "${BATCH_TRAIN:-0}" = 1 ]; }; }; then
  train_run train "$(left 10)" "$RESULTS/train.json" "$@"
elif [ "$JOB" = batch ]; then
  # On one GPU the 8B comparison at 128K is long and large (measured on one H200: L2A 29 s
  # a step at a 113.5 GiB peak; dense had not finished its second step after 56 s for the
  # first): `train` or `compare` with a smaller --model are the one-GPU comparisons.
  say "one GPU: no training comparison in batch (BATCH_TRAIN=1 runs it; or the train job with a smaller --model)"
fi
"$PY" -m bench.fast_path_summary "$RESULTS" 2>&1 | tee -a "$LOG"
if [ ${#FAILED[@]} -gt 0 ]; then
  say "failed: ${FAILED[*]} (log: $LOG)"; exit 1
fi
say "done: $RESULTS"
