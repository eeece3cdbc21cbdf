# Sourced (not run) by the GPU-host helpers: scripts/gpu_bench.sh, scripts/gpu_check.sh,
# scripts/study_gpu.sh. What they share: the GPU check, the default results folder, the
# optional install from an offline wheelhouse (scripts/offline_wheels.sh).

# `gpu_host_gpus`: the GPU count nvidia-smi lists; 0 without nvidia-smi or a working driver.
gpu_host_gpus() {
  local listed
  # A failing nvidia-smi (no driver) prints its complaint on stdout: counted as no GPU.
  listed=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null) || { echo 0; return 0; }
  echo "$listed" | grep -cE '^[0-9]+$' || true
}

# `gpu_host_require_gpu`: a one-line error and exit 3 where no NVIDIA GPU is visible; called
# before anything is written, so that a host without one is left as it was.
gpu_host_require_gpu() {
  if [ "$(gpu_host_gpus)" -lt 1 ]; then
    echo "error: no NVIDIA GPU visible (nvidia-smi lists none): run this on a GPU host" >&2
    exit 3
  fi
}

# `gpu_host_default_results PREFIX`: gpu_results/<PREFIX><gpu>-x<count>-<date>-<time>, e.g.
# gpu_results/H200-x2-2026-12-01-101500 (cpu-x0-... without a GPU); one folder per run, so
# that a second run never mixes its files into the first one's.
gpu_host_default_results() {
  local name=
  [ "$(gpu_host_gpus)" -lt 1 ] || name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
  name=${name#NVIDIA }
  name=${name// /-}
  echo "gpu_results/${1:-}${name:-cpu}-x$(gpu_host_gpus)-$(date +%Y-%m-%d-%H%M%S)"
}

# `gpu_host_check_wheelhouse`: WHEELHOUSE, where set, must be a folder of
# scripts/offline_wheels.sh (its requirements.txt lists what it holds); exit 2 otherwise.
gpu_host_check_wheelhouse() {
  if [ -n "${WHEELHOUSE:-}" ] && [ ! -f "$WHEELHOUSE/requirements.txt" ]; then
    echo "error: WHEELHOUSE=$WHEELHOUSE: no requirements.txt there (a folder written by scripts/offline_wheels.sh)" >&2
    exit 2
  fi
}

# `gpu_host_install_wheelhouse PYTHON`: the wheelhouse's pinned wheels into PYTHON's
# environment, where WHEELHOUSE is set; nothing otherwise (the environment is the user's).
# --no-deps: the wheelhouse lists every dependency a host with torch, triton and
# transformers lacks, and torch itself must stay the host's CUDA build.
gpu_host_install_wheelhouse() {
  [ -n "${WHEELHOUSE:-}" ] || return 0
  "$1" -m pip install -q --no-index --no-deps --find-links "$WHEELHOUSE" \
    -r "$WHEELHOUSE/requirements.txt"
}

# `gpu_host_check_seconds NAME...`: each variable NAME, where set, is a whole number of
# seconds; exit 2 naming the first that is not.
gpu_host_check_seconds() {
  local v
  for v in "$@"; do
    if [ -n "${!v:-}" ] && ! [[ "${!v}" =~ ^[0-9]+$ ]]; then
      echo "error: $v=${!v}: expected a whole number of seconds" >&2
      exit 2
    fi
  done
}

# `gpu_host_header SCRIPT`: the comment block at the head of SCRIPT, without the #s (--help).
gpu_host_header() { sed -n '2,/^[^#]/p' "$1" | sed '/^[^#]/d; s/^# \{0,1\}//'; }

# `gpu_host_options "$@"; shift "$OPTIONS_USED"`: the leading options of a runner, parsed:
# --results-dir DIR (or --results-dir=DIR) into RESULTS (default: RESULTS_DIR), -h / --help
# (the script's `usage`, then its header; exit 0); exit 2 on --results-dir without a folder.
gpu_host_options() {
  RESULTS=${RESULTS_DIR:-} OPTIONS_USED=0
  while [ $# -gt 0 ]; do
    case "$1" in
      --results-dir) [ $# -ge 2 ] || { echo "error: --results-dir: give the folder" >&2; exit 2; }
                     RESULTS=$2; OPTIONS_USED=$(( OPTIONS_USED + 2 )); shift 2 ;;
      --results-dir=*) RESULTS=${1#*=}; OPTIONS_USED=$(( OPTIONS_USED + 1 )); shift ;;
      -h|--help) usage; gpu_host_header "$0"; exit 0 ;;
      *) return 0 ;;
    esac
  done
}
