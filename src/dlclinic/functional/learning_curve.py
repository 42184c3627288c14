"""Learning curves: error versus training-set size, and the power law that extrapolates them.

``fit_power_law`` fits ``err(n) = a · n^(−b) + c`` (Hestness et al., 2017, "Deep Learning
Scaling is Predictable, Empirically") by bounded non-linear least squares; ``c`` is the
irreducible error the curve flattens to. ``samples_for_error`` inverts the fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import curve_fit

__all__ = ["PowerLaw", "fit_power_law", "samples_for_error", "stratified_subset"]


@dataclass(frozen=True)
class PowerLaw:
    """``err(n) = a · n^(−b) + c`` with its goodness of fit on the points it was fitted to."""

    a: float
    b: float
    c: float
    r2: float
    rmse: float

    def __call__(self, n: float | np.ndarray) -> np.ndarray:
        return self.a * np.power(np.asarray(n, dtype=np.float64), -self.b) + self.c

    def gain_from_doubling(self, n: float) -> float:
        """Predicted error reduction when the training set grows from ``n`` to ``2n``."""
        return float(self(n) - self(2 * n))


def fit_power_law(n: np.ndarray, err: np.ndarray, *, start: PowerLaw | None = None) -> PowerLaw:
    """Least-squares fit of ``a · n^(−b) + c`` with ``a ≥ 0``, ``0 ≤ b ≤ 2``, ``0 ≤ c ≤ 1``.

    Several points per ``n`` (seeds) are fine and make the fit more stable. ``start``
    (e.g. the fit on all points, when refitting bootstrap resamples) replaces the
    multi-start search with a single start.

    Example:
        >>> n = np.array([100, 200, 400, 800, 1600.])
        >>> law = fit_power_law(n, 2.0 * n ** -0.5 + 0.05)
        >>> round(law.b, 3), round(law.c, 3)
        (0.5, 0.05)
    """
    n = np.asarray(n, dtype=np.float64)
    err = np.asarray(err, dtype=np.float64)

    def model(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
        return a * np.power(x, -b) + c

    c0 = max(0.0, float(err.min()) * 0.5)
    b0 = 0.5
    a0 = max(1e-6, float(err.max() - c0) * float(n.min()) ** b0)
    best: tuple[float, float, float] | None = None
    best_sse = math.inf
    starts = (
        [(start.a, min(max(start.b, 1e-3), 2.0), min(max(start.c, 0.0), 1.0))]
        if start is not None
        else [(a0, b, c0) for b in (0.2, 0.5, 1.0)]
    )
    for p0 in starts:
        try:
            params, _ = curve_fit(model, n, err, p0=p0, bounds=([0.0, 0.0, 0.0], [np.inf, 2.0, 1.0]), maxfev=20000)
        except (RuntimeError, ValueError):
            continue
        sse = float(np.sum((model(n, *params) - err) ** 2))
        if sse < best_sse:
            best, best_sse = (float(params[0]), float(params[1]), float(params[2])), sse
    if best is None:  # a flat line is the honest fallback
        best = (0.0, 0.0, float(err.mean()))
        best_sse = float(np.sum((err - err.mean()) ** 2))
    sst = float(np.sum((err - err.mean()) ** 2))
    r2 = 1.0 - best_sse / sst if sst > 0 else 1.0
    return PowerLaw(a=best[0], b=best[1], c=best[2], r2=r2, rmse=math.sqrt(best_sse / len(err)))


def samples_for_error(law: PowerLaw, target_error: float) -> float:
    """Training-set size at which the fitted curve reaches ``target_error`` (``inf`` if never)."""
    if target_error <= law.c or law.a <= 0 or law.b <= 0:
        return math.inf
    return float((law.a / (target_error - law.c)) ** (1.0 / law.b))


def stratified_subset(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Row indices of a class-stratified random subset (at least one row per present class)."""
    labels = np.asarray(labels)
    out = []
    for cls in np.unique(labels):
        rows = np.flatnonzero(labels == cls)
        k = max(1, int(round(fraction * len(rows))))
        out.append(rng.choice(rows, size=min(k, len(rows)), replace=False))
    return np.sort(np.concatenate(out))
