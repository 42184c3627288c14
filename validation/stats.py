"""Binomial confidence intervals and per-sample detection scores for the validation suite.

Pure functions, no torch: the suite's statistics must be checkable on their own
(``tests/test_validation_suite.py`` compares them with closed forms).

* :func:`clopper_pearson` — the exact ("conservative") interval from the beta quantiles;
  it never under-covers, which is what a published false-alarm rate needs.
* :func:`wilson` — the score interval, shorter, for the per-sample precision/recall
  (thousands of rows, where the exact interval is needlessly wide).
* :func:`detection_scores` — precision, recall and AUPRC of a check's flagged rows
  against the planted ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["clopper_pearson", "detection_scores", "exceeds_level", "wilson"]


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided binomial interval for ``k`` successes in ``n`` trials.

    Example:
        >>> lo, hi = clopper_pearson(0, 20)
        >>> lo, round(hi, 4)
        (0.0, 0.1684)
    """
    from scipy.stats import beta

    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"`0 <= k <= n` must hold, but got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    a = 1.0 - confidence
    lo = 0.0 if k == 0 else float(beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials."""
    from scipy.stats import norm

    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"`0 <= k <= n` must hold, but got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    z = float(norm.ppf(1 - (1 - confidence) / 2))
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def exceeds_level(k: int, n: int, level: float, confidence: float = 0.95) -> str:
    """``"no"`` (rate ≤ level), ``"point"`` (estimate above level, CI includes it) or ``"significant"`` (CI entirely above)."""
    if n == 0 or k / n <= level:
        return "no"
    return "significant" if clopper_pearson(k, n, confidence)[0] > level else "point"


def detection_scores(n: int, truth: Sequence[int], flagged: Sequence[int]) -> dict[str, float | int | None]:
    """Per-sample detection of planted rows among ``n`` rows.

    ``flagged`` is the check's list of flagged rows, most suspicious first (the order the
    report shows them); its rank is the score for AUPRC, and unflagged rows tie last. So
    AUPRC rewards a ranking that puts planted rows first, and equals precision × recall-ish
    area of what a user reviewing the list top-down would see.

    Returns tp, fp, fn, precision (None when nothing flagged), recall (None without planted
    rows) and auprc (None without planted rows).
    """
    from sklearn.metrics import average_precision_score

    t = np.zeros(n, dtype=bool)
    t[np.asarray(list(truth), dtype=np.int64)] = True
    flagged_arr = np.asarray(list(dict.fromkeys(int(i) for i in flagged)), dtype=np.int64)
    f = np.zeros(n, dtype=bool)
    f[flagged_arr] = True
    tp = int((t & f).sum())
    fp = int((~t & f).sum())
    fn = int((t & ~f).sum())
    score = np.zeros(n)
    score[flagged_arr] = np.arange(len(flagged_arr), 0, -1, dtype=float)
    auprc = float(average_precision_score(t, score)) if t.any() else None
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + fn) if tp + fn else None,
        "auprc": auprc,
    }
