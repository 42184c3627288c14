"""Weak slices: sub-populations of the test set where the model is much worse than on the rest.

Candidate slices are built *without looking at correctness* — k-means clusters of the
test embeddings at a few granularities (images, any model), or feature-value slices
(one value of a categorical column, one quintile of a numeric column) for tables — so a
test on each candidate is a valid test, not a search for errors that finds noise.
Each candidate with at least ``min_size`` rows is tested one-sided for a higher error
rate than the rest of the set (Fisher's exact test, ``scipy.stats``), the p-values are
adjusted for the number of candidates (Benjamini–Hochberg; candidates of different
granularities overlap and are positively dependent, the case BH covers), and a slice is
reported only when it is significant at the false-discovery rate ``fdr`` *and* its
accuracy is at least ``min_gap`` below the rest's. Overlapping findings are merged
(Jaccard > 0.5, the most significant kept).

In the spirit of Domino (Eyuboglu et al., ICLR 2022) and Spotlight (d'Eon et al., FAccT
2022), with an explicit multiple-testing control that those tools leave out.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import fisher_exact
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

from dlclinic.core.errors import InputError
from dlclinic.functional.stats import benjamini_hochberg, wilson_interval

__all__ = ["Slice", "candidate_slices", "find_weak_slices"]


@dataclass(frozen=True)
class Slice:
    """One candidate slice and its test. ``low``/``high`` is the Wilson 95 % interval of its accuracy."""

    description: str
    rows: np.ndarray
    accuracy: float
    rest_accuracy: float
    low: float
    high: float
    p_value: float
    q_value: float

    @property
    def size(self) -> int:
        return int(len(self.rows))

    @property
    def gap(self) -> float:
        return self.rest_accuracy - self.accuracy


def candidate_slices(
    n: int,
    *,
    embeddings: np.ndarray | None = None,
    features: np.ndarray | None = None,
    feature_names: Sequence[str] | None = None,
    cluster_sizes: Sequence[int] = (4, 8, 16),
    min_size: int = 30,
    max_dims: int = 32,
    seed: int = 0,
) -> list[tuple[str, np.ndarray]]:
    """``(description, rows)`` candidates from embedding clusters and/or feature values (blind to correctness)."""
    out: list[tuple[str, np.ndarray]] = []
    if embeddings is not None:
        e = np.asarray(embeddings, dtype=np.float64).reshape(n, -1)
        e = (e - e.mean(0)) / np.maximum(e.std(0), 1e-8)
        if e.shape[1] > max_dims and n > max_dims:
            e = PCA(n_components=max_dims, random_state=seed).fit_transform(e)
        for k in cluster_sizes:
            if k < 2 or n // k < min_size:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                labels = KMeans(n_clusters=int(k), n_init=3, random_state=seed).fit_predict(e)
            for c in range(int(k)):
                rows = np.flatnonzero(labels == c)
                out.append((f"embedding cluster {c + 1} of {k}", rows))
    if features is not None:
        f = np.asarray(features).reshape(n, -1)
        names = list(feature_names) if feature_names is not None else [f"feature {j}" for j in range(f.shape[1])]
        for j in range(f.shape[1]):
            col = f[:, j]
            finite = np.isfinite(col) if col.dtype.kind == "f" else np.ones(n, bool)
            values = np.unique(col[finite])
            if len(values) <= 10:
                for v in values:
                    out.append(
                        (
                            f"{names[j]} = {v:g}" if col.dtype.kind in "fi" else f"{names[j]} = {v}",
                            np.flatnonzero(finite & (col == v)),
                        )
                    )
            else:
                edges = np.unique(np.quantile(col[finite], np.linspace(0, 1, 6)))
                for lo, hi in zip(edges[:-1], edges[1:]):
                    last = hi == edges[-1]
                    mask = finite & (col >= lo) & ((col <= hi) if last else (col < hi))
                    out.append((f"{names[j]} in [{lo:.3g}, {hi:.3g}{']' if last else ')'}", np.flatnonzero(mask)))
    return out


def find_weak_slices(
    correct: np.ndarray,
    *,
    embeddings: np.ndarray | None = None,
    features: np.ndarray | None = None,
    feature_names: Sequence[str] | None = None,
    cluster_sizes: Sequence[int] = (4, 8, 16),
    min_size: int = 30,
    min_gap: float = 0.10,
    fdr: float = 0.05,
    seed: int = 0,
) -> tuple[list[Slice], int]:
    """Slices with significantly lower accuracy than the rest; returns ``(slices, n_candidates_tested)``.

    Args:
        correct: per-row 0/1 correctness on the test set.
        embeddings: N×D test embeddings (clustered with k-means at ``cluster_sizes``).
        features: N×F table features (categorical values and numeric quintiles).
        min_size: fewest rows a slice needs to be tested.
        min_gap: smallest accuracy gap (rest − slice) worth reporting.
        fdr: Benjamini–Hochberg false-discovery rate.

    Returns:
        The weak slices, worst gap first, and the number of candidates tested.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> emb = np.r_[rng.normal(0, 1, (300, 4)), rng.normal(8, 1, (60, 4))]
        >>> correct = np.r_[rng.random(300) < 0.95, rng.random(60) < 0.5]
        >>> found, tested = find_weak_slices(correct, embeddings=emb)
        >>> found[0].size >= 50 and found[0].accuracy < 0.7
        True
    """
    ok = np.asarray(correct).astype(bool).ravel()
    n = len(ok)
    if embeddings is None and features is None:
        raise InputError("find_weak_slices needs embeddings or features to form slices, found neither")
    if not 0 < fdr < 1:
        raise InputError(f"`0 < fdr < 1` must hold, but got fdr={fdr}")
    cands = [
        (d, r)
        for d, r in candidate_slices(
            n,
            embeddings=embeddings,
            features=features,
            feature_names=feature_names,
            cluster_sizes=cluster_sizes,
            min_size=min_size,
            seed=seed,
        )
        if min_size <= len(r) < n
    ]
    if not cands:
        return [], 0
    total_err = int((~ok).sum())
    stats = []
    for desc, rows in cands:
        err_in = int((~ok[rows]).sum())
        size = len(rows)
        err_out, size_out = total_err - err_in, n - size
        p = float(fisher_exact([[err_in, size - err_in], [err_out, size_out - err_out]], alternative="greater").pvalue)
        stats.append((desc, rows, 1 - err_in / size, 1 - err_out / max(size_out, 1), p))
    q = benjamini_hochberg(np.array([s[4] for s in stats]))
    found: list[Slice] = []
    for (desc, rows, acc, rest, p), qv in sorted(zip(stats, q), key=lambda t: (t[1], t[0][2] - t[0][3])):
        if qv >= fdr or rest - acc < min_gap:
            continue
        if any(len(np.intersect1d(rows, s.rows)) / len(np.union1d(rows, s.rows)) > 0.5 for s in found):
            continue
        low, high = wilson_interval(int(ok[rows].sum()), len(rows))
        found.append(Slice(desc, rows, float(acc), float(rest), low, high, float(p), float(qv)))
    found.sort(key=lambda s: -s.gap)
    return found, len(cands)
