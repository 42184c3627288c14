#!/usr/bin/env bash
# Set everything up (if needed) and run the demo checkup; the report lands in out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh all
. .venv/bin/activate
dlclinic checkup --demo --out out "$@"
echo "==> open out/report.html"
