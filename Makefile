# sers-monitor: `make run` (hub + an agent for this machine on http://127.0.0.1:8000),
# `make test` (lint, types and the whole test suite), `make bench` (benchmarks, a few minutes).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 8000

.PHONY: run test lint bench bench-tiny clean

$(BIN)/sers-hub: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.test-deps: $(BIN)/sers-hub
	$(BIN)/pip install -q -e '.[test]'
	touch $@

run: $(BIN)/sers-hub
	@echo "sers-monitor: dashboard on http://127.0.0.1:$(PORT)  (Ctrl-C stops hub and agent)"
	@$(BIN)/sers-hub --port $(PORT) & hub=$$!; \
	trap 'kill $$hub $$agent 2>/dev/null; wait; exit 0' INT TERM; \
	sleep 1; \
	$(BIN)/sers-agent --hub http://127.0.0.1:$(PORT) & agent=$$!; \
	wait $$hub

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
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
