"""Exact and near duplicates, within a split and across splits (leakage).

Near duplicates are judged on the raw inputs, not on embeddings: two rows are near
duplicates when their Euclidean distance is at most ``rel_threshold`` times the median
nearest-neighbour distance of the reference split. The threshold is therefore
scale-free (the same default works for pixels in [0, 1] or [0, 255] and for
standardised tables). For wide inputs the neighbour search runs on a PCA projection and
the candidates are then verified with exact distances in the full space.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

from dlclinic.core.case import usable_inputs

__all__ = [
    "DuplicatePairs",
    "find_cross_duplicates",
    "find_exact_duplicates",
    "find_near_duplicates",
    "nn_distance_scale",
]


@dataclass(frozen=True)
class DuplicatePairs:
    """Pairs ``(i, j)`` of near-identical rows and their distance (0 = exact copy)."""

    pairs: np.ndarray  # (k, 2) int
    distances: np.ndarray  # (k,)
    scale: float  # median nearest-neighbour distance used as the unit

    def __len__(self) -> int:
        return int(len(self.pairs))


def _flat(x: np.ndarray) -> np.ndarray:
    return usable_inputs(np.asarray(x, dtype=np.float32).reshape(len(x), -1))


def _project(ref: np.ndarray, *others: np.ndarray, dims: int = 64, seed: int = 0) -> list[np.ndarray]:
    if ref.shape[1] <= 2 * dims:
        return [ref, *others]

    pca = PCA(n_components=dims, random_state=seed, svd_solver="randomized").fit(ref[: min(len(ref), 20000)])
    return [pca.transform(a).astype(np.float32) for a in (ref, *others)]


def find_exact_duplicates(x: np.ndarray) -> list[np.ndarray]:
    """Groups of byte-identical rows (each group sorted, groups of size ≥ 2)."""
    flat = np.ascontiguousarray(np.asarray(x, dtype=np.float32).reshape(len(x), -1))
    buckets: dict[bytes, list[int]] = {}
    for i, row in enumerate(flat):
        buckets.setdefault(hashlib.blake2b(row.tobytes(), digest_size=16).digest(), []).append(i)
    return [np.array(v) for v in buckets.values() if len(v) > 1]


def nn_distance_scale(x: np.ndarray, *, sample: int = 2000, seed: int = 0) -> float:
    """Median distance from a row to its nearest *distinct* neighbour (the unit of nearness)."""
    flat = _flat(x)
    if len(flat) < 2:
        return 0.0
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(flat), size=min(sample, len(flat)), replace=False)
    nn = NearestNeighbors(n_neighbors=min(6, len(flat))).fit(flat)
    dist, nbr = nn.kneighbors(flat[idx])
    dist = np.where(nbr == idx[:, None], np.inf, dist)  # never the row itself
    # copies (distance ~0 up to float error) are not the unit of nearness: skip them
    tiny = 1e-6 * float(np.median(dist[np.isfinite(dist)])) if np.isfinite(dist).any() else 0.0
    distinct = [d[(d > tiny) & np.isfinite(d)] for d in dist]
    positive = [float(d.min()) for d in distinct if d.size]
    return float(np.median(positive)) if positive else 0.0


def _verified(
    a: np.ndarray, b: np.ndarray, ia: np.ndarray, ib: np.ndarray, limit: float
) -> tuple[np.ndarray, np.ndarray]:
    d = np.linalg.norm(a[ia] - b[ib], axis=1) if len(ia) else np.zeros(0)
    keep = d <= limit
    return np.stack([ia[keep], ib[keep]], axis=1) if keep.any() else np.zeros((0, 2), dtype=np.int64), d[keep]


def find_near_duplicates(
    x: np.ndarray, *, rel_threshold: float = 0.1, scale: float | None = None, neighbours: int = 5
) -> DuplicatePairs:
    """Pairs of rows within one split closer than ``rel_threshold`` × the NN-distance scale.

    Example:
        >>> x = np.random.default_rng(0).random((50, 8)); x[7] = x[3]
        >>> find_near_duplicates(x).pairs.tolist()
        [[3, 7]]
    """
    flat = _flat(x)
    unit = nn_distance_scale(flat) if scale is None else scale
    limit = rel_threshold * unit
    (proj,) = _project(flat)
    k = min(neighbours + 1, len(flat))
    dist, nbr = NearestNeighbors(n_neighbors=k).fit(proj).kneighbors(proj)
    qi = np.repeat(np.arange(len(flat)), k)
    ni = nbr.reshape(-1)
    # a pair may be found from either end (large groups overflow a row's neighbour list): keep both, normalised
    ii, jj = np.minimum(qi, ni), np.maximum(qi, ni)
    # the projection shrinks distances, so its candidates are a superset; verify in full space
    cand = (ii != jj) & (dist.reshape(-1) <= limit)
    pairs, d = _verified(flat, flat, ii[cand], jj[cand], limit)
    if len(pairs):
        pairs, uniq = np.unique(pairs, axis=0, return_index=True)
        d = d[uniq]
        order = np.argsort(d, kind="stable")
        pairs, d = pairs[order], d[order]
    return DuplicatePairs(pairs=pairs.astype(np.int64), distances=d, scale=unit)


def find_cross_duplicates(
    reference: np.ndarray, query: np.ndarray, *, rel_threshold: float = 0.1, scale: float | None = None
) -> DuplicatePairs:
    """Rows of ``query`` with a near copy in ``reference`` (train/test leakage): pairs ``(ref_row, query_row)``."""
    ref, qry = _flat(reference), _flat(query)
    unit = nn_distance_scale(ref) if scale is None else scale
    limit = rel_threshold * unit
    pref, pqry = _project(ref, qry)
    dist, nbr = NearestNeighbors(n_neighbors=min(3, len(ref))).fit(pref).kneighbors(pqry)
    qi = np.repeat(np.arange(len(qry)), dist.shape[1])
    ri = nbr.reshape(-1)
    cand = dist.reshape(-1) <= limit
    pairs, d = _verified(ref, qry, ri[cand], qi[cand], limit)
    if len(pairs):
        # one pair per query row: its closest reference row
        order = np.lexsort((d, pairs[:, 1]))
        pairs, d = pairs[order], d[order]
        _, first = np.unique(pairs[:, 1], return_index=True)
        pairs, d = pairs[first], d[first]
        order = np.argsort(d, kind="stable")
        pairs, d = pairs[order], d[order]
    return DuplicatePairs(pairs=pairs.astype(np.int64), distances=d, scale=unit)
