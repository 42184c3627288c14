"""The one short, monitored training run that the training checks share.

A fresh copy of the user's architecture (``case.model_factory``, or a deep copy of the
model with every ``reset_parameters()`` called) is trained with the case's recipe
(learning rate, batch size, weight decay, schedule; overridable per check) for ``steps``
mini-batches on ``rows`` training rows (20 % of them held out for the per-epoch
validation curve), under a :class:`~dlclinic.training.TrainingMonitor` and an
:class:`~dlclinic.functional.cost.EnergyMeter`. The result (plain arrays) is cached with
``evidence.cached`` so model.gradients, model.overfitting, optimization.convergence,
compute.training_cost and compute.energy pay for it once.

A treated case may carry recipe overrides in ``case.metadata`` (``fit.lr``,
``fit.batch_size``, ``fit.weight_decay``), which the remedies set so the re-measurement
uses the treated recipe.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlclinic.core.case import Case, usable_inputs
from dlclinic.core.errors import ConfigError
from dlclinic.core.evidence import Evidence
from dlclinic.core.fingerprint import fingerprint_model
from dlclinic.core.recipe import FitConfig, fit, seed_everything
from dlclinic.functional.cost import EnergyMeter
from dlclinic.training.monitor import MonitorRecord, TrainingMonitor

__all__ = [
    "RunSettings",
    "fresh_model",
    "history_of",
    "monitored_run",
    "recipe",
    "record_of",
    "run_settings",
    "subsample",
]


def recipe(evidence: Evidence) -> Any:
    """The case's :class:`~dlclinic.core.recipe.FitConfig` (recipe) with any ``fit.*`` overrides from the case metadata."""
    cfg = getattr(evidence, "fit_config", None)
    if cfg is None and evidence.retrain is not None:
        # dlclinic.api.retrainer closes over the FitConfig it trains with; read it from there
        for cell in getattr(evidence.retrain, "__closure__", None) or ():
            try:
                contents = cell.cell_contents
            except ValueError:
                continue
            if isinstance(contents, FitConfig):
                cfg = contents
    cfg = cfg if isinstance(cfg, FitConfig) else FitConfig()
    meta = evidence.case.metadata
    over: dict[str, Any] = {}
    for key, cast in (("lr", float), ("batch_size", int), ("weight_decay", float)):
        if f"fit.{key}" in meta:
            over[key] = cast(meta[f"fit.{key}"])
    return dataclasses.replace(cfg, **over) if over else cfg


def fresh_model(case: Case) -> tuple[Any, str]:
    """``(model, how)``: a freshly initialised copy of the architecture, or ``(None, reason)``."""
    if case.model_factory is not None:
        return case.model_factory(), "a fresh model from the factory"
    model = case.model
    if model is None or not hasattr(model, "named_modules") or not hasattr(model, "state_dict"):
        return (
            None,
            "the model is not an nn.Module (e.g. ONNX): give the architecture with --model file.py:factory to examine training",
        )
    if type(model).__name__ in ("GraphModule", "ExportedProgram") or "fx" in type(model).__module__:
        return (
            None,
            "the model is an exported graph (.pt2): give the architecture with --model file.py:factory to examine training",
        )
    net = copy.deepcopy(model)
    missing = []
    for name, m in net.named_modules():
        own = list(m.parameters(recurse=False))
        if not own:
            continue
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()
        else:
            missing.append(name or type(m).__name__)
    if missing:
        return (
            None,
            f"layers {', '.join(missing[:3])} cannot be re-initialised (no reset_parameters): give --model file.py:factory to examine training",
        )
    for m in net.modules():
        if hasattr(m, "reset_running_stats"):
            m.reset_running_stats()
    return net, "a re-initialised copy of the model (reset_parameters)"


def subsample(n: int, rows: int, seed: int) -> np.ndarray:
    """``min(n, rows)`` row indices, sorted, reproducible."""
    if rows >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, rows, replace=False))


@dataclass(frozen=True)
class RunSettings:
    """Budget of the shared run: optimisation steps, training rows, monitor sampling, overrides."""

    steps: int = 300
    rows: int = 1024
    every: int = 10
    lr: float | None = None
    batch_size: int | None = None
    seed: int = 0


def run_settings(options: Any) -> RunSettings:
    """The shared run's settings from a check's options (``steps``, ``rows``, ``every``, ``lr``, ``batch_size``)."""
    return RunSettings(
        steps=options.steps, rows=options.rows, every=options.every, lr=options.lr, batch_size=options.batch_size
    )


def monitored_run(case: Case, evidence: Evidence, settings: RunSettings) -> tuple[dict[str, np.ndarray] | None, str]:
    """``(arrays, how)``: the shared run (cached), or ``(None, reason)`` when no fresh model can be built."""
    if settings.steps < 10 or settings.rows < 20 or settings.every < 1:
        raise ConfigError(
            f"the training run needs steps >= 10, rows >= 20 and every >= 1, but got ({settings.steps=}, {settings.rows=}, {settings.every=})"
        )
    cfg = recipe(evidence)
    lr = settings.lr if settings.lr is not None else cfg.lr
    bs = settings.batch_size if settings.batch_size is not None else cfg.batch_size
    seed_everything(settings.seed)
    probe, how = fresh_model(case)
    if probe is None:
        return None, how
    # the run depends on the initial weights (a remedy may change the initialisation)
    params = {
        "init": fingerprint_model(probe),
        "steps": settings.steps,
        "rows": settings.rows,
        "every": settings.every,
        "lr": lr,
        "bs": bs,
        "wd": cfg.weight_decay,
        "schedule": cfg.schedule,
        "ls": cfg.label_smoothing,
        "seed": settings.seed,
        "v": 1,
    }
    key = "training_run.monitored_run:" + repr(sorted(params.items()))
    arrays = evidence.memo(
        key,
        lambda: evidence.cached(
            "training.monitored_run", params, lambda: _train(case, evidence, settings, cfg, lr=lr, bs=bs)
        ),
    )
    return arrays, how


def _train(
    case: Case, evidence: Evidence, settings: RunSettings, cfg: FitConfig, *, lr: float, bs: int
) -> dict[str, np.ndarray]:
    """Train a fresh model under the monitor and the energy meter; the run's plain arrays."""
    seed_everything(settings.seed)
    model, _ = fresh_model(case)
    idx = subsample(len(case.train), settings.rows, settings.seed)
    x, y = usable_inputs(case.train.x[idx]), case.train.y[idx]  # type: ignore[index]
    n_fit = len(idx) - int(round(0.2 * len(idx)))
    per_epoch = max(1, math.ceil(n_fit / bs))
    epochs = max(2, math.ceil(settings.steps / per_epoch))
    fcfg = FitConfig(
        epochs=epochs,
        batch_size=bs,
        lr=lr,
        weight_decay=cfg.weight_decay,
        schedule=cfg.schedule,
        val_fraction=0.2,
        patience=10**6,
        seed=settings.seed,
        label_smoothing=cfg.label_smoothing,
        device=cfg.device,
        precision=cfg.precision,
    )
    monitor = TrainingMonitor(None, every=settings.every)
    with evidence.progress.step("monitored training run", total=epochs) as advance, EnergyMeter() as meter:
        result = fit(model, x, y, fcfg, progress=lambda e, n: advance(1), monitor=monitor)
    rec = monitor.record()
    reading = meter.reading
    out = rec.to_arrays("mon.")
    for k, v in result.history.items():
        out[f"hist.{k}"] = np.asarray(v, dtype=np.float64)
    if reading is None:  # pragma: no cover - set by EnergyMeter.__exit__
        raise RuntimeError("energy meter gave no reading")
    out.update(
        {
            "energy_joules": np.asarray(reading.joules, dtype=np.float64),
            "energy_seconds": np.asarray(reading.seconds, dtype=np.float64),
            "energy_cpu_seconds": np.asarray(reading.cpu_seconds, dtype=np.float64),
            "energy_method": np.asarray(reading.method),
            "energy_tdp": np.asarray(reading.tdp_watts or math.nan, dtype=np.float64),
            "samples_trained": np.asarray(rec.n_steps * bs, dtype=np.int64),
            "batch_size": np.asarray(bs, dtype=np.int64),
            "lr": np.asarray(lr, dtype=np.float64),
            "rows": np.asarray(len(idx), dtype=np.int64),
            "epochs": np.asarray(len(result.history["train_loss"]), dtype=np.int64),
        }
    )
    return out


def record_of(arrays: dict[str, np.ndarray]) -> Any:
    """The :class:`~dlclinic.training.MonitorRecord` stored in the run's arrays."""
    return MonitorRecord.from_arrays(arrays, "mon.")


def history_of(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-epoch ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc``, ``lr`` of the run."""
    return {k[5:]: np.asarray(v) for k, v in arrays.items() if k.startswith("hist.")}
