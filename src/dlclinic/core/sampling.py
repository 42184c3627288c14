"""Row sampling that keeps the class mix."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

__all__ = ["stratified_rows"]


def stratified_rows(y: np.ndarray, max_rows: int, seed: int = 0) -> np.ndarray:
    """At most ``max_rows`` row indices, each class kept in proportion (all rows when fewer), sorted."""
    n = len(y)
    if max_rows >= n:
        return np.arange(n)
    try:
        keep, _ = train_test_split(np.arange(n), train_size=int(max_rows), stratify=y, random_state=seed)
    except ValueError:  # a class with one row cannot be stratified
        keep = np.random.default_rng(seed).permutation(n)[:max_rows]
    return np.sort(keep)
