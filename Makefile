# Two entry points for a fresh clone:
#   make demo   set up .venv and run the end-to-end demo (CPU, no network, ~4 minutes)
#   make test   set up .venv and run the whole test suite
PYTHON ?= python3
VENV := .venv
# torch is pinned here (not in pyproject, which keeps torch>=2.4) so pip takes the CPU wheel
# available on the machine instead of resolving a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: setup demo test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q "$(TORCH)"
	$(VENV)/bin/pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/lmforge demo

# The import contracts (.importlinter) first: a broken layer fails in seconds, before the suite runs.
test: setup
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/python -m pytest tests
