"""Learning-rate range test, loss-curve verdicts and the initialisation-scale probe.

* :func:`lr_range_test` — Smith's LR range test (Smith, WACV 2017; the fastai
  ``lr_find``): train a copy for a few hundred mini-batches while the LR grows
  exponentially from ``lr_min`` to ``lr_max``, smooth the loss (bias-corrected EMA) and stop
  once it exceeds ``diverge_factor`` × its minimum. The suggestion is the smaller of the LR of the
  minimum smoothed loss divided by 10 (the classic rule) and the LR of the steepest
  descent before that minimum (fastai's "steep"): the first alone over-shoots when the
  loss never diverges within the range. Written by hand because torch has no LR finder and the
  small libraries that do (torch-lr-finder) are not maintained against torch 2.x.
* :func:`analyse_loss_curve` — divergence (non-finite loss, or a smoothed loss that ends
  well above where it started / its minimum) and plateau (less than ``min_progress``
  relative improvement from start to end).
* :func:`activation_scales` — output variance of every Linear/Conv layer of a freshly
  initialised model on one batch, relative to the first layer: a signal that shrinks or
  grows by orders of magnitude through depth points at the initialisation scale
  (He et al., ICCV 2015; Glorot & Bengio, 2010).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from dlclinic.core.case import usable_inputs
from dlclinic.core.errors import ConfigError
from dlclinic.core.inference import input_tensor, model_device

__all__ = ["LossCurve", "LRRangeResult", "activation_scales", "analyse_loss_curve", "lr_range_test", "smooth"]


def smooth(values: np.ndarray, beta: float = 0.9) -> np.ndarray:
    """Bias-corrected exponential moving average (non-finite values propagate as inf)."""
    out = np.empty(len(values))
    avg = 0.0
    for i, v in enumerate(np.asarray(values, dtype=np.float64)):
        v = v if math.isfinite(v) else math.inf
        avg = beta * avg + (1 - beta) * v
        out[i] = avg / (1 - beta ** (i + 1))
    return out


@dataclass(frozen=True)
class LRRangeResult:
    """Loss against learning rate; ``suggested_lr`` = min(LR of the minimum smoothed loss / 10, LR of steepest descent)."""

    lrs: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    suggested_lr: float
    min_loss_lr: float
    diverged_lr: float | None


def lr_range_test(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    *,
    lr_min: float = 1e-6,
    lr_max: float = 10.0,
    steps: int = 100,
    batch_size: int = 64,
    weight_decay: float = 1e-4,
    diverge_factor: float = 4.0,
    seed: int = 0,
) -> LRRangeResult:
    """Run the LR range test with AdamW on a deep copy of ``model`` (the model is not changed).

    Example:
        >>> import torch
        >>> x = np.random.rand(256, 4).astype("float32"); y = (x[:, 0] > .5).astype(int)
        >>> r = lr_range_test(torch.nn.Linear(4, 2), x, y, steps=30)
        >>> 1e-6 <= r.suggested_lr <= 10
        True
    """
    if not 0 < lr_min < lr_max:
        raise ConfigError(f"`0 < lr_min < lr_max` must hold, but got ({lr_min=}, {lr_max=})")
    net = copy.deepcopy(model)
    setter = getattr(net, "set_input_stats", None)
    if callable(setter):
        flat = torch.from_numpy(usable_inputs(x.reshape(len(x), -1)))
        setter(flat.mean(0), flat.std(0))
    net.train()
    gen = torch.Generator().manual_seed(seed)
    device = model_device(net)
    xt = input_tensor(x, device=device)
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64)).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr_min, weight_decay=weight_decay)
    mult = (lr_max / lr_min) ** (1.0 / max(steps - 1, 1))
    lrs, losses = [], []
    best = math.inf
    avg = 0.0
    diverged: float | None = None
    for i in range(steps):
        lr = lr_min * mult**i
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, len(xt), (min(batch_size, len(xt)),), generator=gen).to(device)
        loss = nn.functional.cross_entropy(net(xt[idx]), yt[idx])
        value = float(loss.detach())
        lrs.append(lr)
        losses.append(value)
        avg = 0.98 * avg + 0.02 * (value if math.isfinite(value) else math.inf)
        sm = avg / (1 - 0.98 ** (i + 1))
        best = min(best, sm)
        if not math.isfinite(sm) or (i > 5 and sm > diverge_factor * best):
            diverged = lr
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    lr_arr, loss_arr = np.asarray(lrs), np.asarray(losses)
    sm_arr = smooth(loss_arr, 0.98)
    finite = np.isfinite(sm_arr)
    at = int(np.argmin(np.where(finite, sm_arr, np.inf)))
    min_lr = float(lr_arr[at])
    suggested = min_lr / 10.0
    start = max(1, len(lr_arr) // 10)
    if at - start >= 3:  # the steepest descent before the minimum, when it is earlier
        slope = np.gradient(sm_arr[start : at + 1], np.log(lr_arr[start : at + 1]))
        suggested = min(suggested, float(lr_arr[start + int(np.argmin(slope))]))
    return LRRangeResult(lr_arr, loss_arr, sm_arr, max(suggested, lr_min), min_lr, diverged)


@dataclass(frozen=True)
class LossCurve:
    """Verdict on a training-loss curve: ``converging``, ``plateau``, ``unstable`` (blew up > 10× then recovered) or ``diverging``."""

    verdict: str
    initial: float
    final: float
    minimum: float
    progress: float
    step: int | None  # where it diverged (first non-finite or blow-up step) or None


def analyse_loss_curve(loss: np.ndarray, *, min_progress: float = 0.05, blowup: float = 2.0) -> LossCurve:
    """Classify a per-step loss curve.

    ``initial`` is the first step's loss (the model at initialisation: later steps already
    moved, by a lot when the LR is far too high), ``final`` the median of the last 10 %. Diverging: a non-finite loss, or ``final > blowup × minimum`` with ``final`` above
    ``initial``. Plateau: relative progress ``(initial − final) / initial`` below
    ``min_progress``. Example:
        >>> analyse_loss_curve(np.linspace(2.3, 0.3, 200)).verdict
        'converging'
    """
    x = np.asarray(loss, dtype=np.float64)
    if len(x) < 10:
        return LossCurve(
            "converging" if len(x) and x[-1] < x[0] else "plateau",
            float(x[0]) if len(x) else math.nan,
            float(x[-1]) if len(x) else math.nan,
            float(np.nanmin(x)) if len(x) else math.nan,
            0.0,
            None,
        )
    bad = np.flatnonzero(~np.isfinite(x))
    tail = max(3, len(x) // 10)
    initial = float(x[0]) if math.isfinite(x[0]) else math.inf  # the model at initialisation, before any update
    tail_vals = x[-tail:]
    final = float(np.median(tail_vals)) if np.isfinite(tail_vals).all() else math.inf
    minimum = float(np.nanmin(np.where(np.isfinite(x), x, np.nan))) if np.isfinite(x).any() else math.inf
    progress = (
        (initial - final) / initial if math.isfinite(initial) and initial > 0 and math.isfinite(final) else -math.inf
    )
    if len(bad):
        return LossCurve("diverging", initial, final, minimum, progress, int(bad[0]))
    sm = smooth(x, 0.9)
    if final > blowup * max(minimum, 1e-12) and final > initial:
        above = np.flatnonzero(sm > blowup * max(minimum, 1e-12))
        return LossCurve("diverging", initial, final, minimum, progress, int(above[0]) if len(above) else None)
    spike = float(np.max(x)) > 10 * max(initial, 1e-12)
    if progress < min_progress:
        return LossCurve(
            "diverging" if spike else "plateau", initial, final, minimum, progress, int(np.argmax(x)) if spike else None
        )
    if spike:
        return LossCurve("unstable", initial, final, minimum, progress, int(np.argmax(x)))
    return LossCurve("converging", initial, final, minimum, progress, None)


def activation_scales(model: Any, x: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    """``(layer names, output variance)`` of every Linear/Conv layer, in execution order, on batch ``x``."""
    names = {m: n for n, m in model.named_modules()}
    found: list[tuple[str, float]] = []
    handles = []

    def hook(m: Any, _i: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            found.append((names[m], float(out.detach().float().var())))

    try:
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                handles.append(m.register_forward_hook(hook))
        with torch.no_grad():
            was = model.training
            model.train()
            setter = getattr(model, "set_input_stats", None)
            if callable(setter):
                flat = torch.from_numpy(usable_inputs(x.reshape(len(x), -1)))
                setter(flat.mean(0), flat.std(0))
            model(input_tensor(x, device=model_device(model)))
            model.train(was)
    finally:
        for h in handles:
            h.remove()
    return tuple(n for n, _ in found), np.asarray([v for _, v in found])
