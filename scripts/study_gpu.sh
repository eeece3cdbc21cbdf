#!/usr/bin/env bash
# The study's GPU run (study/RESULTS.md, "On a GPU machine"), from the repository root:
#   scripts/study_device.sh pretrain --gpus 0 --max-minutes 8      # -> $OUT/base (5 files)
#   scripts/study_device.sh arms --lengths 16k --seeds 0,1 --per-gpu 4 --max-steps N
#                                                                  # -> $OUT/study-arms.tar.gz
# Installs the carried wheels (.whl/, scripts/device_wheels.sh) into /tmp/site unless
# DeepSpeed and Hydra import already, then runs `python -m study.gpu_host`; the
# deadline (--deadline-minutes, default 9) counts from this script's start.
set -euo pipefail
STARTED_AT=$(date +%s.%N)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import deepspeed, hydra" 2>/dev/null; then
  ls .whl/*.whl >/dev/null 2>&1 || { echo "error: .whl/: no wheels (scripts/device_wheels.sh; carry .whl)" >&2; exit 2; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/torch_extensions_study}
exec "$PY" -m study.gpu_host "$@" --started-at "$STARTED_AT"
