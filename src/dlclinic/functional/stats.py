"""Uncertainty of headline metrics and significance of model comparisons.

* :func:`bootstrap_metrics` — percentile bootstrap confidence intervals of accuracy,
  macro-F1 and balanced accuracy over test rows (Efron & Tibshirani 1993). Written here,
  vectorised over resamples, because every metric must use the *same* resampled rows
  (so the intervals are coherent and a paired difference can be read off), which
  ``scipy.stats.bootstrap`` (one statistic per call) does not share across metrics.
* :func:`mcnemar_test` — exact (binomial) and mid-p McNemar tests on the discordant
  pairs of two classifiers scored on the same rows (Fagerland, Lydersen & Laake, BMC
  Med. Res. Methodol. 2013 recommend the mid-p version); the binomial tail comes from
  ``scipy.stats``.
* :func:`paired_bootstrap_difference` — percentile interval of the accuracy difference
  with rows resampled jointly for both models.
* :func:`compare_predictions` — both, and the verdict "significant / not significant".
* :func:`benjamini_hochberg` — false-discovery-rate control over many tests.
* :func:`wilson_interval` — binomial interval of a proportion (via ``scipy.stats``).
* :func:`proportion_difference_z` — z statistic of the difference of two independent
  proportions (a train/test accuracy gap), shared by model.overfitting and research.theory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import beta, binom, binomtest

from dlclinic.core.errors import InputError

__all__ = [
    "paired_accuracy_ci",
    "Comparison",
    "McNemarResult",
    "MetricCI",
    "benjamini_hochberg",
    "bootstrap_metrics",
    "compare_predictions",
    "holm",
    "mcnemar_test",
    "paired_bootstrap_difference",
    "paired_difference_bounds",
    "proportion_difference_z",
    "wilson_interval",
]

METRICS = ("accuracy", "macro_f1", "balanced_accuracy")


@dataclass(frozen=True)
class MetricCI:
    """A metric on the full sample and its ``1 − alpha`` bootstrap interval."""

    name: str
    value: float
    low: float
    high: float
    n: int


def _check_pair(labels: np.ndarray, preds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).ravel().astype(np.int64)
    p = np.asarray(preds).ravel().astype(np.int64)
    if len(y) != len(p):
        raise InputError(f"labels have {len(y)} rows but predictions have {len(p)}; expected equal lengths")
    if len(y) == 0:
        raise InputError("expected at least one labelled row, found 0")
    return y, p


def _metrics_from_confusion(conf: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics from confusion tensors ``B×K×K`` (rows = truth)."""
    tp = np.diagonal(conf, axis1=1, axis2=2).astype(np.float64)
    support = conf.sum(axis=2).astype(np.float64)
    predicted = conf.sum(axis=1).astype(np.float64)
    total = conf.sum(axis=(1, 2)).astype(np.float64)
    present = support > 0
    seen = present | (predicted > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(seen, 2 * tp / np.where(seen, support + predicted, 1), 0.0)
        recall = np.where(present, tp / np.where(present, support, 1), np.nan)
    # macro over the classes that occur in truth or predictions of the resample (sklearn's convention)
    macro_f1 = f1.sum(1) / np.maximum(seen.sum(1), 1)
    return {
        "accuracy": tp.sum(1) / np.maximum(total, 1),
        "macro_f1": macro_f1,
        "balanced_accuracy": np.nanmean(recall, axis=1),
    }


def _confusions(y: np.ndarray, p: np.ndarray, k: int, idx: np.ndarray) -> np.ndarray:
    b = idx.shape[0]
    codes = (y[idx] * k + p[idx]) + (np.arange(b)[:, None] * k * k)
    return np.bincount(codes.ravel(), minlength=b * k * k).reshape(b, k, k)


def bootstrap_metrics(
    labels: np.ndarray,
    preds: np.ndarray,
    *,
    n_classes: int | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, MetricCI]:
    """Accuracy, macro-F1 and balanced accuracy with percentile bootstrap intervals.

    Args:
        labels: true classes, N.
        preds: predicted classes, N.
        n_classes: K (default: inferred from both).
        n_boot: bootstrap resamples of the rows.
        alpha: 1 − confidence level.
        seed: resampling seed.

    Example:
        >>> y = np.arange(200) % 2; p = y.copy(); p[:20] = 1 - p[:20]
        >>> ci = bootstrap_metrics(y, p)["accuracy"]
        >>> round(ci.value, 2), ci.low < 0.9 < ci.high
        (0.9, True)
    """
    y, p = _check_pair(labels, preds)
    k = int(n_classes or max(y.max(), p.max()) + 1)
    rng = np.random.default_rng(seed)
    point = _metrics_from_confusion(_confusions(y, p, k, np.arange(len(y))[None, :]))
    out: dict[str, MetricCI] = {}
    chunks = []
    for start in range(0, n_boot, 250):  # bounded memory: 250 × N indices at a time
        idx = rng.integers(0, len(y), size=(min(250, n_boot - start), len(y)))
        chunks.append(_metrics_from_confusion(_confusions(y, p, k, idx)))
    for name in METRICS:
        values = np.concatenate([c[name] for c in chunks])
        low, high = np.nanpercentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
        out[name] = MetricCI(name, float(point[name][0]), float(low), float(high), len(y))
    return out


def proportion_difference_z(p_a: float, n_a: int, p_b: float, n_b: int) -> float:
    """z statistic of ``p_a − p_b`` for two independent proportions (unpooled standard error).

    Example:
        >>> round(proportion_difference_z(0.75, 600, 0.69, 600), 2)
        2.32
    """
    se = math.sqrt(max(p_a * (1 - p_a), 1e-12) / n_a + max(p_b * (1 - p_b), 1e-12) / n_b)
    return (p_a - p_b) / se


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (``scipy.stats.binomtest``)."""
    if n <= 0:
        return (math.nan, math.nan)
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=1 - alpha, method="wilson")
    return float(ci.low), float(ci.high)


@dataclass(frozen=True)
class McNemarResult:
    """Discordant counts (``b``: only A right, ``c``: only B right) and two-sided p-values."""

    b: int
    c: int
    p_exact: float
    p_mid: float


def mcnemar_test(correct_a: np.ndarray, correct_b: np.ndarray) -> McNemarResult:
    """Exact and mid-p McNemar tests of equal accuracy for paired 0/1 outcomes.

    Under H0 the ``b + c`` discordant rows split as Binomial(b + c, ½). The exact
    p-value is ``min(1, 2·P(X ≤ min(b, c)))``; the mid-p value subtracts half the
    probability of the observed count, ``2·P(X ≤ min) − P(X = min)``.

    Example:
        >>> a = np.array([1] * 30 + [0] * 10); b = np.array([1] * 20 + [0] * 20)
        >>> r = mcnemar_test(a, b); (r.b, r.c, round(r.p_exact, 4))
        (10, 0, 0.002)
    """
    a = np.asarray(correct_a).astype(bool).ravel()
    bb = np.asarray(correct_b).astype(bool).ravel()
    if len(a) != len(bb):
        raise InputError(f"paired outcomes must have equal lengths, found {len(a)} and {len(bb)}")
    b = int(np.sum(a & ~bb))
    c = int(np.sum(~a & bb))
    n = b + c
    if n == 0:
        return McNemarResult(b, c, 1.0, 1.0)
    m = min(b, c)
    tail = float(binom.cdf(m, n, 0.5))
    exact = min(1.0, 2 * tail)
    mid = min(1.0, 2 * tail - float(binom.pmf(m, n, 0.5)))
    return McNemarResult(b, c, exact, mid)


def paired_bootstrap_difference(
    correct_a: np.ndarray, correct_b: np.ndarray, *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """``(acc_a − acc_b, low, high)``: percentile interval with rows resampled for both models at once."""
    a = np.asarray(correct_a, dtype=np.float64).ravel()
    b = np.asarray(correct_b, dtype=np.float64).ravel()
    if len(a) != len(b) or len(a) == 0:
        raise InputError(f"paired outcomes must have equal, non-zero lengths, found {len(a)} and {len(b)}")
    d = a - b
    rng = np.random.default_rng(seed)
    means = np.concatenate(
        [d[rng.integers(0, len(d), size=(min(500, n_boot - s), len(d)))].mean(1) for s in range(0, n_boot, 500)]
    )
    low, high = np.percentile(means, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(d.mean()), float(low), float(high)


@dataclass(frozen=True)
class Comparison:
    """Two models on the same labelled rows: accuracies, difference with interval, McNemar, verdict.

    ``significant`` is decided by the mid-p McNemar test at level ``alpha``; the
    bootstrap interval of the difference is the second, consistent view.
    """

    n: int
    accuracy_a: float
    accuracy_b: float
    difference: float
    difference_low: float
    difference_high: float
    mcnemar: McNemarResult
    alpha: float

    @property
    def significant(self) -> bool:
        return self.mcnemar.p_mid < self.alpha

    @property
    def verdict(self) -> str:
        word = "significant" if self.significant else "not significant"
        return f"{word}: accuracy {self.accuracy_a:.1%} vs {self.accuracy_b:.1%}, difference {self.difference:+.1%} (95 % CI [{self.difference_low:+.1%}, {self.difference_high:+.1%}]), McNemar mid-p = {self.mcnemar.p_mid:.3g} on {self.mcnemar.b + self.mcnemar.c} discordant rows"


def compare_predictions(
    labels: np.ndarray,
    preds_a: np.ndarray,
    preds_b: np.ndarray,
    *,
    alpha: float = 0.05,
    n_boot: int = 2000,
    seed: int = 0,
) -> Comparison:
    """Compare two classifiers on the same rows: McNemar (mid-p) and the paired bootstrap.

    Example:
        >>> y = np.arange(400) % 2; pa = y.copy(); pb = y.copy(); pb[:60] = 1 - pb[:60]
        >>> compare_predictions(y, pa, pb).significant
        True
    """
    y, pa = _check_pair(labels, preds_a)
    _, pb = _check_pair(labels, preds_b)
    ca, cb = pa == y, pb == y
    diff, low, high = paired_bootstrap_difference(ca, cb, n_boot=n_boot, alpha=alpha, seed=seed)
    return Comparison(len(y), float(ca.mean()), float(cb.mean()), diff, low, high, mcnemar_test(ca, cb), alpha)


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q-values); reject where ``q < FDR level``.

    Example:
        >>> benjamini_hochberg(np.array([0.01, 0.04, 0.03, 0.5])).round(3).tolist()
        [0.04, 0.053, 0.053, 0.5]
    """
    p = np.asarray(p_values, dtype=np.float64).ravel()
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p)
    ranked = p[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.clip(q, 0, 1)
    return out


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (monotone, capped at 1; NaN stays NaN).

    Rejecting where the adjusted p-value is below ``alpha`` controls the family-wise error
    rate at ``alpha`` under any dependence between the tests.

    Example:
        >>> holm([0.01, 0.04, 0.03, 0.5]).round(3).tolist()
        [0.04, 0.09, 0.09, 0.5]
    """
    p = np.asarray(p_values, dtype=np.float64).ravel()
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p[i])))
        out[i] = running
    return out


def paired_difference_bounds(
    correct_a: np.ndarray, correct_b: np.ndarray, *, alpha: float = 0.05
) -> tuple[float, float]:
    """Exact, conservative ``1 − alpha`` interval for ``accuracy(a) − accuracy(b)`` on the same rows.

    The difference is ``p_b − p_c`` (``p_b``: rows only ``a`` gets right, ``p_c``: only ``b``);
    each one-sided end combines Clopper–Pearson bounds of the two shares at ``alpha / 4``
    (Bonferroni), so each end holds with probability ``≥ 1 − alpha / 2`` at any sample size.
    Unlike a Wald interval it does not collapse to a point when no row is discordant: 2 rows
    against 0 out of 500 give an upper end of 1.6 %, not 0.4 %.

    Example:
        >>> a = np.r_[np.ones(450), np.ones(2), np.zeros(48)].astype(bool)
        >>> b = np.r_[np.ones(450), np.zeros(2), np.zeros(48)].astype(bool)
        >>> low, high = paired_difference_bounds(a, b)
        >>> round(low, 4), round(high, 4)
        (-0.0084, 0.0161)
    """
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise InputError(f"expected two 1-D boolean arrays of equal length, but got shapes {a.shape} and {b.shape}")
    n = len(a)
    if n == 0:
        return -1.0, 1.0
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    q = alpha / 4

    def upper(k: int) -> float:
        return 1.0 if k >= n else float(beta.ppf(1 - q, k + 1, n - k))

    def lower(k: int) -> float:
        return 0.0 if k <= 0 else float(beta.ppf(q, k, n - k + 1))

    return lower(only_a) - upper(only_b), upper(only_a) - lower(only_b)


def paired_accuracy_ci(
    correct_before: np.ndarray, correct_after: np.ndarray, *, resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(after) − mean(before)`` over paired test rows."""
    rng = np.random.default_rng(seed)
    diff = np.asarray(correct_after, dtype=np.float64) - np.asarray(correct_before, dtype=np.float64)
    idx = rng.integers(0, len(diff), size=(resamples, len(diff)))
    stats = diff[idx].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    return float(low), float(high)
