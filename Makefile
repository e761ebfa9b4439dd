# The two commands a newcomer needs are `make run` and `make test` (see README.md).
VENV := .venv
BIN := $(VENV)/bin

# Options for `couponrush dev`, e.g. make run ARGS="--broker-port 19092"
ARGS ?=

.PHONY: run test test-all test-extra install install-dev bench services lint typecheck unit integration e2e chaos deploy-check

run: install services  ## install what running needs and run the whole system (API on :8000)
	$(BIN)/couponrush dev $(ARGS)

test: install-dev services lint typecheck  ## install the dev tools too and run lint, types and the default test suite
	$(BIN)/pytest

test-all: install-dev services lint typecheck  ## the default suite + the slow tests + bench/tests (not the full chaos set: make chaos)
	$(BIN)/pytest tests bench/tests -m "not (slow and chaos)"

test-extra: install-dev services  ## what test-all adds to make test (slow tests, bench/tests); CI runs it after make test
	$(BIN)/pytest tests bench/tests -m "(slow and not chaos) or bench"

install:  ## .venv with couponrush and its embedded servers (no dev tools)
	scripts/install-runtime.sh

install-dev:  ## install + the dev tools + the bench project
	scripts/install-dev.sh

bench: install  ## the benchmark project (bench/, the couponrush-bench command) into .venv; BENCHMARKS.md
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ./bench

services:
	scripts/ensure-services.sh

lint: install-dev
	$(BIN)/ruff check src tests bench conftest.py
	$(BIN)/ruff format --check src tests bench conftest.py

typecheck: install-dev
	$(BIN)/mypy

unit: install-dev
	$(BIN)/pytest -m "unit and not slow"

integration: install-dev services
	$(BIN)/pytest -m "integration and not slow"

e2e: install-dev services
	$(BIN)/pytest -m "e2e and not slow"

deploy-check:  ## validate deploy/ (Dockerfile, compose, Kubernetes, alert rules) without a container engine; deploy/README.md
	scripts/validate-deploy.sh

chaos: install-dev services  ## every fault in every phase of a drop, 3 runs each (tests/chaos, ~35 min); RELIABILITY.md
	$(BIN)/pytest -m chaos -p no:cacheprovider --timeout 600 -v
