#!/usr/bin/env bash
# Wheels for a GPU host without internet access, downloaded on a machine with it: what the
# trainer, the benchmarks and the GPU tests need beyond what such a host's Python environment
# has already (torch with its CUDA libraries, triton, transformers, numpy, packaging).
#
#   scripts/offline_wheels.sh [--with-fa4] [--python X.Y] [--arch x86_64|aarch64] [DIR]
#   scripts/offline_wheels.sh --list [--with-fa4]    # the pinned specs; nothing downloaded
#
#   --with-fa4   also flash-attn-4 and its CuTe DSL dependencies (Hopper / Blackwell)
#   --python     the host's Python version (default: this machine's)
#   --arch       the host's CPU architecture (default x86_64)
#   DIR          the wheelhouse (default wheelhouse/, git-ignored)
#
# DIR gets the wheels and requirements.txt (the specs they pin, written last: a run that
# failed leaves none). Copy DIR to the host; there, in the environment that has torch:
#   python -m pip install --no-index --no-deps --find-links DIR -r DIR/requirements.txt
# (--no-deps: torch stays the host's CUDA build; the list holds every other dependency.)
# scripts/gpu_bench.sh, gpu_check.sh and study_gpu.sh run that install with WHEELHOUSE=DIR.
# Not included: the data pipeline's datasets / pyarrow (prepare the data elsewhere:
# `python -m study pack-data`), wandb (runs log offline), matplotlib (plots are made later).
#
# Versions: what requirements.txt / requirements-gpu.txt pin with == is read from there; the
# rest is pinned below, one version each (two versions of a package break a --no-deps
# install). tests/test_gpu_scripts.py checks the list against both files.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_host_lib.sh
PY=${PYTHON:-python3}

usage() { echo "usage: scripts/offline_wheels.sh [--with-fa4] [--python X.Y] [--arch x86_64|aarch64] [--list] [DIR]"; }
FA4=0 LIST=0 ARCH=x86_64 PYVER= DIR=
while [ $# -gt 0 ]; do
  case "$1" in
    --with-fa4) FA4=1; shift ;;
    --list) LIST=1; shift ;;
    --python) [ $# -ge 2 ] && [[ "$2" =~ ^3\.[0-9]+$ ]] \
                || { echo "error: --python: give the host's version as X.Y, e.g. 3.12" >&2; exit 2; }
              PYVER=$2; shift 2 ;;
    --arch) [ $# -ge 2 ] && [[ "$2" =~ ^(x86_64|aarch64)$ ]] \
              || { echo "error: --arch: x86_64 or aarch64" >&2; exit 2; }
            ARCH=$2; shift 2 ;;
    -h|--help) usage; gpu_host_header "$0"; exit 0 ;;
    -*) echo "error: unknown option '$1'" >&2; usage >&2; exit 2 ;;
    *) [ -z "$DIR" ] || { echo "error: one wheelhouse folder, got '$DIR' and '$1'" >&2; exit 2; }
       DIR=$1; shift ;;
  esac
done
DIR=${DIR:-wheelhouse}

# `pinned NAME`: NAME==VERSION as requirements.txt or requirements-gpu.txt pins it.
pinned() {
  local line
  line=$(grep -hiE "^$1==[^[:space:]]+" requirements.txt requirements-gpu.txt | head -1) || true
  if [ -z "$line" ]; then
    echo "error: $1: not pinned with == in requirements.txt or requirements-gpu.txt" >&2
    return 1
  fi
  echo "${line%%[[:space:]]*}"
}
DEEPSPEED=$(pinned deepspeed)
HYDRA=$(pinned hydra-core)
SUBMITIT_LAUNCHER=$(pinned hydra-submitit-launcher)

# Wheels (binary or pure Python) from the index, for the host's Python and architecture.
WHEELS=(
  # DeepSpeed's requirements (numpy, packaging, torch are the host's)
  einops==0.8.2 hjson==3.1.0 msgpack==1.2.4 ninja==1.13.2 psutil==7.2.2 py-cpuinfo==9.0.0
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  typing-extensions==4.16.0 tqdm==4.70.1
  # Hydra and OmegaConf (antlr4-python3-runtime is built below: PyPI has only its sdist)
  "$HYDRA" omegaconf==2.3.1 PyYAML==6.0.3
  # ZeRO-3 partitioned loading (transformers' DeepSpeed integration imports it)
  accelerate==1.15.0
  # the Hydra launcher plugin (hydra_plugins/) builds on the submitit launcher; without it
  # Hydra prints an import error for hydra_plugins.l2a_launchers on every run
  "$SUBMITIT_LAUNCHER" submitit==1.5.4 cloudpickle==3.1.3
  # the LM loss's fused path on CUDA (tests/train/test_gpu_training.py runs it)
  liger-kernel==0.8.5
  # the GPU tests, in parallel workers (kernel compilation is CPU-bound; one GPU serves them)
  pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 pytest-timeout==2.4.0
  pytest-xdist==3.8.0 execnet==2.1.2
)
if [ "$FA4" = 1 ]; then
  WHEELS+=(
    # FlashAttention-4 and the CuTe DSL it compiles its kernels with
    "$(pinned flash-attn-4)" nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1
    nvidia-cutlass-dsl-libs-core==4.8.1 quack-kernels==0.6.5 apache-tvm-ffi==0.1.15.post2
    torch-c-dlpack-ext==0.1.5
  )
fi
# Published as sdists only: built here into pure-Python wheels (DeepSpeed compiles its ops
# just in time on the host, DS_BUILD_OPS=0; its setup.py imports torch, so it is built with
# this machine's torch, without build isolation).
BUILT=(antlr4-python3-runtime==4.9.3 "$DEEPSPEED")

if [ "$LIST" = 1 ]; then
  printf '%s\n' "${WHEELS[@]}" "${BUILT[@]}"
  exit 0
fi

PYVER=${PYVER:-$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')}
PLATFORMS=()
for glibc in 2_17 2_24 2_27 2_28 2_31 2_34; do PLATFORMS+=(--platform "manylinux_${glibc}_$ARCH"); done
PLATFORMS+=(--platform "manylinux2014_$ARCH")
[ "$ARCH" != x86_64 ] || PLATFORMS+=(--platform manylinux1_x86_64)

mkdir -p "$DIR"
rm -f "$DIR/requirements.txt"
echo "downloading ${#WHEELS[@]} wheels for CPython $PYVER on $ARCH into $DIR/"
"$PY" -m pip download -q --no-deps --only-binary=:all: --implementation cp \
  --python-version "$PYVER" "${PLATFORMS[@]}" -d "$DIR" "${WHEELS[@]}"
for spec in "${BUILT[@]}"; do
  name=${spec%%==*} version=${spec#*==}
  if ! ls "$DIR/${name//-/_}-$version-"*.whl >/dev/null 2>&1; then
    echo "building $spec"
    isolation=()
    [ "$name" != deepspeed ] || isolation=(--no-build-isolation)
    DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps "${isolation[@]}" -w "$DIR" "$spec"
  fi
done
printf '%s\n' "${WHEELS[@]}" "${BUILT[@]}" > "$DIR/requirements.txt.tmp"
mv "$DIR/requirements.txt.tmp" "$DIR/requirements.txt"
du -sh "$DIR"
echo "on the GPU host, in the environment that has torch:"
echo "  python -m pip install --no-index --no-deps --find-links $DIR -r $DIR/requirements.txt"
