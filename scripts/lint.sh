#!/usr/bin/env bash
# Set up (if needed), then check the code's shape: ruff lint + format, and the import-layer contracts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
. .venv/bin/activate
echo "==> ruff check"
ruff check src tests validation bench
echo "==> ruff format --check"
ruff format --check src tests validation bench
echo "==> lint-imports (.importlinter)"
lint-imports
