"""Exact and near duplicates, within a split and across splits (leakage).

Near duplicates are judged on the raw inputs, not on embeddings: two rows are near
duplicates when their Euclidean distance is at most ``rel_threshold`` times the median
nearest-neighbour distance of the reference split. The threshold is therefore
scale-free (the same default works for pixels in [0, 1] or [0, 255] and for
standardised tables). For wide inputs the neighbour search runs on a PCA projection and
the candidates are then verified with exact distances in the full space. Beyond
:data:`TREE_ROWS` rows the search is a radius query on a k-d tree (O(N log N) plus the few
candidates a near copy's tiny radius gives) instead of brute-force neighbours (O(N²)).

Mixed tables (Gower). On a table with one-hot categorical blocks, Euclidean distance
counts a changed category as √2 whatever the numeric columns' units are, so it is the
wrong ruler. When the caller names the one-hot blocks (``categorical_blocks``, from
:func:`one_hot_blocks`), the distance is Gower's (Gower 1971, *Biometrics* 27:857):
the mean over the original columns of a categorical mismatch (0 or 1) and the
range-scaled absolute difference of each numeric column (range on the reference split).
It is computed as an L1 distance on rescaled features (:func:`gower_features`). The
limit is still ``rel_threshold`` × the median nearest-neighbour distance, capped below
half a categorical mismatch: a near duplicate agrees on every categorical column, so on
an all-categorical table near duplicates are exact ones.

Repeats measured against chance (:func:`chance_overlap`). On tables of coded columns,
identical rows across two independent samples are what sampling gives, not leakage. The
null hypothesis is that the reference (train) and the query (test or deploy) rows are a
random split of one pool, i.e. exchangeable. Conditional on how often each distinct row
("pattern") occurs in the pool, that null fixes the distribution of every count of
repeats, whatever the data distribution is: it is simulated by re-drawing the split
(a permutation test). Two counts are tested one-sided:

- *cross matches*: query rows whose pattern occurs in the reference;
- *redundant copies*: reference rows that repeat an earlier reference row.

For continuous inputs every pattern occurs once, the null count is 0 with no spread, and
any copy is an excess (the behaviour for images and float tables). Planted defects enter
the pool too, which only makes the test conservative: a copied row whose pattern is
otherwise unique becomes a pattern of count 2, which a random split also places across
the two splits with probability 2π(1 − π) (π = the reference's share of the pool), so
each planted copy adds 1 to the observed count and about 2π(1 − π) to the expected one
(0.32 at an 80/20 split), unless the query's own doubletons say that such patterns are
rare (:func:`natural_doubleton_share`, which makes copies on continuous inputs count
fully); a copy of a common row adds about 1 to both and is, rightly,
indistinguishable from a natural repeat.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn import config_context
from sklearn.decomposition import PCA
from sklearn.neighbors import KDTree, NearestNeighbors

from dlclinic.core.case import unusable_rows, usable_inputs

__all__ = [
    "ChanceCount",
    "DuplicatePairs",
    "chance_overlap",
    "find_cross_duplicates",
    "find_exact_duplicates",
    "find_near_duplicates",
    "gower_features",
    "natural_doubleton_share",
    "nn_distance_scale",
    "one_hot_blocks",
    "pattern_ids",
    "pooled_counts",
    "row_keys",
]


@dataclass(frozen=True)
class DuplicatePairs:
    """Pairs ``(i, j)`` of near-identical rows and their distance (0 = exact copy)."""

    pairs: np.ndarray  # (k, 2) int
    distances: np.ndarray  # (k,)
    scale: float  # median nearest-neighbour distance used as the unit

    def __len__(self) -> int:
        return int(len(self.pairs))


WORKING_MB = 64
"""MB of distances scikit-learn's brute-force kNN holds at once (its default, 1 GB, held a
2,000 × 60,000 float64 block for one call on Fashion-MNIST); the chunking changes no result."""


def _flat(x: np.ndarray) -> np.ndarray:
    """Rows as float32 vectors, NaN/Inf read as 0; a view of ``x`` when nothing needs fixing (only read)."""
    flat = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    return usable_inputs(flat) if unusable_rows(flat).any() else flat


def _project(ref: np.ndarray, *others: np.ndarray, dims: int = 64, seed: int = 0) -> list[np.ndarray]:
    if ref.shape[1] <= 2 * dims:
        return [ref, *others]

    pca = PCA(n_components=dims, random_state=seed, svd_solver="randomized").fit(ref[: min(len(ref), 20000)])
    return [pca.transform(a).astype(np.float32) for a in (ref, *others)]


Blocks = Sequence[np.ndarray] | None


def one_hot_blocks(feature_names: Sequence[str], encoding: Mapping[str, Sequence[str]]) -> list[np.ndarray]:
    """The feature indices of each one-hot block (``col=category`` names of ``encoding``'s columns).

    Example:
        >>> [b.tolist() for b in one_hot_blocks(["age", "c=a", "c=b"], {"c": ["a", "b"]})]
        [[1, 2]]
    """
    index = {str(n): i for i, n in enumerate(feature_names)}
    blocks = []
    for col, categories in encoding.items():
        found = [index.get(f"{col}={c}") for c in categories]
        if found and all(i is not None for i in found):
            blocks.append(np.asarray(found, dtype=np.int64))
    return blocks


def gower_features(
    reference: np.ndarray, *others: np.ndarray, categorical_blocks: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """Rows rescaled so that their L1 distance is the Gower distance (see the module docstring).

    A one-hot column is weighted ``1 / (2p)`` (two columns differ when a category changes), a
    numeric one ``1 / (range · p)``, with ``p`` the number of original columns; a constant
    numeric column weighs 0.

    Example:
        >>> ref = np.array([[0.0, 1, 0], [10.0, 0, 1]])
        >>> a, = gower_features(ref, categorical_blocks=[np.array([1, 2])])
        >>> float(np.abs(a[0] - a[1]).sum())  # both columns differ fully
        1.0
    """
    flats = [_flat(a) for a in (reference, *others)]
    ref = flats[0]
    categorical = np.zeros(ref.shape[1], dtype=bool)
    for block in categorical_blocks:
        categorical[block] = True
    p = int((~categorical).sum()) + len(categorical_blocks)
    span = (ref.max(axis=0) - ref.min(axis=0)).astype(np.float64) if len(ref) else np.zeros(ref.shape[1])
    weights = np.where(span > 0, 1.0 / np.maximum(span, 1e-30) / max(p, 1), 0.0)
    weights[categorical] = 1.0 / (2 * max(p, 1))
    return [(a * weights).astype(np.float32) for a in flats]


def _space(blocks: Blocks, reference: np.ndarray, *others: np.ndarray) -> tuple[list[np.ndarray], str, float]:
    """The rows to search (flat, or Gower-rescaled), the metric, and the cap on the limit (∞ for L2)."""
    if not blocks:
        return [_flat(a) for a in (reference, *others)], "euclidean", np.inf
    p = int(np.prod(reference.shape[1:])) - sum(len(b) for b in blocks) + len(blocks)
    return gower_features(reference, *others, categorical_blocks=blocks), "manhattan", 0.5 / max(p, 1) * (1 - 1e-6)


def row_keys(x: np.ndarray, *, pad_id: int | None = None) -> list[bytes]:
    """One byte string per row: equal keys = identical rows.

    Without ``pad_id`` a row is its values as float32. With ``pad_id`` (token ids) a row is
    its ids other than ``pad_id``, in order, as int64: rows that hold the same text with more
    or less padding, or padding on the other side, get the same key.

    Example:
        >>> a, b, c = row_keys(np.array([[5, 6, 0, 0], [0, 5, 6, 0], [5, 6, 7, 0]]), pad_id=0)
        >>> a == b, a == c
        (True, False)
    """
    return list(_row_keys(x, pad_id))


def _row_keys(x: np.ndarray, pad_id: int | None, chunk: int = 4096) -> Iterator[bytes]:
    """:func:`row_keys` one at a time, converting ``chunk`` rows at a time (never a copy of ``x``)."""
    x = np.asarray(x)
    for i in range(0, len(x), chunk):
        if pad_id is None:
            flat = np.ascontiguousarray(np.asarray(x[i : i + chunk], dtype=np.float32).reshape(-1, _width(x)))
            yield from (row.tobytes() for row in flat)
        else:
            ids = np.asarray(x[i : i + chunk], dtype=np.int64).reshape(-1, _width(x))
            yield from (row[row != pad_id].tobytes() for row in ids)


def _width(x: np.ndarray) -> int:
    return int(np.prod(x.shape[1:], dtype=np.int64))


def find_exact_duplicates(x: np.ndarray, *, pad_id: int | None = None) -> list[np.ndarray]:
    """Groups of identical rows (each group sorted, groups of size ≥ 2); ``pad_id`` as in :func:`row_keys`."""
    buckets: dict[bytes, list[int]] = {}
    for i, key in enumerate(_row_keys(x, pad_id)):
        buckets.setdefault(hashlib.blake2b(key, digest_size=16).digest(), []).append(i)
    return [np.array(v) for v in buckets.values() if len(v) > 1]


PROJECTED_SCALE_ROWS = 150_000
"""Beyond this many wide rows :func:`nn_distance_scale` finds neighbours through a PCA projection
(:func:`_projected_knn`, the same distances): measured on Fashion-MNIST, 4.1 s against the brute
search's 2.1 s at 60,000 rows (the projection's fixed cost) and 5.2 s against 21.0 s at 600,000."""


def nn_distance_scale(x: np.ndarray, *, sample: int = 2000, seed: int = 0, categorical_blocks: Blocks = None) -> float:
    """Median distance from a row to its nearest *distinct* neighbour (the unit of nearness; Gower with ``categorical_blocks``)."""
    (flat,), metric, _ = _space(categorical_blocks, x)
    if len(flat) < 2:
        return 0.0
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(flat), size=min(sample, len(flat)), replace=False)
    k = min(6, len(flat))
    if len(flat) > PROJECTED_SCALE_ROWS and metric == "euclidean" and flat.shape[1] > 128:
        dist, nbr = _projected_knn(flat, idx, k)
    else:
        nn = NearestNeighbors(n_neighbors=k, metric=metric).fit(flat)
        with config_context(working_memory=WORKING_MB):
            dist, nbr = nn.kneighbors(flat[idx])
    dist = np.where(nbr == idx[:, None], np.inf, dist)  # never the row itself
    # copies (distance ~0 up to float error) are not the unit of nearness: skip them
    tiny = 1e-6 * float(np.median(dist[np.isfinite(dist)])) if np.isfinite(dist).any() else 0.0
    distinct = [d[(d > tiny) & np.isfinite(d)] for d in dist]
    positive = [float(d.min()) for d in distinct if d.size]
    return float(np.median(positive)) if positive else 0.0


def _projected_knn(flat: np.ndarray, idx: np.ndarray, k: int, candidates: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """The exact ``k`` nearest rows of ``flat[idx]`` (L2), found through a PCA projection.

    Candidates are the ``candidates`` nearest in the 64-d projection, ranked by their full
    distances. A projection never lengthens a distance, so when the last candidate's projected
    distance is at least the k-th full distance no other row can be nearer; the rows where
    that does not hold are searched by brute force (:data:`PROJECTED_SCALE_ROWS`).
    """
    proj, query = _project(flat, flat[idx])
    with config_context(working_memory=WORKING_MB):
        pdist, cand = NearestNeighbors(n_neighbors=min(candidates, len(flat))).fit(proj).kneighbors(query)
    full = np.linalg.norm(flat[cand] - flat[idx][:, None, :], axis=2)
    order = np.argsort(full, axis=1, kind="stable")[:, :k]
    dist, nbr = np.take_along_axis(full, order, 1), np.take_along_axis(cand, order, 1)
    unsure = np.flatnonzero(pdist[:, -1] < dist[:, -1])
    if len(unsure):
        with config_context(working_memory=WORKING_MB):
            dist[unsure], nbr[unsure] = NearestNeighbors(n_neighbors=k).fit(flat).kneighbors(flat[idx[unsure]])
    return dist, nbr


def _verified(
    a: np.ndarray, b: np.ndarray, ia: np.ndarray, ib: np.ndarray, limit: float, metric: str = "euclidean"
) -> tuple[np.ndarray, np.ndarray]:
    order = 1 if metric == "manhattan" else 2
    d = np.linalg.norm(a[ia] - b[ib], ord=order, axis=1) if len(ia) else np.zeros(0)
    keep = d <= limit
    return np.stack([ia[keep], ib[keep]], axis=1) if keep.any() else np.zeros((0, 2), dtype=np.int64), d[keep]


def _neighbours(
    proj: np.ndarray, full: np.ndarray, metric: str, k: int, query: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """k nearest rows; on a PCA projection (wide inputs) by L2, which never exceeds the full L2 or L1 distance."""
    search = metric if proj.shape[1] == full.shape[1] else "euclidean"
    with config_context(working_memory=WORKING_MB):
        return NearestNeighbors(n_neighbors=k, metric=search).fit(proj).kneighbors(query)


TREE_ROWS = 50_000
"""Beyond this many reference rows the neighbour search is a radius query on a k-d tree
(:func:`_radius_neighbours`) instead of brute-force k nearest neighbours, whose cost is
O(N²): at 600,000 images the brute search alone would take hours on two cores."""


def _tree_coordinates(
    proj: np.ndarray, query: np.ndarray, metric: str, dims: int
) -> tuple[np.ndarray, np.ndarray, str]:
    """The rows and queries on the top ``dims`` principal axes of ``proj``, and the metric to search them with.

    An orthonormal projection never lengthens an L2 distance, and L2 ≤ L1, so a pair within
    the limit in the searched space (L2, or Gower's L1) is within it on these axes too. The top
    axes, not the first raw coordinates: on raw embeddings the first coordinates are arbitrary
    and prune poorly. Inputs of at most ``dims`` columns are searched as they are.
    """
    if proj.shape[1] <= dims:
        return np.ascontiguousarray(proj), np.ascontiguousarray(query), metric
    sample = proj[np.random.default_rng(0).choice(len(proj), size=min(len(proj), 20_000), replace=False)]
    pca = PCA(n_components=dims, random_state=0).fit(sample)
    axes = (pca.components_.T).astype(np.float32)  # orthonormal columns
    return (
        np.ascontiguousarray((proj - pca.mean_) @ axes, dtype=np.float32),
        np.ascontiguousarray((query - pca.mean_) @ axes, dtype=np.float32),
        "euclidean",
    )


def _radius_neighbours(
    proj: np.ndarray, metric: str, k: int, query: np.ndarray, limit: float, dims: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``k`` nearest rows within ``limit`` of each query row, as ``(distance, index)`` arrays
    padded with ``inf`` / the row itself, like :func:`_neighbours`.

    A k-d tree over the top ``dims`` principal axes of the searched rows
    (:func:`_tree_coordinates`: no pair within ``limit`` is missed; the caller verifies the
    candidates in the full space). Cost O(N log N) plus the candidates, which the tiny radius
    of a near copy keeps few. A k-d tree, not a ball tree: on 600,000 Fashion-MNIST rows (16
    coordinates, 1.3 candidates per row) the ball tree's queries took 14× longer (157 s
    against 11 s; 4.8 s against 0.4 s on 60,000 rows).
    """
    rows, queries, search = _tree_coordinates(proj, query, metric, dims)
    tree = KDTree(rows, metric=search)
    dist = np.full((len(query), k), np.inf)
    nbr = (
        np.tile(np.arange(len(query))[:, None], (1, k))
        if len(query) == len(proj)
        else np.zeros((len(query), k), np.int64)
    )
    for start in range(0, len(query), 8192):
        ind, dd = tree.query_radius(queries[start : start + 8192], r=limit, return_distance=True, sort_results=True)
        for row, (i, d) in enumerate(zip(ind, dd), start):
            dist[row, : min(k, len(i))], nbr[row, : min(k, len(i))] = d[:k], i[:k]
    return dist, nbr


def find_near_duplicates(
    x: np.ndarray,
    *,
    rel_threshold: float = 0.1,
    scale: float | None = None,
    neighbours: int = 5,
    categorical_blocks: Blocks = None,
    tree_rows: int = TREE_ROWS,
) -> DuplicatePairs:
    """Pairs of rows within one split closer than ``rel_threshold`` × the NN-distance scale.

    With ``categorical_blocks`` (one-hot blocks of a mixed table) the distance is Gower's and
    a pair must agree on every categorical column (module docstring).

    Example:
        >>> x = np.random.default_rng(0).random((50, 8)); x[7] = x[3]
        >>> find_near_duplicates(x).pairs.tolist()
        [[3, 7]]
    """
    (flat,), metric, cap = _space(categorical_blocks, x)
    unit = nn_distance_scale(x, categorical_blocks=categorical_blocks) if scale is None else scale
    limit = min(rel_threshold * unit, cap)
    (proj,) = _project(flat)
    k = min(neighbours + 1, len(flat))
    if len(flat) > tree_rows:
        dist, nbr = _radius_neighbours(proj, metric, k, proj, limit)
    else:
        dist, nbr = _neighbours(proj, flat, metric, k, proj)
    qi = np.repeat(np.arange(len(flat)), k)
    ni = nbr.reshape(-1)
    # a pair may be found from either end (large groups overflow a row's neighbour list): keep both, normalised
    ii, jj = np.minimum(qi, ni), np.maximum(qi, ni)
    # the projection shrinks distances, so its candidates are a superset; verify in full space
    cand = (ii != jj) & (dist.reshape(-1) <= limit)
    pairs, d = _verified(flat, flat, ii[cand], jj[cand], limit, metric)
    if len(pairs):
        pairs, uniq = np.unique(pairs, axis=0, return_index=True)
        d = d[uniq]
        order = np.argsort(d, kind="stable")
        pairs, d = pairs[order], d[order]
    return DuplicatePairs(pairs=pairs.astype(np.int64), distances=d, scale=unit)


def find_cross_duplicates(
    reference: np.ndarray,
    query: np.ndarray,
    *,
    rel_threshold: float = 0.1,
    scale: float | None = None,
    categorical_blocks: Blocks = None,
    tree_rows: int = TREE_ROWS,
) -> DuplicatePairs:
    """Rows of ``query`` with a near copy in ``reference`` (train/test leakage): pairs ``(ref_row, query_row)``.

    ``categorical_blocks`` switches to the Gower distance, as in :func:`find_near_duplicates`.
    """
    (ref, qry), metric, cap = _space(categorical_blocks, reference, query)
    unit = nn_distance_scale(reference, categorical_blocks=categorical_blocks) if scale is None else scale
    limit = min(rel_threshold * unit, cap)
    pref, pqry = _project(ref, qry)
    if len(ref) > tree_rows:
        dist, nbr = _radius_neighbours(pref, metric, min(3, len(ref)), pqry, limit)
    else:
        dist, nbr = _neighbours(pref, ref, metric, min(3, len(ref)), pqry)
    qi = np.repeat(np.arange(len(qry)), dist.shape[1])
    ri = nbr.reshape(-1)
    cand = dist.reshape(-1) <= limit
    pairs, d = _verified(ref, qry, ri[cand], qi[cand], limit, metric)
    if len(pairs):
        # one pair per query row: its closest reference row
        order = np.lexsort((d, pairs[:, 1]))
        pairs, d = pairs[order], d[order]
        _, first = np.unique(pairs[:, 1], return_index=True)
        pairs, d = pairs[first], d[first]
        order = np.argsort(d, kind="stable")
        pairs, d = pairs[order], d[order]
    return DuplicatePairs(pairs=pairs.astype(np.int64), distances=d, scale=unit)


def pattern_ids(*arrays: np.ndarray, pad_id: int | None = None) -> list[np.ndarray]:
    """One integer id per row, shared across ``arrays``: equal ids = identical rows (:func:`row_keys`).

    The arrays may differ in width when ``pad_id`` is given (token rows padded to different lengths).

    Example:
        >>> a = np.array([[1.0, 2.0], [3.0, 4.0]]); b = np.array([[3.0, 4.0], [5.0, 6.0]])
        >>> [ids.tolist() for ids in pattern_ids(a, b)]
        [[0, 1], [1, 2]]
    """
    seen: dict[bytes, int] = {}
    out = []
    for x in arrays:
        # a row's 16-byte digest, not the row, is kept
        keys = (hashlib.blake2b(k, digest_size=16).digest() for k in _row_keys(x, pad_id))
        out.append(np.array([seen.setdefault(k, len(seen)) for k in keys], dtype=np.int64))
    return out


@dataclass(frozen=True)
class ChanceCount:
    """An observed count of repeats against its null distribution under random splitting.

    Attributes:
        observed: the count in the data.
        expected: its mean over re-drawn splits (the count chance alone gives).
        sd: its standard deviation over re-drawn splits.
        p_value: one-sided Monte-Carlo p-value, ``(1 + #{null ≥ observed}) / (rounds + 1)``.
        excess: ``observed − expected`` rounded, when ``p_value ≤ alpha``; else 0.
    """

    observed: int
    expected: float
    sd: float
    p_value: float
    excess: int


def _count(null: np.ndarray, observed: int, alpha: float) -> ChanceCount:
    p = float((1 + np.sum(null >= observed)) / (len(null) + 1))
    expected = float(null.mean())
    excess = max(int(round(observed - expected)), 0) if p <= alpha else 0
    return ChanceCount(int(observed), expected, float(null.std()), p, excess)


def _repeat_counts(ids: np.ndarray, in_ref: np.ndarray, weight: np.ndarray) -> tuple[float, float]:
    """(query rows whose pattern occurs in the reference, redundant copies within the reference), weighted per pattern."""
    ref_counts = np.bincount(ids[in_ref], minlength=len(weight))
    qry = ids[~in_ref]
    cross = float(np.sum(weight[qry] * (ref_counts[qry] > 0)))
    redundant = float(np.sum(weight * np.maximum(ref_counts - 1, 0)))
    return cross, redundant


def natural_doubleton_share(query: np.ndarray, pooled: np.ndarray) -> float:
    """How many of the pool's patterns of count 2 chance alone explains, as a share in [0, 1].

    Patterns seen twice in the query, scaled to the pool's size (``f2 · (N / n)²``, the
    rare-pattern regime where the doubleton count grows with the square of the sample size),
    over the doubletons observed in the pool. Planted copies do not create repeats inside
    the query, so this share is uncontaminated; for continuous inputs it is 0, and every
    doubleton (a copy) counts fully.
    """
    _, counts = np.unique(query, return_counts=True)
    f2 = int(np.sum(counts == 2))
    doubletons = int(np.sum(np.bincount(pooled) == 2)) if len(pooled) else 0
    if not doubletons or not len(query):
        return 1.0
    return float(min(1.0, f2 * (len(pooled) / len(query)) ** 2 / doubletons))


def chance_overlap(
    reference: np.ndarray, query: np.ndarray, *, rounds: int = 199, alpha: float = 0.01, seed: int = 0
) -> tuple[ChanceCount, ChanceCount]:
    """Exact repeats across and within splits, each against a random re-split of the pooled rows.

    ``reference`` and ``query`` are pattern ids (:func:`pattern_ids`). Returns the count of
    query rows whose pattern occurs in the reference and the count of redundant copies within
    the reference, each with its permutation null (see the module docstring). The null
    conditions on the pooled pattern counts, so its spread comes only from rare patterns:
    common ones land in both splits under every re-split. Patterns of pooled count 2 (where
    a planted copy lands) enter the null weighted by :func:`natural_doubleton_share`.

    Example:
        >>> rng = np.random.default_rng(0); ref = rng.integers(0, 50, 800); qry = rng.integers(0, 50, 200)
        >>> cross, dup = chance_overlap(ref, qry); cross.excess, dup.excess
        (0, 0)
        >>> cross, _ = chance_overlap(np.arange(800), np.r_[np.arange(800, 980), np.arange(20)]); cross.observed, cross.excess
        (20, 20)
    """
    ids = np.concatenate([reference, query]).astype(np.int64)
    _, ids = np.unique(ids, return_inverse=True)
    pooled_count = np.bincount(ids) if len(ids) else np.zeros(0, dtype=np.int64)
    in_ref = np.zeros(len(ids), dtype=bool)
    in_ref[: len(reference)] = True
    obs_cross, obs_redundant = _repeat_counts(ids, in_ref, np.ones(len(pooled_count)))
    weight = np.where(pooled_count == 2, natural_doubleton_share(ids[~in_ref], ids), 1.0)
    rng = np.random.default_rng(seed)
    null = np.zeros((rounds, 2))
    for b in range(rounds):
        null[b] = _repeat_counts(ids, rng.permutation(in_ref), weight)
    return _count(null[:, 0], int(obs_cross), alpha), _count(null[:, 1], int(obs_redundant), alpha)


def pooled_counts(reference: np.ndarray, query: np.ndarray) -> np.ndarray:
    """How often each query row's pattern occurs in both splits together (low = a surprising match)."""
    ids = np.concatenate([reference, query]).astype(np.int64)
    counts = np.bincount(ids) if len(ids) else np.zeros(0, dtype=np.int64)
    return counts[np.asarray(query, dtype=np.int64)]
