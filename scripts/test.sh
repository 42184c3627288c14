#!/usr/bin/env bash
# Set everything up (if needed) and run the whole test suite.
# Headless Chromium (Debian package) is installed for the browser tests when apt-get is usable;
# without it those tests are skipped with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "==> installing Debian chromium for the browser tests"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "   (chromium could not be installed: browser tests will be skipped)"
fi
. .venv/bin/activate
# two pytest workers, one thread each (the machine has 2 cores); a module's tests stay on one worker
# (--dist loadfile), so module fixtures such as the demo report are built once
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
python -m pytest -q -n "${DLCLINIC_TEST_WORKERS:-2}" --dist loadfile "$@"
