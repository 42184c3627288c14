"""Loss-landscape measurements: filter-normalised slices, sharpness, linear mode connectivity.

* :func:`filter_normalized_direction` — a random direction with each filter (row of a
  weight) rescaled to the norm of the same filter of the model; biases and 1-D
  parameters (BN) get zero (Li et al., "Visualizing the Loss Landscape of Neural Nets",
  NeurIPS 2018), so slices of differently scaled networks are comparable.
* :func:`loss_slice_1d` / :func:`loss_slice_2d` — loss at ``θ + a·d₁ (+ b·d₂)``.
* :func:`hessian_top_eigenvalue` — the largest-magnitude Hessian eigenvalue of the loss by
  power iteration on Hessian-vector products (double backprop; Pearlmutter 1994;
  Yao et al., PyHessian 2020). No dense Hessian is formed; cost ≈ 2 backward passes per
  iteration. Written by hand because PyHessian is not packaged for torch 2.x.
* :func:`interpolation_barrier` — loss along the straight line between two trained
  weight vectors; the barrier is the largest excess over the linear interpolation of the
  end-point losses (Frankle et al., ICML 2020). Buffers (BN running statistics) are
  interpolated too.

Every function works on a deep copy or restores the weights it changed, so the model
given is left exactly as it was (also on error).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from dlclinic.core.errors import ModelError
from dlclinic.core.inference import eval_mode, input_tensor, model_device

__all__ = [
    "Barrier",
    "filter_normalized_direction",
    "hessian_top_eigenvalue",
    "interpolation_barrier",
    "loss_slice_1d",
    "loss_slice_2d",
    "make_loss",
]


def make_loss(x: np.ndarray, y: np.ndarray, *, batch_size: int = 32) -> Callable[[Any], Any]:
    """``loss(model) -> scalar tensor``: mean cross-entropy over ``(x, y)`` in eval mode (graph kept).

    The function carries ``parts``: one function per batch of ``batch_size`` rows, each that
    batch's share of the mean (they sum to ``loss``). :func:`hessian_top_eigenvalue` builds
    the double-backward graph of one part at a time: for the issue-21 CNN the graph of 128
    rows held 300 MB, that of 32 rows a quarter of it.
    """
    xt = input_tensor(x)
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    n = max(len(xt), 1)

    def part(lo: int, hi: int) -> Callable[[Any], Any]:
        def share(model: Any) -> Any:
            device = model_device(model)  # the data follow the model (a no-op on its own device)
            out = model(xt[lo:hi].to(device))
            return nn.functional.cross_entropy(out, yt[lo:hi].to(device), reduction="sum") / n

        return share

    parts = [part(i, i + batch_size) for i in range(0, len(xt), batch_size)]

    def loss(model: Any) -> Any:
        total: Any = 0.0
        for share in parts:
            total = total + share(model)
        return total

    loss.parts = parts  # type: ignore[attr-defined]
    return loss


def _params(model: Any) -> list[Any]:
    return [p for p in model.parameters() if p.requires_grad]


def filter_normalized_direction(model: Any, *, seed: int = 0) -> list[Any]:
    """A random Gaussian direction, one tensor per trainable parameter, filter-normalised."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for p in _params(model):
        d = torch.randn(p.shape, generator=gen, dtype=torch.float32).to(device=p.device, dtype=p.dtype)
        if p.dim() <= 1:
            d.zero_()
        else:
            w = p.detach().reshape(p.shape[0], -1)
            dd = d.reshape(p.shape[0], -1)
            dd.mul_(w.norm(dim=1, keepdim=True) / (dd.norm(dim=1, keepdim=True) + 1e-10))
        out.append(d)
    return out


def _evaluate_at(
    model: Any, loss: Callable[[Any], Any], steps: Sequence[tuple[float, ...]], directions: Sequence[list[Any]]
) -> np.ndarray:
    params = _params(model)
    origin = [p.detach().clone() for p in params]
    values = np.empty(len(steps))
    try:
        with eval_mode(model), torch.no_grad():
            for k, coeffs in enumerate(steps):
                for j, p in enumerate(params):
                    p.copy_(origin[j] + sum(c * d[j] for c, d in zip(coeffs, directions)))
                values[k] = float(loss(model))
    finally:
        with torch.no_grad():
            for p, o in zip(params, origin):
                p.copy_(o)
    return values


def loss_slice_1d(model: Any, loss: Callable[[Any], Any], alphas: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """Loss at ``θ + α·d`` for each ``α`` (one filter-normalised direction)."""
    d = filter_normalized_direction(model, seed=seed)
    return _evaluate_at(model, loss, [(float(a),) for a in alphas], [d])


def loss_slice_2d(
    model: Any, loss: Callable[[Any], Any], alphas: np.ndarray, betas: np.ndarray, *, seed: int = 0
) -> np.ndarray:
    """Loss on the grid ``θ + α·d₁ + β·d₂`` (rows: β, columns: α)."""
    d1 = filter_normalized_direction(model, seed=seed)
    d2 = filter_normalized_direction(model, seed=seed + 1)
    grid = [(float(a), float(b)) for b in betas for a in alphas]
    return _evaluate_at(model, loss, grid, [d1, d2]).reshape(len(betas), len(alphas))


def hessian_top_eigenvalue(
    model: Any, loss: Callable[[Any], Any], *, iters: int = 50, tol: float = 1e-4, seed: int = 0
) -> tuple[float, int]:
    """``(eigenvalue, iterations)``: the largest-magnitude Hessian eigenvalue of ``loss(model)``.

    Power iteration on Hessian-vector products, stopping when the Rayleigh quotient
    changes by less than ``tol`` (relative). The model is evaluated in eval mode (BN
    running statistics, no dropout), so the Hessian is that of a fixed function.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(3, 2)
        >>> x = np.random.rand(32, 3).astype("float32"); y = np.arange(32) % 2
        >>> hessian_top_eigenvalue(net, make_loss(x, y))[0] > 0
        True
    """
    params = _params(model)
    gen = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p in params]
    norm = math.sqrt(sum(float((t * t).sum()) for t in v))
    v = [t / norm for t in v]
    eig, it = 0.0, 0
    parts = list(getattr(loss, "parts", None) or [loss])
    with eval_mode(model):
        # one part's graph at a time when the loss has several (make_loss); else the graph is kept
        kept = torch.autograd.grad(parts[0](model), params, create_graph=True) if len(parts) == 1 else None
        for it in range(1, iters + 1):
            hv = _hessian_vector(model, parts, params, v, kept)
            new = float(sum((h * t).sum() for h, t in zip(hv, v)))
            norm = math.sqrt(sum(float((h * h).sum()) for h in hv))
            if norm == 0 or not math.isfinite(norm):
                return 0.0 if norm == 0 else math.nan, it
            v = [h.detach() / norm for h in hv]
            if it > 1 and abs(new - eig) <= tol * max(abs(eig), 1e-12):
                eig = new
                break
            eig = new
    return eig, it


def _hessian_vector(
    model: Any, parts: list[Callable[[Any], Any]], params: list[Any], v: list[Any], kept: Any
) -> list[Any]:
    """``H·v`` of the sum of ``parts``; with ``kept`` (the one part's gradients, graph kept) no forward is redone."""
    if kept is not None:
        return list(torch.autograd.grad(kept, params, grad_outputs=v, retain_graph=True))
    total = [torch.zeros_like(p) for p in params]
    for share in parts:
        grads = torch.autograd.grad(share(model), params, create_graph=True)
        for acc, h in zip(total, torch.autograd.grad(grads, params, grad_outputs=v)):
            acc += h
    return total


@dataclass(frozen=True)
class Barrier:
    """Loss along the straight path between two weight vectors and its barrier height."""

    t: np.ndarray
    loss: np.ndarray
    barrier: float
    endpoint_mean: float


def interpolation_barrier(model_a: Any, model_b: Any, loss: Callable[[Any], Any], *, points: int = 11) -> Barrier:
    """Loss at ``(1−t)·θ_a + t·θ_b`` for ``t`` in [0, 1]; barrier = max(L(t) − ((1−t)L(0) + t·L(1)))."""
    sa, sb = model_a.state_dict(), model_b.state_dict()
    if sa.keys() != sb.keys():
        raise ModelError("interpolation needs two models of the same architecture; their state_dict keys differ")
    net = copy.deepcopy(model_a)
    ts = np.linspace(0.0, 1.0, points)
    values = np.empty(points)
    with eval_mode(net), torch.no_grad():
        for k, t in enumerate(ts):
            mixed = {
                key: ((1 - t) * sa[key] + t * sb[key]).to(sa[key].dtype) if sa[key].is_floating_point() else sa[key]
                for key in sa
            }
            net.load_state_dict(mixed)
            values[k] = float(loss(net))
    line = (1 - ts) * values[0] + ts * values[-1]
    return Barrier(ts, values, float(np.max(values - line)), float((values[0] + values[-1]) / 2))
