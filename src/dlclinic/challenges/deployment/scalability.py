"""deployment.scalability — how does the served model hold up under concurrent load?

A bounded in-process load test of the dynamic batcher (1 vs several concurrent clients,
batching on/off) and the model's throughput per batch size. Timings depend on the machine
and its load; they are reported, and only a p99 above the latency budget warns.
Multi-worker serving (``dlclinic serve --workers N``) is not exercised here (separate
processes).
"""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlclinic.core.case import Case, input_array
from dlclinic.core.evidence import Evidence, machine
from dlclinic.core.registry import CheckSpec
from dlclinic.core.results import CheckResult, Finding, Remedy, Status
from dlclinic.serve.backends import make_backend
from dlclinic.serve.batching import run_load

__all__ = ["CHECK", "REMEDY", "ScalabilityOptions", "run_scalability"]


@dataclass(frozen=True)
class ScalabilityOptions:
    """A bounded load test: request count and time limit per run, concurrency levels, batch sizes, latency budget."""

    requests: int = 200
    time_limit: float = 1.0
    concurrency: int = 8
    max_batch: int = 32
    max_wait_ms: float = 2.0
    batch_sizes: tuple[int, ...] = (1, 8, 32, 128)
    warn_p99_ms: float = 250.0


def _throughput(predict: Any, x: np.ndarray, batch: int, budget: float) -> float:
    """Rows per second of ``predict`` at this batch size within about ``budget`` seconds."""
    xb = input_array(np.resize(x, (batch, *x.shape[1:])))
    for _ in range(3):  # warm-up: allocator, thread pool, lazy kernels
        predict(xb)
    rows = 0
    t0 = time.perf_counter()
    while True:
        predict(xb)
        rows += batch
        elapsed = time.perf_counter() - t0
        if elapsed > budget or rows >= 20000:
            return rows / elapsed


def _load_runs(predict: Any, x: np.ndarray, options: ScalabilityOptions) -> list[dict[str, Any]]:
    """One client unbatched, N clients unbatched, N clients with dynamic batching."""
    return [
        run_load(predict, x, concurrency=1, max_batch=1, requests=options.requests, time_limit=options.time_limit),
        run_load(
            predict,
            x,
            concurrency=options.concurrency,
            max_batch=1,
            requests=options.requests,
            time_limit=options.time_limit,
        ),
        run_load(
            predict,
            x,
            concurrency=options.concurrency,
            max_batch=options.max_batch,
            max_wait=options.max_wait_ms / 1000,
            requests=options.requests,
            time_limit=options.time_limit,
        ),
    ]


def _load_table(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "title": "Load test (in-process, bounded)",
        "columns": ["clients", "max batch", "requests", "rows/s", "p50 ms", "p95 ms", "p99 ms", "mean batch"],
        "rows": [
            [
                r["concurrency"],
                r["max_batch"],
                r["requests"],
                f"{r['rows_per_s']:.0f}",
                f"{r['p50_ms']:.2f}",
                f"{r['p95_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                f"{r['mean_batch_rows']:.1f}",
            ]
            for r in runs
        ],
    }


def _measure(case: Case, options: ScalabilityOptions) -> dict[str, Any]:
    """Throughput per batch size and the load runs, as plain values (cached: measured on this machine)."""
    split = case.splits["test"] if case.get("test") is not None else case.train
    x = split.x[: max(256, max(options.batch_sizes))]
    backend, desc = make_backend(case.model, case.input_shape, case.n_classes)
    # measured on a worker thread, as the server runs the model (torch's intra-op threading
    # behaves differently on the main thread: batch-1 calls were 20× slower there on a busy machine)
    with ThreadPoolExecutor(max_workers=1) as pool:
        per_batch = [[b, pool.submit(_throughput, backend.predict, x, b, 0.25).result()] for b in options.batch_sizes]
    return {"backend": desc, "per_batch": per_batch, "runs": _load_runs(backend.predict, x, options)}


def run_scalability(case: Case, evidence: Evidence, options: ScalabilityOptions) -> CheckResult:
    """Throughput and p99 with and without dynamic batching, and throughput per batch size."""
    params = {"options": dataclasses.asdict(options), "machine": machine()}
    measured = evidence.cached_json("deployment.scalability.measured", params, lambda: _measure(case, options))
    desc, runs = measured["backend"], measured["runs"]
    per_batch = {int(b): float(v) for b, v in measured["per_batch"]}
    single, unbatched, batched = runs
    speedup = batched["rows_per_s"] / unbatched["rows_per_s"] if unbatched["rows_per_s"] > 0 else float("nan")
    sizes = sorted(per_batch)
    growth = per_batch[sizes[-1]] / per_batch[sizes[0]] if per_batch[sizes[0]] > 0 else float("nan")
    c = options.concurrency
    metrics: dict[str, float | int | bool | None] = {
        "rows_per_s_c1": single["rows_per_s"],
        "p99_ms_c1": single["p99_ms"],
        f"rows_per_s_c{c}_unbatched": unbatched["rows_per_s"],
        f"p99_ms_c{c}_unbatched": unbatched["p99_ms"],
        f"rows_per_s_c{c}_batched": batched["rows_per_s"],
        f"p99_ms_c{c}_batched": batched["p99_ms"],
        "mean_batch_rows": batched["mean_batch_rows"],
        "batching_speedup": speedup,
        "throughput_growth_batch": growth,
    }
    for b in sizes:
        metrics[f"model_rows_per_s_batch{b}"] = per_batch[b]
    p99 = batched["p99_ms"]
    status: Status = "warn" if p99 > options.warn_p99_ms else "ok"
    findings = []
    if status == "warn":
        findings.append(
            Finding(
                "latency",
                f"p99 latency {p99:.0f} ms at {c} concurrent clients with dynamic batching exceeds the {options.warn_p99_ms:.0f} ms budget",
            )
        )
    summary = (
        f"At {c} concurrent clients dynamic batching serves {batched['rows_per_s']:.0f} rows/s (p99 {p99:.1f} ms) vs {unbatched['rows_per_s']:.0f} rows/s unbatched ({speedup:.1f}×); "
        f"model throughput grows {growth:.1f}× from batch {sizes[0]} to {sizes[-1]}."
    )
    return CheckResult(
        id="deployment.scalability",
        status=status,
        summary=summary,
        metrics=metrics,
        thresholds={"p99_ms.warn": options.warn_p99_ms},
        findings=tuple(findings),
        remedy=Remedy(
            command="dlclinic serve --workers 2 --max-batch 32 --out serve/",
            description="serve with dynamic batching and several worker processes (each loads the model; size workers to cores / torch threads); timings depend on the machine and its load",
        ),
        details={
            "plots": [
                {
                    "kind": "line",
                    "title": "Model throughput per batch size",
                    "xlabel": "batch size",
                    "ylabel": "rows/s",
                    "xscale": "log",
                    "series": [{"label": desc, "x": sizes, "y": [per_batch[b] for b in sizes]}],
                }
            ],
            "tables": [_load_table(runs)],
            "note": "Multi-worker serving (uvicorn --workers) runs separate processes and is not measured in the checkup.",
        },
    )


CHECK = CheckSpec(
    id="deployment.scalability",
    requires=(),
    options=ScalabilityOptions,
    run=run_scalability,
    description="bounded in-process load test of the dynamic batcher (throughput, p50/p95/p99 at 1 and N clients, batching on/off) and throughput per batch size",
)

REMEDY = None
