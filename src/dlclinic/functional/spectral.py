"""Spectral analysis of weight matrices: ESD, heavy-tailed power-law exponent α, norms.

Heavy-Tailed Self-Regularisation (Martin & Mahoney, JMLR 2021; Martin, Peng & Mahoney,
Nature Communications 2021) reads the training quality of a layer from the empirical
spectral density (ESD) of its correlation matrix ``X = WᵀW``: a random (untrained) layer
follows Marchenko–Pastur, whose top edge a power law fits only with a very steep
exponent (α ≳ 6); well-trained layers develop a heavy tail with α in [2, 6]; α < 2
signals a very heavy, possibly over-fitted tail.

Why written here with numpy instead of ``weightwatcher``: weightwatcher is not a
dependency of dlclinic (it pulls pandas/matplotlib plotting, TensorFlow-style layer
walkers and prints at import), while the part we need is small: eigenvalues by SVD and
the continuous power-law maximum-likelihood fit with ``xmin`` chosen by the
Kolmogorov–Smirnov distance (Clauset, Shalizi & Newman, SIAM Review 2009), which is
what weightwatcher does through the ``powerlaw`` package. The fit here is vectorised
over all candidate ``xmin`` at once and is checked against ``powerlaw.Fit`` in the test
suite.

Conventions (as weightwatcher): a Linear weight ``out×in`` is one matrix; a conv kernel
``out×in×k₁×k₂`` gives ``k₁·k₂`` matrices ``out×in`` whose eigenvalues are pooled into one
ESD; eigenvalues are the squared singular values (no 1/N normalisation: α is
scale-invariant). Layers with fewer than ``min_evals`` eigenvalues are not fitted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy.sparse.linalg import svds

__all__ = [
    "LayerSpectrum",
    "PowerLawFit",
    "analyze_matrices",
    "esd",
    "fit_power_law",
    "generalization_proxies",
    "layer_matrices",
    "spike_ratio",
    "squared_singular_values",
    "stable_rank",
    "structure_test",
]


@dataclass(frozen=True)
class PowerLawFit:
    """A continuous power law ``p(x) ∝ x^-alpha`` for ``x ≥ xmin``.

    ``sigma`` is the standard error of the MLE, ``(alpha − 1)/√n_tail``; ``ks`` the KS
    distance of the tail to the fit.
    """

    alpha: float
    xmin: float
    n_tail: int
    ks: float
    sigma: float


def fit_power_law(values: np.ndarray, *, xmin: float | None = None, max_candidates: int = 2000) -> PowerLawFit:
    """Fit a power-law tail by MLE, ``xmin`` minimising the KS distance (Clauset et al. 2009).

    For each candidate ``xmin`` (every distinct value except the largest, or an even
    subsample of ``max_candidates`` of them), ``alpha = 1 + n / Σ log(x/xmin)`` over the
    tail and ``D = max |F_fit(x) − F_emp(x)|`` with ``F_emp = (0..n−1)/n`` at the sorted
    tail values — the conventions of the ``powerlaw`` package.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x = (1 - rng.random(5000)) ** (-1 / 2.5)   # alpha = 3.5 above xmin = 1
        >>> round(fit_power_law(x).alpha, 1)
        3.5
    """
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    x = x[np.isfinite(x) & (x > 0)]
    n = len(x)
    if n < 3:
        return PowerLawFit(math.nan, math.nan, 0, math.nan, math.nan)
    logs = np.log(x)
    suffix = np.cumsum(logs[::-1])[::-1]  # suffix[i] = Σ_{j≥i} log x_j
    if xmin is not None:
        starts = np.array([int(np.searchsorted(x, xmin, side="left"))])
    else:
        _, first = np.unique(x, return_index=True)
        starts = first[:-1]  # never the largest value
        if len(starts) > max_candidates:
            starts = starts[np.linspace(0, len(starts) - 1, max_candidates).round().astype(int)]
    best: PowerLawFit | None = None
    for i in starts:
        i = int(i)
        nt = n - i
        if nt < 2:
            continue
        denom = suffix[i] - nt * logs[i]
        if denom <= 0:
            continue
        alpha = 1.0 + nt / denom
        tail = x[i:]
        fitted = 1.0 - (tail / x[i]) ** (1.0 - alpha)
        emp = np.arange(nt) / nt
        d = float(np.max(np.abs(fitted - emp)))
        if best is None or d < best.ks:
            best = PowerLawFit(float(alpha), float(x[i]), nt, d, float((alpha - 1) / math.sqrt(nt)))
    return best or PowerLawFit(math.nan, math.nan, 0, math.nan, math.nan)


def layer_matrices(weight: np.ndarray) -> list[np.ndarray]:
    """The 2-D matrices of one weight tensor: itself (Linear), or one ``out×in`` per kernel position (conv)."""
    w = np.asarray(weight, dtype=np.float64)
    if w.ndim == 2:
        return [w]
    if w.ndim >= 3:
        out, inp = w.shape[:2]
        flat = w.reshape(out, inp, -1)
        return [flat[:, :, k] for k in range(flat.shape[2])]
    return []


def squared_singular_values(matrix: np.ndarray) -> np.ndarray:
    """Eigenvalues of the smaller Gram matrix (``WWᵀ`` or ``WᵀW``): the squared singular values, cheaply."""
    m = np.asarray(matrix, dtype=np.float64)
    gram = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    return np.clip(np.linalg.eigvalsh(gram), 0.0, None)


def esd(matrices: Iterable[np.ndarray]) -> np.ndarray:
    """Pooled eigenvalues of ``WᵀW`` (squared singular values) of each matrix, sorted ascending."""
    parts = [squared_singular_values(m) for m in matrices]
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0)


def stable_rank(matrix: np.ndarray) -> float:
    """``‖W‖_F² / ‖W‖_2²``: how many directions carry the energy (≤ rank)."""
    ev = squared_singular_values(matrix)
    return float(ev.sum() / max(ev.max(), 1e-300)) if len(ev) else math.nan


@dataclass(frozen=True)
class LayerSpectrum:
    """Spectral summary of one layer.

    ``alpha`` is ``nan`` when the layer has fewer than ``min_evals`` eigenvalues.
    ``spectral_norm`` and ``stable_rank`` refer to the whole weight flattened to
    ``out × (in·k₁·k₂)``; ``lambda_max`` to the pooled ESD.
    """

    name: str
    shape: tuple[int, ...]
    n_evals: int
    alpha: float
    alpha_sigma: float
    xmin: float
    ks: float
    n_tail: int
    lambda_max: float
    spectral_norm: float
    frobenius_norm: float
    stable_rank: float
    l21_norm: float

    @property
    def alpha_weighted(self) -> float:
        """``α · log10 λ_max`` (weightwatcher's ``alpha_weighted``)."""
        return self.alpha * math.log10(self.lambda_max) if self.lambda_max > 0 else math.nan


def analyze_matrices(weights: Iterable[tuple[str, np.ndarray]], *, min_evals: int = 50) -> list[LayerSpectrum]:
    """One :class:`LayerSpectrum` per named weight tensor (2-D or conv ≥3-D)."""
    out: list[LayerSpectrum] = []
    for name, weight in weights:
        w = np.asarray(weight, dtype=np.float64)
        mats = layer_matrices(w)
        if not mats:
            continue
        evals = esd(mats)
        fit = (
            fit_power_law(evals) if len(evals) >= min_evals else PowerLawFit(math.nan, math.nan, 0, math.nan, math.nan)
        )
        flat = w.reshape(w.shape[0], -1)
        top = float(squared_singular_values(flat).max())
        fro2 = float((flat**2).sum())
        out.append(
            LayerSpectrum(
                name=name,
                shape=tuple(int(d) for d in w.shape),
                n_evals=int(len(evals)),
                alpha=fit.alpha,
                alpha_sigma=fit.sigma,
                xmin=fit.xmin,
                ks=fit.ks,
                n_tail=fit.n_tail,
                lambda_max=float(evals[-1]) if len(evals) else math.nan,
                spectral_norm=math.sqrt(top),
                frobenius_norm=math.sqrt(fro2),
                stable_rank=fro2 / max(top, 1e-300),
                l21_norm=float(np.linalg.norm(flat, axis=0).sum()),  # Σ over input columns of their L2 norms
            )
        )
    return out


def generalization_proxies(layers: Iterable[LayerSpectrum]) -> dict[str, float]:
    """Norm-based capacity measures of the whole network (logs, since products explode).

    * ``log_spectral_product`` = Σ log ‖W‖₂ (Lipschitz bound; Bartlett et al. 2017);
    * ``log_frobenius_product`` = Σ log ‖W‖_F (Neyshabur et al. 2015);
    * ``log_spectral_complexity`` = Σ log ‖W‖₂ + 3/2 · log Σ (‖Wᵀ‖₂,₁/‖W‖₂)^{2/3}
      (Bartlett, Foster & Telgarsky, NeurIPS 2017, without the reference matrices);
    * ``mean_alpha`` and ``mean_alpha_weighted`` over fitted layers (Martin & Mahoney 2021).

    They rank models of one architecture on one task; their absolute values mean little.
    """
    items = list(layers)
    if not items:
        return {}
    spec = np.array([max(layer.spectral_norm, 1e-300) for layer in items])
    fro = np.array([max(layer.frobenius_norm, 1e-300) for layer in items])
    ratio = np.array([(layer.l21_norm / max(layer.spectral_norm, 1e-300)) ** (2 / 3) for layer in items])
    alphas = np.array([layer.alpha for layer in items if math.isfinite(layer.alpha)])
    weighted = np.array([layer.alpha_weighted for layer in items if math.isfinite(layer.alpha_weighted)])
    return {
        "log_spectral_product": float(np.log(spec).sum()),
        "log_frobenius_product": float(np.log(fro).sum()),
        "log_spectral_complexity": float(np.log(spec).sum() + 1.5 * math.log(max(ratio.sum(), 1e-300))),
        "mean_alpha": float(alphas.mean()) if len(alphas) else math.nan,
        "mean_alpha_weighted": float(weighted.mean()) if len(weighted) else math.nan,
    }


def _unfoldings(w: np.ndarray) -> list[np.ndarray]:
    """A Linear's matrix; a conv kernel's output-channel, input-channel and (when > 1) kernel-position unfoldings."""
    if w.ndim <= 2:
        return [w.reshape(w.shape[0], -1)]
    out, inp = w.shape[:2]
    mats = [w.reshape(out, -1), np.swapaxes(w, 0, 1).reshape(inp, -1)]
    if int(np.prod(w.shape[2:])) > 1:
        mats.append(w.reshape(out * inp, -1).T)
    return mats


def _lambda_max(m: np.ndarray) -> float:
    """Largest squared singular value: exact (Gram eigenvalues) for small matrices, ARPACK for large ones."""
    if min(m.shape) <= 512:
        return float(squared_singular_values(m).max())
    s = svds(m, k=1, return_singular_vectors=False, v0=np.ones(min(m.shape)), random_state=0)
    return float(s.max()) ** 2


def structure_test(
    weight: np.ndarray, shuffles: int = 20, seed: int = 0, *, decided_above: float | None = None
) -> tuple[float, float]:
    """``(ratio, z)``: learned structure of a weight tensor against random permutations of its entries.

    ``ratio`` is λ_max over the mean λ_max of permuted copies, averaged over the tensor's
    unfoldings (a Linear: its matrix); ``z`` how many permutation standard deviations the
    sum of those ratios lies above its permutation distribution. An untrained i.i.d. layer
    scores ratio ≈ 1 and z ≈ N(0, 1); learned low-rank structure raises both.

    ``decided_above``: stop after 3 permutations when the ratio is already above this value
    (the caller flags only low ratios, so the other permutations cannot change its verdict;
    a large trained layer then costs 3 permutations instead of ``shuffles``).
    """
    w = np.asarray(weight, dtype=np.float64)
    obs = np.array([_lambda_max(m) for m in _unfoldings(w)])
    rng = np.random.default_rng(seed)

    def permuted() -> list[float]:
        return [_lambda_max(m) for m in _unfoldings(rng.permutation(w.ravel()).reshape(w.shape))]

    rows = [permuted() for _ in range(3)]
    if decided_above is None or float((obs / np.maximum(np.mean(rows, axis=0), 1e-300)).mean()) <= decided_above:
        rows += [permuted() for _ in range(max(shuffles, 3) - 3)]
    null = np.array(rows)
    mean = np.maximum(null.mean(0), 1e-300)
    stat, stats = float((obs / mean).sum()), (null / mean).sum(1)
    sd = float(stats.std(ddof=1))
    z = (stat - float(stats.mean())) / sd if sd > 0 else (0.0 if stat <= float(stats.mean()) else math.inf)
    return stat / len(obs), z


def spike_ratio(weight: np.ndarray, shuffles: int = 20, seed: int = 0) -> float:
    """λ_max over the permuted mean, averaged over unfoldings (``structure_test``'s ratio)."""
    return structure_test(weight, shuffles, seed)[0]
