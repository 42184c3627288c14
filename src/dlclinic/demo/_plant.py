"""The planted defects every demo shares: duplicates, train/test leaks and label flips, with their truth.

The functions take the rows of any modality (float images or series, or an object array of
raw texts) and a ``near_copy(rows, rng)`` that makes faint copies in that modality, so
the same seeded draws plant the same kinds of defect in the image, text and sequence demos.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = ["DemoTruth", "NearCopy", "Planted", "no_defects", "plant_defects", "truth_of"]

NearCopy = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class DemoTruth:
    """What was planted, as row positions in the demo's splits."""

    flipped: np.ndarray  # train rows whose label was flipped
    original_labels: np.ndarray  # train labels before flipping
    duplicate_pairs: np.ndarray  # (k, 2) train rows (original, copy)
    leak_pairs: np.ndarray  # (k, 2) (train row, test row)
    rare_class: int | None  # the class kept rare in train (None: no rare class planted)
    deploy_shift: str
    extra: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Planted:
    """The splits after planting, and where the defects are."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    original_labels: np.ndarray
    flipped: np.ndarray
    duplicate_pairs: np.ndarray
    leak_pairs: np.ndarray


def _add_duplicates(
    x_tr: np.ndarray, y_tr: np.ndarray, near_copy: NearCopy, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Near-duplicates inside train: 20 exact, 20 near copies, appended at the end; and the (original, copy) pairs."""
    n = len(y_tr)
    src = rng.choice(n, size=40, replace=False)
    copies = x_tr[src].copy()
    copies[20:] = near_copy(copies[20:], rng)
    x_tr = np.concatenate([x_tr, copies.astype(x_tr.dtype)])
    y_tr = np.concatenate([y_tr, y_tr[src]])
    return x_tr, y_tr, np.stack([src, n + np.arange(40)], axis=1)


def _add_leaks(
    x_tr: np.ndarray,
    y_tr: np.ndarray,
    x_te: np.ndarray,
    y_te: np.ndarray,
    n: int,
    src: np.ndarray,
    near_copy: NearCopy,
    rng: np.random.Generator,
) -> np.ndarray:
    """Train/test leaks: 25 test rows (changed in place) become copies of train rows (13 of them near copies)."""
    candidates = np.setdiff1d(np.arange(n), src)
    leak_src = rng.choice(candidates, size=25, replace=False)
    leak_dst = rng.choice(len(y_te), size=25, replace=False)
    x_te[leak_dst] = x_tr[leak_src]
    x_te[leak_dst[12:]] = near_copy(x_te[leak_dst[12:]], rng)
    y_te[leak_dst] = y_tr[leak_src]
    return np.stack([leak_src, leak_dst], axis=1)


def plant_defects(
    x_tr: np.ndarray,
    y_tr: np.ndarray,
    x_te: np.ndarray,
    y_te: np.ndarray,
    *,
    n_classes: int,
    flip_rate: float,
    near_copy: NearCopy,
    rng: np.random.Generator,
) -> Planted:
    """Plant duplicates, leaks and label flips (in that order of random draws) into copies of the splits.

    Train gets 40 copies of its own rows appended (20 exact, 20 ``near_copy``); 25 test rows
    become copies of other train rows (12 exact, 13 near); then ``flip_rate`` of train (by the
    final train size) is relabelled to a random other class, among rows that are neither
    duplicated nor leaked, so each planted defect has one cause.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x = rng.random((200, 3)); y = np.arange(200) % 4
        >>> p = plant_defects(x, y, x[:60].copy(), y[:60].copy(), n_classes=4, flip_rate=0.1,
        ...                   near_copy=lambda r, g: r + 1e-3, rng=rng)
        >>> len(p.y_train), len(p.flipped), bool(np.all(p.y_train[p.flipped] != p.original_labels[p.flipped]))
        (240, 24, True)
    """
    x_te, y_te = x_te.copy(), y_te.copy()
    n = len(y_tr)
    x_tr, y_tr, dup_pairs = _add_duplicates(x_tr, y_tr, near_copy, rng)
    leak_pairs = _add_leaks(x_tr, y_tr, x_te, y_te, n, dup_pairs[:, 0], near_copy, rng)
    pool = np.setdiff1d(np.arange(n), np.concatenate([dup_pairs[:, 0], leak_pairs[:, 0]]))
    flipped = np.sort(rng.choice(pool, size=int(round(flip_rate * len(y_tr))), replace=False))
    original = y_tr.copy()
    y_tr = y_tr.copy()
    y_tr[flipped] = (y_tr[flipped] + rng.integers(1, n_classes, size=len(flipped))) % n_classes
    return Planted(x_tr, y_tr, x_te, y_te, original, flipped, dup_pairs, leak_pairs)


def no_defects(y_tr: np.ndarray, rare_class: int | None, deploy_shift: str = "none") -> DemoTruth:
    """The truth of a clean demo: nothing planted."""
    empty = np.zeros((0, 2), dtype=np.int64)
    return DemoTruth(np.zeros(0, dtype=np.int64), y_tr.copy(), empty, empty, rare_class, deploy_shift)


def truth_of(planted: Planted, rare_class: int | None, deploy_shift: str, **extra: object) -> DemoTruth:
    """The :class:`DemoTruth` of planted splits."""
    return DemoTruth(
        flipped=planted.flipped,
        original_labels=planted.original_labels,
        duplicate_pairs=planted.duplicate_pairs,
        leak_pairs=planted.leak_pairs,
        rare_class=rare_class,
        deploy_shift=deploy_shift,
        extra=dict(extra),
    )
