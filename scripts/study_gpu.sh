#!/usr/bin/env bash
# The study's GPU runs (study/RESULTS.md, "On a GPU host without the data pipeline's
# packages"), from the repository root: `python -m study.gpu_host` with its arguments.
#
#   scripts/study_gpu.sh pretrain --gpus 0 --max-minutes 8 [--out DIR]
#       # -> DIR/base: the base's safetensors shards and base-files.tar
#   scripts/study_gpu.sh arms --lengths 16k --seeds 0,1,2 --per-gpu 4 --max-steps N [--out DIR]
#       # -> DIR/study-arms.tar.gz: the run records, per-sample records, summaries, logs
#
# --out defaults to RESULTS_DIR, else gpu_results/study-<gpu>-x<count>-<date>-<time>/.
# --deadline-minutes (your scheduler's time limit, less a margin) counts from this script's
# start: a job's time includes the install below.
# Optional (environment): WHEELHOUSE=DIR installs the wheels of scripts/offline_wheels.sh
# first (DeepSpeed and Hydra on a host without internet access); PYTHON (default python3).
set -euo pipefail
STARTED_AT=$(date +%s.%N)
cd "$(dirname "$0")/.."
source scripts/gpu_host_lib.sh
PY=${PYTHON:-python3}
case "${1:-}" in
  -h|--help) exec "$PY" -m study.gpu_host --help ;;
esac
gpu_host_check_wheelhouse
gpu_host_install_wheelhouse "$PY"
if ! "$PY" -c "import deepspeed, hydra" 2>/dev/null; then
  echo "error: DeepSpeed or Hydra does not import (pip install -r requirements.txt, or WHEELHOUSE= a folder of scripts/offline_wheels.sh)" >&2
  exit 3
fi
# Given first: an --out among the arguments comes later and wins (argparse keeps the last).
exec "$PY" -m study.gpu_host --out "${RESULTS_DIR:-$(gpu_host_default_results study-)}" "$@" \
  --started-at "$STARTED_AT"
