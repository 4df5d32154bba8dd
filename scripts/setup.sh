#!/usr/bin/env bash
# Create .venv with speckv and its dependencies (CPU torch wheel here, CUDA where present).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e '.[dev]'
echo "speckv environment ready: .venv"
