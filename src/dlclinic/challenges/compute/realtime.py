"""compute.realtime: does the model answer within its latency budget?

p50/p95/p99 at batch 1 (backends timed interleaved, after warm-up) and throughput at the
best batch size, for eager, ONNX Runtime fp32/int8 and optionally ``torch.compile``; a
verdict on the p99 against ``latency_budget_ms`` when given: a backend misses the budget
when the lower 95 % confidence bound of its p99 exceeds it. The ONNX files come from
:mod:`dlclinic.providers.compression_sweep` (built once per checkup).

The remedy ships the fastest verified variant within the accuracy tolerance
(:mod:`dlclinic.providers.compression_remedy`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from dlclinic.core.case import Case
from dlclinic.core.evidence import Evidence, machine
from dlclinic.core.registry import CheckSpec, RemedySpec, TreatContext, TreatOutcome
from dlclinic.core.results import CheckResult, Finding, Remedy, Status
from dlclinic.core.threads import thread_settings, torch_threads
from dlclinic.export.onnx_variants import onnx_runner
from dlclinic.functional.latency import (
    PERCENTILE_METHOD,
    LatencyStats,
    ThroughputResult,
    compiled_runner,
    measure_interleaved,
    measure_throughput,
    torch_runner,
)
from dlclinic.providers.compression_remedy import CompressParams, compress_and_verify
from dlclinic.providers.compression_sweep import eval_split, missing_onnx, needs_torch, onnx_core, torch_model

__all__ = ["CHECK", "REMEDY", "LatencyParams", "RealtimeOptions", "run_realtime", "treat_realtime"]


@dataclass(frozen=True)
class RealtimeOptions:
    """Latency budget (``None`` = report only) and the benchmark's own budget.

    The verdict compares the batch-1 p99 of the user's eager model with
    ``latency_budget_ms``: ``fail`` when no backend meets it, ``warn`` when only another
    backend (ONNX Runtime, int8, compiled) does. A backend *misses* the budget only when the
    distribution-free lower ``1 − alpha`` confidence bound of its p99 exceeds it
    (significantly more than 1 % of its calls were slower than the budget), so a model whose
    true p99 meets the budget is reported over it with probability ≤ ``alpha``. The p99 is
    taken over the calls the OS did not preempt for another process (see
    :func:`dlclinic.functional.latency.measure_interleaved`; their share and the p99 of all
    calls are reported): on a loaded machine a few percent of calls wait ~4 ms for another
    process's time slice, and the point p99 of 200 such calls, compared with a budget set at
    1.33× an earlier measurement, flagged 7 and 9 of 60 clean cases in two runs (now 0 of
    60). Half of ``seconds`` times batch-1 calls (as many rounds as fit), the other half
    throughput. ``compile`` is off by default in a checkup because inductor compilation on
    CPU takes tens of seconds.
    """

    latency_budget_ms: float | None = None
    alpha: float = 0.05
    batch_sizes: tuple[int, ...] = (1, 8, 32, 128)
    seconds: float = 3.0
    compile: bool = False
    exporter: str = "torchscript"
    calibration_samples: int = 128


@dataclass(frozen=True)
class LatencyParams(CompressParams):
    """:class:`CompressParams` choosing the fastest variant (compute.realtime's remedy)."""

    objective: Literal["size", "latency"] = "latency"


@dataclass
class _Backends:
    """The runners to time, the backends skipped (and why) and notes on how they were built."""

    runners: dict[str, Any]
    skipped: dict[str, str]
    notes: list[str]


def _one_thread(eager: Any) -> Any:
    def one_thread(batch: np.ndarray) -> Any:
        with torch_threads(1):
            return eager(batch)

    return one_thread


def _backends(case: Case, evidence: Evidence, options: RealtimeOptions, model: Any, x: np.ndarray) -> _Backends:
    """Eager (and eager on one thread when torch uses more), ONNX Runtime fp32/int8 static, torch.compile."""
    runners: dict[str, Any] = {"eager fp32": torch_runner(model)}
    if thread_settings().get("torch_intra_op_threads", 1) > 1:
        runners["eager fp32, 1 thread"] = _one_thread(runners["eager fp32"])
    skipped: dict[str, str] = {}
    notes: list[str] = []
    if missing_onnx("compute.realtime") is None:
        files, notes = onnx_core(case, evidence, options.exporter, options.calibration_samples)
        for name, kind, path, _ in files:
            if kind == "onnx-int8-dynamic" and any(k == "onnx-int8-static" for _, k, _, _ in files):
                continue  # static int8 is the one meant for speed; dynamic is measured by model.compression
            run, _threads = onnx_runner(path)
            runners[f"ORT {name.removeprefix('onnx ')}"] = run
    else:
        skipped["ONNX Runtime"] = "onnxruntime not installed: pip install 'dlclinic[onnx]'"
    if options.compile:
        with evidence.progress.step("torch.compile", total=1) as advance:
            compiled, note = compiled_runner(model, x[:1])
            advance(1)
        if compiled is None:
            skipped["torch.compile"] = note
        else:
            runners["torch.compile"] = compiled
            notes.append(f"torch.compile {note}; each new batch size recompiles")
    else:
        skipped["torch.compile"] = (
            "off in a checkup (inductor compiles for tens of seconds on CPU); --option compute.realtime.compile=true to include it"
        )
    return _Backends(runners, skipped, notes)


def _benchmark(
    evidence: Evidence, runners: dict[str, Any], x: np.ndarray, options: RealtimeOptions
) -> tuple[dict[str, LatencyStats], dict[str, ThroughputResult]]:
    with evidence.progress.step("latency benchmark", total=1) as advance:
        # rounds until half the time budget is spent: the p99 then rests on many slow calls, not two
        lat = measure_interleaved(
            runners,
            x[:1],
            warmup=10,
            rounds=100_000,
            calls_per_round=5,
            max_seconds=options.seconds * 0.5,
            alpha=options.alpha,
        )
        tput = {
            name: measure_throughput(
                run,
                x,
                backend=name,
                batch_sizes=options.batch_sizes,
                warmup=1,
                repeats=15,
                max_seconds=options.seconds * 0.5 / (len(runners) * len(options.batch_sizes)),
            )[0]
            for name, run in runners.items()
        }
        advance(1)
    return lat, tput


def _measure(case: Case, evidence: Evidence, options: RealtimeOptions, model: Any) -> dict[str, Any]:
    """Latency and throughput per backend, as plain values (cached: they are measured on this machine)."""
    _, x, _ = eval_split(case)
    x = np.ascontiguousarray(x[: max(options.batch_sizes)])
    backends = _backends(case, evidence, options, model, x)
    lat, tput = _benchmark(evidence, backends.runners, x, options)
    return {
        "latency": {name: dataclasses.asdict(v) for name, v in lat.items()},
        "throughput": {name: dataclasses.asdict(v) for name, v in tput.items()},
        "skipped": backends.skipped,
        "notes": backends.notes,
    }


def _verdict(lat: dict[str, LatencyStats], options: RealtimeOptions) -> tuple[Status, list[Finding], str]:
    """``(status, findings, best backend)`` of the p99s against the budget (on their lower confidence bounds)."""
    eager_stats = lat["eager fp32"]
    best_name = min(lat, key=lambda n: lat[n].p99_ms)
    best = lat[best_name]
    status: Status = "ok"
    findings: list[Finding] = []
    budget = options.latency_budget_ms
    conf = f"{1 - options.alpha:.0%}"
    if budget is not None:
        meeting = [n for n in lat if not lat[n].p99_low_ms > budget]  # not shown to miss it
        if not meeting:
            status = "fail"
            findings.append(
                Finding(
                    "over_latency_budget",
                    f"no backend meets the {budget:g} ms budget at p99 (best: {best_name} p99 {best.p99_ms:.2f} ms, {conf} lower bound {best.p99_low_ms:.2f} ms)",
                )
            )
        elif eager_stats.p99_low_ms > budget:
            status = "warn"
            best_name = min(meeting, key=lambda n: lat[n].p99_ms)
            best = lat[best_name]
            findings.append(
                Finding(
                    "eager_over_budget",
                    f"eager p99 {eager_stats.p99_ms:.2f} ms misses the {budget:g} ms budget ({conf} lower bound {eager_stats.p99_low_ms:.2f} ms); {best_name} is not shown to exceed it (p99 {best.p99_ms:.2f} ms)",
                )
            )
    return status, findings, best_name


def _summary(lat: dict[str, LatencyStats], options: RealtimeOptions, status: Status, best_name: str) -> str:
    eager_stats = lat["eager fp32"]
    best = lat[best_name]
    budget = options.latency_budget_ms
    conf = f"{1 - options.alpha:.0%}"
    base = f"Batch-1 latency p50/p95/p99: eager {eager_stats.p50_ms:.2f}/{eager_stats.p95_ms:.2f}/{eager_stats.p99_ms:.2f} ms; fastest tail {best_name} {best.p50_ms:.2f}/{best.p95_ms:.2f}/{best.p99_ms:.2f} ms."
    if eager_stats.preempted_share > 0:
        base += f" {eager_stats.preempted_share:.1%} of eager calls were preempted by other threads or processes{' and are left out' if 'excluded' in eager_stats.method else ''} (p99 of all calls {eager_stats.p99_all_ms:.2f} ms)."
    if budget is None:
        return base + " No latency budget given (--option compute.realtime.latency_budget_ms=…)."
    return (
        base
        + f" Budget {budget:g} ms at p99: {'eager is not shown to exceed it' if status == 'ok' else ('only ' + best_name + ' is not shown to exceed it' if status == 'warn' else 'exceeded by every backend')} (the verdict uses the {conf} lower bound of each p99)."
    )


def _remedy(status: Status, best_name: str) -> Remedy | None:
    if status == "warn":
        return Remedy(
            command="dlclinic treat compute.realtime",
            description=f"ship the fastest verified variant ({best_name}) within the accuracy tolerance",
        )
    if status == "fail":
        return Remedy(
            command="dlclinic treat model.architecture",
            description="search a smaller architecture (depth/width) at equal accuracy; compression alone does not reach the budget",
        )
    return None


def _metrics(lat: dict[str, LatencyStats], tput: dict[str, ThroughputResult]) -> dict[str, float | int | bool | None]:
    metrics: dict[str, float | int | bool | None] = {}
    for name, s in lat.items():
        slug = name.replace(",", "").replace(" ", "_").replace(".", "_").lower()
        metrics[f"{slug}_p50_ms"] = s.p50_ms
        metrics[f"{slug}_p99_ms"] = s.p99_ms
        metrics[f"{slug}_p99_low_ms"] = s.p99_low_ms
        metrics[f"{slug}_p99_all_calls_ms"] = s.p99_all_ms
        metrics[f"{slug}_preempted_share"] = s.preempted_share
        metrics[f"{slug}_best_throughput"] = tput[name].best_throughput
    metrics["n_calls_per_backend"] = min(s.n_calls for s in lat.values())
    metrics.update({k: v for k, v in thread_settings().items()})
    return metrics


def _details(
    lat: dict[str, LatencyStats], tput: dict[str, ThroughputResult], backends: _Backends, options: RealtimeOptions
) -> dict[str, Any]:
    rows: list[list[Any]] = [
        [
            n,
            round(s.p50_ms, 3),
            round(s.p95_ms, 3),
            round(s.p99_ms, 3),
            round(s.cold_ms, 2),
            s.n_calls,
            1 if n.endswith("1 thread") else s.threads,
            tput[n].best_batch_size,
            round(tput[n].best_throughput, 1),
        ]
        for n, s in lat.items()
    ]
    rows += [[n, None, None, None, None, 0, None, None, f"skipped: {why}"] for n, why in backends.skipped.items()]
    columns = ["backend", "p50 ms", "p95 ms", "p99 ms", "cold ms", "calls", "threads", "best batch", "samples/s"]
    return {
        "method": PERCENTILE_METHOD
        + f"; warm-up 10 calls per backend; backends interleaved round-robin, one untimed call per backend and round; calls preempted by other processes left out while at least half remain; budget verdict on the p99's lower {1 - options.alpha:.0%} confidence bound (order statistic); threads {thread_settings()}",
        "skipped": backends.skipped,
        "notes": backends.notes,
        "plots": [
            {
                "kind": "bar",
                "title": "Batch-1 latency p99 by backend",
                "xlabel": "backend",
                "ylabel": "ms",
                "series": [
                    {"label": "p50", "x": list(lat), "y": [s.p50_ms for s in lat.values()]},
                    {"label": "p99", "x": list(lat), "y": [s.p99_ms for s in lat.values()]},
                ],
            },
            {
                "kind": "line",
                "title": "Throughput vs batch size",
                "xlabel": "batch size",
                "ylabel": "samples / s",
                "xscale": "log",
                "series": [{"label": n, "x": list(t.batch_sizes), "y": list(t.throughput)} for n, t in tput.items()],
            },
        ],
        "tables": [{"title": "Latency by backend (batch 1) and best throughput", "columns": columns, "rows": rows}],
    }


def run_realtime(case: Case, evidence: Evidence, options: RealtimeOptions) -> CheckResult:
    """Latency percentiles at batch 1 and best-batch throughput per backend."""
    cid = "compute.realtime"
    model = torch_model(case)
    if model is None:
        return needs_torch(cid)
    params = {"options": dataclasses.asdict(options), "machine": machine()}
    m = evidence.cached_json("compute.realtime.measured", params, lambda: _measure(case, evidence, options, model))
    lat = {name: LatencyStats(**v) for name, v in m["latency"].items()}
    tput = {
        name: ThroughputResult(**{**v, "batch_sizes": tuple(v["batch_sizes"]), "throughput": tuple(v["throughput"])})
        for name, v in m["throughput"].items()
    }
    backends = _Backends(dict.fromkeys(lat), m["skipped"], m["notes"])
    status, findings, best_name = _verdict(lat, options)
    return CheckResult(
        id=cid,
        status=status,
        summary=_summary(lat, options, status, best_name),
        metrics=_metrics(lat, tput),
        thresholds={"latency_budget_ms": options.latency_budget_ms, "alpha": options.alpha},
        findings=tuple(findings),
        remedy=_remedy(status, best_name),
        details=_details(lat, tput, backends, options),
    )


def treat_realtime(ctx: TreatContext, params: LatencyParams) -> TreatOutcome:
    """Meet the latency budget: the fastest compressed variant within the accuracy tolerance, verified and written."""
    return compress_and_verify(ctx, params)


CHECK = CheckSpec(
    id="compute.realtime",
    requires=(),
    options=RealtimeOptions,
    run=run_realtime,
    description="latency p50/p95/p99 at batch 1 and best-batch throughput for eager, ONNX Runtime fp32/int8 (and torch.compile), against a latency budget",
)
REMEDY = RemedySpec(
    id="compute.realtime",
    params=LatencyParams,
    run=treat_realtime,
    description="Meet the latency budget: the fastest variant and backend (eager, ONNX Runtime fp32/int8, pruned, distilled) within the accuracy tolerance, chosen and verified on disjoint test rows; compute.realtime is measured again on it.",
)
