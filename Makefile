# Two entry points do all set-up on a fresh machine:
#   make run    train original -> forget -> retrain -> unlearn -> evaluate with the default config
#   make test   the test suite
# Both create .venv with Python 3.12 and install the pinned requirements when needed.

SHELL := /bin/bash
# jax 0.12 / flax 0.12.12 need Python 3.12; find it on PATH or under pyenv.
PYTHON312 ?= $(shell command -v python3.12 >/dev/null 2>&1 && python3.12 -c 'import sys' >/dev/null 2>&1 && echo python3.12 || ls -d $$HOME/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | tail -n1)
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= experiments/configs/default.py
WORKDIR ?= runs/default
ARGS ?=

.PHONY: venv run test bench gpu-check reproduce clean-venv

$(VENV)/.installed: requirements.txt setup.cfg
	@test -n "$(PYTHON312)" || { echo "error: Python 3.12 not found (set PYTHON312=/path/to/python3.12)"; exit 1; }
	$(PYTHON312) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

venv: $(VENV)/.installed

run: venv
	$(PY) -m experiments.run --config=$(CONFIG) --workdir=$(WORKDIR) $(ARGS)

# Two pytest-xdist workers: the suite keeps both cores of the CI machine busy (12.5 instead of 16.5 minutes).
TEST_WORKERS ?= 2

test: venv
	$(PY) -m pytest -n $(TEST_WORKERS) tests

reproduce: venv
	$(PY) -m experiments.reproduce --workdir=runs/reproduce

bench: venv
	$(PY) benchmarks/step_throughput.py

# On a GPU machine: its python3 with JAX + CUDA (and torch for the side-by-side figures); see the script.
gpu-check:
	bash benchmarks/gpu_check.sh

clean-venv:
	rm -rf $(VENV)
