#!/usr/bin/env bash
# Install = product: a second virtual environment with exactly the README's install (no test extras),
# the demo checkup in it, and a failure when any of the 31 rows is `error`; then the sequence demo's
# data.quality alone, out-of-fold on embeddings (about 25 s of CPU: mnist1d comes with the README's install too).
set -euo pipefail
cd "$(dirname "$0")/.."
export VENV="${VENV:-.venv-product}" OUT="${OUT:-out-product}"
rm -rf "$VENV" "$OUT" "$OUT-sequence"
bash scripts/demo.sh --quiet

check_report() {
  "$VENV/bin/python" - "$1" <<'PY'
import json
import sys

report = json.load(open(sys.argv[1]))
rows = report["challenges"]
errors = [f"{r['id']}: {r['summary']}" for r in rows if r["status"] == "error"]
print(f"==> README install, {report['case']['name']}: {len(rows)} rows, " + ", ".join(f"{s} {sum(r['status'] == s for r in rows)}" for s in ("ok", "warn", "fail", "not_examined", "error")))
if len(rows) != 31 or errors:
    print("rows in error with the README's install:\n  " + "\n  ".join(errors), file=sys.stderr)
    sys.exit(1)
PY
}

check_report "$OUT/report.json"
"$VENV/bin/dlclinic" checkup --demo sequence --only data.quality --oof embeddings --fail-on never --out "$OUT-sequence" --quiet
check_report "$OUT-sequence/report.json"
if "$VENV/bin/python" -c "import pytest" 2>/dev/null; then
  echo "the product environment has pytest: it is not the README's install" >&2
  exit 1
fi
