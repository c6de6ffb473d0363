# The README's quick start: `make install`, then `make test`.
PYTHON ?= python3.12
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test quick lint fleet-small bench demo

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'

lint:
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src
	$(BIN)/mypy
	$(BIN)/mypy --strict bench

test: lint
	$(BIN)/pytest -q tests

quick: lint
	$(BIN)/pytest -q -m "not slow" tests

fleet-small:
	$(BIN)/python -m bench.fleet --small

bench:
	$(BIN)/python -m bench.agent

demo:
	$(BIN)/shoal demo --nodes 8
