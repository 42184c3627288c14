#!/usr/bin/env bash
# The one command for the peer benchmarks (issue 10):
#
#   bash scripts/bench.sh            # full suite (< 15 min on 2 cores), writes docs/benchmarks.{md,json}
#   bash scripts/bench.sh --quick    # smaller sizes, fewer repeats (< 5 min)
#   bash scripts/bench.sh --only drift_mmd,attacks --dry-run
#
# 1. the project venv (.venv) is created by scripts/setup.sh if missing;
# 2. for each bench/peers/requirements-NAME.txt whose peer is not importable from .venv, a
#    venv is built under $DLCLINIC_BENCH_VENVS (default ~/.cache/dlclinic-bench/venvs/NAME),
#    CPU torch==2.13.0 first when the file says "# torch: yes" (so pip never pulls CUDA
#    wheels), then the pinned requirements; a peer that cannot be installed is recorded in
#    NAME.failed and reported as skipped, with the reason, in the table;
# 3. bench/peers/run.py runs every benchmark, each side in a fresh process.
# Set DLCLINIC_BENCH_NO_INSTALL=1 to use only what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
VENVS="${DLCLINIC_BENCH_VENVS:-$HOME/.cache/dlclinic-bench/venvs}"
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || bash scripts/setup.sh all
mkdir -p "$VENVS"

field() {  # field NAME FILE -> value of "# NAME: value" (first word)
  sed -n "s/^# $1: *\([^ ]*\).*/\1/p" "$2" | head -n 1
}

if [ "${DLCLINIC_BENCH_NO_INSTALL:-0}" != 1 ]; then
  for req in bench/peers/requirements-*.txt; do
    name="$(basename "$req" .txt)"; name="${name#requirements-}"
    module="$(field import "$req")"
    wants_torch="$(field torch "$req")"
    if .venv/bin/python -c "import $module" >/dev/null 2>&1; then
      echo "==> $name: '$module' importable from .venv, no separate venv"
      continue
    fi
    dir="$VENVS/$name"
    stamp="$(sha256sum "$req" | cut -c1-16)"
    if [ -x "$dir/bin/python" ] && [ "$(cat "$dir/.stamp" 2>/dev/null)" = "$stamp" ] && "$dir/bin/python" -c "import $module" >/dev/null 2>&1; then
      echo "==> $name: venv ready ($dir)"
      continue
    fi
    echo "==> $name: building venv in $dir"
    rm -rf "$dir" "$VENVS/$name.failed"
    log="$VENVS/$name.log"
    if ! {
      "$PYTHON" -m venv "$dir" &&
      "$dir/bin/python" -m pip install --quiet --upgrade pip &&
      { [ "$wants_torch" != yes ] || "$dir/bin/python" -m pip install --quiet torch==2.13.0; } &&
      "$dir/bin/python" -m pip install --quiet -r "$req" &&
      "$dir/bin/python" -c "import $module"
    } >"$log" 2>&1; then
      reason="$(grep -E 'ERROR|Error|error' "$log" | tail -n 1 | cut -c1-200)"
      echo "${reason:-pip install -r $req failed}" >"$VENVS/$name.failed"
      echo "   $name could not be installed: $(cat "$VENVS/$name.failed") (log: $log)"
      continue
    fi
    echo "$stamp" >"$dir/.stamp"
  done
fi

export DLCLINIC_BENCH_VENVS="$VENVS"
exec "$ROOT/.venv/bin/python" bench/peers/run.py "$@"
