"""Common corruptions at three severities, for images and tables, in numpy/scipy.

Images follow the spirit of ImageNet-C (Hendrycks & Dietterich, ICLR 2019): Gaussian
noise, Gaussian blur, contrast, brightness, occlusion and rotation. Written here because
torchvision is not available everywhere dlclinic runs and ``imagecorruptions`` needs
specific image sizes; these six families need only ``scipy.ndimage``. Severities are
expressed relative to the data's own value range (taken from train), so the same
severity means the same thing for [0, 1] pixels and for standardised inputs.

Tables get Gaussian feature noise (in units of each feature's train standard deviation)
and missingness (a share of entries replaced by the train mean, i.e. what mean
imputation would feed the model).

Float sequences (time series) get feature noise, missing steps (replaced by the train
mean), a time shift (the series rolled by 5/10/20 % of its length, zero-filled) and an
amplitude scaling (×0.8/0.6/0.4 or its inverse). Token ids (0 = padding) get the text
noise of the robustness literature: token masking (a share of tokens dropped to the
padding id), adjacent swaps, and substitutions by random ids of the vocabulary seen in
train (typo- or synonym-like noise); padding positions are never touched.

All functions are pure: ``(x, severity, rng, stats) -> corrupted copy``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter, rotate
from scipy.stats import binomtest, norm

__all__ = [
    "IMAGE_CORRUPTIONS",
    "SEQUENCE_CORRUPTIONS",
    "SEVERITIES",
    "TABLE_CORRUPTIONS",
    "TOKEN_CORRUPTIONS",
    "DataStats",
    "PairedDrop",
    "corrupt",
    "corruption_names",
    "data_stats",
    "paired_drop",
]

SEVERITIES = (1, 2, 3)


@dataclass(frozen=True)
class DataStats:
    """What a corruption needs to know about clean data: value range, per-feature mean and std."""

    low: float
    high: float
    mean: np.ndarray
    std: np.ndarray

    @property
    def span(self) -> float:
        return max(self.high - self.low, 1e-12)


def data_stats(x: np.ndarray, chunk: int = 4096) -> DataStats:
    """Range and per-feature moments of (finite) training data.

    Two passes over ``chunk`` rows at a time in float64 (the mean, then the squared
    deviations): the same numbers as ``nanmean``/``nanstd`` of the whole array without ever
    holding a float64 copy of it (a 60,000-image split would need several, ~0.4 GB each).
    """
    low, high = np.inf, -np.inf
    total = np.zeros(x.shape[1:])
    count = np.zeros(x.shape[1:])
    for i in range(0, len(x), chunk):
        b = np.asarray(x[i : i + chunk], dtype=np.float64)
        ok = np.isfinite(b)
        if ok.any():
            low, high = min(low, float(b[ok].min())), max(high, float(b[ok].max()))
        total += np.where(ok, b, 0.0).sum(axis=0)
        count += ok.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
        squares = np.zeros(x.shape[1:])
        for i in range(0, len(x), chunk):
            b = np.asarray(x[i : i + chunk], dtype=np.float64)
            squares += np.where(np.isfinite(b), (b - mean) ** 2, 0.0).sum(axis=0)
        std = np.sqrt(squares / count)
    if not np.isfinite(low):
        low, high = 0.0, 1.0
    return DataStats(low, high, np.nan_to_num(mean), np.nan_to_num(std))


def _spatial_axes(x: np.ndarray) -> tuple[int, int]:
    """The last two axes of a batch of images (N, [C,] H, W)."""
    if x.ndim < 3:
        raise ValueError(f"image corruptions expect a batch (N, [C,] H, W), found shape {x.shape}")
    return x.ndim - 2, x.ndim - 1


def _noise(x: np.ndarray, s: int, rng: np.random.Generator, st: DataStats) -> np.ndarray:
    sigma = (0.04, 0.08, 0.16)[s - 1] * st.span
    return np.clip(x + rng.normal(0, sigma, size=x.shape), st.low, st.high)


def _blur(x: np.ndarray, s: int, rng: np.random.Generator, st: DataStats) -> np.ndarray:

    h = x.shape[-1]
    sigma_px = (0.6, 1.0, 1.6)[s - 1] * max(h / 28.0, 0.5)
    sigma = [0.0] * x.ndim
    for a in _spatial_axes(x):
        sigma[a] = sigma_px
    return gaussian_filter(x, sigma=sigma, mode="nearest")


def _contrast(x: np.ndarray, s: int, rng: np.random.Generator, st: DataStats) -> np.ndarray:
    c = (0.6, 0.4, 0.25)[s - 1]
    axes = _spatial_axes(x)
    m = x.mean(axis=axes, keepdims=True)
    return np.clip(m + (x - m) * c, st.low, st.high)


def _brightness(x: np.ndarray, s: int, rng: np.random.Generator, st: DataStats) -> np.ndarray:
    return np.clip(x + (0.1, 0.2, 0.35)[s - 1] * st.span, st.low, st.high)


def _occlusion(x: np.ndarray, s: int, rng: np.random.Generator, st: DataStats) -> np.ndarray:
    """A square patch (side 20/30/40 % of the image) at a random place, set to the data's low value."""
    out = x.copy()
    ah, aw = _spatial_axes(x)
    h, w = x.shape[ah], x.shape[aw]
    side = max(1, int(round((0.2, 0.3, 0.4)[s - 1] * min(h, w))))
    for i in range(len(x)):
        r, c = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        out[i, ..., r : r + side, c : c + side] = st.low
    return out


def _rotation(x: np.ndarray, s: int, rng: np.random.Generator, st: DataStats) -> np.ndarray:

    deg = (10.0, 20.0, 35.0)[s - 1]
    out = np.empty_like(x)
    ah, aw = _spatial_axes(x)
    for i in range(len(x)):
        angle = deg * (1 if rng.random() < 0.5 else -1)
        out[i] = rotate(x[i], angle, axes=(ah - 1, aw - 1), reshape=False, order=1, mode="constant", cval=st.low)
    return out


def _feature_noise(x: np.ndarray, s: int, rng: np.random.Generator, st: DataStats) -> np.ndarray:
    scale = (0.1, 0.25, 0.5)[s - 1]
    std = np.broadcast_to(st.std, x.shape[1:])
    return x + rng.normal(size=x.shape) * scale * std


def _missingness(x: np.ndarray, s: int, rng: np.random.Generator, st: DataStats) -> np.ndarray:
    share = (0.05, 0.15, 0.3)[s - 1]
    mask = rng.random(x.shape) < share
    return np.where(mask, np.broadcast_to(st.mean, x.shape[1:]), x)


def _time_axis(x: np.ndarray) -> int:
    """The time axis of N × T or N × C × T series."""
    return x.ndim - 1


def _time_shift(x: np.ndarray, s: int, rng: np.random.Generator, st: DataStats) -> np.ndarray:
    t = x.shape[_time_axis(x)]
    k = max(1, int(round((0.05, 0.1, 0.2)[s - 1] * t)))
    out = np.zeros_like(x)
    for i in range(len(x)):
        if rng.random() < 0.5:
            out[i, ..., k:] = x[i, ..., : t - k]
        else:
            out[i, ..., : t - k] = x[i, ..., k:]
    return out


def _scaling(x: np.ndarray, s: int, rng: np.random.Generator, st: DataStats) -> np.ndarray:
    factor = (0.8, 0.6, 0.4)[s - 1]
    mean = np.broadcast_to(st.mean, x.shape[1:])
    signs = np.where(rng.random(len(x)) < 0.5, factor, 1.0 / factor).reshape((-1,) + (1,) * (x.ndim - 1))
    return mean + (x - mean) * signs


def _token_positions(x: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """A mask of about ``share`` of the non-padding positions."""
    return (x != 0) & (rng.random(x.shape) < share)


def _token_mask(x: np.ndarray, s: int, rng: np.random.Generator, st: DataStats) -> np.ndarray:
    return np.where(_token_positions(x, (0.05, 0.1, 0.2)[s - 1], rng), 0, x)


def _token_swap(x: np.ndarray, s: int, rng: np.random.Generator, st: DataStats) -> np.ndarray:
    out = x.copy()
    pick = _token_positions(x[:, :-1], (0.05, 0.1, 0.2)[s - 1], rng) & (x[:, 1:] != 0)
    rows, cols = np.nonzero(pick)
    out[rows, cols], out[rows, cols + 1] = x[rows, cols + 1], x[rows, cols]
    return out


def _token_substitution(x: np.ndarray, s: int, rng: np.random.Generator, st: DataStats) -> np.ndarray:
    pick = _token_positions(x, (0.05, 0.1, 0.2)[s - 1], rng)
    high = max(int(st.high), 1)
    return np.where(pick, rng.integers(1, high + 1, size=x.shape), x)


Corruption = Callable[[np.ndarray, int, np.random.Generator, DataStats], np.ndarray]

IMAGE_CORRUPTIONS: Mapping[str, Corruption] = {
    "gaussian_noise": _noise,
    "blur": _blur,
    "contrast": _contrast,
    "brightness": _brightness,
    "occlusion": _occlusion,
    "rotation": _rotation,
}
TABLE_CORRUPTIONS: Mapping[str, Corruption] = {"feature_noise": _feature_noise, "missingness": _missingness}
SEQUENCE_CORRUPTIONS: Mapping[str, Corruption] = {
    "feature_noise": _feature_noise,
    "missingness": _missingness,
    "time_shift": _time_shift,
    "scaling": _scaling,
}
TOKEN_CORRUPTIONS: Mapping[str, Corruption] = {
    "token_mask": _token_mask,
    "token_swap": _token_swap,
    "token_substitution": _token_substitution,
}
_BY_MODALITY = {"image": IMAGE_CORRUPTIONS, "sequence": SEQUENCE_CORRUPTIONS, "tokens": TOKEN_CORRUPTIONS}


def corruption_names(modality: str) -> tuple[str, ...]:
    """The corruption families that apply to data of this modality (tables and vectors: the table ones)."""
    return tuple(_BY_MODALITY.get(modality, TABLE_CORRUPTIONS))


def corrupt(
    x: np.ndarray, name: str, severity: int, stats: DataStats, *, seed: int = 0, width: int | None = None
) -> np.ndarray:
    """A corrupted copy of ``x`` (same shape and dtype).

    ``width``: only the first ``width`` columns are corrupted (the ids of packed inputs,
    :mod:`dlclinic.core.inputs`; their masks or lengths stay as they are).

    Example:
        >>> x = np.zeros((2, 1, 8, 8), dtype=np.float32); x[:, :, 2:6, 2:6] = 1
        >>> st = data_stats(x)
        >>> bool(corrupt(x, "brightness", 3, st).min() > 0), corrupt(x, "occlusion", 1, st).shape
        (True, (2, 1, 8, 8))
    """
    table = {**IMAGE_CORRUPTIONS, **TABLE_CORRUPTIONS, **SEQUENCE_CORRUPTIONS, **TOKEN_CORRUPTIONS}
    if name not in table:
        raise ValueError(f"unknown corruption {name!r}; expected one of {', '.join(table)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be 1, 2 or 3, but got {severity}")
    # the image and table families keep the stream numbers they had before the others existed
    first = sorted({**IMAGE_CORRUPTIONS, **TABLE_CORRUPTIONS})
    order = first + sorted(set(table) - set(first))
    rng = np.random.default_rng([seed, severity, order.index(name)])
    if width is not None and x.ndim == 2 and width < x.shape[1]:
        head = table[name](np.asarray(x[:, :width], dtype=np.float64), severity, rng, stats)
        return np.concatenate([np.asarray(head, dtype=x.dtype), x[:, width:]], axis=1)
    out = table[name](np.asarray(x, dtype=np.float64), severity, rng, stats)
    return np.asarray(out, dtype=x.dtype)


@dataclass(frozen=True)
class PairedDrop:
    """Accuracy lost under a corruption, paired on the same rows.

    ``lost`` = rows right when clean and wrong when corrupted; ``gained`` the reverse.
    ``p_value`` is the one-sided exact McNemar test of "the corruption hurts" (binomial on
    the discordant rows); ``ci_low``/``ci_high`` a normal-approximation interval of the
    paired difference.
    """

    drop: float
    ci_low: float
    ci_high: float
    lost: int
    gained: int
    p_value: float


def paired_drop(correct_clean: np.ndarray, correct_corrupt: np.ndarray, *, level: float = 0.95) -> PairedDrop:
    """Paired accuracy drop with its one-sided McNemar p-value and interval.

    Example:
        >>> clean = np.ones(100, bool); corr = clean.copy(); corr[:20] = False
        >>> r = paired_drop(clean, corr); round(r.drop, 2), r.lost, r.p_value < 1e-5
        (0.2, 20, True)
    """
    a = np.asarray(correct_clean, dtype=bool)
    b = np.asarray(correct_corrupt, dtype=bool)
    n = len(a)
    lost, gained = int((a & ~b).sum()), int((~a & b).sum())
    drop = (lost - gained) / n
    p = float(binomtest(lost, lost + gained, 0.5, alternative="greater").pvalue) if lost + gained else 1.0
    var = max((lost + gained) / n - drop**2, 0.0) / n
    z = float(norm.ppf(0.5 + level / 2))
    half = z * var**0.5
    return PairedDrop(float(drop), float(drop - half), float(drop + half), lost, gained, p)
