#!/usr/bin/env bash
# Creates .venv (if needed) and builds the package into it from source.
# Needs only python3 (>= 3.10) with venv and a Rust toolchain; fetches the rest from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "maturin>=1.7,<2" "numpy>=1.24" "$@"
VIRTUAL_ENV="$PWD/.venv" .venv/bin/maturin develop --release --quiet
