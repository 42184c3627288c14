#!/usr/bin/env bash
# Create .venv (if missing) and install dlclinic into it: the CPU torch wheel first, then the project.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
EXTRAS="${1:-all}"
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  echo "==> installing torch==2.13.0 (CPU build) before the project"
  python -m pip install --quiet torch==2.13.0
fi
echo "==> installing dlclinic[$EXTRAS]"
python -m pip install --quiet -e ".[$EXTRAS]"
