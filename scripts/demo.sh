#!/usr/bin/env bash
# Set everything up (if needed) and run the demo checkup; the report lands in out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh all
. "${VENV:-.venv}/bin/activate"
OUT="${OUT:-out}"
dlclinic checkup --demo --out "$OUT" "$@"
echo "==> open $OUT/report.html"
