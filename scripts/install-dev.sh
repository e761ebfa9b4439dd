#!/usr/bin/env bash
# What running needs (install-runtime.sh), plus the development tools (the `dev` extra) and the bench
# project (bench/: the harness the end-to-end tests run on). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-runtime.sh
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ./bench
echo "installed: the dev tools and couponrush-bench in .venv"
