"""What the training remedies share: a factory of fresh models, the LR range test's suggestion,
and saving the retrained weights.

Used by the remedies of model.gradients, model.overfitting, optimization.convergence,
optimization.nonconvex and optimization.batchnorm. The user's model is never modified; new
weights go to ``out_dir`` as safetensors, written atomically.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from dlclinic.core.atomic import write_weights
from dlclinic.core.case import usable_inputs
from dlclinic.core.device import on_device
from dlclinic.core.errors import ConfigError
from dlclinic.core.recipe import seed_everything
from dlclinic.core.registry import TreatContext
from dlclinic.functional.lr_range import lr_range_test
from dlclinic.providers.training_run import fresh_model, subsample

__all__ = ["retrain_factory", "save_weights", "suggest_lr"]


def save_weights(out_dir: Path | None, model: Any, name: str = "model.safetensors") -> dict[str, str]:
    """``{"model": path}`` after writing ``model``'s weights to ``out_dir/name``; ``{}`` without ``out_dir``."""
    if out_dir is None:
        return {}
    return {"model": str(write_weights(model, Path(out_dir) / name))}


def retrain_factory(ctx: TreatContext, what: str) -> Callable[[], Any]:
    """A factory of freshly initialised models of the case's architecture (a ConfigError when there is none)."""
    case = ctx.case
    if case.model_factory is not None:
        return on_device(case.model_factory, ctx.fit_config.device)  # built where the recipe trains
    probe, how = fresh_model(case)
    if probe is None:
        raise ConfigError(f"treat {what} retrains the model, so it needs the architecture: {how}")
    return on_device(lambda: fresh_model(case)[0], ctx.fit_config.device)


def suggest_lr(ctx: TreatContext, factory: Callable[[], Any], steps: int) -> float:
    """The LR range test's suggestion for a fresh model from ``factory`` on 1,024 training rows."""
    case, cfg = ctx.case, ctx.fit_config
    rows = subsample(len(case.train), 1024, 1)
    seed_everything(cfg.seed)
    return lr_range_test(
        factory(),
        usable_inputs(case.train.x[rows]),
        case.train.y[rows],  # type: ignore[index]
        steps=steps,
        batch_size=cfg.batch_size,
        weight_decay=cfg.weight_decay,
    ).suggested_lr
