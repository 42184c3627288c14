"""Gradient-flow verdicts from per-layer gradient statistics (pure numpy).

The inputs are what :class:`dlclinic.training.TrainingMonitor` records: per sampled step
the RMS gradient of every parameter-owning layer in execution order (input → output), the
global gradient norm, and the loss of every step.

* **Vanishing** — the *depth ratio* of a layer is its RMS gradient divided by the RMS
  gradient of the output layer at the same step; its median over the sampled steps is
  robust to single noisy steps. Healthy networks (ReLU MLPs, CNNs with BN, residual nets)
  keep it within 10⁻²…10 at every layer; a saturating deep stack (sigmoid without
  normalisation) drives it below 10⁻⁵ (Glorot & Bengio, AISTATS 2010). The named layer
  is the one closest to the output whose ratio is below the limit: gradients have
  vanished from there down to the input.
* **Exploding** — NaN/Inf gradients, or a global gradient norm that grows by more than a
  factor ``explode_growth`` over its initial value (Pascanu et al., ICML 2013), or a
  depth ratio above ``1/vanish_warn`` (gradients blowing up towards the input).
* **Dead** — every gradient exactly zero after the start (a network killed by a bad step).
* **Loss spikes** — a step whose loss exceeds the running median of the previous window
  by more than ``z`` robust standard deviations (MAD·1.4826), like Lightning's
  ``SpikeDetection`` but robust to the slow downward trend. With ``z = 8`` a spike occurs
  by chance with probability < 10⁻¹⁴ per step under Gaussian noise; the heavy-tailed
  noise of mini-batch losses makes the real rate higher, which is why spikes alone only warn.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from dlclinic.core.inference import eval_mode, input_tensor

__all__ = ["GradientDiagnosis", "dead_relu_share", "diagnose_gradients", "find_loss_spikes", "layer_depth_ratios"]


def layer_depth_ratios(grad_rms: np.ndarray) -> np.ndarray:
    """Median over sampled steps of each layer's RMS gradient / the output layer's (NaN-safe).

    Example:
        >>> layer_depth_ratios(np.array([[1e-6, 1e-3, 1.0], [2e-6, 1e-3, 2.0]]))
        array([1.e-06, 7.5e-04, 1.e+00])
    """
    g = np.asarray(grad_rms, dtype=np.float64)
    if g.ndim != 2 or g.shape[1] == 0 or g.shape[0] == 0:
        return np.zeros(0)
    last = g[:, -1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where((last > 0) & np.isfinite(last) & np.isfinite(g), g / last, np.nan)
    if np.isnan(ratio).all(axis=0).all():
        return np.full(g.shape[1], np.nan)
    with np.errstate(all="ignore"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.asarray(np.nanmedian(ratio, axis=0))


def find_loss_spikes(loss: np.ndarray, *, window: int = 25, z: float = 8.0, min_rise: float = 0.5) -> np.ndarray:
    """Indices of steps whose loss jumps ``z`` robust σ above the median of the previous ``window`` steps.

    A jump must also be material: it undoes at least ``min_rise`` of the progress made
    so far (the median of the first window minus the current median), or it lifts the
    loss above its value at the first step (initialisation). Late in training the spread of
    mini-batch losses collapses, and one batch with a single hard row would otherwise
    score dozens of σ (the validation suite measured 47 % false alarms without it).
    Non-finite losses count as spikes. Example:
        >>> l = np.r_[np.linspace(2, 1, 50), 9.0, np.linspace(1, 0.9, 20)]
        >>> find_loss_spikes(l).tolist()
        [50]
    """
    x = np.asarray(loss, dtype=np.float64)
    out: list[int] = []
    head = x[: max(5, window)]
    head = head[np.isfinite(head)]
    start = float(np.median(head)) if len(head) else math.nan
    initial = float(x[0]) if len(x) and math.isfinite(x[0]) else math.inf  # the loss at initialisation
    for i in range(len(x)):
        if not math.isfinite(x[i]):
            out.append(i)
            continue
        if i < max(5, window // 2):
            continue
        prev = x[max(0, i - window) : i]
        prev = prev[np.isfinite(prev)]
        if len(prev) < 5:
            continue
        med = float(np.median(prev))
        mad = float(np.median(np.abs(prev - med))) * 1.4826
        scale = max(mad, 0.01 * abs(med), 1e-8)
        progress = start - med if math.isfinite(start) else 0.0
        material = progress <= 0 or (x[i] - med) > min_rise * progress or x[i] > initial
        if (x[i] - med) / scale > z and x[i] > 1.5 * med and material:
            out.append(i)
    return np.asarray(out, dtype=np.int64)


@dataclass(frozen=True)
class GradientDiagnosis:
    """The verdict on gradient flow.

    Attributes:
        verdict: ``healthy``, ``vanishing``, ``exploding``, ``nonfinite`` or ``dead``.
        layer: the layer the verdict names (``None`` when healthy).
        depth_ratios: per-layer median depth ratio (input → output).
        min_ratio: smallest depth ratio and ``max_ratio`` the largest.
        growth: max global gradient norm / its initial value.
        spikes: indices of loss spikes.
    """

    verdict: str
    layer: str | None
    depth_ratios: np.ndarray
    min_ratio: float
    max_ratio: float
    growth: float
    spikes: np.ndarray
    nonfinite_steps: int
    zero_grad_share: float


def diagnose_gradients(
    layers: tuple[str, ...],
    grad_rms: np.ndarray,
    grad_total: np.ndarray,
    loss: np.ndarray,
    *,
    nonfinite_grad_steps: int = 0,
    vanish_ratio: float = 1e-3,
    explode_growth: float = 100.0,
    spike_z: float = 8.0,
) -> GradientDiagnosis:
    """Classify gradient flow from monitor statistics (see the module docstring).

    Example:
        >>> g = np.array([[1e-8, 1e-4, 1.0]] * 5)
        >>> diagnose_gradients(("a", "b", "c"), g, np.ones(5), np.linspace(1, .5, 50)).verdict
        'vanishing'
    """
    ratios = layer_depth_ratios(grad_rms)
    finite = ratios[np.isfinite(ratios)]
    min_r = float(finite[:-1].min()) if len(finite) > 1 else math.nan
    max_r = float(finite[:-1].max()) if len(finite) > 1 else math.nan
    gt = np.asarray(grad_total, dtype=np.float64)
    gt_f = gt[np.isfinite(gt)]
    init = float(np.median(gt_f[: max(1, min(3, len(gt_f)))])) if len(gt_f) else math.nan
    growth = (
        float(gt_f.max() / init) if len(gt_f) and init > 0 else (math.inf if len(gt) and not len(gt_f) else math.nan)
    )
    zero_share = float(np.mean(gt_f[1:] == 0)) if len(gt_f) > 1 else 0.0
    spikes = find_loss_spikes(loss, z=spike_z)
    nonfinite_loss = int(np.sum(~np.isfinite(np.asarray(loss, dtype=np.float64))))
    verdict, layer = "healthy", None
    if nonfinite_grad_steps or nonfinite_loss:
        verdict = "nonfinite"
    elif growth > explode_growth:
        verdict = "exploding"
        if len(gt):
            g = np.asarray(grad_rms, dtype=np.float64)
            at = int(np.nanargmax(gt))
            row = g[at]
            layer = layers[int(np.nanargmax(row))] if np.isfinite(row).any() else None
    elif zero_share > 0.5:
        verdict = "dead"
    elif len(finite) > 1 and min_r < vanish_ratio:
        verdict = "vanishing"
        below = [i for i in range(len(ratios) - 1) if math.isfinite(ratios[i]) and ratios[i] < vanish_ratio]
        layer = layers[max(below)]
    elif len(finite) > 1 and max_r > 1.0 / vanish_ratio:
        verdict = "exploding"
        layer = layers[int(np.nanargmax(ratios[:-1]))]
    return GradientDiagnosis(
        verdict, layer, ratios, min_r, max_r, growth, spikes, int(nonfinite_grad_steps) + nonfinite_loss, zero_share
    )


def dead_relu_share(model: Any, x: np.ndarray, *, batch_size: int = 256) -> dict[str, float]:
    """Per ``nn.ReLU``/``ReLU6`` module, the share of units that are zero for *every* row of ``x`` (eval mode).

    Measured on a trained model over many rows, this is the dying-ReLU share proper (Lu et
    al., 2019): such units pass no gradient and no signal. The model is not changed.
    """
    alive: dict[str, Any] = {}
    handles = []

    def hook(name: str) -> Any:
        def fn(_m: Any, _i: Any, out: Any) -> None:
            if not isinstance(out, torch.Tensor) or out.dim() < 2:
                return
            dim = 1 if out.dim() in (4, 5) else out.dim() - 1
            now = (out != 0).transpose(0, dim).reshape(out.shape[dim], -1).any(dim=1)
            alive[name] = now if name not in alive else (alive[name] | now)

        return fn

    try:
        for name, m in model.named_modules():
            if type(m) in (nn.ReLU, nn.ReLU6):
                handles.append(m.register_forward_hook(hook(name)))
        with eval_mode(model), torch.inference_mode():
            for i in range(0, len(x), batch_size):
                model(input_tensor(x[i : i + batch_size]))
    finally:
        for h in handles:
            h.remove()
    return {name: float(1.0 - a.float().mean()) for name, a in alive.items()}
