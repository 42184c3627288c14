"""What model.hyperparameters and model.architecture share: the short-run setup and the search remedies' plumbing.

Checks: a validation slice of train disjoint from the training rows (never test), the
current recipe (the case's fit config, overridable per option), and the reason a search
cannot run (no architecture to retrain, no labels, no optuna). Remedies: the train/val
split of a study, its Optuna storage (SQLite in the output folder by default), the model
a treatment is compared with, and the paired test comparison that verifies it.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from typing import Any

import numpy as np

from dlclinic.core.case import Case
from dlclinic.core.errors import ConfigError
from dlclinic.core.evidence import Evidence
from dlclinic.core.inference import predict_logits
from dlclinic.core.registry import TreatContext
from dlclinic.core.results import CheckResult
from dlclinic.providers.training_run import recipe

__all__ = [
    "current_recipe_runs",
    "installed",
    "run_key",
    "reference_model",
    "search_unavailable",
    "short_run_recipe",
    "split_rows",
    "study_storage",
    "validation_subset",
    "verify_on_test",
]


# --------------------------------------------------------------------------- checks


def validation_subset(
    case: Case, n_train: int, n_val: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Disjoint train/validation rows of the train split (stratification not needed at these sizes)."""
    y = case.train.y
    assert y is not None  # checked by the callers
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    n_val = min(n_val, len(y) // 4)
    val, tr = order[:n_val], order[n_val : n_val + n_train]
    x = case.train.x
    return x[tr], y[tr], x[val], y[val]


def search_unavailable(cid: str, case: Case) -> CheckResult | None:
    """A ``not_examined`` result when the short runs cannot be trained, else ``None``."""
    if case.model_factory is None:
        return CheckResult(
            id=cid,
            status="not_examined",
            summary="Needs the model's architecture to retrain it (a file.py:factory model, or no model so dlclinic trains its baseline); a .pt2/ONNX file cannot be retrained.",
        )
    if case.train.y is None:
        return CheckResult(id=cid, status="not_examined", summary="Needs labelled training data.")
    if not installed("optuna"):
        return CheckResult(id=cid, status="not_examined", summary="Needs optuna: pip install 'dlclinic[tune]'.")
    return None


def installed(*names: str) -> bool:
    """Whether every module can be imported, without importing it (optuna, onnx: a second each)."""
    for name in names:
        if name in sys.modules:
            if sys.modules[name] is None:  # marked missing (as tests do)
                return False
            continue
        try:
            if importlib.util.find_spec(name) is None:
                return False
        except (ImportError, ValueError):
            return False
    return True


def short_run_recipe(evidence: Evidence, options: Any) -> tuple[Any, dict[str, Any], int]:
    """The case's recipe, the current ``lr``/``weight_decay``/``batch_size`` and the epochs of a short run.

    ``options`` fields left at ``None`` take the recipe's value; ``epochs`` ``None`` = the
    recipe's epochs, at most ``options.max_epochs``.
    """
    cfg = recipe(evidence)
    current = {
        "lr": float(cfg.lr if options.lr is None else options.lr),
        "weight_decay": float(cfg.weight_decay if options.weight_decay is None else options.weight_decay),
        "batch_size": int(cfg.batch_size if options.batch_size is None else options.batch_size),
    }
    epochs = (
        int(options.epochs) if options.epochs is not None else max(1, min(int(cfg.epochs), int(options.max_epochs)))
    )
    return cfg, current, epochs


def current_recipe_runs(evidence: Evidence) -> dict[str, Any]:
    """Runs of the current recipe on :func:`validation_subset` rows from the seeded initial weights, by
    :func:`run_key`: model.architecture's full width is model.hyperparameters' first trial (``Evidence.memo``)."""
    return evidence.memo("search.current_recipe_runs", dict)


def run_key(current: dict[str, Any], epochs: int, options: Any, cfg: Any) -> str:
    """What a short run of the current recipe depends on (the rows, the seed, the recipe)."""
    return repr(
        (
            sorted(current.items()),
            epochs,
            options.n_train,
            options.n_val,
            options.seed,
            cfg.schedule,
            cfg.label_smoothing,
        )
    )


# --------------------------------------------------------------------------- remedies


def study_storage(ctx: TreatContext, storage: str | None) -> str | None:
    """``storage`` as given, else a SQLite file ``optuna.db`` in the output folder (``None``: in memory)."""
    if storage:
        return storage
    if ctx.out_dir is None:
        return None
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(ctx.out_dir / 'optuna.db').resolve()}"


def split_rows(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation row indices of ``n`` rows (``val_fraction`` of them, at least one, validate)."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(val_fraction * n)))
    return order[n_val:], order[:n_val]


def verify_on_test(ctx: TreatContext, old: Any, new: Any) -> tuple[float, float, tuple[float, float]]:
    """Test accuracy of ``old`` and ``new`` and the paired 95 % CI of the gain, on the same test rows."""
    test = ctx.case.get("test")
    if test is None or not test.labelled:
        raise ConfigError(f"treat {ctx.challenge_id} verifies the result on a labelled test split; pass --test")
    y = np.asarray(test.y)
    a = predict_logits(old, test.x).argmax(1) == y
    b = predict_logits(new, test.x).argmax(1) == y
    d = b.astype(float) - a.astype(float)
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0
    return float(a.mean()), float(b.mean()), (float(d.mean() - 1.96 * se), float(d.mean() + 1.96 * se))


def reference_model(ctx: TreatContext) -> Any:
    """The model the treatment is compared with: the current one (retrained with the recipe when it is the user's)."""
    case = ctx.case
    if case.metadata.get("dlclinic_baseline") or ctx.retrain is None:
        return case.model
    return ctx.retrain(case.train.x, case.train.y, ctx.fit_config.seed)
