# The two commands a newcomer needs are `make run` and `make test` (see README.md).
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test test-all test-extra install bench services lint typecheck unit integration e2e chaos

run: install services  ## install everything and run the whole system (API on :8000)
	$(BIN)/couponrush dev

test: install services lint typecheck  ## install everything and run lint, types and the default test suite
	$(BIN)/pytest

test-all: install services lint typecheck  ## the default suite + the slow tests + bench/tests (not the full chaos set: make chaos)
	$(BIN)/pytest tests bench/tests -m "not (slow and chaos)"

test-extra: install services  ## what test-all adds to make test (slow tests, bench/tests); CI runs it after make test
	$(BIN)/pytest tests bench/tests -m "(slow and not chaos) or bench"

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
	$(BIN)/pytest -m "unit and not slow"

integration: services
	$(BIN)/pytest -m "integration and not slow"

e2e: services
	$(BIN)/pytest -m "e2e and not slow"

chaos: install services  ## the whole fault-injection suite (tests/chaos, ~10 min); RELIABILITY.md
	$(BIN)/pytest -m chaos -p no:cacheprovider --timeout 600 -v
