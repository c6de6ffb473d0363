# The README's quick start: `make install`, then `make test`.
# the first Python >= 3.12 on this machine (pyenv's versions included); override with PYTHON=...
PYTHON ?= $(shell for c in python3.12 python3.13 /root/.pyenv/versions/3.12.*/bin/python3.12 \
	/root/.pyenv/versions/3.13.*/bin/python3.13 python3; do \
	command -v $$c >/dev/null 2>&1 && $$c -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null \
	&& { command -v $$c; break; }; done)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test quick lint fleet-small bench demo

install:
	bash scripts/system-deps.sh
	@test -n "$(PYTHON)" || { echo 'make install: no Python >= 3.12 found; pass PYTHON=/path/to/python3.12' >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'

lint:
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/mypy --strict bench
	MYPYPATH=src:tests/integration $(BIN)/mypy --strict --explicit-package-bases tests

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
