#!/usr/bin/env bash
# Install = product: a second virtual environment with exactly the README's install (no test extras),
# the demo checkup in it, and a failure when any of the 31 rows is `error`.
set -euo pipefail
cd "$(dirname "$0")/.."
export VENV="${VENV:-.venv-product}" OUT="${OUT:-out-product}"
rm -rf "$VENV" "$OUT"
bash scripts/demo.sh --quiet
"$VENV/bin/python" - "$OUT/report.json" <<'PY'
import json
import sys

report = json.load(open(sys.argv[1]))
rows = report["challenges"]
errors = [f"{r['id']}: {r['summary']}" for r in rows if r["status"] == "error"]
print(f"==> README install: {len(rows)} rows, " + ", ".join(f"{s} {sum(r['status'] == s for r in rows)}" for s in ("ok", "warn", "fail", "not_examined", "error")))
if len(rows) != 31 or errors:
    print("rows in error with the README's install:\n  " + "\n  ".join(errors), file=sys.stderr)
    sys.exit(1)
PY
if "$VENV/bin/python" -c "import pytest" 2>/dev/null; then
  echo "the product environment has pytest: it is not the README's install" >&2
  exit 1
fi
