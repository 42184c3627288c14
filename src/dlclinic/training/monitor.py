"""A framework-free training monitor: per-layer gradients, update ratios, activations, loss.

Works with any PyTorch loop. The contract is one call per optimisation step, *after*
``optimizer.step()`` and before the next ``zero_grad()``::

    with TrainingMonitor(model, every=10) as monitor:
        for xb, yb in loader:
            loss = loss_fn(model(xb), yb)
            optimizer.zero_grad(); loss.backward(); optimizer.step()
            monitor.step(loss)
    record = monitor.record()          # a frozen MonitorRecord of numpy arrays

What it records (every ``every``-th step is *sampled*; the loss and the step timing are
recorded on every step because they cost one float):

* per-layer RMS gradient (``‖g‖ / √numel`` over the parameters a leaf module owns), the
  global gradient norm and the update-to-weight ratio ``‖Δw‖ / ‖w‖`` (weights are
  snapshotted when the sampled step's forward starts);
* per activation module (``nn.ReLU``/``ReLU6``: dead-unit share = units that are zero for
  every row of the batch; ``nn.Sigmoid``/``nn.Tanh``: share of saturated entries, whose
  derivative is below 0.01). Activations called as functions (``F.relu``) are invisible
  to module hooks and are not counted;
* NaN/Inf in the loss (every step) and in the gradients (sampled steps);
* the time from the end of one ``step`` (or of the epoch, :meth:`TrainingMonitor.log_epoch`)
  to the start of the next forward pass (waiting for data) and the whole step time, so the
  data-loader stall share can be computed.

Why hand-written hooks rather than a library: the statistics need the parameters' owners
in execution order, a weight snapshot exactly at the start of a sampled step and hooks
that exist only during sampled steps (cheap); no maintained library exposes that
framework-free. Hooks on sub-modules are registered only for a sampled step's forward and
removed by ``step``; the one permanent forward pre-hook on the root is removed on exit
of the context manager (or :meth:`detach`), also when the loop raises.

The monitor doubles as a :func:`dlclinic.core.recipe.fit` monitor (``on_fit_start``,
``on_step``, ``on_epoch_end``, ``on_fit_end``) and backs the Lightning callback in
:mod:`dlclinic.training.lightning`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from dlclinic.core.errors import ConfigError

__all__ = ["MonitorRecord", "TrainingMonitor"]

_SIGMOID_LOW, _SIGMOID_HIGH = 0.0102, 0.9898  # σ(1-σ) < 0.01 outside this band
_TANH_SAT = 0.99499  # 1 - tanh² < 0.01 beyond this


@dataclass(frozen=True)
class MonitorRecord:
    """What a :class:`TrainingMonitor` saw, as plain numpy arrays (cacheable, comparable).

    Attributes:
        layers: parameter-owning leaf modules in execution order (input → output).
        steps: indices of the sampled steps.
        grad_rms: sampled × layers RMS gradient.
        grad_total: sampled global L2 gradient norm.
        update_ratio: sampled × layers ``‖Δw‖ / ‖w‖`` of that step.
        activations: names of the watched activation modules; ``activation_kinds`` their type.
        dead_share: sampled × activations share of dead units (NaN for non-ReLU modules).
        saturated_share: sampled × activations share of saturated entries (NaN for ReLU).
        loss: loss of every step (NaN/Inf kept as they were).
        step_seconds: wall time of every step (end of previous ``step`` or ``log_epoch`` → end of this one).
        wait_seconds: time from the end of the previous ``step`` or ``log_epoch`` to the start of the forward.
        nonfinite_grad_steps: sampled steps whose gradients had NaN/Inf.
        epochs: per-epoch metrics given to :meth:`TrainingMonitor.log_epoch`.
    """

    layers: tuple[str, ...]
    steps: np.ndarray
    grad_rms: np.ndarray
    grad_total: np.ndarray
    update_ratio: np.ndarray
    activations: tuple[str, ...]
    activation_kinds: tuple[str, ...]
    dead_share: np.ndarray
    saturated_share: np.ndarray
    loss: np.ndarray
    step_seconds: np.ndarray
    wait_seconds: np.ndarray
    nonfinite_grad_steps: np.ndarray
    epochs: Mapping[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_steps(self) -> int:
        return int(len(self.loss))

    @property
    def stall_share(self) -> float:
        """Share of step time spent before the forward pass (loading data); NaN without timings."""
        total = float(np.nansum(self.step_seconds[1:]))
        return float(np.nansum(self.wait_seconds[1:]) / total) if total > 0 else math.nan

    def to_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        """Flat ``name → array`` mapping (string tuples as unicode arrays; no pickle needed)."""
        out: dict[str, np.ndarray] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "epochs":
                for k, v in value.items():
                    out[f"{prefix}epoch.{k}"] = np.asarray(v, dtype=np.float64)
            elif isinstance(value, tuple):
                out[prefix + f.name] = np.asarray(value, dtype=str)
            else:
                out[prefix + f.name] = np.asarray(value)
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str = "") -> MonitorRecord:
        """Inverse of :meth:`to_arrays`."""
        kw: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "epochs":
                p = f"{prefix}epoch."
                kw["epochs"] = {k[len(p) :]: np.asarray(v) for k, v in arrays.items() if k.startswith(p)}
            elif f.name in ("layers", "activations", "activation_kinds"):
                kw[f.name] = tuple(str(s) for s in np.asarray(arrays[prefix + f.name]).reshape(-1))
            else:
                kw[f.name] = np.asarray(arrays[prefix + f.name])
        return cls(**kw)


def _unit_dim(t: Any) -> int:
    """The dimension that indexes units: channels for N×C×… maps, the last one otherwise."""
    return 1 if t.dim() in (4, 5) else t.dim() - 1


class TrainingMonitor:
    """Watch a model while it trains; see the module docstring for the contract.

    Args:
        model: the ``nn.Module`` being trained (the monitor never changes it).
        every: sample gradients, updates and activations every ``every`` steps (≥ 1).
        track_updates: snapshot weights on sampled steps for the update-to-weight ratio.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
        >>> with TrainingMonitor(net, every=1) as mon:
        ...     for _ in range(3):
        ...         loss = net(torch.randn(16, 4)).pow(2).mean()
        ...         opt.zero_grad(); loss.backward(); opt.step(); mon.step(loss)
        >>> mon.record().grad_rms.shape
        (3, 2)
    """

    def __init__(self, model: Any, *, every: int = 10, track_updates: bool = True) -> None:
        if every < 1:
            raise ConfigError(f"`every >= 1` must hold, but got every={every}")
        self.every = int(every)
        self.track_updates = track_updates
        self._model: Any = None
        self._root_handle: Any = None
        self._temp_handles: list[Any] = []
        self._reset()
        if model is not None:
            self._bind(model)

    # -- lifecycle ----------------------------------------------------------------------
    def _reset(self) -> None:
        self._step = 0
        self._layer_order: list[str] = []
        self._snapshot: dict[str, list[Any]] | None = None
        self._rows_grad: list[dict[str, float]] = []
        self._rows_update: list[dict[str, float]] = []
        self._rows_total: list[float] = []
        self._rows_dead: list[dict[str, float]] = []
        self._rows_sat: list[dict[str, float]] = []
        self._steps: list[int] = []
        self._nonfinite: list[int] = []
        self._loss: list[float] = []
        self._step_s: list[float] = []
        self._wait_s: list[float] = []
        self._epochs: dict[str, list[float]] = {}
        self._last_end: float | None = None
        self._forward_start: float | None = None
        self._act_now: dict[str, float] = {}
        self._sat_now: dict[str, float] = {}

    def _bind(self, model: Any) -> None:
        if not isinstance(model, nn.Module):
            raise ConfigError(f"TrainingMonitor needs an nn.Module, but got {type(model).__name__}")
        self._model = model
        self._owners = {name: m for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))}
        kinds = {nn.ReLU: "relu", nn.ReLU6: "relu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh"}
        self._acts = {name: kinds[type(m)] for name, m in model.named_modules() if type(m) in kinds}

    @property
    def attached(self) -> bool:
        return self._root_handle is not None

    def attach(self, model: Any = None) -> TrainingMonitor:
        """Register the root forward pre-hook (on ``model`` if given, else the one from ``__init__``)."""
        if model is not None:
            self._bind(model)
            self._reset()
        if self._model is None:
            raise ConfigError("TrainingMonitor.attach: no model given")
        if self._root_handle is None:
            self._root_handle = self._model.register_forward_pre_hook(self._on_forward_start)
        return self

    def detach(self) -> None:
        """Remove every hook this monitor registered (idempotent)."""
        for h in self._temp_handles:
            h.remove()
        self._temp_handles.clear()
        if self._root_handle is not None:
            self._root_handle.remove()
            self._root_handle = None
        self._snapshot = None

    def __enter__(self) -> TrainingMonitor:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    # -- fit() protocol -----------------------------------------------------------------
    def on_fit_start(self, model: Any) -> None:
        self.attach(model)

    def on_step(self, loss: Any) -> None:
        self.step(loss)

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> None:
        self.log_epoch(**metrics)

    def on_fit_end(self) -> None:
        self.detach()

    # -- hooks ----------------------------------------------------------------------------
    def _sampled(self) -> bool:
        return self._step % self.every == 0

    def _on_forward_start(self, module: Any, inputs: Any) -> None:
        if not module.training:
            return  # evaluation passes inside the loop are not training steps
        if self._forward_start is None:
            self._forward_start = time.perf_counter()
        if not self._sampled() or self._temp_handles:
            return
        if self.track_updates:
            self._snapshot = {
                name: [p.detach().clone() for p in m.parameters(recurse=False)] for name, m in self._owners.items()
            }
        self._act_now, self._sat_now = {}, {}
        order_known = bool(self._layer_order)
        for name, m in self._owners.items():
            if not order_known and not any(True for _ in m.children()):
                self._temp_handles.append(m.register_forward_pre_hook(self._order_hook(name)))
        modules = dict(self._model.named_modules())
        for name, kind in self._acts.items():
            self._temp_handles.append(modules[name].register_forward_hook(self._act_hook(name, kind)))

    def _order_hook(self, name: str) -> Any:
        def hook(_m: Any, _inp: Any) -> None:
            if name not in self._layer_order:
                self._layer_order.append(name)

        return hook

    def _act_hook(self, name: str, kind: str) -> Any:
        def hook(_m: Any, _inp: Any, out: Any) -> None:
            if not isinstance(out, torch.Tensor) or out.dim() < 2 or name in self._act_now:
                return
            with torch.no_grad():
                o = out.detach()
                if kind == "relu":
                    dim = _unit_dim(o)
                    alive = (o != 0).transpose(0, dim).reshape(o.shape[dim], -1).any(dim=1)
                    self._act_now[name] = float(1.0 - alive.float().mean())
                elif kind == "sigmoid":
                    self._sat_now[name] = float(((o < _SIGMOID_LOW) | (o > _SIGMOID_HIGH)).float().mean())
                else:
                    self._sat_now[name] = float((o.abs() > _TANH_SAT).float().mean())

        return hook

    # -- the per-step call ----------------------------------------------------------------
    def step(self, loss: Any = None) -> None:
        """Record this optimisation step; call it after ``optimizer.step()``."""
        if self._model is None or not self.attached:
            raise ConfigError(
                "TrainingMonitor.step: the monitor is not attached; use `with TrainingMonitor(model) as monitor:`"
            )
        now = time.perf_counter()
        value = math.nan if loss is None else float(loss.detach() if hasattr(loss, "detach") else loss)
        self._loss.append(value)
        self._step_s.append(now - self._last_end if self._last_end is not None else math.nan)
        self._wait_s.append(
            self._forward_start - self._last_end
            if (self._last_end is not None and self._forward_start is not None)
            else math.nan
        )
        if self._sampled() and self._model.training:
            self._sample()
        for h in self._temp_handles:
            h.remove()
        self._temp_handles.clear()
        self._snapshot = None
        self._step += 1
        self._forward_start = None
        self._last_end = time.perf_counter()

    def log_epoch(self, **metrics: float) -> None:
        """Per-epoch numbers (e.g. ``train_loss``, ``val_loss``) kept alongside the step record.

        The call also marks the end of an epoch: the next step's wait and step time are
        counted from here, so the evaluation and checkpointing that ran between the last
        step and this call are not charged to "waiting for data" (they made the in-memory
        loop of :func:`dlclinic.core.recipe.fit` look 10–20 % input-bound on small splits).
        """
        for key, value in metrics.items():
            self._epochs.setdefault(key, []).append(float(value))
        if self._last_end is not None:
            self._last_end = time.perf_counter()

    def _sample(self) -> None:
        grads: dict[str, float] = {}
        updates: dict[str, float] = {}
        sq_total = 0.0
        with torch.no_grad():
            for name, m in self._owners.items():
                params = list(m.parameters(recurse=False))
                sq, count = 0.0, 0
                for p in params:
                    if p.grad is not None:
                        sq += float(p.grad.detach().float().pow(2).sum())
                        count += p.numel()
                grads[name] = math.sqrt(sq / count) if count else math.nan
                sq_total += sq
                if self._snapshot is not None and name in self._snapshot:
                    dw = sum(
                        float((p.detach() - old).float().pow(2).sum()) for p, old in zip(params, self._snapshot[name])
                    )
                    w = sum(float(old.float().pow(2).sum()) for old in self._snapshot[name])
                    updates[name] = math.sqrt(dw) / (math.sqrt(w) + 1e-12)
        if not math.isfinite(sq_total):
            self._nonfinite.append(self._step)
        self._steps.append(self._step)
        self._rows_grad.append(grads)
        self._rows_update.append(updates)
        self._rows_total.append(math.sqrt(sq_total) if math.isfinite(sq_total) else math.inf)
        self._rows_dead.append(dict(self._act_now))
        self._rows_sat.append(dict(self._sat_now))

    # -- result ---------------------------------------------------------------------------
    def record(self) -> MonitorRecord:
        """Everything recorded so far, as a frozen :class:`MonitorRecord`."""
        order = list(self._layer_order) + [n for n in self._owners if n not in self._layer_order]
        acts = list(self._acts)

        def matrix(rows: list[dict[str, float]], names: list[str]) -> np.ndarray:
            out = np.full((len(rows), len(names)), np.nan)
            for i, row in enumerate(rows):
                for j, n in enumerate(names):
                    if n in row:
                        out[i, j] = row[n]
            return out

        return MonitorRecord(
            layers=tuple(order),
            steps=np.asarray(self._steps, dtype=np.int64),
            grad_rms=matrix(self._rows_grad, order),
            grad_total=np.asarray(self._rows_total, dtype=np.float64),
            update_ratio=matrix(self._rows_update, order),
            activations=tuple(acts),
            activation_kinds=tuple(self._acts[a] for a in acts),
            dead_share=matrix(self._rows_dead, acts),
            saturated_share=matrix(self._rows_sat, acts),
            loss=np.asarray(self._loss, dtype=np.float64),
            step_seconds=np.asarray(self._step_s, dtype=np.float64),
            wait_seconds=np.asarray(self._wait_s, dtype=np.float64),
            nonfinite_grad_steps=np.asarray(self._nonfinite, dtype=np.int64),
            epochs={k: np.asarray(v) for k, v in self._epochs.items()},
        )
