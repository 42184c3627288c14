"""Calibration maths: expected calibration error and reliability-diagram bins."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from torch import nn

from dlclinic.core.inference import first_output

__all__ = [
    "TemperatureScaled",
    "Reliability",
    "ece_calibrated_null",
    "estimate_ece",
    "fit_temperature",
    "reliability_bins",
]


@dataclass(frozen=True)
class Reliability:
    """Equal-width confidence bins: mean confidence, accuracy and count per non-empty bin."""

    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray

    @property
    def ece(self) -> float:
        total = self.count.sum()
        return float(np.sum(self.count / total * np.abs(self.accuracy - self.confidence))) if total else 0.0


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> Reliability:
    """Bin top-1 confidence into ``n_bins`` equal-width bins (Guo et al., ICML 2017)."""
    probs = np.asarray(probs, dtype=np.float64)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(labels)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins).astype(np.float64)
    sum_conf = np.bincount(which, weights=conf, minlength=n_bins)
    sum_acc = np.bincount(which, weights=correct, minlength=n_bins)
    nz = count > 0
    return Reliability(confidence=sum_conf[nz] / count[nz], accuracy=sum_acc[nz] / count[nz], count=count[nz])


def estimate_ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error of the top-1 prediction (L1, equal-width bins).

    Example:
        >>> estimate_ece(np.array([[0.9, 0.1], [0.9, 0.1]]), np.array([0, 1]))
        0.4
    """
    return round(reliability_bins(probs, labels, n_bins).ece, 12)


def ece_calibrated_null(probs: np.ndarray, n_bins: int = 15, *, resamples: int = 300, seed: int = 0) -> np.ndarray:
    """ECE values a *perfectly calibrated* model with these confidences would show on this many rows.

    Consistency resampling (Bröcker & Smith, 2007): draw "correct" with probability equal to
    the confidence and recompute the ECE. ECE is biased upwards on small samples; comparing
    the observed ECE with this null tells miscalibration from sampling noise.
    """
    conf = np.asarray(probs, dtype=np.float64).max(axis=1)
    rng = np.random.default_rng(seed)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    sum_conf = np.bincount(which, weights=conf, minlength=n_bins)
    out = np.empty(resamples)
    total = len(conf)
    for r in range(resamples):
        correct = (rng.random(total) < conf).astype(np.float64)
        sum_acc = np.bincount(which, weights=correct, minlength=n_bins)
        out[r] = np.sum(np.abs(sum_acc - sum_conf)) / total
    return out


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature ``T`` minimising the negative log-likelihood of ``softmax(logits / T)``.

    Temperature scaling (Guo et al., ICML 2017): one scalar, fitted by bounded scalar
    minimisation over ``log T`` in [-5, 8]; it changes confidences, never the predicted
    class. 1.0 for no rows.

    Example:
        >>> rng = np.random.default_rng(0); y = rng.integers(0, 3, 500)
        >>> logits = 10.0 * np.eye(3)[y] + rng.normal(0, 6, (500, 3))  # over-confident
        >>> fit_temperature(logits, y) > 1
        True
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if len(z) == 0:
        return 1.0

    def nll(log_t: float) -> float:
        return float(-log_softmax(z / math.exp(log_t), axis=1)[np.arange(len(y)), y].mean())

    return float(math.exp(minimize_scalar(nll, bounds=(-5.0, 8.0), method="bounded", options={"xatol": 1e-4}).x))


class TemperatureScaled(nn.Module):
    """``model(x) / T``: the same predictions with calibrated confidence (Guo et al., ICML 2017)."""

    temperature: torch.Tensor

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return first_output(self.model(x)) / self.temperature
