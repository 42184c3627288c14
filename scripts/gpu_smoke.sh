#!/usr/bin/env bash
# GPU smoke run (issue 21): the demo checkup and the benchmarks that take --device, on CUDA.
#
#   bash scripts/gpu_smoke.sh                 # cuda, fp32, then bf16
#   DEVICE=cuda:1 bash scripts/gpu_smoke.sh   # another GPU
#   OUT=gpu-smoke bash scripts/gpu_smoke.sh   # where the reports and the log go
#
# Exits 2 with one line when this machine has no CUDA device. Paste the log's summary into
# docs/benchmarks.md ("GPU"), with the GPU's name it prints first.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
DEVICE="${DEVICE:-cuda}"
OUT="${OUT:-gpu-smoke}"

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_smoke: no CUDA device here (torch.cuda.is_available() is False): nothing to run" >&2
  exit 2
fi
mkdir -p "$OUT"
LOG="$OUT/gpu_smoke.log"
: > "$LOG"
run() {  # run LABEL CMD...: time one command, keep its output in the log
  echo "==> $1" | tee -a "$LOG"
  shift
  local start end
  start=$(date +%s%N)
  "$@" 2>&1 | tee -a "$LOG"
  end=$(date +%s%N)
  echo "    wall $(( (end - start) / 1000000 )) ms" | tee -a "$LOG"
}

"$PY" - <<'EOF' | tee -a "$LOG"
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} device(s): "
      + ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))
EOF

# the demo, end to end, on the GPU: fp32, then bf16 mixed precision (fresh caches: nothing reused from CPU runs)
for precision in fp32 bf16; do
  run "checkup --demo --device $DEVICE --precision $precision" \
    "$PY" -m dlclinic.cli checkup --demo --device "$DEVICE" --precision "$precision" --no-cache \
    --out "$OUT/demo-$precision" --quiet
  "$PY" - "$OUT/demo-$precision/report.json" <<'EOF' | tee -a "$LOG"
import json, sys
r = json.load(open(sys.argv[1]))
env, t = r["environment"], r["timings"]
statuses = {}
for c in r["challenges"]:
    statuses[c["status"]] = statuses.get(c["status"], 0) + 1
print(f"    device {env.get('device')} ({env.get('device_name', '')}), precision {env.get('precision')}; "
      f"timings {', '.join(f'{k} {v:.1f} s' for k, v in t.items())}; statuses {statuses}")
errors = [c["id"] + ": " + c["summary"] for c in r["challenges"] if c["status"] == "error"]
print("    errors: " + ("; ".join(errors) if errors else "none"))
EOF
done

# a remedy that retrains on the GPU
run "treat model.overfitting --demo --device $DEVICE" \
  "$PY" -m dlclinic.cli treat model.overfitting --demo --device "$DEVICE" --no-cache --out "$OUT/treat" --quiet

# the benchmarks that take --device
run "bench_monitor --device $DEVICE" "$PY" bench/bench_monitor.py --device "$DEVICE"
echo "gpu_smoke: done; log in $LOG" >&2
