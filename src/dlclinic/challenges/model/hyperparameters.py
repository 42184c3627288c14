"""model.hyperparameters — is the recipe the bottleneck?

Check: a short Optuna study (TPE, median pruning) over learning rate, weight decay and
batch size, trained on a subset of train and scored on a disjoint validation slice of train
(never on test), whose first trial is the current recipe (the case's fit config, trained for
the recipe's epochs); fANOVA parameter importances. Warns when the best trial beats the
current recipe by ≥ ``min_gain`` and an exact one-sided McNemar test on the same validation
rows rejects "not better" at ``alpha / m``, ``m`` = the completed trials the best was picked
from (Bonferroni for the selection), so the false-alarm rate for a recipe that no trial
beats is ≤ ``alpha``. (A Wald interval on the paired difference with no selection
correction warned on 2 of 30 near-optimal recipes on 224 validation rows: 5 discordant rows
against 0 put its bound above 0.)

Remedy (``dlclinic treat model.hyperparameters``): TPE with median (or Hyperband) pruning
over the same space (first trial = the current recipe) on a validation slice of train; the
study is stored in ``<out>/optuna.db`` (SQLite) by default and resumed when run again with
the same ``study_name``; ``--option storage=postgresql://user@host/db`` lets many workers
share one study. The best values are re-run against the current recipe with fresh seeds
(does the winner stay ahead, or was it the luckiest of many trials?), then used to retrain
on all of train with the full recipe, and the retrained model is compared with the current
one on test (paired 95 % CI).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy.stats import binom

from dlclinic.core import budget
from dlclinic.core.atomic import write_json, write_weights
from dlclinic.core.case import Case
from dlclinic.core.device import on_device
from dlclinic.core.errors import ConfigError
from dlclinic.core.evidence import Evidence
from dlclinic.core.recipe import fit
from dlclinic.core.registry import CheckSpec, RemedySpec, TreatContext, TreatOutcome, conclude
from dlclinic.core.results import CheckResult, Finding, Remedy, Status
from dlclinic.core.threads import on_threads
from dlclinic.functional.search import DEFAULT_SPACE, StudyResult, hyperparameter_study, train_eval
from dlclinic.providers.search import (
    current_recipe_runs,
    reference_model,
    run_key,
    search_unavailable,
    short_run_recipe,
    split_rows,
    study_storage,
    validation_subset,
    verify_on_test,
)

__all__ = ["CHECK", "HyperparameterOptions", "REMEDY", "TuneParams", "parse_space", "run", "treat"]

CID = "model.hyperparameters"


# --------------------------------------------------------------------------- check


@dataclass(frozen=True)
class HyperparameterOptions:
    """Checkup budget of the study and the current recipe it is compared with.

    ``lr`` / ``weight_decay`` / ``batch_size``: the current recipe; ``None`` = the case's
    recipe (the fit config the checkup trains with), as the remedy uses. ``epochs``: epochs
    of every trial; ``None`` = the recipe's epochs, at most ``max_epochs``. Trials shorter
    than the recipe rank recipes at the wrong horizon: a 2-epoch proxy favours large
    learning rates so strongly that a recipe within 1 point of the best at its own 15
    epochs looked 25 points behind (short-horizon bias; Wu et al., ICLR 2018).

    ``max_batch_factor``: the study tries batch sizes up to this many times the recipe's: a
    training step's memory grows with its batch (the issue-21 CNN: 115 MB at 64 rows, 277 MB
    at 128, 397 MB at 256), so the checkup asks for at most twice what the user's own training
    takes; the remedy (``treat``) searches the whole space.
    """

    n_trials: int = 5
    timeout_s: float = 8.0
    epochs: int | None = None
    max_epochs: int = 20
    n_train: int = 800
    n_val: int = 500
    lr: float | None = None
    weight_decay: float | None = None
    batch_size: int | None = None
    min_gain: float = 0.02
    alpha: float = 0.05
    seed: int = 0
    threads: int | None = None  # torch threads; None: the checkup's (one per worker process when there are several)
    max_batch_factor: float = 2.0

    def __post_init__(self) -> None:
        if not self.max_batch_factor > 0:
            raise ConfigError(f"`max_batch_factor > 0` must hold, but got max_batch_factor={self.max_batch_factor}")


def _better_p(discordant: tuple[int, int] | None) -> float:
    """One-sided exact McNemar p-value of "the best trial is not more accurate than the current recipe"."""
    if discordant is None:
        return float("nan")
    b, c = discordant
    return float(binom.sf(b - 1, b + c, 0.5)) if b + c else 1.0


def run(case: Case, evidence: Evidence, options: HyperparameterOptions) -> CheckResult:
    """Run the check with torch on ``options.threads`` threads."""
    return on_threads(_run, case, evidence, options)


def _run(case: Case, evidence: Evidence, options: HyperparameterOptions) -> CheckResult:
    """A short Optuna study against the current recipe."""
    missing = search_unavailable(CID, case)
    if missing is not None:
        return missing
    cfg, current, epochs = short_run_recipe(evidence, options)
    params = {
        **current,
        "epochs": epochs,
        "rows": [options.n_train, options.n_val],
        "trials": options.n_trials,
        "timeout": options.timeout_s,
        "seed": options.seed,
        "schedule": cfg.schedule,
        "ls": cfg.label_smoothing,
        "max_batch": _batch_choices(current, options),
    }
    study = evidence.cached_json(
        "model.hyperparameters.study",
        params,
        lambda: dataclasses.asdict(_short_study(case, evidence, options, (cfg, current, epochs))),
    )
    result = StudyResult(
        **{
            **study,
            "gain_ci": tuple(study["gain_ci"]),
            "discordant": tuple(study["discordant"]) if study["discordant"] is not None else None,
        }
    )
    x_tr_rows, x_va_rows = _rows(case, options)
    compared = max(1, sum(t.get("state") == "COMPLETE" for t in result.trials) - 1)
    p_better = _better_p(result.discordant)
    if result.discordant is None:  # resumed study without per-row outcomes: fall back on the interval
        significant = result.gain >= options.min_gain and result.gain_ci[0] > 0
    else:
        significant = result.gain >= options.min_gain and p_better <= options.alpha / compared
    status: Status = "warn" if significant else "ok"
    summary, findings = _verdict(result, options, significant, p_better, compared)
    return CheckResult(
        id=CID,
        status=status,
        summary=summary,
        metrics=_metrics(result, options, p_better, compared),
        thresholds={"min_gain": options.min_gain, "alpha": options.alpha},
        findings=tuple(findings),
        remedy=Remedy(
            command="dlclinic treat model.hyperparameters --option n_trials=40",
            description="full Optuna study (TPE + median/Hyperband pruning, SQLite storage in the output folder, resumable; --option storage=postgresql://… for many workers), then retrain with the best values and verify on test",
        ),
        details={
            "budget": f"{options.n_trials} trials / {options.timeout_s:g} s, {epochs} epochs on {x_tr_rows} train rows, validated on {x_va_rows} other train rows",
            "plots": _plots(result),
            "tables": [_trials_table(result)],
        },
    )


def _rows(case: Case, options: HyperparameterOptions) -> tuple[int, int]:
    """Train and validation rows of the short runs (as :func:`validation_subset` takes them)."""
    n = len(case.train)
    n_val = min(options.n_val, n // 4)
    return min(options.n_train, n - n_val), n_val


def _batch_choices(current: Mapping[str, Any], options: HyperparameterOptions) -> list[int]:
    """The default space's batch sizes up to ``max_batch_factor`` × the recipe's (the smallest one at least)."""
    choices = [int(b) for b in DEFAULT_SPACE["batch_size"][1]]
    limit = options.max_batch_factor * int(current.get("batch_size", 64))
    return [b for b in choices if b <= limit] or choices[:1]


def _short_study(
    case: Case, evidence: Evidence, options: HyperparameterOptions, recipe: tuple[Any, ...]
) -> StudyResult:
    """The short Optuna study, first trial the current recipe."""
    cfg, current, epochs = recipe
    factory = case.model_factory
    assert factory is not None
    factory = on_device(factory, cfg.device)  # trials train where the recipe does
    x_tr, y_tr, x_va, y_va = validation_subset(case, options.n_train, options.n_val, options.seed)
    # model.architecture's full-width run is this study's first trial when it ran all epochs within a trial's
    # budget (then this study would have trained exactly the same): its time counts against the study's
    shared = current_recipe_runs(evidence).get(run_key(current, epochs, options, cfg))
    if shared is not None and (shared.epochs_run < epochs or shared.seconds > options.timeout_s / 2):
        shared = None
    timeout = options.timeout_s - (shared.seconds if shared is not None else 0.0)
    left = budget.time_left()
    if left is not None and left < timeout:
        budget.cut(f"Optuna study: {max(left, 0.0):.0f} s of the {timeout:.0f} s it would take (time budget)")
        timeout = max(left, 1e-3)  # Optuna starts no trial at 0 s: the current recipe's trial always runs
    with evidence.progress.step("short Optuna study", total=options.n_trials) as advance:
        return hyperparameter_study(
            factory,
            x_tr,
            y_tr,
            x_va,
            y_va,
            baseline=current,
            space={**DEFAULT_SPACE, "batch_size": ("categorical", tuple(_batch_choices(current, options)))},
            n_trials=options.n_trials,
            timeout=max(timeout, 0.0),
            trial_seconds=options.timeout_s / 2,
            epochs=epochs,
            schedule=cfg.schedule,
            label_smoothing=cfg.label_smoothing,
            seed=options.seed,
            progress=lambda _n: advance(1),
            baseline_outcome=shared,
        )


def _verdict(
    result: StudyResult, options: HyperparameterOptions, significant: bool, p_better: float, compared: int
) -> tuple[str, list[Finding]]:
    """The summary line and the finding of a better recipe."""
    best = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.best_params.items())
    imp = sorted(result.importances.items(), key=lambda kv: -kv[1])
    findings: list[Finding] = []
    if significant:
        findings.append(
            Finding(
                "better_recipe",
                f"{best} reaches {result.best_accuracy:.1%} validation accuracy vs {result.baseline_accuracy:.1%} for the current recipe (gain {result.gain:+.1%}, 95% CI {result.gain_ci[0]:+.1%}..{result.gain_ci[1]:+.1%}; McNemar p = {p_better:.2g} ≤ {options.alpha:g}/{compared})",
            )
        )
        summary = (
            f"The recipe is a bottleneck: {best} gains {result.gain:+.1%} validation accuracy over the current one in a {result.n_trials}-trial short study"
            + (f"; most important: {imp[0][0]}" if imp else "")
            + "."
        )
    else:
        summary = f"No recipe in a {result.n_trials}-trial short study beats the current one by ≥ {options.min_gain:.0%} (best gain {result.gain:+.1%}); the hyperparameters are not the bottleneck at this budget."
        if compared < 2:
            summary += f" Only {compared + 1} trial(s) completed in {options.timeout_s:g} s, too few to judge: raise --option model.hyperparameters.timeout_s=… (or run `dlclinic treat model.hyperparameters`)."
    return summary, findings


def _metrics(
    result: StudyResult, options: HyperparameterOptions, p_better: float, compared: int
) -> dict[str, float | int | bool | None]:
    return {
        "baseline_val_accuracy": result.baseline_accuracy,
        "best_val_accuracy": result.best_accuracy,
        "gain": result.gain,
        "gain_ci_low": result.gain_ci[0],
        "gain_ci_high": result.gain_ci[1],
        "p_value": p_better,
        "p_value_threshold": options.alpha / compared,
        "n_trials": result.n_trials,
        "n_pruned": result.n_pruned,
        **{f"importance_{k}": v for k, v in result.importances.items()},
        **{f"best_{k}": v for k, v in result.best_params.items() if isinstance(v, (int, float))},
    }


def _plots(result: StudyResult) -> list[dict[str, Any]]:
    imp = sorted(result.importances.items(), key=lambda kv: -kv[1])
    trials = [t for t in result.trials if t.get("value") is not None]
    importance = {  # fANOVA needs 3 completed trials: no plot (rather than an empty one) before that
        "kind": "bar",
        "title": "Parameter importance (fANOVA)",
        "xlabel": "hyperparameter",
        "ylabel": "importance",
        "series": [{"label": "importance", "x": [k for k, _ in imp], "y": [v for _, v in imp]}],
    }
    return [importance] * bool(imp) + [
        {
            "kind": "scatter",
            "title": "Validation accuracy vs learning rate",
            "xlabel": "learning rate",
            "ylabel": "validation accuracy",
            "xscale": "log",
            "series": [
                {
                    "label": "trials",
                    "x": [t["lr"] for t in trials if "lr" in t],
                    "y": [t["value"] for t in trials if "lr" in t],
                }
            ],
        },
    ]


def _trials_table(result: StudyResult) -> dict[str, Any]:
    return {
        "title": "Trials",
        "columns": ["trial", "state", "val accuracy", "lr", "weight decay", "batch size"],
        "rows": [
            [t["number"], t["state"], t.get("value"), t.get("lr"), t.get("weight_decay"), t.get("batch_size")]
            for t in result.trials
        ],
    }


# --------------------------------------------------------------------------- remedy


@dataclass(frozen=True)
class TuneParams:
    """Study budget, pruner and storage (``None`` = SQLite file in the output folder).

    ``space`` replaces the default search space: JSON (inline or a path to a ``.json``
    file) mapping a name to ``["float_log", low, high]``, ``["float", low, high]``,
    ``["int", low, high]`` or ``["categorical", [choices...]]``; the names ``lr``,
    ``weight_decay``, ``batch_size`` and ``epochs`` are used by the training loop.

    ``workers``: processes that share the study (Optuna's distributed optimisation: each
    opens the study in ``storage`` and runs its share of ``n_trials``). More workers on
    other machines join by running the same command with the same ``--storage`` (a
    PostgreSQL URL) and ``study_name``.
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
    workers: int = field(default=1, metadata={"min": 1})

    def __post_init__(self) -> None:
        if self.n_trials < 1:
            raise ConfigError(f"`n_trials >= 1` must hold, but got n_trials={self.n_trials}")


def parse_space(text: str) -> dict[str, tuple[Any, ...]]:
    """A search space from JSON text or a ``.json`` file (see :class:`TuneParams`)."""
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

    def one(p: dict[str, Any], s: int) -> float:
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

    return [one(best, seed + 1000 + k) - one(base, seed + 1000 + k) for k in range(seeds)]


def _study(
    ctx: TreatContext,
    params: TuneParams,
    x: np.ndarray,
    y: np.ndarray,
    tr: np.ndarray,
    va: np.ndarray,
    storage: str | None,
) -> tuple[StudyResult, list[float]]:
    """The Optuna study on the train/validation rows, then the fresh-seed re-run of its winner."""
    case, cfg = ctx.case, ctx.fit_config
    assert case.model_factory is not None
    factory = on_device(case.model_factory, cfg.device)  # trials train where the recipe does
    with ctx.progress.step("Optuna study", total=params.n_trials) as advance:
        result = hyperparameter_study(
            factory,
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
            workers=params.workers,
        )
    seed_gains = _seed_check(
        factory,
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
    return result, seed_gains


def treat(ctx: TreatContext, params: TuneParams) -> TreatOutcome:
    """Optuna study over the recipe, retrain with the best values, verify on test."""
    case, cfg = ctx.case, ctx.fit_config
    if case.model_factory is None:
        raise ConfigError(
            "treat model.hyperparameters retrains the model, so it needs the architecture: pass --model file.py:factory"
        )
    if case.train.y is None:
        raise ConfigError("treat model.hyperparameters needs labelled training data")
    before = ctx.measure(case)
    tr, va = split_rows(len(case.train), params.val_fraction, params.seed)
    x, y = case.train.x, np.asarray(case.train.y)
    storage = study_storage(ctx, params.storage)
    result, seed_gains = _study(ctx, params, x, y, tr, va, storage)
    best_cfg = dataclasses.replace(
        cfg,
        lr=float(result.best_params.get("lr", cfg.lr)),
        weight_decay=float(result.best_params.get("weight_decay", cfg.weight_decay)),
        batch_size=int(result.best_params.get("batch_size", cfg.batch_size)),
    )
    with ctx.progress.step("retraining with the best recipe", total=1) as advance:
        reference = reference_model(ctx)
        model = fit(case.model_factory(), x, y, best_cfg).model
        advance(1)
    acc_old, acc_new, ci = verify_on_test(ctx, reference, model)
    artifacts = _write_artifacts(ctx, result, best_cfg, model, storage)
    treated = dataclasses.replace(
        case, model=model, model_source=f"{case.model_source}, retrained with tuned hyperparameters"
    )
    after = ctx.measure(treated)
    return conclude(
        ctx,
        before=before,
        after=after,
        action=f"Optuna TPE ({params.pruner} pruning), {result.n_trials} trials ({result.n_pruned} pruned); best {result.best_params}; retrained on all of train with the full recipe",
        before_values={
            "test_accuracy": acc_old,
            "val_accuracy": result.baseline_accuracy,
            **{k: float(v) for k, v in result.baseline_params.items()},
        },
        after_values={
            "test_accuracy": acc_new,
            "val_accuracy": result.best_accuracy,
            "gain_ci_low": ci[0],
            "gain_ci_high": ci[1],
            "seed_gain_min": min(seed_gains) if seed_gains else None,
            **{k: float(v) for k, v in result.best_params.items()},
        },
        artifacts=artifacts,
        notes=(
            f"study {params.study_name!r} stored in {storage or 'memory'}; run the same command again to resume it (more trials accumulate)",
            "test accuracy: the current model vs the model retrained with the best values, same test rows (paired 95% CI of the gain)",
            f"parameter importances (fANOVA): {result.importances}",
            f"re-run with {len(seed_gains)} fresh seed(s): validation gain of the best recipe {[round(g, 4) for g in seed_gains]} ({'stays ahead' if seed_gains and min(seed_gains) > 0 else 'does not stay ahead on every seed: part of its lead was luck'})",
        ),
    )


def _write_artifacts(
    ctx: TreatContext, result: StudyResult, best_cfg: Any, model: Any, storage: str | None
) -> dict[str, str]:
    """The best values with the study's trials, the retrained weights and the study's SQLite URL."""
    artifacts: dict[str, str] = {}
    if ctx.out_dir is None:
        return artifacts
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
    return artifacts


CHECK = CheckSpec(
    id=CID,
    requires=(),
    options=HyperparameterOptions,
    run=run,
    description="short Optuna study (TPE, median pruning) over lr / weight decay / batch size vs the current recipe, parameter importances",
)
REMEDY = RemedySpec(
    id=CID,
    params=TuneParams,
    run=treat,
    description="Optuna TPE + median/Hyperband pruning over lr / weight decay / batch size (SQLite storage, resumable), retrain with the best values, verify on test.",
)
