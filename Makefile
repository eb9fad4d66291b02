# sers-monitor: `make help` lists the targets. `make run` (hub + an agent for this machine on
# http://127.0.0.1:8000), `make demo` (the hub with a simulated lab), `make test` (lint, types
# and the whole test suite), `make bench` (benchmarks, a few minutes).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 8000
# HOST only from the command line (`make run HOST=0.0.0.0`): tcsh and some profiles export HOST
# as the machine's name, which would make the hub listen on the network by surprise.
ifneq ($(origin HOST),command line)
HOST   := 127.0.0.1
endif

.PHONY: help run demo test lint bench bench-tiny clean

help:
	@echo "make run         hub + an agent for this machine: dashboard on http://$(HOST):$(PORT),"
	@echo "                 the hub's state in sers-hub.sqlite3 here"
	@echo "make demo        the hub with a simulated lab of 36 GPU servers (no GPU needed), same address"
	@echo "make test        lint (ruff), types (mypy) and the whole test suite (pytest)"
	@echo "make lint        ruff and mypy only"
	@echo "make bench       the benchmarks, a few minutes (BENCHMARKS.md)"
	@echo "make bench-tiny  each benchmark at a tiny size, to check that it works"
	@echo "make clean       remove .venv, caches, build outputs and what run and the tests leave"
	@echo "make help        this list (plain make prints it too)"
	@echo "Options for run and demo: PORT=8080, HOST=0.0.0.0 (listens on every interface: set a"
	@echo "token first, see README.md). Ctrl-C stops everything they started."

$(BIN)/sers-hub: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.test-deps: $(BIN)/sers-hub
	$(BIN)/pip install -q -e '.[test]'
	touch $@

run: $(BIN)/sers-hub
	@$(BIN)/python -m tools.launch --host $(HOST) --port $(PORT) --state-db sers-hub.sqlite3

demo: $(BIN)/sers-hub
	@$(BIN)/python -m bench.demo --host $(HOST) --port $(PORT)

lint: $(VENV)/.test-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

bench: $(VENV)/.test-deps
	$(BIN)/python -m bench.all

bench-tiny: $(VENV)/.test-deps
	$(BIN)/python -m bench.all --tiny

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build dist *.egg-info
	rm -f sers-hub.sqlite3 sers-hub.sqlite3-wal sers-hub.sqlite3-shm sers-hub.sqlite3-journal
	find . -path ./.git -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
