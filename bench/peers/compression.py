"""7. int8 / pruning / ONNX Runtime vs torch eager: batch-1 latency and accuracy on the demo model.

One fresh process runs ``providers.compression_sweep.compression_sweep`` (no distillation): the
eager fp32 original, ONNX Runtime fp32 / int8 dynamic / int8 static, bf16, magnitude pruning
and channel pruning, every variant scored on the whole demo test split and its batch-1
latency measured *interleaved* with the others (round-robin, so load changes hit every
variant alike). The peer of each variant is torch eager fp32, measured in the same loop.
"""

from __future__ import annotations

import tempfile
from typing import Any

from bench.peers.common import case_entry, load_demo, load_demo_model, row, version_of

NUMBER = 7
TITLE = "int8 / pruning / ONNX Runtime vs torch eager (batch-1 latency and accuracy)"
SIDES = {"ours": "project"}


def run(side: str, cfg: dict[str, Any]) -> dict[str, Any]:
    from dlclinic.functional.compression import SweepConfig
    from dlclinic.providers.compression_sweep import compression_sweep

    arrays, _ = load_demo(cfg)
    model = load_demo_model(cfg)
    quick = cfg["quick"]
    sweep_cfg = SweepConfig(
        exporter="dynamo",
        sparsities=(0.5, 0.9),
        keep_ratios=(0.5,),
        distill_keep_ratio=None,
        latency_rounds=20 if quick else 60,
        latency_seconds=3.0 if quick else 10.0,
    )
    with tempfile.TemporaryDirectory() as work:
        sweep = compression_sweep(
            model, arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"], work, sweep_cfg
        )
    cases = {}
    for v in sweep.variants:
        cases[v.name] = case_entry(
            v.p50_ms / 1e3,
            [v.p50_ms / 1e3],
            accuracy=round(v.accuracy, 4),
            drop=f"{v.drop:+.3f} [{v.drop_low:+.3f}, {v.drop_high:+.3f}]",
            size_kb=round(v.size_bytes / 1e3, 1),
            p99_ms=round(v.p99_ms, 3),
        )
    return {
        "cases": cases,
        "order": [v.name for v in sweep.variants],
        "notes": list(sweep.notes),
        "versions": version_of("onnxruntime", "onnx", "torch"),
    }


def rows(results: dict[str, Any], cfg: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    r = results.get("ours") or {}
    cases = r.get("cases") or {}
    order = r.get("order") or list(cases)
    if not order:
        return [], []
    base_name = order[0]
    base = cases[base_name]
    out = []
    for name in order[1:]:
        v = cases[name]
        r = row(f"batch-1 p50 latency, {name}", name, v, f"torch eager fp32 ({base_name})", base)
        ratio = r["ratio"]
        if ratio is not None:
            r["verdict"] = (
                f"{ratio:.1f}× faster than eager"
                if ratio >= 1.1
                else (f"**{1 / ratio:.1f}× slower than eager**" if ratio <= 0.9 else "as fast as eager (±10 %)")
            )
        out.append(r)
    notes = [
        "Latency is the median of interleaved batch-1 calls (p99 in the quality column); accuracy on all test rows with a paired 95 % CI of the drop. Ratio above 1: the variant is faster than eager fp32.",
        "Slower than eager: bf16 on this CPU (no native bf16 matrix units, so PyTorch converts on the fly) and magnitude pruning (dense kernels); the sweep reports them so the user sees it, and the model.compression remedy picks by measured latency, so it never recommends them for speed here.",
        "Pruned torch variants keep dense tensors (zeros are not skipped by the CPU kernels), so magnitude pruning alone does not speed anything up; only channel pruning (smaller layers) and int8 kernels can.",
    ]
    notes += [f"sweep: {n}" for n in r.get("notes", [])]
    return out, notes
