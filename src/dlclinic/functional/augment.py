"""Label-preserving data augmentation for small data sets: pure numpy, one copy per call.

torchvision is not available for CPU here, and its policies (RandAugment, AutoAugment) are
tuned for natural RGB photos; what a small data set needs first is a few cheap,
label-preserving perturbations whose benefit is then *measured*, which is what
``treat data.quantity`` does with these:

* ``shift`` (images, channels first or last): translate by up to ``max(1, H // 14)``
  pixels in each direction, zero fill — small translations do not change a class;
* ``noise`` (images and tables): Gaussian noise of ``scale`` × each feature's standard
  deviation (images: of the pixel values);
* ``blend`` (images and tables): a convex combination ``λ·x_i + (1 − λ)·x_j`` of two rows
  of the *same class*, ``λ ~ U(0.6, 1)`` — SMOTE-style interpolation inside a class, so
  the label stays exact (unlike mixup's soft labels, which need a custom loss).

On tables, ``noise`` and ``blend`` touch only continuous columns (more than
``max_levels`` distinct values): integer codes, one-hot and binary columns keep their
values, since a blended or noisy category is not a category.
"""

from __future__ import annotations

import numpy as np

from dlclinic.core.case import usable_inputs

__all__ = ["POLICIES", "augment_copy", "continuous_columns", "policies_for"]

POLICIES: dict[str, tuple[str, ...]] = {"image": ("shift", "noise", "blend"), "table": ("noise", "blend")}


def policies_for(modality: str) -> tuple[str, ...]:
    """The augmentation policies that make sense for ``modality`` (``image`` or anything else = table)."""
    return POLICIES["image" if modality == "image" else "table"]


def _shift(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if x.ndim == 4 and x.shape[1] > 4 and x.shape[-1] <= 4:  # channels last (N, H, W, C)
        return np.moveaxis(_shift(np.moveaxis(x, -1, 1), rng), 1, -1)
    h, w = x.shape[-2], x.shape[-1]
    m = max(1, h // 14)
    out = np.zeros_like(x)
    dy = rng.integers(-m, m + 1, size=len(x))
    dx = rng.integers(-m, m + 1, size=len(x))
    for i in range(len(x)):
        sy, sx = int(dy[i]), int(dx[i])
        src = x[i][..., max(0, -sy) : h - max(0, sy), max(0, -sx) : w - max(0, sx)]
        out[i][..., max(0, sy) : max(0, sy) + src.shape[-2], max(0, sx) : max(0, sx) + src.shape[-1]] = src
    return out


def _blend(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = x.copy()
    lam = rng.uniform(0.6, 1.0, size=len(x)).astype(x.dtype)
    for k in np.unique(y):
        rows = np.flatnonzero(y == k)
        partner = rows[rng.integers(0, len(rows), size=len(rows))]
        shape = (len(rows),) + (1,) * (x.ndim - 1)
        out[rows] = lam[rows].reshape(shape) * x[rows] + (1 - lam[rows]).reshape(shape) * x[partner]
    return out


def continuous_columns(x: np.ndarray, max_levels: int = 10) -> np.ndarray:
    """Boolean mask of the columns of a 2-D table with more than ``max_levels`` distinct values."""
    flat = x.reshape(len(x), -1)
    return np.array([len(np.unique(flat[:, j])) > max_levels for j in range(flat.shape[1])], dtype=bool)


def augment_copy(
    x: np.ndarray, y: np.ndarray, policy: str, *, modality: str, scale: float = 0.1, seed: int = 0, max_levels: int = 10
) -> np.ndarray:
    """One augmented copy of ``x`` (same labels ``y``) under ``policy``.

    Example:
        >>> x = np.arange(8, dtype=np.float32).reshape(4, 2); y = np.array([0, 0, 1, 1])
        >>> aug = augment_copy(x, y, "blend", modality="table", seed=0)
        >>> bool(((aug[:2] >= 0) & (aug[:2] <= 3)).all() and ((aug[2:] >= 4) & (aug[2:] <= 7)).all())
        True
    """
    if policy not in policies_for(modality):
        raise ValueError(
            f"unknown augmentation policy {policy!r} for {modality} data; expected one of {', '.join(policies_for(modality))}"
        )
    if len(x) != len(y):
        raise ValueError(f"expected as many labels as rows, but got {len(y)} labels for {len(x)} rows")
    rng = np.random.default_rng(seed)
    x = usable_inputs(np.asarray(x, dtype=np.float32))
    if policy == "shift":
        if x.ndim < 3:
            raise ValueError(f"`shift` needs image arrays (N, C, H, W) or (N, H, W), but got shape {x.shape}")
        return _shift(x, rng)
    if policy == "noise":
        sd = x.std(axis=0, keepdims=True) if modality != "image" else np.full((1,) * x.ndim, x.std(), dtype=np.float32)
        out = (x + rng.normal(0.0, 1.0, x.shape).astype(np.float32) * scale * sd).astype(np.float32)
    else:
        out = _blend(x, np.asarray(y), rng)
    if modality != "image" and x.ndim == 2:  # categorical / binary columns keep their values
        keep = ~continuous_columns(x, max_levels)
        out[:, keep] = x[:, keep]
    return out
