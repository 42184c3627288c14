"""Exact and near duplicates of token-id rows (text), within a split and across splits (leakage).

Token ids are names, not quantities: ids 5 and 6 are unrelated words, and one inserted token
shifts every later position, so the Euclidean distance of :mod:`dlclinic.functional.duplicates`
says nothing about two rows of ids. Rows here are compared as texts.

Exact copies. A row's text is its ids other than the padding id, in order
(:func:`dlclinic.functional.duplicates.row_keys`): rows that hold the same text with more
or less padding, or padding on the other side, are the same text.

Near copies: MinHash (Broder 1997, *On the resemblance and containment of documents*) and
locality-sensitive hashing by bands (Leskovec, Rajaraman & Ullman, *Mining of Massive
Datasets*, ch. 3), both from ``datasketch``. A row is a multiset of shingles, its token
n-grams (``ngram``; unigrams for rows shorter than ``ngram``), the k-th occurrence of an
n-gram being a shingle of its own, so the Jaccard index of two shingle sets is the weighted
(Ruzicka) Jaccard of the n-gram counts. One edit changes at most ``n`` shingles on each side,
so ``k`` substituted tokens in a row of ``L`` keep ``J ≥ (L − nk) / (L + nk)``: at the default
threshold 0.8, unigrams tolerate about one changed token in nine, 3-grams one in 27. Unigrams
are the default because classification inputs are short (a sentence, a review): with 3-grams,
one substituted token in a 12-token row already gives ``J = 0.54``.

Exactness and misses. The LSH only proposes candidates; each is verified with the exact
Jaccard of the two shingle sets (64-bit shingle codes), so every reported pair is at or above
the threshold. A pair of Jaccard ``s`` becomes a candidate with probability
``1 − (1 − s^r)^b`` for ``b`` bands of ``r`` rows; :func:`lsh_layout` takes the layout with
the fewest candidates whose miss probability at the threshold is at most ``max_miss`` (1 %),
and pairs above the threshold are missed less often. (datasketch's own layout balances false
positives against false negatives, and misses 60 % of the pairs at a threshold of 0.8; false
positives cost only a verification here.) Of a query's candidates, the ``verify`` best by
MinHash estimate are verified.

Within a split the search is greedy, as deduplication keeps the first copy: rows are taken in
order, a row that near-copies an earlier kept row is paired with the closest such row and is
not indexed itself, so a cluster of many copies costs one index entry. A row similar only to a
dropped copy is therefore not paired. Memory is linear in the number of rows (the shingles,
one ``num_perm`` signature per row, ``b`` index entries per kept row); no N × N array exists.
datasketch's index holds a Python set per bucket, about 7 KB per indexed row with the default
layout (measured: 150 MB for 20,000 rows), and costs about 0.2 ms of CPU per row.

Written here, not in datasketch: the shingling of padded id rows, the band layout chosen for
recall, and the exact verification; datasketch leaves those to the caller.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlclinic.functional.duplicates import DuplicatePairs, pattern_ids

__all__ = [
    "LshLayout",
    "MinHashSettings",
    "Shingles",
    "find_token_cross_duplicates",
    "find_token_near_duplicates",
    "jaccard",
    "lsh_layout",
    "minhash_signatures",
    "shingle_sets",
]

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_LOW32 = np.uint64(0xFFFFFFFF)
# distances of near (non-exact) pairs are at least this, so that 0 always means the same text
_NOT_EXACT = 1e-9


def _mix(h: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser (Steele, Lea & Flood 2014): a bijection of uint64 that spreads every bit."""
    h = np.asarray(h, dtype=np.uint64)
    h = (h ^ (h >> np.uint64(30))) * _M1
    h = (h ^ (h >> np.uint64(27))) * _M2
    return h ^ (h >> np.uint64(31))


@dataclass(frozen=True)
class Shingles:
    """Each row's shingle codes (sorted, unique uint64) in one flat array: row ``i`` is ``codes[offsets[i]:offsets[i+1]]``."""

    codes: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return int(len(self.offsets) - 1)

    def row(self, i: int) -> np.ndarray:
        """The shingle codes of row ``i``."""
        return self.codes[self.offsets[i] : self.offsets[i + 1]]


def _compact(x: np.ndarray, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ids other than ``pad_id`` moved to the front (order kept), as uint64, and the row lengths."""
    ids = np.asarray(x, dtype=np.int64).reshape(len(x), -1)
    real = ids != pad_id
    order = np.argsort(~real, axis=1, kind="stable")
    return np.take_along_axis(ids, order, axis=1).astype(np.uint64), real.sum(axis=1)


def _grams(ids: np.ndarray, lengths: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, code) of every n-gram of the compacted rows, and of every token of the rows shorter than ``n``."""
    t = ids.shape[1]
    width = max(t - n + 1, 0)
    grams = np.broadcast_to(_mix(np.array([n], dtype=np.uint64)), (len(ids), width))
    for k in range(n):
        grams = _mix(grams ^ ids[:, k : k + width])
    full = np.arange(width)[None, :] <= (lengths - n)[:, None]
    short = (lengths < n)[:, None] & (np.arange(t)[None, :] < lengths[:, None])
    unigrams = _mix(_mix(np.array([1], dtype=np.uint64)) ^ ids)
    rows = np.concatenate([np.nonzero(full)[0], np.nonzero(short)[0]])
    return rows, np.concatenate([grams[full], unigrams[short]])


def shingle_sets(x: np.ndarray, *, ngram: int = 1, pad_id: int = 0) -> Shingles:
    """The shingles of each token row: its n-grams as a multiset (see the module docstring).

    Example:
        >>> s = shingle_sets(np.array([[7, 7, 8, 0], [0, 8, 7, 7], [7, 8, 0, 0]]))
        >>> len(s.row(0)), bool(np.array_equal(s.row(0), s.row(1))), jaccard(s.row(0), s.row(2))
        (3, True, 0.6666666666666666)
    """
    if ngram < 1:
        raise ValueError(f"`ngram >= 1` must hold, but got ngram={ngram}")
    ids, lengths = _compact(x, pad_id)
    rows, codes = _grams(ids, lengths, ngram)
    order = np.lexsort((codes, rows))
    rows, codes = rows[order], codes[order]
    pos = np.arange(len(codes))
    new = np.ones(len(codes), dtype=bool)
    new[1:] = (rows[1:] != rows[:-1]) | (codes[1:] != codes[:-1])
    rank = pos - np.maximum.accumulate(np.where(new, pos, 0))  # k-th occurrence of the n-gram in its row
    tagged = _mix(codes ^ _mix(rank.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)))
    order = np.lexsort((tagged, rows))
    offsets = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(ids)))]).astype(np.int64)
    return Shingles(codes=tagged[order], offsets=offsets)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard index of two sets of unique codes (1 for two empty sets).

    Example:
        >>> jaccard(np.array([1, 2, 3]), np.array([2, 3, 4]))
        0.5
    """
    if not len(a) and not len(b):
        return 1.0
    inter = int(np.intersect1d(a, b, assume_unique=True).size)
    return inter / (len(a) + len(b) - inter)


@dataclass(frozen=True)
class LshLayout:
    """A band layout of ``bands`` × ``rows`` MinHash values and the chance it misses a pair at ``threshold``.

    ``miss_probability`` = ``(1 − threshold^rows)^bands``: a pair whose Jaccard is exactly the
    threshold shares no band with this probability; pairs above it are missed less often.
    """

    bands: int
    rows: int
    threshold: float
    miss_probability: float


def lsh_layout(threshold: float, *, num_perm: int = 128, max_miss: float = 0.01) -> LshLayout:
    """The layout with the most rows per band (fewest candidates) that misses a pair at ``threshold`` with probability ≤ ``max_miss``.

    One row per band (every shared MinHash value makes a candidate) when none meets it.

    Example:
        >>> lsh_layout(0.8)
        LshLayout(bands=21, rows=6, threshold=0.8, miss_probability=0.0016881221818680324)
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"`0 < threshold <= 1` must hold, but got threshold={threshold}")
    best = LshLayout(num_perm, 1, threshold, (1.0 - threshold) ** num_perm)
    for r in range(2, num_perm // 2 + 1):  # datasketch needs at least two bands
        miss = (1.0 - threshold**r) ** (num_perm // r)
        if miss <= max_miss:
            best = LshLayout(num_perm // r, r, threshold, miss)
    return best


@dataclass(frozen=True)
class MinHashSettings:
    """How near copies of token rows are searched (see the module docstring).

    Attributes:
        threshold: the Jaccard index of two shingle sets at or above which rows are near copies.
        ngram: the shingle length in tokens (rows shorter than it use unigrams).
        num_perm: MinHash values per row.
        seed: the seed of the MinHash permutations (the search is deterministic).
        max_miss: the largest miss probability at the threshold allowed to the band layout.
        verify: how many candidates of a query, the best by MinHash estimate, are verified exactly.
    """

    threshold: float = 0.8
    ngram: int = 1
    num_perm: int = 128
    seed: int = 0
    max_miss: float = 0.01
    verify: int = 16

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"`0 < threshold <= 1` must hold, but got threshold={self.threshold}")
        if self.ngram < 1 or self.num_perm < 4 or self.verify < 1:
            raise ValueError(
                f"`ngram >= 1`, `num_perm >= 4` and `verify >= 1` must hold, but got ngram={self.ngram}, num_perm={self.num_perm}, verify={self.verify}"
            )

    def layout(self) -> LshLayout:
        """The band layout of these settings (:func:`lsh_layout`)."""
        return lsh_layout(self.threshold, num_perm=self.num_perm, max_miss=self.max_miss)


def minhash_signatures(shingles: Shingles, *, num_perm: int = 128, seed: int = 0) -> np.ndarray:
    """N × ``num_perm`` uint32 MinHash signatures of each row's shingles (datasketch ``MinHash``, scheme affine32).

    An empty row keeps the all-maximum signature; callers leave such rows out.
    """
    from datasketch import MinHash

    low = (shingles.codes & _LOW32).astype(np.uint32)
    rows = (low[shingles.offsets[i] : shingles.offsets[i + 1]] for i in range(len(shingles)))
    out = np.empty((len(shingles), num_perm), dtype=np.uint32)
    for i, m in enumerate(MinHash.generator(rows, num_perm=num_perm, seed=seed, hashfunc=int)):
        out[i] = m.hashvalues
    return out


@dataclass(frozen=True)
class _Side:
    """The rows of one side of a search: their row numbers, shingles and signatures."""

    rows: np.ndarray
    shingles: Shingles
    signatures: np.ndarray


def _side(x: np.ndarray, rows: np.ndarray, settings: MinHashSettings, pad_id: int) -> _Side:
    shingles = shingle_sets(x[rows], ngram=settings.ngram, pad_id=pad_id)
    return _Side(rows, shingles, minhash_signatures(shingles, num_perm=settings.num_perm, seed=settings.seed))


def _margin(threshold: float, num_perm: int) -> float:
    """How far below the threshold a MinHash estimate may fall and still be verified: 5 standard errors.

    The estimate of a pair at the threshold is Binomial(num_perm, t) / num_perm, so it falls
    below ``t − 5·sqrt(t(1 − t)/num_perm)`` with probability below 1e-6 (normal tail, 3e-7).
    """
    return 5.0 * float(np.sqrt(threshold * (1.0 - threshold) / num_perm)) + 1e-12


def _best(candidates: Iterable[int], ref: _Side, qry: _Side, k: int, settings: MinHashSettings) -> tuple[int, float]:
    """The candidate (index into ``ref``) of highest exact Jaccard ≥ ``threshold`` with query ``k``, among the ``verify`` best by MinHash estimate; (−1, 0) if none."""
    cand = np.sort(np.fromiter(candidates, dtype=np.int64))
    if not len(cand):
        return -1, 0.0
    estimate = (ref.signatures[cand] == qry.signatures[k]).mean(axis=1)
    threshold = settings.threshold
    order = np.argsort(-estimate, kind="stable")[: settings.verify]
    order = order[estimate[order] >= threshold - _margin(threshold, settings.num_perm)]
    best, best_j = -1, 0.0
    for c in cand[order]:
        j = jaccard(ref.shingles.row(int(c)), qry.shingles.row(k))
        if j >= threshold and j > best_j:
            best, best_j = int(c), j
    return best, best_j


def _index(settings: MinHashSettings) -> Any:
    from datasketch import MinHashLSH

    layout = settings.layout()
    return MinHashLSH(num_perm=settings.num_perm, params=(layout.bands, layout.rows))


def _lean(signature: np.ndarray, seed: int) -> Any:
    from datasketch import LeanMinHash

    return LeanMinHash(seed=seed, hashvalues=signature, scheme="affine32")


def _pairs(found: list[tuple[int, int, float]]) -> DuplicatePairs:
    """Pairs sorted by distance (1 − Jaccard), the unit 1."""
    found = sorted(found, key=lambda p: (p[2], p[0], p[1]))
    pairs = np.array([(i, j) for i, j, _ in found], dtype=np.int64).reshape(-1, 2)
    return DuplicatePairs(pairs=pairs, distances=np.array([d for *_, d in found], dtype=np.float64), scale=1.0)


def find_token_near_duplicates(
    x: np.ndarray, settings: MinHashSettings | None = None, *, near: bool = True, pad_id: int = 0
) -> DuplicatePairs:
    """Pairs ``(i, j)``, ``i < j``, of token rows that hold the same text (distance 0) or whose shingle sets have Jaccard ≥ the threshold (distance 1 − Jaccard).

    ``settings`` default to :class:`MinHashSettings` (Jaccard ≥ 0.8 of unigram multisets). An exact copy is paired with the first row of its text; a near copy with the closest earlier
    kept row (greedy, see the module docstring). ``near=False`` finds exact copies only and
    needs no datasketch. Rows of padding only take part in exact copies alone.

    Example:
        >>> x = np.array([[5, 6, 7, 8, 9, 10, 11, 12, 13, 0], [0, 5, 6, 7, 8, 9, 10, 11, 12, 13],
        ...               [5, 6, 7, 8, 9, 10, 11, 12, 14, 0], [21, 22, 23, 24, 0, 0, 0, 0, 0, 0]])
        >>> d = find_token_near_duplicates(x)
        >>> d.pairs.tolist(), d.distances.round(2).tolist()
        ([[0, 1], [0, 2]], [0.0, 0.2])
    """
    (ids,) = pattern_ids(x, pad_id=pad_id)
    _, first = np.unique(ids, return_index=True)
    found = [(int(first[ids[j]]), j, 0.0) for j in range(len(ids)) if first[ids[j]] != j]
    nonempty = (np.asarray(x).reshape(len(x), -1) != pad_id).any(axis=1)
    kept_rows = np.sort(first[nonempty[first]])
    if not near or len(kept_rows) < 2:
        return _pairs(found)
    settings = settings or MinHashSettings()
    side = _side(x, kept_rows, settings, pad_id)
    index = _index(settings)
    for k in range(len(kept_rows)):
        lean = _lean(side.signatures[k], settings.seed)
        match, j = _best(index.query(lean), side, side, k, settings)
        if match >= 0:
            found.append((int(kept_rows[match]), int(kept_rows[k]), max(1.0 - j, _NOT_EXACT)))
        else:
            index.insert(k, lean, check_duplication=False)
    return _pairs(found)


def find_token_cross_duplicates(
    reference: np.ndarray,
    query: np.ndarray,
    settings: MinHashSettings | None = None,
    *,
    near: bool = True,
    pad_id: int = 0,
) -> DuplicatePairs:
    """Rows of ``query`` that copy a ``reference`` text, exactly (distance 0) or with Jaccard ≥ the threshold of ``settings``: pairs ``(ref_row, query_row)``.

    One pair per query row, with its closest reference row (the first of an exact text). The two
    arrays may be padded to different widths. ``near=False`` finds exact copies only.

    Example:
        >>> ref = np.array([[5, 6, 7, 8, 9, 10, 11, 12, 13], [31, 32, 33, 34, 0, 0, 0, 0, 0]])
        >>> qry = np.array([[31, 32, 33, 34, 0, 0], [5, 6, 7, 8, 9, 10], [41, 42, 43, 0, 0, 0]])
        >>> find_token_cross_duplicates(ref, qry).pairs.tolist()
        [[1, 0]]
    """
    ref_ids, qry_ids = pattern_ids(reference, query, pad_id=pad_id)
    first: dict[int, int] = {}
    for i, p in enumerate(ref_ids.tolist()):
        first.setdefault(p, i)
    found = [(first[p], q, 0.0) for q, p in enumerate(qry_ids.tolist()) if p in first]
    ref_rows = np.array(sorted(i for i in first.values() if (reference[i] != pad_id).any()), dtype=np.int64)
    open_rows = np.array(
        [q for q, p in enumerate(qry_ids.tolist()) if p not in first and (query[q] != pad_id).any()], dtype=np.int64
    )
    if not near or not len(ref_rows) or not len(open_rows):
        return _pairs(found)
    settings = settings or MinHashSettings()
    ref, qry = _side(reference, ref_rows, settings, pad_id), _side(query, open_rows, settings, pad_id)
    index = _index(settings)
    with index.insertion_session() as session:
        for k in range(len(ref_rows)):
            session.insert(k, _lean(ref.signatures[k], settings.seed), check_duplication=False)
    for k in range(len(open_rows)):
        match, j = _best(index.query(_lean(qry.signatures[k], settings.seed)), ref, qry, k, settings)
        if match >= 0:
            found.append((int(ref_rows[match]), int(open_rows[k]), max(1.0 - j, _NOT_EXACT)))
    return _pairs(found)
