"""Demo CNN: int8 / pruned / distilled variants vs eager fp32 — accuracy drop, size and batch-1 latency ratios.

Trains (or loads from the cache) the demo baseline, runs the model.compression sweep
with the ``torch.export``-based ONNX exporter, and prints one row per variant plus the
ratios the acceptance criteria ask for (eager p50 / variant p50 at batch 1, size ratio,
accuracy drop). Latencies are interleaved across variants (see
``dlclinic.functional.latency.measure_interleaved``); run on an idle machine.

    python bench/bench_compression.py [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch/onnxruntime intra-op threads")
    parser.add_argument("--json", default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from dlclinic.api import prepare_model
    from dlclinic.demo import build_demo
    from dlclinic.functional.compression import SweepConfig
    from dlclinic.providers.compression_sweep import compression_sweep

    case, _ = build_demo()
    case = prepare_model(case)
    test = case.splits["test"]
    start = time.perf_counter()
    cfg = SweepConfig(
        exporter="dynamo",
        sparsities=(0.5, 0.8, 0.9),
        keep_ratios=(0.75, 0.5),
        latency_rounds=60,
        latency_seconds=6.0,
        distill_epochs=3,
        distill_seconds=60.0,
    )
    sweep = compression_sweep(case.model, case.train.x, case.train.y, test.x, test.y, tempfile.mkdtemp(), cfg)
    seconds = time.perf_counter() - start
    base = sweep.variants[0]
    rows = []
    print(f"threads={args.threads}  test rows={sweep.n_test}  sweep {seconds:.1f} s")
    print(f"{'variant':24s} {'acc':>6s} {'drop':>7s} {'size MB':>8s} {'size x':>7s} {'p50 ms':>8s} {'speed-up':>8s}")
    for v in sweep.variants:
        speedup = base.p50_ms / v.p50_ms if v.p50_ms > 0 else float("nan")
        rows.append(
            {
                "variant": v.name,
                "accuracy": v.accuracy,
                "drop": v.drop,
                "drop_ci": [v.drop_low, v.drop_high],
                "size_mb": v.size_bytes / 1e6,
                "size_ratio": v.size_bytes / base.size_bytes,
                "p50_ms": v.p50_ms,
                "p99_ms": v.p99_ms,
                "speedup_vs_eager": speedup,
            }
        )
        print(
            f"{v.name:24s} {v.accuracy:6.3f} {v.drop:+7.3f} {v.size_bytes / 1e6:8.3f} {v.size_bytes / base.size_bytes:7.2f} {v.p50_ms:8.3f} {speedup:8.2f}"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"threads": args.threads, "rows": rows, "notes": list(sweep.notes)}, handle, indent=2)


if __name__ == "__main__":
    main()
