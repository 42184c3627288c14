"""model.overfitting — train/test gap in accuracy and loss, and calibration (ECE)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dlclinic.checks._common import grade, worst
from dlclinic.core.case import Case
from dlclinic.core.errors import InputError
from dlclinic.core.evidence import Evidence
from dlclinic.core.registry import CheckSpec
from dlclinic.core.results import CheckResult, Finding, Remedy, Status
from dlclinic.functional.calibration import ece_calibrated_null, reliability_bins

__all__ = ["CHECK", "OverfittingOptions", "run"]


@dataclass(frozen=True)
class OverfittingOptions:
    """Gap and calibration thresholds.

    A gap only counts when it is also significant (z > ``z``); an ECE only counts when a
    perfectly calibrated model would show a smaller one with probability ≥ 1 − ``alpha``
    (consistency resampling), so small test sets do not raise false alarms.
    """

    warn_gap: float = 0.05
    fail_gap: float = 0.15
    warn_ece: float = 0.05
    fail_ece: float = 0.15
    z: float = 2.0
    alpha: float = 0.05
    bins: int = 15


def _gap_z(acc_a: float, n_a: int, acc_b: float, n_b: int) -> float:
    """z statistic of the difference of two independent proportions (unpooled SE)."""
    se = math.sqrt(max(acc_a * (1 - acc_a), 1e-12) / n_a + max(acc_b * (1 - acc_b), 1e-12) / n_b)
    return (acc_a - acc_b) / se


def run(case: Case, evidence: Evidence, options: OverfittingOptions) -> CheckResult:
    """Compare train and held-out accuracy/loss, and measure held-out calibration."""
    held = "test" if case.get("test") is not None and case.splits["test"].labelled else None
    if held is None:
        return CheckResult(id="model.overfitting", status="not_examined", summary="Needs a labelled test split to measure the generalization gap (pass --test).")
    train, test = case.train, case.splits[held]
    if train.y is None or test.y is None:  # pragma: no cover - guaranteed by Case and the check above
        raise InputError("model.overfitting needs labelled train and test splits")
    p_tr, p_te = evidence.get("probs", "train"), evidence.get("probs", held)
    acc_tr = float((p_tr.argmax(1) == train.y).mean())
    acc_te = float((p_te.argmax(1) == test.y).mean())
    loss_tr = float(evidence.get("losses", "train").mean())
    loss_te = float(evidence.get("losses", held).mean())
    gap = acc_tr - acc_te
    z = _gap_z(acc_tr, len(train), acc_te, len(test))
    rel = reliability_bins(p_te, test.y, options.bins)
    ece = rel.ece
    statuses: list[Status] = []
    gap_status = grade(gap, options.warn_gap, options.fail_gap) if z > options.z else "ok"
    statuses.append(gap_status)
    null = ece_calibrated_null(p_te, options.bins)
    ece_p = float((1 + np.sum(null >= ece)) / (1 + len(null)))
    # grade only what sampling noise cannot explain: a calibrated model shows ECE ≈ null on small test sets
    ece_status = grade(ece, options.warn_ece, options.fail_ece) if ece_p < options.alpha else "ok"
    statuses.append(ece_status)
    findings: list[Finding] = []
    if gap_status != "ok":
        findings.append(Finding("generalization_gap", f"train accuracy {acc_tr:.1%} vs test {acc_te:.1%}: gap {gap:+.1%} (z={z:.1f})"))
    if ece_status != "ok":
        mean_conf = float(p_te.max(1).mean())
        direction = "over-confident" if mean_conf > acc_te else "under-confident"
        findings.append(Finding("miscalibration", f"expected calibration error {ece:.3f} on test: the model is {direction} (mean confidence {mean_conf:.1%} vs accuracy {acc_te:.1%})"))
    status = worst(statuses)
    if status == "ok":
        summary = f"Train/test accuracy gap {gap:+.1%} and ECE {ece:.3f} are within limits."
    else:
        bits = []
        if gap_status != "ok":
            bits.append(f"train/test accuracy gap {gap:+.1%} ({acc_tr:.1%} vs {acc_te:.1%})")
        if ece_status != "ok":
            bits.append(f"ECE {ece:.3f} on test")
        summary = "Overfitting signs: " + "; ".join(bits) + "."
    remedy = None
    if status in ("warn", "fail"):
        remedy = Remedy(command=None, description="not built yet — early stopping with best-checkpoint restore, weight decay / dropout / label smoothing, temperature scaling for calibration (arrives with the training-diagnostics issue)")
    return CheckResult(
        id="model.overfitting",
        status=status,
        summary=summary,
        metrics={
            "train_accuracy": acc_tr,
            "test_accuracy": acc_te,
            "accuracy_gap": gap,
            "gap_z": z,
            "train_loss": loss_tr,
            "test_loss": loss_te,
            "loss_gap": loss_te - loss_tr,
            "ece": ece,
            "ece_if_calibrated_median": float(np.median(null)),
            "ece_p_value": ece_p,
        },
        thresholds={"accuracy_gap.warn": options.warn_gap, "accuracy_gap.fail": options.fail_gap, "gap_z.min": options.z, "ece_p_value.max": options.alpha, "ece.warn": options.warn_ece, "ece.fail": options.fail_ece},
        findings=tuple(findings),
        remedy=remedy,
        details={
            "plots": [
                {"kind": "reliability", "title": "Reliability diagram (test)", "xlabel": "confidence", "ylabel": "accuracy", "series": [{"label": "test", "x": rel.confidence.tolist(), "y": rel.accuracy.tolist(), "count": rel.count.tolist()}]},
                {"kind": "hist", "title": "Per-sample loss: train vs test", "xlabel": "cross-entropy", "ylabel": "density", "series": [{"label": "train", "values": np.clip(evidence.get("losses", "train"), 0, 10).tolist()}, {"label": "test", "values": np.clip(evidence.get("losses", held), 0, 10).tolist()}]},
            ]
        },
    )


CHECK = CheckSpec(
    id="model.overfitting",
    requires=(("probs", "train"), ("probs", "test"), ("losses", "train"), ("losses", "test")),
    options=OverfittingOptions,
    run=run,
    description="train/test gap (accuracy, loss) with a significance test, ECE and reliability diagram",
)
