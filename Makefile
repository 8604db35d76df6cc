# Quick start: `make run` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= examples/quickstart/inferfront.yaml

.PHONY: run test lint bench bench-autoscale bench-hotpath clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.run-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[example]'
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.run-installed

run: $(VENV)/.run-installed
	$(BIN)/python examples/quickstart/train.py
	$(BIN)/inferfront serve -c $(CONFIG)

test: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(VENV)/.test-installed
	bash bench/run.sh

bench-autoscale: $(VENV)/.test-installed
	$(BIN)/python -m bench.autoscale

bench-hotpath: $(VENV)/.test-installed
	$(BIN)/python -m bench.hotpath

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
