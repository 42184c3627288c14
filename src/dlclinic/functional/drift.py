"""Two-sample tests for distribution shift.

``mmd_test`` is the kernel maximum mean discrepancy test (Gretton et al., JMLR 2012) with
a Gaussian kernel, median-heuristic bandwidth and a permutation null. It is written here
rather than taken from alibi-detect (which pins NumPy < 2 and pulls TensorFlow or a
second torch stack): the whole permutation loop is one matrix product, ``S K Sᵀ``
evaluated row-wise for all permutations at once, which is exact and fast at the sizes a
checkup uses (≤ a few thousand rows per side).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.stats import chi2_contingency, false_discovery_control, ks_2samp, mannwhitneyu
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from dlclinic.core.case import usable_inputs

__all__ = [
    "C2STResult",
    "FeatureShift",
    "MMDResult",
    "classifier_two_sample_test",
    "feature_shift_tests",
    "gaussian_kernel",
    "median_bandwidth",
    "mmd2_biased",
    "mmd_test",
]


@dataclass(frozen=True)
class MMDResult:
    """Result of an MMD permutation test: statistic (biased MMD²), p-value, bandwidth, sizes."""

    mmd2: float
    p_value: float
    bandwidth: float
    n_x: int
    n_y: int
    permutations: int


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def median_bandwidth(z: np.ndarray, *, max_rows: int = 1000, seed: int = 0) -> float:
    """Median pairwise Euclidean distance (the median heuristic), on at most ``max_rows`` rows."""
    rng = np.random.default_rng(seed)
    sub = z if len(z) <= max_rows else z[rng.choice(len(z), max_rows, replace=False)]
    d = np.sqrt(_sq_dists(sub, sub)[np.triu_indices(len(sub), 1)])
    med = float(np.median(d)) if d.size else 1.0
    return med if med > 0 else 1.0


def gaussian_kernel(a: np.ndarray, b: np.ndarray, bandwidth: float) -> np.ndarray:
    """``exp(-‖a_i − b_j‖² / (2 σ²))``."""
    return np.exp(-_sq_dists(a, b) / (2.0 * bandwidth * bandwidth))


def mmd2_biased(x: np.ndarray, y: np.ndarray, bandwidth: float) -> float:
    """Biased (V-statistic) MMD² between samples ``x`` and ``y``."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return float(
        gaussian_kernel(x, x, bandwidth).mean()
        + gaussian_kernel(y, y, bandwidth).mean()
        - 2.0 * gaussian_kernel(x, y, bandwidth).mean()
    )


def mmd_test(
    x: np.ndarray,
    y: np.ndarray,
    *,
    permutations: int = 500,
    max_rows: int = 1000,
    bandwidth: float | None = None,
    scales: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0),
    seed: int = 0,
) -> MMDResult:
    """Permutation test of ``H0: x and y come from the same distribution``.

    Each side is subsampled to ``max_rows`` rows (seeded). The kernel is the mean of
    Gaussian kernels at ``scales`` × the median-heuristic bandwidth (a single bandwidth
    when ``bandwidth`` is given): the median alone is dominated by between-cluster
    distances and misses shifts inside clusters, while a mixture of characteristic
    kernels is itself characteristic and needs no multiple-testing correction. The
    p-value is ``(1 + #{perm ≥ observed}) / (1 + permutations)``, valid at any sample size.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> mmd_test(rng.normal(size=(100, 3)), rng.normal(1, 1, size=(100, 3))).p_value < 0.01
        True
    """
    rng = np.random.default_rng(seed)
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    if len(x) > max_rows:
        x = x[rng.choice(len(x), max_rows, replace=False)]
    if len(y) > max_rows:
        y = y[rng.choice(len(y), max_rows, replace=False)]
    z = np.concatenate([x, y])
    n, m = len(x), len(y)
    sigma = bandwidth if bandwidth is not None else median_bandwidth(z, seed=seed)
    if bandwidth is not None:
        k = gaussian_kernel(z, z, sigma)
    else:
        d2 = _sq_dists(z, z)
        k = np.mean([np.exp(-d2 / (2.0 * (c * sigma) ** 2)) for c in scales], axis=0)
    base = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)])
    observed = float(base @ k @ base)
    # all permutations at once: row p of S is the signed weight vector of permutation p
    chunk = max(1, int(2e7 // (len(z) * len(z))) or 1)
    exceed = 0
    done = 0
    while done < permutations:
        p = min(chunk * 8, permutations - done)
        s = np.stack([base[rng.permutation(len(z))] for _ in range(p)])
        stats = np.einsum("pi,pi->p", s @ k, s)
        exceed += int(np.sum(stats >= observed - 1e-12))
        done += p
    return MMDResult(
        mmd2=observed,
        p_value=(1 + exceed) / (1 + permutations),
        bandwidth=float(sigma),
        n_x=n,
        n_y=m,
        permutations=permutations,
    )


@dataclass(frozen=True)
class FeatureShift:
    """Per-feature two-sample tests with Benjamini–Hochberg control of the false discovery rate."""

    statistic: np.ndarray  # KS D, or Cramér's V for categorical columns
    p_value: np.ndarray
    q_value: np.ndarray  # BH-adjusted
    test: tuple[str, ...]  # "ks" | "chi2" per feature

    def shifted(self, alpha: float) -> np.ndarray:
        """Feature indices with ``q < alpha``, largest statistic first."""
        idx = np.flatnonzero(self.q_value < alpha)
        return idx[np.argsort(-self.statistic[idx])]


def feature_shift_tests(reference: np.ndarray, target: np.ndarray, *, max_levels: int = 10) -> FeatureShift:
    """Kolmogorov–Smirnov per numeric column, χ² per low-cardinality column, BH-adjusted.

    Columns with at most ``max_levels`` distinct values (one-hot and coded categories) get a
    χ² test of the level counts; the others a two-sample KS test. NaN values are ignored.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> a, b = rng.normal(size=(300, 3)), rng.normal(size=(300, 3)); b[:, 1] += 1
        >>> feature_shift_tests(a, b).shifted(0.01).tolist()
        [1]
    """
    ref = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    tgt = np.asarray(target, dtype=np.float64).reshape(len(target), -1)
    rows: list[tuple[float, float, str]] = []  # (statistic, p-value, test) per column
    for j in range(ref.shape[1]):
        a, b = ref[:, j][np.isfinite(ref[:, j])], tgt[:, j][np.isfinite(tgt[:, j])]
        if len(a) < 2 or len(b) < 2:
            rows.append((0.0, 1.0, "none"))
            continue
        levels = np.unique(np.concatenate([a, b]))
        if len(levels) > max_levels:
            res = ks_2samp(a, b)
            rows.append((float(res.statistic), float(res.pvalue), "ks"))
        elif len(levels) < 2:
            rows.append((0.0, 1.0, "chi2"))
        else:
            table = np.stack([np.array([(a == v).sum() for v in levels]), np.array([(b == v).sum() for v in levels])])
            chi2, p, _, _ = chi2_contingency(table)
            rows.append((float(np.sqrt(chi2 / (table.sum() * (min(table.shape) - 1)))), float(p), "chi2"))
    stats = [r[0] for r in rows]
    pvals = [r[1] for r in rows]
    kinds = [r[2] for r in rows]
    p_arr = np.array(pvals)
    q_arr = false_discovery_control(p_arr) if len(p_arr) else p_arr
    return FeatureShift(statistic=np.array(stats), p_value=p_arr, q_value=np.asarray(q_arr), test=tuple(kinds))


@dataclass(frozen=True)
class C2STResult:
    """Classifier two-sample test: cross-validated AUC of telling the samples apart, with a bootstrap CI."""

    auc: float
    ci_low: float
    ci_high: float
    p_value: float


def classifier_two_sample_test(
    x: np.ndarray, y: np.ndarray, *, folds: int = 5, max_rows: int = 2000, resamples: int = 200, seed: int = 0
) -> C2STResult:
    """Can a classifier tell ``x`` from ``y``? (Lopez-Paz & Oquab, ICLR 2017.)

    A standardised logistic regression is cross-validated on ``x`` (label 0) vs ``y``
    (label 1); the out-of-fold scores give an AUC (0.5 = indistinguishable), a percentile
    bootstrap CI and a one-sided Mann–Whitney p-value. Under H0 a cross-validated AUC
    sits slightly *below* 0.5 (each fold's training set over-represents the other
    sample), so decide with the p-value, not with "CI contains 0.5".
    """
    rng = np.random.default_rng(seed)
    x = usable_inputs(np.asarray(x, dtype=np.float64).reshape(len(x), -1))
    y = usable_inputs(np.asarray(y, dtype=np.float64).reshape(len(y), -1))
    if len(x) > max_rows:
        x = x[rng.choice(len(x), max_rows, replace=False)]
    if len(y) > max_rows:
        y = y[rng.choice(len(y), max_rows, replace=False)]
    z = np.concatenate([x, y])
    label = np.r_[np.zeros(len(x)), np.ones(len(y))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = cross_val_predict(
            make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)),
            z,
            label,
            cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
            method="predict_proba",
        )[:, 1]
    auc = float(roc_auc_score(label, scores))
    boots = []
    for _ in range(resamples):
        idx = rng.integers(0, len(z), len(z))
        if 0 < label[idx].sum() < len(idx):
            boots.append(roc_auc_score(label[idx], scores[idx]))
    low, high = (float(v) for v in np.percentile(boots, [2.5, 97.5])) if boots else (auc, auc)
    p = float(mannwhitneyu(scores[label == 1], scores[label == 0], alternative="greater").pvalue)
    return C2STResult(auc=auc, ci_low=low, ci_high=high, p_value=p)
