# Two commands on a fresh clone: `make demo` and `make test`. Both create/refresh .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Without a GPU, install the CPU build of torch first so the range in pyproject.toml never pulls CUDA wheels.
# With a GPU, leave torch to pip (or to vLLM's pin: `make install EXTRAS=test,gpu`).
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_CPU ?= torch==2.13.0
EXTRAS ?= test

.PHONY: install demo test clean

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

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
