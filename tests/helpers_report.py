"""A synthetic checkup report (all 31 challenges, every plot kind, thumbnails) for report tests."""

from __future__ import annotations

import dataclasses

import numpy as np

from dlclinic.core.case import Case
from dlclinic.core.results import CheckResult, Finding, Remedy, Report, Treatment, not_examined, sequence_of_results

HOSTILE = "<script>alert('x')</script>"


def synthetic_case(n: int = 60) -> Case:
    """A tiny image case: 1×16×16 gradients and checkerboards, 3 classes."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:16, 0:16].astype("float32")
    protos = np.stack([xx / 15, yy / 15, ((xx // 4 + yy // 4) % 2)])
    y = np.arange(n) % 3
    x = protos[y][:, None] + 0.1 * rng.standard_normal((n, 1, 16, 16)).astype("float32")
    return Case.from_arrays(
        (x, y), (x[:30], y[:30]), name="synthetic <digits>", class_names=["grad-x", "grad-y", "checker"]
    )


def synthetic_report(case: Case | None = None) -> Report:
    """All 31 results: ok, warn, fail and error examples with metrics, findings, plots and images."""
    case = case or synthetic_case()
    idx = tuple(range(0, 36, 3))
    results = [
        CheckResult(
            id="data.quality",
            status="fail",
            summary="12 of 60 training labels look wrong (20%); review or relabel them.",
            metrics={"label_issue_fraction": 0.2, "n_label_issues": 12, "duplicate_pairs": 2},
            thresholds={"max_label_issue_fraction": 0.05, "warn_label_issue_fraction": 0.02, "min_confidence": 0.5},
            findings=(
                Finding(
                    "label_issue",
                    "likely mislabelled",
                    split="train",
                    indices=idx,
                    scores=tuple(np.linspace(0.01, 0.3, len(idx)).tolist()),
                    extra={
                        "given": [case.class_names[int(case.train.y[i])] for i in idx],
                        "suggested": ["checker"] * len(idx),
                        "method": "confident learning",
                    },
                ),
                Finding("duplicate", "exact duplicates across train and test", split="test", indices=(1, 4)),
            ),
            remedy=Remedy(
                "dlclinic treat data.quality --case case.py --out out/", "Drop or relabel the flagged rows and retrain."
            ),
            details={
                "plots": [
                    {
                        "kind": "hist",
                        "title": "Label quality",
                        "xlabel": "score",
                        "ylabel": "density",
                        "series": [
                            {"label": "flagged", "values": np.linspace(0, 0.3, 12)},
                            {"label": "clean", "values": np.linspace(0.3, 1, 48)},
                        ],
                    }
                ],
                "images": [
                    {
                        "title": "Most suspicious rows",
                        "split": "train",
                        "indices": list(idx[:8]),
                        "captions": [f"#{i} given {case.class_names[int(case.train.y[i])]}" for i in idx[:8]],
                    }
                ],
                "tables": [
                    {
                        "title": "Per class",
                        "columns": ["class", "issues", "rate"],
                        "rows": [["grad-x", 4, 0.2], ["grad-y", 4, 0.2], ["checker", 4, 0.2]],
                    }
                ],
                "ignored_key": {"anything": 1},
            },
            seconds=1.234,
        ),
        CheckResult(
            id="data.generalization",
            status="ok",
            summary="Test accuracy is within 1 point of train accuracy.",
            metrics={"ece": 0.031, "test_accuracy": 0.94},
            thresholds={"max_ece": 0.1},
            details={
                "plots": [
                    {
                        "kind": "reliability",
                        "title": "Reliability",
                        "series": [
                            {
                                "label": "test",
                                "x": [0.15, 0.35, 0.55, 0.75, 0.95],
                                "y": [0.1, 0.3, 0.58, 0.77, 0.97],
                                "count": [3, 5, 8, 20, 60],
                            }
                        ],
                    }
                ]
            },
            seconds=0.2,
        ),
        CheckResult(
            id="compute.realtime",
            status="ok",
            summary="p95 latency is 3.1 ms per sample on cpu.",
            metrics={"p95_ms": 3.1, "throughput_per_s": 3200.0},
            thresholds={"p95_ms": 50.0},
            details={
                "plots": [
                    {
                        "kind": "bar",
                        "title": "Latency by batch size",
                        "xlabel": "batch",
                        "ylabel": "ms",
                        "series": [
                            {"label": "p50", "x": [1, 8, 64], "y": [1.2, 2.0, 9.5]},
                            {"label": "p95", "x": [1, 8, 64], "y": [3.1, 4.0, 12.0]},
                        ],
                    }
                ]
            },
            seconds=0.8,
        ),
        CheckResult(
            id="model.overfitting",
            status="warn",
            summary="Validation loss rises after epoch 6 while training loss keeps falling.",
            metrics={"gap": 0.09, "best_epoch": 6, "early_stopped": False, "ece": 0.12},
            thresholds={"gap": 0.05, "ece.warn": 0.05, "ece.fail": 0.15},
            remedy=Remedy("dlclinic treat model.overfitting --early-stopping", "Stop at the best validation epoch."),
            details={
                "plots": [
                    {
                        "kind": "line",
                        "title": "Loss",
                        "xlabel": "epoch",
                        "ylabel": "loss",
                        "series": [
                            {"label": "train", "x": list(range(12)), "y": [1 / (e + 1) for e in range(12)]},
                            {
                                "label": "val",
                                "x": list(range(12)),
                                "y": [0.9, 0.6, 0.45, 0.4, 0.38, 0.37, 0.38, 0.4, 0.43, 0.45, 0.5, 0.52],
                            },
                        ],
                    }
                ]
            },
            seconds=4.0,
        ),
        CheckResult(
            id="ethics.fairness",
            status="warn",
            summary="Accuracy differs by 12 points between groups.",
            metrics={"accuracy_gap": 0.12, "worst_group_accuracy": None},
            thresholds={"max_accuracy_gap": 0.05},
            remedy=Remedy("dlclinic treat ethics.fairness --reweight", "Reweight groups during training."),
            seconds=0.5,
        ),
        CheckResult(
            id="ethics.security",
            status="error",
            summary="The check crashed: RuntimeError('cuda out of memory').",
            seconds=0.1,
        ),
        CheckResult(
            id="deployment.drift",
            status="warn",
            summary=f"Deploy inputs drift from train {HOSTILE}.",
            metrics={"mmd": 0.4, "p_value": 0.001},
            thresholds={"p_value_min": 0.01},
            details={
                "plots": [
                    {"kind": "pie", "series": []},
                    {"kind": "line", "title": "empty", "series": []},
                    "nonsense",
                    {
                        "kind": "line",
                        "title": f"drift {HOSTILE}",
                        "series": [{"label": HOSTILE, "x": [0, 1], "y": [0.1, 0.4]}],
                    },
                ],
                "images": [{"title": "bad split", "split": "nope", "indices": [0]}],
                "tables": [{"title": HOSTILE, "columns": ["a"], "rows": [[HOSTILE]]}],
            },
            seconds=0.3,
        ),
    ]
    by_id = {r.id: r for r in results}
    challenges = tuple(
        by_id.get(c.id) or not_examined(c.id, "needs a training function (--fit)") for c in sequence_of_results(results)
    )
    case_info = dict(case.summary())
    case_info["model"] = {"source": "nn.Module SmallCNN", "parameters": 12345, "sha256": "ab" * 32}
    return Report(
        dlclinic_version="0.1.0",
        created="2024-05-01T12:00:00Z",
        case=case_info,
        challenges=challenges,
        environment={"python": "3.11.9", "torch": "2.3.1", "device": {"name": "cpu", "threads": 8}},
        treatments=(
            Treatment(
                "data.quality",
                "drop 12 flagged rows and retrain",
                before={"label_issue_fraction": 0.2, "test_accuracy": 0.91},
                after={"label_issue_fraction": 0.01, "test_accuracy": 0.95},
                before_status="fail",
                after_status="ok",
                artifacts={"clean_indices": "out/clean_indices.npy"},
                notes=("retrained for 10 epochs",),
            ),
        ),
        timings={"evidence": 2.5, "checks": 7.1},
    )


def quantity_result() -> CheckResult:
    """A data.quantity result as the check writes it: 22 metrics with long names, thresholds, wide tables."""
    metrics = {
        "train_size": 1437,
        "error_at_full_size": 0.04123,
        "power_law_a": 3.871234,
        "power_law_b": 0.6234,
        "irreducible_error": 1.234e-05,
        "fit_r2": 0.98765,
        "fit_rmse": 0.0023456,
        "predicted_error_at_2x": 0.0321,
        "gain_from_doubling": 0.009123,
        "gain_from_doubling_low": -0.00041234,
        "gain_from_doubling_high": 0.0154,
        "backtest_predicted_error": 0.0456,
        "backtest_abs_error": 0.00437,
        "backtest_tolerance": 0.0234,
        "backtest_ok": True,
        "gain_from_doubling_decisive": 0.009123,
        "target_accuracy": 0.97,
        "samples_for_target": 2874123,
        "target_reachable": True,
        "samples_for_target_low": 1234567,
        "samples_for_target_high": -123456789.5,
        "retrained_model": False,
    }
    return CheckResult(
        id="data.quantity",
        status="warn",
        summary="Doubling the 1,437 training samples is predicted to lower the error by 0.9%.",
        metrics=metrics,
        thresholds={
            "gain_from_doubling.warn": 0.01,
            "gain_from_doubling.fail": 0.05,
            "max_gain_from_doubling": 0.1,
            "min_gain_from_doubling": 1e-06,
            "target_accuracy": 0.97,
            "backtest_tolerance_multiplier_for_the_prediction_interval": 1.959963984540054,
        },
        findings=(
            Finding(
                "data_hungry_classes",
                "classes whose error falls fastest with more data",
                split="train",
                indices=(3, 8, 5),
                extra={
                    "error_at_smallest_fraction": [0.31, 0.22, 0.18],
                    "error_at_full_size_per_class": [0.09, 0.07, 0.05],
                    "training_samples_of_this_class": [143, 141, 139],
                    "predicted_samples_for_target_accuracy": [28741, 23412, 19999],
                },
            ),
        ),
        remedy=Remedy("dlclinic treat data.quantity", "labels to buy for target accuracies (labels_to_buy.json)"),
        details={
            "tables": [
                {
                    "title": "Labels to buy",
                    "columns": ["target_accuracy", "predicted_total_training_samples", "labels_to_buy_beyond_current"],
                    "rows": [[0.95, 2874123, 2872686], [0.97, 12345678, 12344241], [0.99, None, None]],
                }
            ]
        },
        seconds=12.5,
    )


def wide_report(case: Case | None = None) -> Report:
    """:func:`synthetic_report` with a data.quantity result whose metrics table is as wide as the real one."""
    report = synthetic_report(case)
    challenges = tuple(quantity_result() if r.id == "data.quantity" else r for r in report.challenges)
    return dataclasses.replace(report, challenges=challenges)
