"""model.compression: is the model shipped larger (or slower) than it needs to be?

The check runs the compression sweep of :mod:`dlclinic.providers.compression_sweep` (ONNX
int8, eager int8 dynamic for LSTM/GRU models, bf16, magnitude and channel pruning, a
distilled narrower student): accuracy drop on
test with a paired 95 % CI, size on disk, batch-1 latency, and the Pareto front. It warns
when a variant at most half the size loses no more than ``max_accuracy_drop`` (upper CI
end), i.e. the model ships uncompressed for nothing.

The remedy writes the smallest (or fastest) variant within the accuracy tolerance, chosen
and verified on disjoint test rows (:mod:`dlclinic.providers.compression_remedy`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from dlclinic.core.case import Case
from dlclinic.core.evidence import Evidence, machine
from dlclinic.core.registry import CheckSpec, RemedySpec, TreatContext, TreatOutcome
from dlclinic.core.results import CheckResult, Finding, Remedy, Status
from dlclinic.core.threads import on_threads
from dlclinic.functional.compression import SweepConfig, Variant, choose_variant, pareto_front
from dlclinic.providers.compression_remedy import CompressParams, compress_and_verify
from dlclinic.providers.compression_sweep import eval_split, needs_torch, sweep_for, torch_model

__all__ = ["CHECK", "REMEDY", "CompressParams", "CompressionOptions", "run_compression", "treat_compression"]


@dataclass(frozen=True)
class CompressionOptions:
    """What the sweep tries and when a compressed variant counts as a free win.

    Warn when a variant at most ``size_ratio`` of the original size keeps the accuracy
    drop's upper 95 % CI end within ``max_accuracy_drop`` (a paired CI on the same test
    rows; the false-alarm rate of "within tolerance" is ≤ 2.5 % per variant). Pruning
    and the student are measured without fine-tuning beyond ``distill_seconds``; the
    remedy (``dlclinic treat model.compression``) fine-tunes and verifies.

    ``torch_int8_dynamic`` measures ``torch.ao.quantization.quantize_dynamic`` (LSTM/GRU
    and Linear weights int8, embeddings 8-bit per row) for models with a recurrent layer;
    the remedy ships the ONNX Runtime int8 file instead (the eager int8 module does not
    export).

    ``max_test_rows`` (0: all) scores the variants on a seeded sample of the test split: the
    paired CI of an accuracy drop needs a few thousand rows, not all of a large split, so
    the sweep costs the same at 10k and at 1M rows; the report says when it sampled.

    ``threads``: torch threads for scoring, pruning and distillation (``None``: the
    checkup's, which is one per process when checks run in several worker processes);
    ``latency_threads``: threads of the batch-1 timing, torch and onnxruntime alike (one by
    default: the p50 column is a one-core latency, comparable across machines and runs).
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
    torch_int8_dynamic: bool = True
    threads: int | None = None
    latency_threads: int | None = 1
    max_test_rows: int = 5000


def _sweep_config(o: CompressionOptions) -> SweepConfig:
    return SweepConfig(
        max_eval_rows=o.max_test_rows,
        onnx=True,
        exporter=o.exporter,
        torch_int8_dynamic=o.torch_int8_dynamic,
        calibration_samples=o.calibration_samples,
        bf16=o.bf16,
        sparsities=tuple(o.sparsities),
        keep_ratios=tuple(o.keep_ratios),
        distill_keep_ratio=0.5 if o.distill_epochs > 0 else None,
        distill_epochs=o.distill_epochs,
        distill_seconds=o.distill_seconds,
        latency_threads=o.latency_threads,
    )


def run_compression(case: Case, evidence: Evidence, options: CompressionOptions) -> CheckResult:
    """Run the check with torch on ``options.threads`` threads."""
    return on_threads(_run_compression, case, evidence, options)


def _measured_variants(case: Case, evidence: Evidence, cfg: SweepConfig) -> tuple[list[Variant], list[str]]:
    """The sweep's variants and notes, cached (sizes, accuracies, and latencies measured on this machine)."""

    def compute() -> dict[str, Any]:
        sweep = sweep_for(case, evidence, cfg)
        return {
            "variants": [{**dataclasses.asdict(v), "path": None} for v in sweep.variants],
            "notes": list(sweep.notes),
        }

    params = {"sweep": dataclasses.asdict(cfg), "machine": machine()}
    got = evidence.cached_json("model.compression.sweep", params, compute)
    return [Variant(**v) for v in got["variants"]], list(got["notes"])


def _findings(
    variants: list[Variant], base: Variant, best_small: Variant | None, options: CompressionOptions
) -> list[Finding]:
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
    return findings


_REPORTED_KINDS = ("onnx-int8-static", "onnx-int8-dynamic", "onnx-fp32", "torch-int8-dynamic", "bf16", "distillation")


def _metrics(
    variants: list[Variant], best_small: Variant | None, fastest: Variant | None
) -> dict[str, float | int | bool | None]:
    base = variants[0]
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
        if v.kind in _REPORTED_KINDS:
            metrics[f"{slug}_drop"] = v.drop
            metrics[f"{slug}_size_mb"] = v.size_bytes / 1e6
            metrics[f"{slug}_p50_ms"] = v.p50_ms
    int8 = next((v for v in variants if v.kind == "onnx-int8-static"), None)
    if int8 is not None:
        metrics["int8_static_speedup_vs_eager"] = base.p50_ms / int8.p50_ms if int8.p50_ms > 0 else None
    return metrics


def _plots(split: str, variants: list[Variant], front: list[int]) -> list[dict[str, Any]]:
    sizes = [v.size_bytes for v in variants]
    accs = [v.accuracy for v in variants]
    return [
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
    ]


def _table(variants: list[Variant], front: list[int]) -> dict[str, Any]:
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
    columns = ["variant", "accuracy", "drop", "drop 95% CI", "size MB", "deflated MB", "params", "non-zero"]
    columns += ["p50 ms", "p99 ms", "Pareto", "how"]
    return {"title": "Compressed variants", "columns": columns, "rows": rows}


def _run_compression(case: Case, evidence: Evidence, options: CompressionOptions) -> CheckResult:
    """Measure every compressed variant of the model and find the Pareto front."""
    cid = "model.compression"
    if torch_model(case) is None:
        return needs_torch(cid)
    split, _, y = eval_split(case)
    if y is None:
        return CheckResult(
            id=cid,
            status="not_examined",
            summary="Needs labelled data (a labelled test split) to measure the accuracy of compressed variants.",
        )
    variants, notes = _measured_variants(case, evidence, _sweep_config(options))
    base = variants[0]
    front = pareto_front([v.size_bytes for v in variants], [v.accuracy for v in variants])
    best_small = choose_variant(
        [v for v in variants if v.size_bytes <= options.size_ratio * base.size_bytes], options.max_accuracy_drop
    )
    fastest = choose_variant(variants, options.max_accuracy_drop, objective="latency")
    status: Status = "warn" if best_small is not None else "ok"
    if best_small is not None:
        summary = f"{best_small.name} is {best_small.size_bytes / base.size_bytes:.0%} of the size with an accuracy drop of {best_small.drop:+.1%} (CI up to {best_small.drop_high:+.1%}, tolerance {options.max_accuracy_drop:.1%}): the model ships larger than it needs to."
    else:
        summary = f"No variant at ≤ {options.size_ratio:.0%} of the size stays within {options.max_accuracy_drop:.1%} accuracy drop on {split} ({len(variants) - 1} variants tried); the model is not trivially compressible."
    remedy = Remedy(
        command=f"dlclinic treat model.compression --option max_accuracy_drop={options.max_accuracy_drop}",
        description="write the smallest (or fastest) variant within the accuracy tolerance, fine-tuning pruned/distilled students, with its verified accuracy, size and latency",
    )
    return CheckResult(
        id=cid,
        status=status,
        summary=summary,
        metrics=_metrics(variants, best_small, fastest),
        thresholds={"max_accuracy_drop": options.max_accuracy_drop, "size_ratio": options.size_ratio},
        findings=tuple(_findings(variants, base, best_small, options)),
        remedy=remedy,
        details={
            "notes": notes,
            "plots": _plots(split, variants, front),
            "tables": [_table(variants, front)],
        },
    )


def treat_compression(ctx: TreatContext, params: CompressParams) -> TreatOutcome:
    """Sweep, choose on half of test, verify on the other half, write the smallest (or fastest) variant."""
    return compress_and_verify(ctx, params)


CHECK = CheckSpec(
    id="model.compression",
    requires=(),
    options=CompressionOptions,
    run=run_compression,
    description="ONNX Runtime int8 (dynamic/static), eager int8 dynamic (LSTM/GRU), bf16, magnitude and channel pruning, distillation: accuracy/size/latency Pareto front",
)
REMEDY = RemedySpec(
    id="model.compression",
    params=CompressParams,
    run=treat_compression,
    description="Write the smallest (or fastest) compressed variant within the accuracy tolerance, chosen and verified on disjoint test rows.",
)
