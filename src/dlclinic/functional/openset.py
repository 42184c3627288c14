"""Open-set recognition: detect inputs of classes never seen in training, group them into new classes.

* :func:`split_known_unknown` — hold classes out of a labelled set (the simulation of
  an open world on data whose classes are all known to us).
* :func:`novelty_auroc` — AUROC of a novelty score for unknown vs known rows, with a
  bootstrap interval (vectorised rank AUROC, :func:`dlclinic.functional.ood.auroc_ci`).
* :func:`calibrate_rejection` — the threshold that accepts ``1 − reject_rate`` of known
  *validation* rows (so the rejection rate on known classes is controlled on data not
  used to judge it), and its detection/false-rejection rates on test.
* :func:`cluster_rejected` — k-means on the embeddings of rejected rows, ``k`` by
  silhouette (scikit-learn); purity, adjusted Rand index and NMI against the true
  classes when known.

Scores follow Hendrycks & Gimpel (ICLR 2017, max-softmax), Liu et al. (NeurIPS 2020,
energy) and Sun et al. (ICML 2022, kNN on normalised embeddings); see
:mod:`dlclinic.functional.ood`. Open-world discovery by clustering the rejected set is
the recipe of Bendale & Boult (CVPR 2015) with a plain k-means.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

from dlclinic.core.errors import InputError
from dlclinic.functional.ood import auroc, auroc_ci

__all__ = ["Discovery", "Rejection", "calibrate_rejection", "cluster_rejected", "novelty_auroc", "split_known_unknown"]


def split_known_unknown(labels: np.ndarray, unknown_classes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(known, unknown)`` for the classes in ``unknown_classes``."""
    y = np.asarray(labels).ravel()
    unknown = np.isin(y, np.asarray(list(unknown_classes)))
    return np.flatnonzero(~unknown), np.flatnonzero(unknown)


def novelty_auroc(
    scores_known: np.ndarray, scores_unknown: np.ndarray, *, n_boot: int = 500, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """``(auroc, low, high)``: how well higher scores single out unknown rows (0.5 = chance).

    The interval resamples known and unknown rows separately (stratified bootstrap).

    Example:
        >>> novelty_auroc(np.array([0.1, 0.2, 0.3]), np.array([0.25, 0.9]))[0]
        0.8333333333333334
    """
    k = np.asarray(scores_known, dtype=np.float64).ravel()
    u = np.asarray(scores_unknown, dtype=np.float64).ravel()
    if len(k) == 0 or len(u) == 0:
        raise InputError(f"novelty AUROC needs known and unknown rows, found {len(k)} known and {len(u)} unknown")
    if n_boot < 1:
        return auroc(k, u), math.nan, math.nan
    return auroc_ci(k, u, resamples=n_boot, level=1 - alpha, seed=seed)


@dataclass(frozen=True)
class Rejection:
    """A rejection threshold calibrated on known validation rows, and its rates on test."""

    threshold: float
    target_false_rejection: float
    false_rejection_rate: float  # known test rows rejected
    detection_rate: float  # unknown test rows rejected


def calibrate_rejection(
    val_known: np.ndarray, test_known: np.ndarray, test_unknown: np.ndarray, *, reject_rate: float = 0.05
) -> Rejection:
    """Reject scores above the ``1 − reject_rate`` quantile of known validation scores.

    Example:
        >>> r = calibrate_rejection(np.linspace(0, 1, 101), np.linspace(0, 1, 50), np.full(10, 2.0))
        >>> round(r.threshold, 2), r.detection_rate
        (0.95, 1.0)
    """
    if not 0 < reject_rate < 1:
        raise InputError(f"`0 < reject_rate < 1` must hold, but got reject_rate={reject_rate}")
    v = np.asarray(val_known, dtype=np.float64).ravel()
    if len(v) == 0:
        raise InputError("calibrating a rejection threshold needs known validation rows, found 0")
    thr = float(np.quantile(v, 1 - reject_rate))
    tk = np.asarray(test_known, dtype=np.float64).ravel()
    tu = np.asarray(test_unknown, dtype=np.float64).ravel()
    return Rejection(
        thr,
        reject_rate,
        float((tk > thr).mean()) if len(tk) else math.nan,
        float((tu > thr).mean()) if len(tu) else math.nan,
    )


@dataclass(frozen=True)
class Discovery:
    """Candidate new classes among rejected rows.

    ``purity`` (share of rows whose cluster's majority class is their own), ``ari`` and
    ``nmi`` are ``nan`` when the true classes are unknown. ``majority`` maps each cluster
    to its majority true class (``-1`` without truth).
    """

    labels: np.ndarray
    n_clusters: int
    silhouette: float
    purity: float
    ari: float
    nmi: float
    majority: tuple[int, ...]


def cluster_rejected(
    embeddings: np.ndarray,
    truth: np.ndarray | None = None,
    *,
    k_range: Sequence[int] = (2, 3, 4, 5, 6, 8),
    seed: int = 0,
) -> Discovery:
    """Cluster the embeddings of rejected rows; ``k`` maximises the silhouette score.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> e = np.r_[rng.normal(0, 1, (40, 3)), rng.normal(9, 1, (40, 3))]
        >>> d = cluster_rejected(e, np.r_[np.zeros(40), np.ones(40)].astype(int))
        >>> d.n_clusters, d.purity
        (2, 1.0)
    """
    e = np.asarray(embeddings, dtype=np.float64).reshape(len(embeddings), -1)
    n = len(e)
    if n < 4:
        raise InputError(f"clustering rejected rows needs at least 4 of them, found {n}")
    e = (e - e.mean(0)) / np.maximum(e.std(0), 1e-8)
    best: tuple[float, int, np.ndarray] | None = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k in k_range:
            if not 2 <= k < n:
                continue
            labels = KMeans(n_clusters=int(k), n_init=4, random_state=seed).fit_predict(e)
            if len(np.unique(labels)) < 2:
                continue
            s = float(silhouette_score(e, labels, sample_size=min(n, 2000), random_state=seed))
            if best is None or s > best[0]:
                best = (s, int(k), labels)
    if best is None:
        raise InputError(f"could not cluster {n} rejected rows into 2 or more groups")
    sil, k, labels = best
    purity = ari = nmi = math.nan
    majority: tuple[int, ...] = tuple(-1 for _ in range(k))
    if truth is not None:
        t = np.asarray(truth).ravel().astype(np.int64)
        maj = []
        hit = 0
        for c in range(k):
            members = t[labels == c]
            if len(members):
                counts = np.bincount(members)
                maj.append(int(counts.argmax()))
                hit += int(counts.max())
            else:
                maj.append(-1)
        majority = tuple(maj)
        purity = hit / n
        ari = float(adjusted_rand_score(t, labels))
        nmi = float(normalized_mutual_info_score(t, labels))
    return Discovery(labels, k, sil, float(purity), float(ari), float(nmi), majority)
