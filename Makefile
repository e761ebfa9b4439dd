# The two commands a newcomer needs are `make run` and `make test` (see README.md).
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test install bench services lint typecheck unit integration e2e chaos

run: install services  ## install everything and run the whole system (API on :8000)
	$(BIN)/couponrush dev

test: install services lint typecheck  ## install everything and run lint, types and the test suite
	$(BIN)/pytest

install:
	scripts/install.sh

bench: install  ## the benchmark project (bench/, the couponrush-bench command) into .venv; BENCHMARKS.md
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ./bench

services:
	scripts/ensure-services.sh

lint:
	$(BIN)/ruff check src tests bench conftest.py
	$(BIN)/ruff format --check src tests bench conftest.py

typecheck:
	$(BIN)/mypy

unit:
	$(BIN)/pytest -m unit

integration: services
	$(BIN)/pytest -m integration

e2e: services
	$(BIN)/pytest -m e2e

chaos: install services  ## the whole fault-injection suite (tests/chaos, ~10 min); RELIABILITY.md
	$(BIN)/pytest -m chaos -p no:cacheprovider --timeout 600 -v
