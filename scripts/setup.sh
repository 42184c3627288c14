#!/usr/bin/env bash
# Create .venv (if missing) and install dlclinic into it: the CPU torch wheel first, then the project.
# VENV=path puts the environment elsewhere (CI builds a second one with exactly the README's install).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
EXTRAS="${1:-all}"
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
. "$VENV/bin/activate"
python -m pip install --quiet --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  echo "==> installing torch==2.13.0 (CPU build) before the project"
  python -m pip install --quiet torch==2.13.0
fi
echo "==> installing dlclinic[$EXTRAS]"
python -m pip install --quiet -e ".[$EXTRAS]"
