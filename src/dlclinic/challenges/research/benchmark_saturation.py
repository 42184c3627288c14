"""research.benchmark_saturation — is the test set still able to tell models apart?

The check gives bootstrap intervals of the headline metrics, an optional McNemar / paired
bootstrap comparison with another model, weak slices of the test set (Fisher's exact test
per candidate slice, Benjamini–Hochberg FDR control) and a saturation flag (too few errors
left to separate models). The remedy exports the weakest slice(s) as ``hard_slice.npz``
(a harder test file) and measures the model on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dlclinic.core.atomic import atomic_path
from dlclinic.core.case import Case, usable_inputs
from dlclinic.core.errors import ConfigError, InputError
from dlclinic.core.evidence import Evidence
from dlclinic.core.inference import predict_logits
from dlclinic.core.registry import CheckSpec, RemedySpec, TreatContext, TreatOutcome, conclude
from dlclinic.core.results import CheckResult, Finding, Remedy
from dlclinic.functional.slices import Slice, find_weak_slices
from dlclinic.functional.stats import bootstrap_metrics, compare_predictions
from dlclinic.io import load_model

__all__ = ["CHECK", "REMEDY", "BenchmarkOptions", "BenchmarkParams", "run_benchmark", "treat_benchmark"]

CID = "research.benchmark_saturation"
Metrics = dict[str, float | int | bool | None]


@dataclass(frozen=True)
class BenchmarkOptions:
    """Intervals, model comparison and weak slices.

    ``compare``: another model to compare on the test split — a ``.npy``/``.npz`` of its
    test predictions (class ids, or N×K probabilities/logits), a ``.pt2``/``.onnx`` file,
    ``file.py:factory`` (with ``compare_weights``), or (Python API) a model object or
    prediction array. Slices: candidates from k-means on test embeddings (or feature
    values for tables), Fisher's exact test per candidate, Benjamini–Hochberg at ``fdr``;
    reported when also ``min_slice_gap`` below the rest. With no truly weaker slice, BH at
    ``fdr`` is a family-wise test, so a warning's false-alarm level is ``fdr`` (2 %, inside
    the check's stated 5 %: at BH 5 % a 150-seed table run measured 8/150 = 5.3 %). ``saturated_accuracy``: a lower
    confidence bound of accuracy above it means the test set has too few errors left to
    separate models.
    """

    alpha: float = 0.05
    n_boot: int = 1000
    compare: Any = None
    compare_weights: str | None = None
    min_slice_size: int = 30
    min_slice_gap: float = 0.10
    fdr: float = 0.02
    cluster_sizes: tuple[int, ...] = (4, 8, 16)
    saturated_accuracy: float = 0.99

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1 or not 0 < self.fdr < 1:
            raise ValueError(f"expected 0 < alpha < 1 and 0 < fdr < 1, but got alpha={self.alpha}, fdr={self.fdr}")


def _labelled_test(case: Case) -> Any:
    test = case.get("test")
    return test if test is not None and test.labelled else None


def _metric_table(cis: dict[str, Any]) -> dict[str, Any]:
    return {
        "title": "Headline metrics on test with 95 % bootstrap intervals",
        "columns": ["metric", "value", "95 % CI", "n"],
        "rows": [[c.name, f"{c.value:.4f}", f"[{c.low:.4f}, {c.high:.4f}]", c.n] for c in cis.values()],
    }


# -- the comparison model ------------------------------------------------------------------------
def _load_prediction_file(text: str, path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"compare {text!r}: expected a predictions file, found no such file")
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    with np.load(path, allow_pickle=False) as data:
        key = next((k for k in ("preds", "pred", "y_pred", "probs", "logits") if k in data.files), None)
        if key is None:
            raise InputError(
                f"compare {text!r}: expected an array named preds, probs or logits, found {', '.join(data.files)}"
            )
        return data[key]


def _other_predictions(spec: Any, weights: str | None, x: np.ndarray, n: int) -> tuple[np.ndarray, str]:
    """Predicted classes of the comparison model on the test inputs."""
    if hasattr(spec, "shape") or isinstance(spec, (list, tuple)):
        arr = np.asarray(spec)
        label = "given predictions"
    elif hasattr(spec, "state_dict") or hasattr(spec, "predict_logits"):
        return predict_logits(spec, usable_inputs(x)).argmax(1), f"model {type(spec).__name__}"
    else:
        text = str(spec)
        path = Path(text)
        if path.suffix in (".npy", ".npz"):
            arr = _load_prediction_file(text, path)
            label = path.name
        else:
            model, source = load_model(text, weights=weights)
            return predict_logits(model, usable_inputs(x)).argmax(1), source
    arr = arr.argmax(1) if arr.ndim == 2 else arr.ravel()
    if len(arr) != n:
        raise InputError(f"compare: expected predictions for the {n} test rows, found {len(arr)}")
    return arr.astype(np.int64), label


def _compare(options: BenchmarkOptions, test: Any, pred: np.ndarray, metrics: Metrics, findings: list[Finding]) -> str:
    """Significance test against the comparison model; the sentence for the summary."""
    if options.compare is None:
        return ""
    y = test.y
    other, label = _other_predictions(options.compare, options.compare_weights, test.x, len(y))
    comp = compare_predictions(y, pred, other, alpha=options.alpha)
    metrics.update(
        compare_accuracy=comp.accuracy_b,
        accuracy_difference=comp.difference,
        difference_low=comp.difference_low,
        difference_high=comp.difference_high,
        mcnemar_p_exact=comp.mcnemar.p_exact,
        mcnemar_p_mid=comp.mcnemar.p_mid,
        significant=comp.significant,
    )
    findings.append(
        Finding(
            "comparison",
            f"this model vs {label}: {comp.verdict}",
            extra={
                "significant": comp.significant,
                "discordant_only_this": comp.mcnemar.b,
                "discordant_only_other": comp.mcnemar.c,
            },
        )
    )
    return f" Against {label}: {comp.verdict}."


# -- weak slices ---------------------------------------------------------------------------------
def _find_slices(
    case: Case, evidence: Evidence, correct: np.ndarray, table: bool, options: BenchmarkOptions
) -> tuple[list[Any], int]:
    test = case.splits["test"]
    if table:
        return find_weak_slices(
            correct,
            features=test.x.reshape(len(test), -1),
            feature_names=case.feature_names,
            min_size=options.min_slice_size,
            min_gap=options.min_slice_gap,
            fdr=options.fdr,
        )
    return find_weak_slices(
        correct,
        embeddings=evidence.get("embeddings", "test"),
        cluster_sizes=options.cluster_sizes,
        min_size=options.min_slice_size,
        min_gap=options.min_slice_gap,
        fdr=options.fdr,
    )


def _slices_to_arrays(slices: list[Any], tested: int) -> dict[str, np.ndarray]:
    """Weak slices as flat arrays, for the evidence cache."""
    sizes = np.array([s.size for s in slices], dtype=np.int64)
    return {
        "tested": np.array(tested),
        "description": np.array([s.description for s in slices] or [""]),
        "sizes": sizes,
        "rows": np.concatenate([s.rows for s in slices]).astype(np.int64) if slices else np.zeros(0, np.int64),
        "numbers": np.array(
            [[s.accuracy, s.rest_accuracy, s.low, s.high, s.p_value, s.q_value] for s in slices], dtype=np.float64
        ).reshape(-1, 6),
    }


def _slices_from_arrays(a: dict[str, np.ndarray]) -> tuple[list[Any], int]:
    out = []
    start = 0
    for i, size in enumerate(a["sizes"]):
        acc, rest, low, high, p, q = (float(v) for v in a["numbers"][i])
        out.append(Slice(str(a["description"][i]), a["rows"][start : start + int(size)], acc, rest, low, high, p, q))
        start += int(size)
    return out, int(a["tested"])


def _weak_slices(
    case: Case, evidence: Evidence, correct: np.ndarray, options: BenchmarkOptions
) -> tuple[list[Any], int, str]:
    """The weak slices (cached), how many candidates were tested, and where the candidates came from."""
    table = case.modality == "table" or not evidence.available("embeddings", "test")
    source = "feature-value slices" if table else "k-means clusters of test embeddings"
    slice_params = {
        "table": table,
        "sizes": list(options.cluster_sizes),
        "min_size": options.min_slice_size,
        "gap": options.min_slice_gap,
        "fdr": options.fdr,
    }
    stored = evidence.cached(
        "weak_slices", slice_params, lambda: _slices_to_arrays(*_find_slices(case, evidence, correct, table, options))
    )
    slices, tested = _slices_from_arrays(stored)
    return slices, tested, source


def _slice_findings(slices: list[Any]) -> list[Finding]:
    return [
        Finding(
            "weak_slice",
            f"{s.description}: accuracy {s.accuracy:.1%} (95 % CI {s.low:.1%}–{s.high:.1%}) on {s.size} rows vs {s.rest_accuracy:.1%} elsewhere (q = {s.q_value:.2g})",
            split="test",
            indices=tuple(int(i) for i in s.rows),
            extra={
                "size": s.size,
                "accuracy": s.accuracy,
                "rest_accuracy": s.rest_accuracy,
                "q_value": s.q_value,
            },
        )
        for s in slices[:5]
    ]


def _slice_table(slices: list[Any], source: str, fdr: float) -> dict[str, Any]:
    return {
        "title": f"Weak slices ({source}, Fisher exact test, BH q < {fdr})",
        "columns": ["slice", "rows", "accuracy", "95 % CI", "rest", "q"],
        "rows": [
            [
                s.description,
                s.size,
                f"{s.accuracy:.3f}",
                f"[{s.low:.3f}, {s.high:.3f}]",
                f"{s.rest_accuracy:.3f}",
                f"{s.q_value:.2g}",
            ]
            for s in slices
        ],
    }


def _slice_plots(slices: list[Any]) -> list[dict[str, Any]]:
    if not slices:
        return []
    return [
        {
            "kind": "bar",
            "title": "Accuracy of the weak slices vs the rest",
            "xlabel": "slice",
            "ylabel": "accuracy",
            "series": [
                {"label": "slice", "x": [s.description for s in slices[:8]], "y": [s.accuracy for s in slices[:8]]},
                {
                    "label": "rest",
                    "x": [s.description for s in slices[:8]],
                    "y": [s.rest_accuracy for s in slices[:8]],
                },
            ],
        }
    ]


# -- the check -----------------------------------------------------------------------------------
def _summary(cis: dict[str, Any], slices: list[Any], tested: int, options: BenchmarkOptions, comparison: str) -> str:
    acc = cis["accuracy"]
    summary = f"Test accuracy {acc.value:.1%} (95 % CI {acc.low:.1%}–{acc.high:.1%}), macro-F1 {cis['macro_f1'].value:.3f} ({cis['macro_f1'].low:.3f}–{cis['macro_f1'].high:.3f})."
    if slices:
        w = slices[0]
        summary += f" {len(slices)} weak slice(s) among {tested} tested; worst: {w.size} rows at {w.accuracy:.1%} vs {w.rest_accuracy:.1%} elsewhere (q = {w.q_value:.2g})."
    else:
        summary += f" No slice of {tested} tested is significantly weaker (BH q < {options.fdr}, gap ≥ {options.min_slice_gap:.0%})."
    return summary + comparison


def _saturation(
    cis: dict[str, Any], correct: np.ndarray, options: BenchmarkOptions, metrics: Metrics, findings: list[Finding]
) -> bool:
    saturated = cis["accuracy"].low > options.saturated_accuracy
    metrics["saturated"] = saturated
    if saturated:
        findings.append(
            Finding(
                "saturated",
                f"accuracy {cis['accuracy'].value:.2%} with lower bound {cis['accuracy'].low:.2%} > {options.saturated_accuracy:.0%}: {int((~correct).sum())} errors are left, too few to separate models — use a harder test set",
            )
        )
    return saturated


def run_benchmark(case: Case, evidence: Evidence, options: BenchmarkOptions) -> CheckResult:
    """Bootstrap intervals of the headline metrics, an optional significance test against another model, weak slices."""
    test = _labelled_test(case)
    if test is None:
        return CheckResult(
            id=CID,
            status="not_examined",
            summary="Needs a labelled test split for intervals, comparisons and slices (pass --test).",
        )
    y = test.y
    pred = evidence.get("probs", "test").argmax(1)
    correct = pred == y
    cis = bootstrap_metrics(y, pred, n_classes=case.n_classes, n_boot=options.n_boot, alpha=options.alpha)
    metrics: Metrics = {"n_test": len(y)}
    for c in cis.values():
        metrics[c.name] = c.value
        metrics[f"{c.name}_low"] = c.low
        metrics[f"{c.name}_high"] = c.high
    findings: list[Finding] = []
    tables = [_metric_table(cis)]
    comparison_text = _compare(options, test, pred, metrics, findings)
    slices, tested, source = _weak_slices(case, evidence, correct, options)
    metrics["slices_tested"] = tested
    metrics["weak_slices"] = len(slices)
    if slices:
        w = slices[0]
        metrics.update(
            worst_slice_size=w.size,
            worst_slice_accuracy=w.accuracy,
            worst_slice_rest_accuracy=w.rest_accuracy,
            worst_slice_q_value=w.q_value,
        )
        findings.extend(_slice_findings(slices))
        tables.append(_slice_table(slices, source, options.fdr))
    saturated = _saturation(cis, correct, options, metrics, findings)
    remedy = (
        Remedy(
            command="dlclinic treat research.benchmark_saturation",
            description="export the weakest slice as a harder test file (hard_slice.npz) and report every comparison as significant / not significant",
        )
        if slices or saturated
        else None
    )
    return CheckResult(
        id=CID,
        status="warn" if slices or saturated else "ok",
        summary=_summary(cis, slices, tested, options, comparison_text),
        metrics=metrics,
        thresholds={
            "fdr": options.fdr,
            "min_slice_gap": options.min_slice_gap,
            "min_slice_size": options.min_slice_size,
            "alpha": options.alpha,
            "saturated_accuracy": options.saturated_accuracy,
        },
        findings=tuple(findings),
        remedy=remedy,
        details={"tables": tables, "plots": _slice_plots(slices)},
    )  # type: ignore[arg-type]


CHECK = CheckSpec(
    id=CID,
    requires=(("probs", "test"), ("embeddings", "test")),
    options=BenchmarkOptions,
    run=run_benchmark,
    description="bootstrap CIs of accuracy/macro-F1/balanced accuracy, McNemar + paired bootstrap vs another model, weak slices with FDR control",
)


# -- the remedy ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class BenchmarkParams:
    """``slices``: how many of the weakest slices to merge into the exported test file."""

    slices: int = 1


def _export(ctx: TreatContext, rows: np.ndarray) -> dict[str, str]:
    """Write the slice rows of the test split as ``hard_slice.npz`` (when there is an output folder)."""
    case = ctx.case
    test = case.splits["test"]
    artifacts: dict[str, str] = {}
    if ctx.out_dir is not None:
        path = ctx.out_dir / "hard_slice.npz"
        arrays = {"x": test.x[rows], "y": test.y[rows], "rows": rows, "class_names": np.array(case.class_names)}  # type: ignore[index]
        if test.groups is not None:
            arrays["group"] = test.groups[rows].astype(str)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]
        artifacts["hard_test_set"] = str(path)
    return artifacts


def _headline(metrics: Any) -> dict[str, Any]:
    return {
        "test_rows": int(metrics.get("n_test") or 0),
        "accuracy": metrics.get("accuracy"),
        "accuracy_low": metrics.get("accuracy_low"),
        "accuracy_high": metrics.get("accuracy_high"),
    }


def treat_benchmark(ctx: TreatContext, params: BenchmarkParams) -> TreatOutcome:
    """Export the weak slice(s) found by the check as a new test file and measure the model on it."""
    case = ctx.case
    before = ctx.measure(case)
    res = before[ctx.challenge_id]
    weak = [f for f in res.findings if f.code == "weak_slice"][: max(params.slices, 1)]
    if not weak:
        raise ConfigError(
            "treat research.benchmark_saturation: the check found no significantly weak slice to export (nothing to treat)"
        )
    rows = np.unique(np.concatenate([np.asarray(f.indices, dtype=np.int64) for f in weak]))
    artifacts = _export(ctx, rows)
    after = ctx.measure(case.with_split_rows("test", rows))
    return conclude(
        ctx,
        before=before,
        after=after,
        action=f"export {len(weak)} weak slice(s) ({len(rows)} test rows) as a harder test file",
        before_values=_headline(res.metrics),
        after_values=_headline(after[ctx.challenge_id].metrics),
        artifacts=artifacts,
        notes=(
            "the 'after' numbers are the same model on the hard slice: use it as an extra test set (dlclinic checkup --test hard_slice.npz) to compare models where they differ",
            "slices were chosen on this test set: estimates on the slice itself are optimistic about its hardness; confirm on fresh data",
        ),
    )


REMEDY = RemedySpec(
    id=CID,
    params=BenchmarkParams,
    run=treat_benchmark,
    description="Export the weakest test slice as hard_slice.npz and measure the model on it.",
)
