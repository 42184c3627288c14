"""model.compression, compute.edge, compute.realtime — what the model costs to ship and run.

The three checks share one piece of work per model and data (kept in memory for the
process, so a checkup pays it once): the verified ONNX export of the user's model and
its int8 quantizations (ONNX Runtime dynamic, and static calibrated on train samples).

* ``model.compression`` — the sweep of :func:`dlclinic.functional.compression.compression_sweep`
  (ONNX int8, bf16, magnitude and channel pruning, a distilled narrower student): accuracy
  drop on test with a paired 95 % CI, size on disk, batch-1 latency, and the Pareto
  front. Warns when a variant at most half the size loses no more than
  ``max_accuracy_drop`` (upper CI end), i.e. the model ships uncompressed for nothing.
* ``compute.edge`` — sizes (fp32 / fp16 / int8), parameters, peak inference memory at batch
  1, ONNX operator support and ``.pt2`` exportability; a verdict against
  ``max_size_mb`` / ``max_memory_mb`` when given.
* ``compute.realtime`` — p50/p95/p99 at batch 1 (backends timed interleaved, after warm-up)
  and throughput at the best batch size, for eager, ONNX Runtime fp32/int8 and optionally
  ``torch.compile``; a verdict on the p99 against ``latency_budget_ms`` when given: a
  backend misses the budget when the lower 95 % confidence bound of its p99 exceeds it.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dlclinic.core.case import Case
from dlclinic.core.evidence import Evidence
from dlclinic.core.registry import CheckSpec
from dlclinic.core.results import CheckResult, Finding, Remedy, Status
from dlclinic.core.threads import on_threads

__all__ = ["COMPRESSION", "CompressionOptions", "EDGE", "EdgeOptions", "REALTIME", "RealtimeOptions"]

_MEMO: dict[str, Any] = {}
_DIRS: list[str] = []


def _cleanup() -> None:
    for d in _DIRS:
        shutil.rmtree(d, ignore_errors=True)


def _workdir() -> Path:
    if not _DIRS:
        atexit.register(_cleanup)
    d = tempfile.mkdtemp(prefix="dlclinic-compress-")
    _DIRS.append(d)
    return Path(d)


def _torch_model(case: Case) -> Any:
    model = case.model
    return model if hasattr(model, "state_dict") and callable(model) else None


def _eval_split(case: Case) -> tuple[str, np.ndarray, np.ndarray | None]:
    """``(name, x, y)`` of the split scored: labelled test, else train."""
    test = case.get("test")
    if test is not None and test.labelled:
        return "test", test.x, test.y
    return "train", case.train.x, case.train.y


def _key(evidence: Evidence, what: str, params: Any) -> str:
    fps = evidence.fingerprints()
    return f"{what}|{fps.get('model')}|{fps.get('data.train')}|{fps.get('data.test')}|{params!r}"


def _onnx_core(
    case: Case, evidence: Evidence, exporter: str, calibration_samples: int
) -> tuple[list[tuple[str, str, Path, str]], list[str]]:
    """The fp32 ONNX export and its int8 variants, built once per model/data in this process."""
    from dlclinic.functional.compression import SweepConfig, onnx_variants

    key = _key(evidence, "onnx", (exporter, calibration_samples))
    if key not in _MEMO:
        _, x, _ = _eval_split(case)
        with evidence.progress.step("ONNX export and int8 quantization", total=1) as advance:
            cfg = SweepConfig(exporter=exporter, calibration_samples=calibration_samples)
            _MEMO[key] = onnx_variants(_torch_model(case), case.train.x, x, _workdir(), cfg)
            advance(1)
    files, notes = _MEMO[key]
    return files, notes


def _needs_torch(cid: str) -> CheckResult:
    return CheckResult(
        id=cid,
        status="not_examined",
        summary="Needs a PyTorch model (file.py:factory or .pt2); an ONNX model is already exported and cannot be re-quantized or pruned here.",
    )


def _missing_onnx(cid: str) -> CheckResult | None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return CheckResult(
            id=cid, status="not_examined", summary="Needs onnx and onnxruntime: pip install 'dlclinic[onnx]'."
        )
    return None


# --------------------------------------------------------------------------- model.compression


@dataclass(frozen=True)
class CompressionOptions:
    """What the sweep tries and when a compressed variant counts as a free win.

    Warn when a variant at most ``size_ratio`` of the original size keeps the accuracy
    drop's upper 95 % CI end within ``max_accuracy_drop`` (a paired CI on the same test
    rows; the false-alarm rate of "within tolerance" is ≤ 2.5 % per variant). Pruning
    and the student are measured without fine-tuning beyond ``distill_seconds``; the
    remedy (``dlclinic treat model.compression``) fine-tunes and verifies.
    """

    max_accuracy_drop: float = 0.01
    size_ratio: float = 0.5
    sparsities: tuple[float, ...] = (0.5, 0.9)
    keep_ratios: tuple[float, ...] = (0.5,)
    distill_seconds: float = 2.0
    distill_epochs: int = 2
    calibration_samples: int = 128
    exporter: str = "torchscript"
    bf16: bool = True
    threads: int | None = 1


def _sweep(case: Case, evidence: Evidence, o: CompressionOptions) -> Any:
    from dlclinic.functional.compression import SweepConfig, compression_sweep

    key = _key(evidence, "sweep", o)
    if key in _MEMO:
        return _MEMO[key]
    prebuilt = (
        _onnx_core(case, evidence, o.exporter, o.calibration_samples)
        if _missing_onnx("model.compression") is None
        else ([], ["onnx/onnxruntime not installed: no ONNX Runtime variants"])
    )
    cfg = SweepConfig(
        onnx=True,
        exporter=o.exporter,
        calibration_samples=o.calibration_samples,
        bf16=o.bf16,
        sparsities=tuple(o.sparsities),
        keep_ratios=tuple(o.keep_ratios),
        distill_keep_ratio=0.5 if o.distill_epochs > 0 else None,
        distill_epochs=o.distill_epochs,
        distill_seconds=o.distill_seconds,
    )
    _, x, y = _eval_split(case)
    with evidence.progress.step("compression sweep", total=1) as advance:
        sweep = compression_sweep(
            _torch_model(case), case.train.x, case.train.y, x, np.asarray(y), _workdir(), cfg, prebuilt=prebuilt
        )
        advance(1)
    _MEMO[key] = sweep
    return sweep


def run_compression(case: Case, evidence: Evidence, options: CompressionOptions) -> CheckResult:
    """Run the check with torch on ``options.threads`` threads."""
    return on_threads(_run_compression, case, evidence, options)


def _run_compression(case: Case, evidence: Evidence, options: CompressionOptions) -> CheckResult:
    """Measure every compressed variant of the model and find the Pareto front."""
    from dlclinic.functional.compression import choose_variant, pareto_front

    cid = "model.compression"
    if _torch_model(case) is None:
        return _needs_torch(cid)
    split, _, y = _eval_split(case)
    if y is None:
        return CheckResult(
            id=cid,
            status="not_examined",
            summary="Needs labelled data (a labelled test split) to measure the accuracy of compressed variants.",
        )
    sweep = _sweep(case, evidence, options)
    variants = list(sweep.variants)
    base = variants[0]
    sizes = [v.size_bytes for v in variants]
    accs = [v.accuracy for v in variants]
    front = pareto_front(sizes, accs)
    best_small = choose_variant(
        [v for v in variants if v.size_bytes <= options.size_ratio * base.size_bytes], options.max_accuracy_drop
    )
    fastest = choose_variant(variants, options.max_accuracy_drop, objective="latency")
    status: Status = "warn" if best_small is not None else "ok"
    findings: list[Finding] = []
    if best_small is not None:
        findings.append(
            Finding(
                "free_compression",
                f"{best_small.name}: {best_small.size_bytes / 1e6:.2f} MB vs {base.size_bytes / 1e6:.2f} MB ({best_small.size_bytes / base.size_bytes:.0%}), accuracy drop {best_small.drop:+.1%} (95% CI up to {best_small.drop_high:+.1%}), batch-1 p50 {best_small.p50_ms:.2f} ms vs {base.p50_ms:.2f} ms",
                extra={"variant": best_small.name},
            )
        )
    for v in variants:
        if v.kind in ("magnitude-pruning", "channel-pruning") and v.drop_low > options.max_accuracy_drop:
            findings.append(
                Finding(
                    "lossy_variant",
                    f"{v.name} loses {v.drop:.1%} accuracy (95% CI {v.drop_low:.1%}..{v.drop_high:.1%}) without fine-tuning",
                    extra={"variant": v.name},
                )
            )
    if best_small is not None:
        summary = f"{best_small.name} is {best_small.size_bytes / base.size_bytes:.0%} of the size with an accuracy drop of {best_small.drop:+.1%} (CI up to {best_small.drop_high:+.1%}, tolerance {options.max_accuracy_drop:.1%}): the model ships larger than it needs to."
    else:
        summary = f"No variant at ≤ {options.size_ratio:.0%} of the size stays within {options.max_accuracy_drop:.1%} accuracy drop on {split} ({len(variants) - 1} variants tried); the model is not trivially compressible."
    metrics: dict[str, float | int | bool | None] = {
        "original_accuracy": base.accuracy,
        "original_size_mb": base.size_bytes / 1e6,
        "original_p50_ms": base.p50_ms,
        "n_variants": len(variants) - 1,
        "best_size_ratio_within_tolerance": (best_small.size_bytes / base.size_bytes) if best_small else None,
        "best_drop_within_tolerance": best_small.drop if best_small else None,
        "fastest_within_tolerance_p50_ms": fastest.p50_ms if fastest else None,
    }
    for v in variants[1:]:
        slug = v.kind.replace("-", "_")
        if v.kind in ("onnx-int8-static", "onnx-int8-dynamic", "onnx-fp32", "bf16", "distillation"):
            metrics[f"{slug}_drop"] = v.drop
            metrics[f"{slug}_size_mb"] = v.size_bytes / 1e6
            metrics[f"{slug}_p50_ms"] = v.p50_ms
    int8 = next((v for v in variants if v.kind == "onnx-int8-static"), None)
    if int8 is not None:
        metrics["int8_static_speedup_vs_eager"] = base.p50_ms / int8.p50_ms if int8.p50_ms > 0 else None
    rows = [
        [
            v.name,
            round(v.accuracy, 4),
            round(v.drop, 4),
            f"{v.drop_low:+.3f}..{v.drop_high:+.3f}",
            round(v.size_bytes / 1e6, 4),
            round(v.deflate_bytes / 1e6, 4),
            v.n_params,
            v.n_nonzero,
            round(v.p50_ms, 3),
            round(v.p99_ms, 3),
            "yes" if i in front else "",
            v.note,
        ]
        for i, v in enumerate(variants)
    ]
    remedy = Remedy(
        command=f"dlclinic treat model.compression --option max_accuracy_drop={options.max_accuracy_drop}",
        description="write the smallest (or fastest) variant within the accuracy tolerance, fine-tuning pruned/distilled students, with its verified accuracy, size and latency",
    )
    return CheckResult(
        id=cid,
        status=status,
        summary=summary,
        metrics=metrics,
        thresholds={"max_accuracy_drop": options.max_accuracy_drop, "size_ratio": options.size_ratio},
        findings=tuple(findings),
        remedy=remedy,
        details={
            "notes": list(sweep.notes),
            "plots": [
                {
                    "kind": "scatter",
                    "title": f"Accuracy vs size ({split}); line = Pareto front",
                    "xlabel": "size on disk (MB)",
                    "ylabel": "accuracy",
                    "xscale": "log",
                    "series": [
                        {
                            "label": "variants",
                            "x": [s / 1e6 for s in sizes],
                            "y": accs,
                            "text": [v.name for v in variants],
                        },
                        {
                            "label": "Pareto front",
                            "x": [sizes[i] / 1e6 for i in front],
                            "y": [accs[i] for i in front],
                            "line": True,
                        },
                    ],
                },
                {
                    "kind": "scatter",
                    "title": "Accuracy vs batch-1 latency (p50)",
                    "xlabel": "latency (ms)",
                    "ylabel": "accuracy",
                    "xscale": "log",
                    "series": [
                        {
                            "label": "variants",
                            "x": [v.p50_ms for v in variants],
                            "y": accs,
                            "text": [v.name for v in variants],
                        }
                    ],
                },
            ],
            "tables": [
                {
                    "title": "Compressed variants",
                    "columns": [
                        "variant",
                        "accuracy",
                        "drop",
                        "drop 95% CI",
                        "size MB",
                        "deflated MB",
                        "params",
                        "non-zero",
                        "p50 ms",
                        "p99 ms",
                        "Pareto",
                        "how",
                    ],
                    "rows": rows,
                }
            ],
        },
    )


# --------------------------------------------------------------------------- compute.edge


@dataclass(frozen=True)
class EdgeOptions:
    """The device budget (``None`` = report only). The verdict uses the smallest verified artifact."""

    max_size_mb: float | None = None
    max_memory_mb: float | None = None
    exporter: str = "torchscript"
    calibration_samples: int = 128
    threads: int | None = 1


def _onnx_ops(path: Path) -> tuple[list[str], list[str]]:
    """``(op types, non-standard op types)`` of an ONNX graph (standard = in the ONNX default domain schema)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    ops = sorted({n.op_type for n in graph.graph.node})
    odd = sorted(
        {
            f"{n.domain}::{n.op_type}"
            for n in graph.graph.node
            if n.domain not in ("", "ai.onnx") or not onnx.defs.has(n.op_type)
        }
    )
    return ops, odd


def run_edge(case: Case, evidence: Evidence, options: EdgeOptions) -> CheckResult:
    """Run the check with torch on ``options.threads`` threads."""
    return on_threads(_run_edge, case, evidence, options)


def _run_edge(case: Case, evidence: Evidence, options: EdgeOptions) -> CheckResult:
    """Size, memory and exportability of the model, against a device budget."""
    import torch

    from dlclinic.export import export_pt2
    from dlclinic.functional.compression import parameter_count, state_dict_bytes
    from dlclinic.functional.latency import peak_inference_memory

    cid = "compute.edge"
    model = _torch_model(case)
    if model is None:
        return _needs_torch(cid)
    missing = _missing_onnx(cid)
    if missing is not None:
        return missing
    _, x, _ = _eval_split(case)
    files, notes = _onnx_core(case, evidence, options.exporter, options.calibration_samples)
    fp32_bytes = len(state_dict_bytes(model))
    import copy

    fp16_bytes = len(state_dict_bytes(copy.deepcopy(model).to(torch.float16)))
    n_params = parameter_count(model)
    mem = peak_inference_memory(model, np.ascontiguousarray(x[:1]))
    sizes = {name: path.stat().st_size for name, _, path, _ in files}
    int8_bytes = min((s for n, s in sizes.items() if "int8" in n), default=None)
    ops, odd = _onnx_ops(files[0][2]) if files else ([], [])
    key = _key(evidence, "pt2", None)
    if key not in _MEMO:
        try:
            _MEMO[key] = export_pt2(model, x[:64], _workdir() / "model.pt2")
        except Exception as exc:
            from dlclinic.core.errors import brief

            _MEMO[key] = brief(exc)
    pt2 = _MEMO[key]
    onnx_ok = bool(files) and not odd
    smallest = min([fp32_bytes, fp16_bytes] + ([int8_bytes] if int8_bytes else []))
    statuses: list[Status] = []
    findings: list[Finding] = []
    if not files:
        statuses.append("warn")
        findings.append(Finding("onnx_export_failed", "; ".join(notes) or "ONNX export failed"))
    elif odd:
        statuses.append("warn")
        findings.append(
            Finding(
                "nonstandard_ops",
                f"the ONNX graph uses operators outside the ONNX standard: {', '.join(odd)}; edge runtimes may not run them",
            )
        )
    if isinstance(pt2, str):
        statuses.append("warn")
        findings.append(Finding("pt2_export_failed", f"torch.export failed: {pt2}"))
    size_verdict = None
    if options.max_size_mb is not None:
        budget = options.max_size_mb * 1e6
        if smallest > budget:
            statuses.append("fail")
            size_verdict = "fail"
            findings.append(
                Finding(
                    "over_size_budget",
                    f"even the smallest artifact ({smallest / 1e6:.2f} MB) exceeds the {options.max_size_mb:g} MB budget; a narrower model (distillation/structured pruning) is needed",
                )
            )
        elif fp32_bytes > budget:
            statuses.append("warn")
            size_verdict = "warn"
            findings.append(
                Finding(
                    "fp32_over_size_budget",
                    f"the fp32 weights ({fp32_bytes / 1e6:.2f} MB) exceed the {options.max_size_mb:g} MB budget; the int8/fp16 artifact ({smallest / 1e6:.2f} MB) fits",
                )
            )
        else:
            size_verdict = "ok"
    mem_verdict = None
    if options.max_memory_mb is not None:
        if mem["peak_bytes"] > options.max_memory_mb * 1e6:
            statuses.append("fail")
            mem_verdict = "fail"
            findings.append(
                Finding(
                    "over_memory_budget",
                    f"peak inference memory at batch 1 is {mem['peak_bytes'] / 1e6:.2f} MB (weights {mem['weights_bytes'] / 1e6:.2f} MB + activations {mem['activations_peak_bytes'] / 1e6:.2f} MB) > {options.max_memory_mb:g} MB",
                )
            )
        else:
            mem_verdict = "ok"
    from dlclinic.core.results import worst

    status = worst(statuses) if statuses else "ok"
    budget_text = []
    if options.max_size_mb is not None:
        budget_text.append(f"size budget {options.max_size_mb:g} MB: {size_verdict}")
    if options.max_memory_mb is not None:
        budget_text.append(f"memory budget {options.max_memory_mb:g} MB: {mem_verdict}")
    summary = (
        f"{n_params:,} parameters; weights {fp32_bytes / 1e6:.2f} MB fp32, {fp16_bytes / 1e6:.2f} MB fp16"
        + (f", {int8_bytes / 1e6:.2f} MB int8 ONNX" if int8_bytes else "")
        + f"; peak inference memory {mem['peak_bytes'] / 1e6:.2f} MB at batch 1; ONNX {'exports with standard operators' if onnx_ok else 'export has problems'}, .pt2 {'exports' if not isinstance(pt2, str) else 'fails'}."
        + (
            " " + "; ".join(budget_text) + "."
            if budget_text
            else " No device budget given (--option compute.edge.max_size_mb=…, max_memory_mb=…)."
        )
    )
    remedy = None
    if status in ("warn", "fail"):
        remedy = Remedy(
            command="dlclinic treat compute.edge --option max_accuracy_drop=0.01",
            description="write the smallest verified variant (int8 ONNX, pruned or distilled) within the accuracy tolerance",
        )
    rows = [
        ["weights fp32 (safetensors)", round(fp32_bytes / 1e6, 4), ""],
        ["weights fp16 (safetensors)", round(fp16_bytes / 1e6, 4), ""],
    ]
    rows += [[name, round(sizes[name] / 1e6, 4), note] for name, _, _, note in files]
    if not isinstance(pt2, str):
        rows.append(
            [
                ".pt2 (torch.export)",
                round(pt2.size_bytes / 1e6, 4),
                f"max |logit diff| {pt2.max_abs_logit_diff:.1e}, argmax agreement {pt2.argmax_agreement:.1%}",
            ]
        )
    return CheckResult(
        id=cid,
        status=status,
        summary=summary,
        metrics={
            "n_params": n_params,
            "size_fp32_mb": fp32_bytes / 1e6,
            "size_fp16_mb": fp16_bytes / 1e6,
            "size_int8_mb": int8_bytes / 1e6 if int8_bytes else None,
            "size_onnx_fp32_mb": sizes.get("onnx fp32", 0) / 1e6 if files else None,
            "peak_memory_mb": mem["peak_bytes"] / 1e6,
            "weights_memory_mb": mem["weights_bytes"] / 1e6,
            "activations_peak_mb": mem["activations_peak_bytes"] / 1e6,
            "onnx_exportable": bool(files),
            "onnx_nonstandard_ops": len(odd),
            "pt2_exportable": not isinstance(pt2, str),
        },
        thresholds={"max_size_mb": options.max_size_mb, "max_memory_mb": options.max_memory_mb},
        findings=tuple(findings),
        remedy=remedy,
        details={
            "notes": notes
            + [
                "peak memory: weights + peak live activations of one batch-1 forward pass (PyTorch profiler, profile_memory)"
            ],
            "tables": [
                {"title": "Artifacts on disk", "columns": ["artifact", "MB", "verification"], "rows": rows},
                {
                    "title": "ONNX operators",
                    "columns": ["operator", "standard"],
                    "rows": [[op, "no" if any(o.endswith("::" + op) for o in odd) else "yes"] for op in ops],
                },
            ],
        },
    )


# --------------------------------------------------------------------------- compute.realtime


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


def run_realtime(case: Case, evidence: Evidence, options: RealtimeOptions) -> CheckResult:
    """Latency percentiles at batch 1 and best-batch throughput per backend."""
    from dlclinic.functional.latency import (
        PERCENTILE_METHOD,
        compiled_runner,
        measure_interleaved,
        measure_throughput,
        onnx_runner,
        thread_settings,
        torch_runner,
    )

    cid = "compute.realtime"
    model = _torch_model(case)
    if model is None:
        return _needs_torch(cid)
    _, x, _ = _eval_split(case)
    x = np.ascontiguousarray(x[: max(options.batch_sizes)])
    runners: dict[str, Any] = {"eager fp32": torch_runner(model)}
    if thread_settings().get("torch_intra_op_threads", 1) > 1:
        from dlclinic.core.threads import torch_threads

        eager = runners["eager fp32"]

        def one_thread(batch: np.ndarray) -> Any:
            with torch_threads(1):
                return eager(batch)

        runners["eager fp32, 1 thread"] = one_thread
    skipped: dict[str, str] = {}
    notes: list[str] = []
    if _missing_onnx(cid) is None:
        files, notes = _onnx_core(case, evidence, options.exporter, options.calibration_samples)
        threads = 1
        for name, kind, path, _ in files:
            if kind == "onnx-int8-dynamic" and any(k == "onnx-int8-static" for _, k, _, _ in files):
                continue  # static int8 is the one meant for speed; dynamic is measured by model.compression
            run, threads = onnx_runner(path)
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
    base = f"Batch-1 latency p50/p95/p99: eager {eager_stats.p50_ms:.2f}/{eager_stats.p95_ms:.2f}/{eager_stats.p99_ms:.2f} ms; fastest tail {best_name} {best.p50_ms:.2f}/{best.p95_ms:.2f}/{best.p99_ms:.2f} ms."
    if eager_stats.preempted_share > 0:
        base += f" {eager_stats.preempted_share:.1%} of eager calls were preempted by other threads or processes{' and are left out' if 'excluded' in eager_stats.method else ''} (p99 of all calls {eager_stats.p99_all_ms:.2f} ms)."
    if budget is None:
        summary = base + " No latency budget given (--option compute.realtime.latency_budget_ms=…)."
    else:
        summary = (
            base
            + f" Budget {budget:g} ms at p99: {'eager is not shown to exceed it' if status == 'ok' else ('only ' + best_name + ' is not shown to exceed it' if status == 'warn' else 'exceeded by every backend')} (the verdict uses the {conf} lower bound of each p99)."
        )
    remedy = None
    if status == "warn":
        remedy = Remedy(
            command="dlclinic treat compute.realtime",
            description=f"ship the fastest verified variant ({best_name}) within the accuracy tolerance",
        )
    elif status == "fail":
        remedy = Remedy(
            command="dlclinic treat model.architecture",
            description="search a smaller architecture (depth/width) at equal accuracy; compression alone does not reach the budget",
        )
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
    rows = [
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
    rows += [[n, None, None, None, None, 0, None, None, f"skipped: {why}"] for n, why in skipped.items()]
    return CheckResult(
        id=cid,
        status=status,
        summary=summary,
        metrics=metrics,
        thresholds={"latency_budget_ms": budget, "alpha": options.alpha},
        findings=tuple(findings),
        remedy=remedy,
        details={
            "method": PERCENTILE_METHOD
            + f"; warm-up 10 calls per backend; backends interleaved round-robin, one untimed call per backend and round; calls preempted by other processes left out while at least half remain; budget verdict on the p99's lower {1 - options.alpha:.0%} confidence bound (order statistic); threads {thread_settings()}",
            "skipped": skipped,
            "notes": notes,
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
                    "series": [
                        {"label": n, "x": list(t.batch_sizes), "y": list(t.throughput)} for n, t in tput.items()
                    ],
                },
            ],
            "tables": [
                {
                    "title": "Latency by backend (batch 1) and best throughput",
                    "columns": [
                        "backend",
                        "p50 ms",
                        "p95 ms",
                        "p99 ms",
                        "cold ms",
                        "calls",
                        "threads",
                        "best batch",
                        "samples/s",
                    ],
                    "rows": rows,
                }
            ],
        },
    )


COMPRESSION = CheckSpec(
    id="model.compression",
    requires=(),
    options=CompressionOptions,
    run=run_compression,
    description="ONNX Runtime int8 (dynamic/static), bf16, magnitude and channel pruning, distillation: accuracy/size/latency Pareto front",
)
EDGE = CheckSpec(
    id="compute.edge",
    requires=(),
    options=EdgeOptions,
    run=run_edge,
    description="size fp32/fp16/int8, parameters, peak inference memory, ONNX operators, .pt2 export, against a device budget",
)
REALTIME = CheckSpec(
    id="compute.realtime",
    requires=(),
    options=RealtimeOptions,
    run=run_realtime,
    description="latency p50/p95/p99 at batch 1 and best-batch throughput for eager, ONNX Runtime fp32/int8 (and torch.compile), against a latency budget",
)
