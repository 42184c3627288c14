"""Per-window statistics of a deployment stream: prediction shift, confidence shift, accuracy.

* :func:`psi` — population stability index of the predicted-class distribution
  (an effect size; at small windows it is biased upwards, so dlclinic compares it with
  its own no-drift quantile from :func:`~dlclinic.monitoring.windows.alert_thresholds`
  rather than with the folklore 0.1/0.25 limits);
* :func:`chi2_shift` — χ² test of the predicted-class counts, window vs reference;
* :func:`confidence_shift` — two-sample Kolmogorov–Smirnov test of the top-1 confidence;
* :func:`estimate_accuracy_cbpe` — confidence-based performance estimation (CBPE): the
  expected accuracy of a window is the mean *calibrated* top-1 confidence. It needs a model
  calibrated on data like the deployment's (temperature scaling on the reference) and
  fails under concept shift (P(y|x) changes while confidences do not) and, partly, under
  strong covariate shift (calibration learnt in-distribution does not transfer: models are
  usually over-confident off-distribution, so CBPE *under*-states the drop). Where labels
  are fed back, :func:`observed_accuracy` gives the real figure.

These are short formulas on numpy arrays; they are written here rather than taken from
NannyML/Evidently (which bring pandas pipelines, plotting stacks and their own report
objects) so the same functions serve the checkup, the server's live gauges and the
``monitor`` command.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import chi2_contingency, ks_2samp, norm

__all__ = [
    "AccuracyEstimate",
    "chi2_shift",
    "class_counts",
    "confidence_shift",
    "estimate_accuracy_cbpe",
    "observed_accuracy",
    "psi",
]


def class_counts(pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts of each predicted class (length ``n_classes``)."""
    return np.bincount(np.asarray(pred, dtype=np.int64), minlength=n_classes)[:n_classes].astype(np.float64)


def psi(reference_counts: np.ndarray, counts: np.ndarray, *, eps: float = 1e-4) -> float:
    """Population stability index ``Σ (q − p) ln(q / p)`` of two count vectors.

    Proportions are floored at ``eps`` so empty classes stay finite.

    Example:
        >>> round(psi(np.array([50, 50]), np.array([50, 50])), 6)
        0.0
        >>> psi(np.array([50, 50]), np.array([90, 10])) > 0.25
        True
    """
    p = np.asarray(reference_counts, dtype=np.float64)
    q = np.asarray(counts, dtype=np.float64)
    p = np.clip(p / max(p.sum(), 1.0), eps, None)
    q = np.clip(q / max(q.sum(), 1.0), eps, None)
    return float(np.sum((q - p) * np.log(q / p)))


def chi2_shift(reference_counts: np.ndarray, counts: np.ndarray) -> tuple[float, float]:
    """``(χ², p)`` of the 2×K contingency test "same predicted-class distribution".

    Classes never predicted on either side are dropped; with fewer than two classes left
    the test has nothing to say and returns ``(0.0, 1.0)``.
    """
    table = np.stack([np.asarray(reference_counts, dtype=np.float64), np.asarray(counts, dtype=np.float64)])
    table = table[:, table.sum(0) > 0]
    if table.shape[1] < 2 or table[1].sum() == 0 or table[0].sum() == 0:
        return 0.0, 1.0
    stat, p, _, _ = chi2_contingency(table)
    return float(stat), float(p)


def confidence_shift(reference_confidence: np.ndarray, confidence: np.ndarray) -> tuple[float, float, float]:
    """``(KS D, p, mean difference)`` of top-1 confidences, window minus reference."""
    a = np.asarray(reference_confidence, dtype=np.float64)
    b = np.asarray(confidence, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        return 0.0, 1.0, 0.0
    res = ks_2samp(a, b)
    return float(res.statistic), float(res.pvalue), float(b.mean() - a.mean())


@dataclass(frozen=True)
class AccuracyEstimate:
    """An accuracy (estimated or observed) with its standard error and a 95 % interval."""

    accuracy: float
    se: float
    n: int

    @property
    def ci(self) -> tuple[float, float]:
        return (max(0.0, self.accuracy - 1.96 * self.se), min(1.0, self.accuracy + 1.96 * self.se))


def estimate_accuracy_cbpe(calibrated_probs: np.ndarray) -> AccuracyEstimate:
    """Confidence-based performance estimation: expected accuracy = mean calibrated confidence.

    With calibrated confidences ``c_i`` each prediction is right with probability ``c_i``;
    the window's accuracy is then Poisson-binomial with mean ``ā = mean(c)``, and over the
    sampling of windows its variance is ``ā(1 − ā)/n`` (law of total variance), which is
    the standard error returned.

    Example:
        >>> round(estimate_accuracy_cbpe(np.array([[0.9, 0.1], [0.7, 0.3]])).accuracy, 3)
        0.8
    """
    c = np.asarray(calibrated_probs, dtype=np.float64).max(axis=1)
    n = len(c)
    if n == 0:
        return AccuracyEstimate(float("nan"), float("nan"), 0)
    a = float(c.mean())
    return AccuracyEstimate(a, math.sqrt(max(a * (1 - a), 1e-12) / n), n)


def observed_accuracy(predicted: np.ndarray, labels: np.ndarray) -> AccuracyEstimate:
    """Observed accuracy with its binomial standard error."""
    pred = np.asarray(predicted)
    y = np.asarray(labels)
    n = len(y)
    if n == 0:
        return AccuracyEstimate(float("nan"), float("nan"), 0)
    a = float(np.mean(pred == y))
    return AccuracyEstimate(a, math.sqrt(max(a * (1 - a), 1e-12) / n), n)


def drop_p_value(reference: AccuracyEstimate, window: AccuracyEstimate) -> float:
    """One-sided p-value of ``H0: window accuracy ≥ reference accuracy`` (two independent estimates, z test)."""
    if window.n == 0 or not math.isfinite(window.accuracy):
        return 1.0
    se = math.sqrt(reference.se**2 + window.se**2)
    z = (reference.accuracy - window.accuracy) / max(se, 1e-12)
    return float(norm.sf(z))
