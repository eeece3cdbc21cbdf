#!/usr/bin/env bash
# Wheels for the GPU machine's Python 3.12 (manylinux x86_64), which has torch, triton and
# transformers but not DeepSpeed or Hydra. Downloads into .whl/ (git-ignored); on the GPU
# machine install them with
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site:$PYTHONPATH
# bench/train_throughput.py needs nothing else (wandb and datasets are optional there).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p .whl

# One pinned version each (two versions of a package break the --no-deps install).
WHEELS=(
  # deepspeed's requirements (numpy, packaging, torch are on the machine already)
  einops==0.8.2 hjson==3.1.0 msgpack==1.2.4 ninja==1.13.2 psutil==7.2.2 py-cpuinfo==9.0.0
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  typing-extensions==4.16.0 tqdm==4.70.1
  # hydra and omegaconf (antlr4-python3-runtime is built below: PyPI has only its sdist)
  hydra-core==1.3.8 omegaconf==2.3.1 PyYAML==6.0.3
  # ZeRO-3 partitioned loading (transformers' DeepSpeed integration imports it)
  accelerate==1.15.0
  # our Hydra launcher plugin builds on the submitit launcher; without it Hydra prints an
  # import error for hydra_plugins.l2a_launchers on every run
  hydra-submitit-launcher==1.2.0 submitit==1.5.4 cloudpickle==3.1.3
  # the LM loss's fused path on CUDA (tests/train/test_gpu_training.py runs it); pure Python
  liger-kernel==0.8.5
  # GPU tests in parallel workers (kernel compilation is CPU-bound; one GPU serves them)
  pytest-xdist==3.8.0 execnet==2.1.2
)
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux1_x86_64 manylinux_2_24_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64; do
  PLATFORMS+=(--platform "$p")
done
for w in "${WHEELS[@]}"; do
  case "$w" in \#*) continue ;; esac
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d .whl "$w" \
  || "$PY" -m pip download -q --no-deps --python-version 3.12 --implementation cp \
    --only-binary=:all: --platform any -d .whl "$w"
done
# Shipped as sdists only: build their wheels here. Both are pure Python (DeepSpeed compiles
# its ops just in time, DS_BUILD_OPS=0), so the py3-none-any wheels run on the GPU machine.
# DeepSpeed's setup.py imports torch: build it without isolation, with this Python's torch.
ls .whl/antlr4_python3_runtime-4.9.3-*.whl >/dev/null 2>&1 \
  || "$PY" -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
ls .whl/deepspeed-0.19.8-*.whl >/dev/null 2>&1 \
  || DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w .whl deepspeed==0.19.8
ls -1 .whl
du -sh .whl
