"""Batch-normalisation diagnostics: stale running statistics, train/eval gap, batch size.

* :func:`bn_layers` — the BatchNorm modules of a model.
* :func:`running_stat_shift` — per BN layer, how far the running statistics are from the
  statistics of the data actually flowing into the layer: the mean over channels of
  ``|μ_data − μ_running| / √σ²_running`` and of ``|log(σ²_data / σ²_running)|``. Stale
  statistics (after fine-tuning, compression or an input change) show as large values.
* :func:`recalibrate_bn` — a copy of the model whose running statistics are re-estimated
  on clean data (cumulative average, ``momentum=None``), the standard fix
  (Ioffe & Szegedy 2015; "BN recalibration" after pruning/quantisation).
* :func:`accuracy_in_train_mode` — accuracy when BN normalises with the statistics of
  batches of size ``b`` (as during training): shows what a tiny training batch costs
  (Wu & He, "Group Normalization", ECCV 2018).

All functions leave the given model untouched (they work on deep copies).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from dlclinic.core.inference import input_tensor, model_device

__all__ = ["accuracy_in_train_mode", "bn_layers", "recalibrate_bn", "running_stat_shift", "samples_per_statistic"]


def bn_layers(model: Any) -> list[tuple[str, Any]]:
    """``(name, module)`` of every ``nn.modules.batchnorm._BatchNorm`` (BatchNorm1d/2d/3d, SyncBN)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _BatchNorm)]


def _forward_batches(model: Any, x: np.ndarray, batch_size: int) -> None:
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            chunk = x[i : i + batch_size]
            if len(chunk) < 2:
                continue
            model(input_tensor(chunk, device=model_device(model)))


def running_stat_shift(model: Any, x: np.ndarray, *, batch_size: int = 128) -> dict[str, tuple[float, float]]:
    """Per BN layer ``(mean shift in running σ, mean |log variance ratio|)`` on data ``x``."""
    layers = bn_layers(model)
    if not layers:
        return {}
    net = copy.deepcopy(model)
    net.eval()
    sums: dict[str, list[Any]] = {}
    handles = []
    mods = dict(net.named_modules())

    def hook(name: str) -> Any:
        def fn(_m: Any, inp: Any) -> None:
            t = inp[0].detach()  # summed in float64 without a float64 copy of the activations
            dims = [d for d in range(t.dim()) if d != 1]
            n = t.numel() / t.shape[1]
            acc = sums.setdefault(
                name,
                [
                    0.0,
                    torch.zeros(t.shape[1], dtype=torch.float64, device=t.device),
                    torch.zeros(t.shape[1], dtype=torch.float64, device=t.device),
                ],
            )
            acc[0] += n
            acc[1] += t.sum(dim=dims, dtype=torch.float64)
            acc[2] += (t * t).sum(dim=dims, dtype=torch.float64)

        return fn

    try:
        for name, _ in layers:
            handles.append(mods[name].register_forward_pre_hook(hook(name)))
        _forward_batches(net, x, batch_size)
    finally:
        for h in handles:
            h.remove()
    out: dict[str, tuple[float, float]] = {}
    for name, m in layers:
        if name not in sums or m.running_mean is None or m.running_var is None:
            continue
        n, s1, s2 = sums[name]
        mu = s1 / n
        var = (s2 / n - mu * mu).clamp_min(1e-12)
        rm, rv = m.running_mean.double(), m.running_var.double().clamp_min(1e-12)
        shift = float(((mu - rm).abs() / rv.sqrt()).mean())
        logv = float((var / rv).log().abs().mean())
        out[name] = (shift, logv)
    return out


def recalibrate_bn(model: Any, x: np.ndarray, *, batch_size: int = 128) -> Any:
    """A copy of ``model`` with BN running statistics re-estimated on ``x`` (eval mode on return)."""
    net = copy.deepcopy(model)
    for _, m in bn_layers(net):
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    net.train()
    _forward_batches(net, x, batch_size)
    net.eval()
    return net


def accuracy_in_train_mode(model: Any, x: np.ndarray, y: np.ndarray, batch_size: int, *, seed: int = 0) -> float:
    """Accuracy when BN layers use the statistics of each batch of ``batch_size`` rows (dropout off)."""
    net = copy.deepcopy(model)
    net.eval()
    for _, m in bn_layers(net):
        m.train()  # batch statistics; running stats of the copy may change, the original's do not
    order = np.random.default_rng(seed).permutation(len(x))
    correct, seen = 0, 0
    with torch.no_grad():
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            if len(idx) < 2:
                continue
            out = net(input_tensor(x[idx], device=model_device(net)))
            correct += int((out.argmax(1).cpu().numpy() == y[idx]).sum())
            seen += len(idx)
    return correct / seen if seen else math.nan


def samples_per_statistic(model: Any, example: np.ndarray, batch_size: int) -> dict[str, int]:
    """Per BN layer, how many values each channel statistic averages over at ``batch_size`` (B × spatial size)."""
    layers = bn_layers(model)
    found: dict[str, int] = {}
    net = copy.deepcopy(model)
    net.eval()
    mods = dict(net.named_modules())
    handles = []

    def hook(name: str) -> Any:
        def fn(_m: Any, inp: Any) -> None:
            t = inp[0]
            found[name] = int(batch_size * (t[0].numel() // t.shape[1]))

        return fn

    try:
        for name, _ in layers:
            handles.append(mods[name].register_forward_pre_hook(hook(name)))
        with torch.no_grad():
            net(input_tensor(example[:2], device=model_device(net)))
    finally:
        for h in handles:
            h.remove()
    return found
