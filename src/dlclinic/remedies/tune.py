"""Remedies for model.hyperparameters (``tune``) and model.architecture (``search``), with Optuna.

* ``treat model.hyperparameters`` — TPE with median (or Hyperband) pruning over learning
  rate, weight decay and batch size (first trial = the current recipe) on a validation
  slice of train; the study is stored in ``<out>/optuna.db`` (SQLite) by default and
  resumed when run again with the same ``study_name``; ``--option
  storage=postgresql://user@host/db`` lets many workers share one study. The best values
  are re-run against the current recipe with fresh seeds (does the winner stay ahead, or
  was it the luckiest of many trials?), then used to retrain on all of train with the
  full recipe, and the retrained model is compared with the current one on test
  (paired 95 % CI).
* ``treat model.architecture`` — multi-objective TPE (maximize validation accuracy,
  minimize parameters): depth and width for dlclinic's baseline MLP, channels and hidden
  width for its CNN, and a width ratio of the user's own architecture otherwise (built by
  channel pruning a fresh model). The Pareto front is reported; the smallest model within
  ``tolerance`` of the best validation accuracy is retrained with the recipe and verified.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from dlclinic.core.errors import ConfigError
from dlclinic.core.registry import RemedySpec, TreatContext, TreatOutcome

__all__ = ["ARCHITECTURE", "ArchitectureParams", "HYPERPARAMETERS", "TuneParams"]


@dataclass(frozen=True)
class TuneParams:
    """Study budget, pruner and storage (``None`` = SQLite file in the output folder).

    ``space`` replaces the default search space: JSON (inline or a path to a ``.json``
    file) mapping a name to ``["float_log", low, high]``, ``["float", low, high]``,
    ``["int", low, high]`` or ``["categorical", [choices...]]``; the names ``lr``,
    ``weight_decay``, ``batch_size`` and ``epochs`` are used by the training loop.
    """

    n_trials: int = 30
    timeout_s: float = 1800.0
    trial_epochs: int = 5
    pruner: Literal["median", "hyperband", "none"] = "median"
    storage: str | None = None
    study_name: str = "dlclinic-hyperparameters"
    val_fraction: float = 0.2
    seed: int = 0
    seeds: int = 2
    space: str | None = None

    def __post_init__(self) -> None:
        if self.n_trials < 1:
            raise ConfigError(f"`n_trials >= 1` must hold, but got n_trials={self.n_trials}")


def _storage(ctx: TreatContext, storage: str | None) -> str | None:
    if storage:
        return storage
    if ctx.out_dir is None:
        return None
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(ctx.out_dir / 'optuna.db').resolve()}"


def _split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(val_fraction * n)))
    return order[n_val:], order[:n_val]


def _verify(ctx: TreatContext, old: Any, new: Any) -> tuple[float, float, tuple[float, float]]:
    from dlclinic.core.inference import predict_logits

    test = ctx.case.get("test")
    if test is None or not test.labelled:
        raise ConfigError(f"treat {ctx.challenge_id} verifies the result on a labelled test split; pass --test")
    y = np.asarray(test.y)
    a = predict_logits(old, test.x).argmax(1) == y
    b = predict_logits(new, test.x).argmax(1) == y
    d = b.astype(float) - a.astype(float)
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0
    return float(a.mean()), float(b.mean()), (float(d.mean() - 1.96 * se), float(d.mean() + 1.96 * se))


def _reference(ctx: TreatContext) -> Any:
    """The model the treatment is compared with: the current one (retrained with the recipe when it is the user's)."""
    case = ctx.case
    if case.metadata.get("dlclinic_baseline") or ctx.retrain is None:
        return case.model
    return ctx.retrain(case.train.x, case.train.y, ctx.fit_config.seed)


def _seed_check(
    factory: Callable[[], Any],
    x_tr: np.ndarray,
    y_tr: np.ndarray,
    x_va: np.ndarray,
    y_va: np.ndarray,
    base: dict[str, Any],
    best: dict[str, Any],
    epochs: int,
    seeds: int,
    seed: int,
) -> list[float]:
    """Validation gain of the best recipe over the current one, re-run with ``seeds`` new seeds.

    The study picks the best of many noisy trials (a winner's curse); re-running both
    recipes with fresh seeds says whether the winner stays ahead.
    """
    from dlclinic.functional.search import train_eval

    def run(p: dict[str, Any], s: int) -> float:
        return train_eval(
            factory(),
            x_tr,
            y_tr,
            x_va,
            y_va,
            lr=float(p.get("lr", 2e-3)),
            weight_decay=float(p.get("weight_decay", 1e-4)),
            batch_size=int(p.get("batch_size", 64)),
            epochs=epochs,
            seed=s,
        ).accuracy

    return [run(best, seed + 1000 + k) - run(base, seed + 1000 + k) for k in range(seeds)]


def parse_space(text: str) -> dict[str, tuple[Any, ...]]:
    """A search space from JSON text or a ``.json`` file (see :class:`TuneParams`)."""
    from pathlib import Path

    raw = Path(text).read_text() if text.strip().endswith(".json") and Path(text).is_file() else text
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f'space: expected JSON like {{"lr": ["float_log", 1e-4, 1e-1]}}, found {text[:60]!r} ({exc.msg})'
        ) from None
    kinds = ("float_log", "float", "int", "categorical")
    out: dict[str, tuple[Any, ...]] = {}
    for name, spec in dict(data).items():
        if (
            not isinstance(spec, list)
            or not spec
            or spec[0] not in kinds
            or (spec[0] == "categorical" and (len(spec) != 2 or not isinstance(spec[1], list)))
            or (spec[0] != "categorical" and (len(spec) != 3 or not spec[1] < spec[2]))
        ):
            raise ConfigError(
                f'space[{name!r}]: expected [kind, low, high] with low < high (kind one of {kinds[:3]}) or ["categorical", [choices]], found {spec!r}'
            )
        out[str(name)] = (spec[0], tuple(spec[1])) if spec[0] == "categorical" else (spec[0], spec[1], spec[2])
    return out


def treat_hyperparameters(ctx: TreatContext, params: TuneParams) -> TreatOutcome:
    """Optuna study over the recipe, retrain with the best values, verify on test."""
    from dlclinic.core.recipe import fit
    from dlclinic.core.results import Treatment
    from dlclinic.functional.search import hyperparameter_study

    case, cfg = ctx.case, ctx.fit_config
    if case.model_factory is None:
        raise ConfigError(
            "treat model.hyperparameters retrains the model, so it needs the architecture: pass --model file.py:factory"
        )
    if case.train.y is None:
        raise ConfigError("treat model.hyperparameters needs labelled training data")
    before = ctx.measure(case)
    tr, va = _split(len(case.train), params.val_fraction, params.seed)
    x, y = case.train.x, np.asarray(case.train.y)
    storage = _storage(ctx, params.storage)
    with ctx.progress.step("Optuna study", total=params.n_trials) as advance:
        result = hyperparameter_study(
            case.model_factory,
            x[tr],
            y[tr],
            x[va],
            y[va],
            baseline={"lr": cfg.lr, "weight_decay": cfg.weight_decay, "batch_size": cfg.batch_size},
            space=parse_space(params.space) if params.space else None,
            n_trials=params.n_trials,
            timeout=params.timeout_s,
            epochs=params.trial_epochs,
            storage=storage,
            study_name=params.study_name,
            pruner=params.pruner,
            seed=params.seed,
            progress=lambda _n: advance(1),
        )
    seed_gains = _seed_check(
        case.model_factory,
        x[tr],
        y[tr],
        x[va],
        y[va],
        result.baseline_params,
        result.best_params,
        params.trial_epochs,
        params.seeds,
        params.seed,
    )
    best_cfg = dataclasses.replace(
        cfg,
        lr=float(result.best_params.get("lr", cfg.lr)),
        weight_decay=float(result.best_params.get("weight_decay", cfg.weight_decay)),
        batch_size=int(result.best_params.get("batch_size", cfg.batch_size)),
    )
    with ctx.progress.step("retraining with the best recipe", total=1) as advance:
        reference = _reference(ctx)
        model = fit(case.model_factory(), x, y, best_cfg).model
        advance(1)
    acc_old, acc_new, ci = _verify(ctx, reference, model)
    artifacts: dict[str, str] = {}
    if ctx.out_dir is not None:
        from dlclinic.core.atomic import write_json, write_weights

        artifacts["hyperparameters"] = str(
            write_json(
                ctx.out_dir / "best_hyperparameters.json",
                {
                    "best": result.best_params,
                    "current": result.baseline_params,
                    "val_accuracy": {"best": result.best_accuracy, "current": result.baseline_accuracy},
                    "importances": result.importances,
                    "fit_config": best_cfg.to_dict(),
                    "trials": result.trials,
                },
                default=str,
            )
        )
        artifacts["weights"] = str(write_weights(model, ctx.out_dir / "model_tuned.safetensors"))
        if storage and storage.startswith("sqlite:///"):
            artifacts["study"] = storage
    treated = dataclasses.replace(
        case, model=model, model_source=f"{case.model_source}, retrained with tuned hyperparameters"
    )
    after = ctx.measure(treated)
    treatment = Treatment(
        challenge_id=ctx.challenge_id,
        action=f"Optuna TPE ({params.pruner} pruning), {result.n_trials} trials ({result.n_pruned} pruned); best {result.best_params}; retrained on all of train with the full recipe",
        before={
            "test_accuracy": acc_old,
            "val_accuracy": result.baseline_accuracy,
            **{k: float(v) for k, v in result.baseline_params.items()},
        },
        after={
            "test_accuracy": acc_new,
            "val_accuracy": result.best_accuracy,
            "gain_ci_low": ci[0],
            "gain_ci_high": ci[1],
            "seed_gain_min": min(seed_gains) if seed_gains else None,
            **{k: float(v) for k, v in result.best_params.items()},
        },
        before_status=before[ctx.challenge_id].status,
        after_status=after[ctx.challenge_id].status,
        artifacts=artifacts,
        notes=(
            f"study {params.study_name!r} stored in {storage or 'memory'}; run the same command again to resume it (more trials accumulate)",
            "test accuracy: the current model vs the model retrained with the best values, same test rows (paired 95% CI of the gain)",
            f"parameter importances (fANOVA): {result.importances}",
            f"re-run with {len(seed_gains)} fresh seed(s): validation gain of the best recipe {[round(g, 4) for g in seed_gains]} ({'stays ahead' if seed_gains and min(seed_gains) > 0 else 'does not stay ahead on every seed: part of its lead was luck'})",
        ),
    )
    return TreatOutcome(treatment, before, after)


# --------------------------------------------------------------------------- architecture


@dataclass(frozen=True)
class ArchitectureParams:
    """Search budget and the accuracy tolerance for "equal"."""

    n_trials: int = 20
    timeout_s: float = 1800.0
    trial_epochs: int = 5
    tolerance: float = 0.01
    storage: str | None = None
    study_name: str = "dlclinic-architecture"
    val_fraction: float = 0.2
    seed: int = 0


def _space(case: Any) -> tuple[str, Callable[[Any], Callable[[], Any]]]:
    """The family and a builder ``trial -> factory`` of the search space."""
    from dlclinic.core.baselines import MLP, SmallCNN

    model = case.model
    shape = case.input_shape
    if isinstance(model, MLP):
        d = int(np.prod(shape))

        def mlp(trial: Any) -> Callable[[], Any]:
            depth = trial.suggest_int("depth", 1, 3)
            width = trial.suggest_categorical("width", [16, 32, 64, 128, 256])
            return lambda: MLP(d, case.n_classes, hidden=tuple([width] * depth))

        return "baseline MLP: depth × width", mlp
    if isinstance(model, SmallCNN):
        c, h, w = (1, *shape) if len(shape) == 2 else shape

        def cnn(trial: Any) -> Callable[[], Any]:
            c1 = trial.suggest_categorical("c1", [4, 8, 16, 32])
            c2 = trial.suggest_categorical("c2", [8, 16, 32, 64])
            hidden = trial.suggest_categorical("hidden", [16, 32, 64, 128])
            return lambda: SmallCNN(c, case.n_classes, h, w, channels=(c1, c2), hidden=hidden)

        return "baseline CNN: channels × hidden width", cnn
    if case.model_factory is None:
        raise ConfigError(
            "treat model.architecture needs the architecture (file.py:factory) to build narrower versions"
        )
    from dlclinic.functional.search import narrower

    def user(trial: Any) -> Callable[[], Any]:
        ratio = trial.suggest_categorical("width_ratio", [0.125, 0.25, 0.5, 0.75, 1.0])
        return lambda: narrower(case.model_factory, ratio, case.train.x[:4])

    return "the user's architecture at a width ratio (channel pruning of a fresh model)", user


def treat_architecture(ctx: TreatContext, params: ArchitectureParams) -> TreatOutcome:
    """Multi-objective search, then retrain the smallest model within tolerance and verify."""
    from dlclinic.core.atomic import write_weights
    from dlclinic.core.recipe import fit
    from dlclinic.core.results import Treatment
    from dlclinic.functional.compression import parameter_count
    from dlclinic.functional.search import make_study, train_eval

    case, cfg = ctx.case, ctx.fit_config
    if case.train.y is None:
        raise ConfigError("treat model.architecture needs labelled training data")
    family, build = _space(case)
    before = ctx.measure(case)
    tr, va = _split(len(case.train), params.val_fraction, params.seed)
    x, y = case.train.x, np.asarray(case.train.y)
    storage = _storage(ctx, params.storage)
    study = make_study(
        storage=storage,
        study_name=params.study_name,
        directions=("maximize", "minimize"),
        pruner="none",
        seed=params.seed,
    )
    factories: dict[int, Callable[[], Any]] = {}

    def objective(trial: Any) -> tuple[float, float]:
        factory = build(trial)
        factories[trial.number] = factory
        net = factory()
        out = train_eval(
            net,
            x[tr],
            y[tr],
            x[va],
            y[va],
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            batch_size=cfg.batch_size,
            epochs=params.trial_epochs,
            seed=params.seed,
        )
        return out.accuracy, float(parameter_count(net))

    with ctx.progress.step("architecture search", total=params.n_trials):
        study.optimize(objective, n_trials=params.n_trials, timeout=params.timeout_s, catch=(RuntimeError, ValueError))
    done = [t for t in study.trials if t.values is not None and t.number in factories]
    if not done:
        raise ConfigError("treat model.architecture: no trial completed; raise n_trials or timeout_s")
    best_acc = max(t.values[0] for t in done)
    within = [t for t in done if t.values[0] >= best_acc - params.tolerance]
    chosen = min(within, key=lambda t: t.values[1])
    front = sorted(
        ((t.number, t.values[0], int(t.values[1]), t.params) for t in study.best_trials if t.number in factories),
        key=lambda r: r[2],
    )
    with ctx.progress.step("retraining the chosen architecture", total=1) as advance:
        reference = _reference(ctx)
        model = fit(factories[chosen.number](), x, y, cfg).model
        advance(1)
    acc_old, acc_new, ci = _verify(ctx, reference, model)
    artifacts: dict[str, str] = {}
    if ctx.out_dir is not None:
        from dlclinic.core.atomic import write_json

        artifacts["architecture"] = str(
            write_json(
                ctx.out_dir / "architecture.json",
                {
                    "family": family,
                    "chosen": chosen.params,
                    "pareto_front": [{"trial": n, "val_accuracy": a, "params": p, **ps} for n, a, p, ps in front],
                },
                default=str,
            )
        )
        artifacts["weights"] = str(write_weights(model, ctx.out_dir / "model_searched.safetensors"))
        try:
            from dlclinic.export import export_pt2

            artifacts["model"] = str(export_pt2(model, case.train.x[:64], ctx.out_dir / "model_searched.pt2").path)
        except Exception:  # the weights file still holds the model
            pass
    treated = dataclasses.replace(
        case, model=model, model_source=f"{case.model_source}, architecture searched ({chosen.params})"
    )
    after = ctx.measure(treated)
    treatment = Treatment(
        challenge_id=ctx.challenge_id,
        action=f"multi-objective Optuna search over {family}: {len(done)} trials, Pareto front of {len(front)}; chose {chosen.params} ({int(chosen.values[1]):,} parameters), the smallest within {params.tolerance:.0%} of the best validation accuracy, retrained with the recipe",
        before={
            "test_accuracy": acc_old,
            "n_params": parameter_count(case.model) if hasattr(case.model, "parameters") else None,
        },
        after={
            "test_accuracy": acc_new,
            "n_params": parameter_count(model),
            "gain_ci_low": ci[0],
            "gain_ci_high": ci[1],
        },
        before_status=before[ctx.challenge_id].status,
        after_status=after[ctx.challenge_id].status,
        artifacts=artifacts,
        notes=(
            f"Pareto front (trial, val accuracy, params): {[(n, round(a, 4), p) for n, a, p, _ in front]}",
            f"study {params.study_name!r} stored in {storage or 'memory'} (resumable)",
        ),
    )
    return TreatOutcome(treatment, before, after)


HYPERPARAMETERS = RemedySpec(
    id="model.hyperparameters",
    params=TuneParams,
    run=treat_hyperparameters,
    description="Optuna TPE + median/Hyperband pruning over lr / weight decay / batch size (SQLite storage, resumable), retrain with the best values, verify on test.",
)
ARCHITECTURE = RemedySpec(
    id="model.architecture",
    params=ArchitectureParams,
    run=treat_architecture,
    description="Optuna multi-objective search over depth/width (accuracy vs parameters), retrain the smallest model within tolerance, verify on test.",
)
