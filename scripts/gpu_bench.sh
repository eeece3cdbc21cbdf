#!/usr/bin/env bash
# The fast path's GPU work (FlashAttention-4 backends, routed projections, fused regions) on a
# host of one or more H200s (run on 1 and 2), after FlashAttention-4 was installed into
# /tmp/fa4site by the two commands of ../shared/device/fa4_wheels.sh
# (`.fa4a/fa4_device.sh stage`, `.fa4b/fa4_device.sh install`).
# From the repository root, carrying .whl (scripts/device_wheels.sh):
#
#   scripts/fast_path_device.sh batch [bench.train_throughput args]
#       GPU 0: the GPU tests of the fast path (pytest -m gpu, junit in tests.xml), while
#       GPU 1: bench.attention at 128K, 20% routed, fwd+bwd (attention.json); both stopped by
#              SIGINT after PHASE_A_S (default 240) seconds, keeping what finished (on a
#              one-GPU host the two run one after the other, PHASE_A_S each, so that the
#              tests do not share the GPU with the timings); then, on two or more GPUs
#              (one GPU: only with BATCH_TRAIN=1),
#       all:   bench.train_throughput at 128K, Qwen3-8B shape, SP = the GPU count, l2a_fused
#              and dense, 3 steps (1 untimed), routed fraction pinned at the target
#              (--pin-sparsity), unless the args say otherwise (train.json).
#   scripts/fast_path_device.sh train [bench.train_throughput args]
#       the training comparison alone (e.g. `--variants l2a,dense_sdpa --steps 5 --skip-steps 2`;
#       one GPU at 32K: `--model qwen3_1p7b_random --seq-len 32768`).
#   scripts/fast_path_device.sh compare [bench.train_throughput args]
#       before / after, each step profiled (--profile): the L2A layer as first measured
#       (l2a_fused, Triton global branch, Ulysses local branch: train_before.json, at most
#       BEFORE_S, default 200 s), then the args' variants, by default l2a_routed_fused and
#       dense (FlashAttention-4 both branches, routed projections, halo local branch:
#       train.json). The args go to both runs (model, length), before their own.
#
# Everything stops by DEADLINE_S (default 570) seconds after the start (set it to what your
# scheduler allows). $OUT (default fast_out/) gets: log.txt (every step's output, prefixed), summary.json
# (bench.fast_path_summary, also printed last) and, by job, tests.xml and attention.json
# (batch), train.json, train_before.json (compare), profile_<variant>.txt (--profile),
# train.oom_<variant>.json (only if a variant ran out of memory).
set -uo pipefail
START=$(date +%s)
cd "$(dirname "$0")/.."
JOB=${1:-}; shift || true
case "$JOB" in batch|train|compare) ;; *) echo "usage: scripts/fast_path_device.sh batch|train|compare [bench.train_throughput args]" >&2; exit 2 ;; esac
OUT=${OUT:-fast_out}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
PY=${PYTHON:-python3}
DEADLINE_S=${DEADLINE_S:-570}
PHASE_A_S=${PHASE_A_S:-240}
export PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR=/tmp/torch_extensions_fast
export PYTHONPATH=/tmp/fa4site:/tmp/fa4site/nvidia_cutlass_dsl/dsl_packages:/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}

say() { echo "[fast_path $(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }
left() { echo $(( DEADLINE_S - ($(date +%s) - START) )); }
# `cmd | tagged NAME`: output into the log, each line prefixed (two steps run side by side).
tagged() { sed -u "s/^/[$1] /" >> "$LOG"; }

# DeepSpeed, Hydra, pytest-xdist: the carried wheels, unless a previous call installed them.
if ! "$PY" -c "import deepspeed, hydra, xdist" 2>/dev/null; then
  ls .whl/*.whl >/dev/null 2>&1 || { say "error: .whl/: no wheels (scripts/device_wheels.sh; carry .whl)"; exit 2; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>&1 | tagged pip
fi
nvidia-smi --query-gpu=index,name,memory.total,memory.used --format=csv,noheader 2>&1 | tagged gpu
# FlashAttention-4 must be there (the machine may have been replaced since the install):
# without it every fa4 test skips and `dense` is SDPA, so the call would answer nothing new.
"$PY" - <<'EOF' 2>&1 | tagged env
import torch, triton, transformers
from transformers.utils import is_flash_attn_4_available
from kernels.backends import fa4_installed
print("torch", torch.__version__, "triton", triton.__version__, "transformers", transformers.__version__,
      "gpus", torch.cuda.device_count(), "flash_attn.cute", fa4_installed(),
      "transformers sees flash-attn-4", is_flash_attn_4_available())
raise SystemExit(0 if fa4_installed() and torch.cuda.device_count() >= 1 else 3)
EOF
if [ "${PIPESTATUS[0]}" != 0 ]; then
  say "error: flash-attn-4 does not import or no GPU: run the stage and install commands again"
  tail -3 "$LOG"; exit 3
fi
GPUS=$(nvidia-smi --query-gpu=index --format=csv,noheader | wc -l)

if [ "$JOB" = batch ]; then
  # One GPU: the tests first, then the timings alone on the GPU.
  if [ "$GPUS" -ge 2 ]; then ATTN_GPU=1; else ATTN_GPU=0; fi
  say "phase A: GPU tests on GPU 0, bench.attention on GPU $ATTN_GPU (at most ${PHASE_A_S}s each)"
  ( CUDA_VISIBLE_DEVICES=0 TORCHINDUCTOR_COMPILE_THREADS=4 timeout -s INT -k 30 "$PHASE_A_S" \
      "$PY" -m pytest -q -m gpu -p no:cacheprovider -n 6 --durations=15 -rfE --junitxml="$OUT/tests.xml" \
      tests/l2a/test_fused.py tests/l2a/test_fused_recompiles.py tests/train/test_dense_attn.py \
      tests/kernels/test_dense_path_backends.py tests/l2a/test_routed_projections.py \
      tests/kernels/test_backends.py 2>&1 | tagged tests ) &
  TESTS=$!
  [ "$GPUS" -ge 2 ] || wait $TESTS
  ( CUDA_VISIBLE_DEVICES=$ATTN_GPU TORCHINDUCTOR_COMPILE_THREADS=8 timeout -s INT -k 30 "$PHASE_A_S" \
      "$PY" -m bench.attention --lengths 131072 --fractions 0.2 --passes fwdbwd \
      --kernels sdpa fa4 flex ours local auto --out "$OUT/attention.json" 2>&1 | tagged attention ) &
  ATTN=$!
  wait $TESTS; wait $ATTN
  say "phase A done"
  grep -E "^\[tests\] .*(passed|failed|error)" "$LOG" | tail -3
fi

# `train_run SECONDS OUT_JSON [args]`: bench.train_throughput at 128K, Qwen3-8B shape, SP = the
# GPU count (the args may override any of these: argparse keeps the last).
train_run() {
  local budget=$1 out=$2; shift 2
  if [ "$budget" -lt 120 ]; then say "no time left for $out (${budget}s)"; return; fi
  say "training comparison into $out (at most ${budget}s): $*"
  timeout -s TERM -k 20 "$budget" "$PY" -m torch.distributed.run --nproc_per_node="$GPUS" -m bench.train_throughput \
    --model qwen3_8b_random --seq-len 131072 --sequence-parallel "$GPUS" --override train.tiled_mlp=auto \
    --variants l2a_fused,dense --steps 3 --skip-steps 1 --pin-sparsity --work-dir /tmp/fast_train \
    --out "$out" "$@" 2>&1 | tagged train
  say "training comparison exited with ${PIPESTATUS[0]}"
}

if [ "$JOB" = compare ]; then
  BEFORE_S=${BEFORE_S:-200}
  train_run "$BEFORE_S" "$OUT/train_before.json" "$@" --variants l2a_fused --profile \
    --override l2a.attn_backend=triton --override train.sequence_parallel_window=ulysses
  train_run $(( $(left) - 10 )) "$OUT/train.json" --variants l2a_routed_fused,dense --profile "$@"
elif [ "$JOB" = batch ] && [ "$GPUS" -lt 2 ] && [ "${BATCH_TRAIN:-0}" != 1 ]; then
  # One GPU: the 8B 128K comparison does not fit the time left after the tests and the
  # timings (an H200 run got one L2A variant and a first dense step); `train` or `compare`
  # with a smaller --model are the one-GPU comparisons. BATCH_TRAIN=1 runs it anyway.
  say "one GPU: no training comparison in batch (BATCH_TRAIN=1 to run it)"
else
  train_run $(( $(left) - 10 )) "$OUT/train.json" "$@"
fi
"$PY" -m bench.fast_path_summary "$OUT" 2>&1 | tee -a "$LOG"
say "done"
