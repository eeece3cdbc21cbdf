# The two commands: `make train` (tiny default, CPU is enough) and `make test`.
# Both set the environment up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deps-stamp
TEST_STAMP := $(VENV)/.test-deps-stamp
# The CPU build of torch on machines without CUDA; clusters pass their own (TORCH_SPEC=).
TORCH_SPEC ?= torch==2.13.0
CONF ?= tiny
ARGS ?=
NPROC ?= 1
PYTEST_ARGS ?=

export PYTHONUNBUFFERED := 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1

.PHONY: setup train data eval test test-gpu test-slurm bench imports lint format clean

setup: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -r requirements.txt
	touch $(STAMP)

train: setup
ifeq ($(NPROC),1)
	$(PY) -m train experiment=$(CONF) $(ARGS)
else
	$(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC) -m train experiment=$(CONF) $(ARGS)
endif

data: setup
	$(PY) -m train.data.prepare experiment=$(CONF) $(ARGS)

# Evaluate a model: CONF names the conf/eval/ suite (tiny, default), ARGS holds model.path=...
# e.g. make eval ARGS="model.path=outputs/tiny/<run>/export"  (docs/EVAL.md)
eval: setup
	$(PY) -m eval eval=$(CONF) $(ARGS)

# The suite's own extras (requirements-test.txt: lm-eval, so its adapter test runs).
$(TEST_STAMP): requirements-test.txt $(STAMP)
	$(PY) -m pip install -q -r requirements-test.txt
	touch $(TEST_STAMP)

test: setup $(TEST_STAMP)
	$(PY) -m pytest -q -m "not gpu" $(PYTEST_ARGS) tests study/tests

# On a GPU machine: the same kernel tests in bf16 at larger shapes, and bf16 training with
# both LM-loss paths (Liger's is one: installed from requirements-gpu.txt; flash-attn, which
# compiles for a long time and no test needs, is left out).
test-gpu: setup
	$(PY) -c "import liger_kernel" 2>/dev/null || $(PY) -m pip install -q "$$(grep -E '^liger-kernel' requirements-gpu.txt)"
	$(PY) -m pytest -q -m gpu $(PYTEST_ARGS) tests study/tests

# The launcher tests on a one-node Slurm they start (installs slurm-wlm/munge as root).
test-slurm: setup
	$(PY) -m pytest -q -m slurm $(PYTEST_ARGS) tests/launch

bench: setup
	$(PY) -m bench.attention $(ARGS)

# The import contract (kernels < l2a < train < eval < bench < study, no cycle): the
# violations and cycles, one per line; tests/test_import_contract.py runs it in `make test`.
imports:
	$(PY) scripts/import_graph.py

lint: setup
	$(VENV)/bin/ruff check .

format: setup
	$(VENV)/bin/ruff format .

clean:
	rm -rf outputs multirun .pytest_cache
