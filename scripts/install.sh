#!/usr/bin/env bash
# Create .venv (Python 3.11+) and install couponrush with its development tools, and the bench project
# (bench/: the harness the end-to-end tests run on). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "couponrush needs Python 3.11 or newer")'
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ./bench
echo "installed: $(.venv/bin/couponrush --help >/dev/null && echo couponrush) in .venv"
