"""model.architecture — is the model larger (or more redundant) than the data needs?

Check: model summary (layers, parameters, FLOPs) and the same architecture at fewer
channels (``width_ratios``, built by channel pruning a fresh model) trained with the same
budget (the case's recipe) on a subset of train, scored on a disjoint validation slice of
train (never on test). Warns when a model with at most half the parameters is within
``tolerance`` of full width with confidence — the upper 95 % bound of its paired accuracy
drop is ≤ ``tolerance`` (exact Clopper–Pearson bounds of the discordant shares,
:func:`~dlclinic.functional.stats.paired_difference_bounds`: a non-inferiority test at
≤ 2.5 % per width; the point estimate alone called 7 of 15 digits CNNs at 3× width
oversized although half width lost 1.3 points on average, more than the tolerance); also
when a ReLU layer has ≥ ``dead_warn`` of its channels never active on 256 train inputs, or
when a layer's weights have an effective rank below ``rank_ratio_warn`` of full (Roy &
Vetterli, 2007).

Remedy (``dlclinic treat model.architecture``): multi-objective TPE (maximize validation
accuracy, minimize parameters): depth and width for dlclinic's baseline MLP, channels and
hidden width for its CNN, and a width ratio of the user's own architecture otherwise (built
by channel pruning a fresh model). The Pareto front is reported; the smallest model within
``tolerance`` of the best validation accuracy is retrained with the recipe and verified.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlclinic.core.atomic import write_json, write_weights
from dlclinic.core.baselines import MLP, SmallCNN
from dlclinic.core.case import Case
from dlclinic.core.device import on_device
from dlclinic.core.errors import ConfigError, brief
from dlclinic.core.evidence import Evidence
from dlclinic.core.recipe import fit, seed_everything
from dlclinic.core.registry import CheckSpec, RemedySpec, TreatContext, TreatOutcome, conclude
from dlclinic.core.results import CheckResult, Finding, Remedy, Status
from dlclinic.core.threads import on_threads
from dlclinic.export import export_pt2
from dlclinic.functional.compression import parameter_count
from dlclinic.functional.search import TrialOutcome, make_study, model_summary, narrower, redundancy, train_eval
from dlclinic.functional.stats import paired_difference_bounds
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

__all__ = ["ArchitectureOptions", "ArchitectureParams", "CHECK", "REMEDY", "run", "treat"]

CID = "model.architecture"


# --------------------------------------------------------------------------- check


@dataclass(frozen=True)
class ArchitectureOptions:
    """Widths tried in the checkup and when a smaller model counts as equal.

    ``lr`` / ``weight_decay`` / ``batch_size``: ``None`` = the case's recipe; ``epochs``:
    ``None`` = the recipe's epochs, at most ``max_epochs`` (a 2-epoch proxy compares how
    fast widths learn, not what they can reach: every narrower CNN on the digits lost
    30 points there); ``max_seconds``: training time of each width at most (the budget
    that keeps the checkup bounded on a large model; widths then compare at equal time).
    """

    width_ratios: tuple[float, ...] = (0.5, 0.25)
    tolerance: float = 0.02
    max_seconds: float = 15.0
    dead_warn: float = 0.5
    rank_ratio_warn: float = 0.1
    epochs: int | None = None
    max_epochs: int = 20
    n_train: int = 800
    n_val: int = 500
    lr: float | None = None
    weight_decay: float | None = None
    batch_size: int | None = None
    seed: int = 0
    threads: int | None = None  # torch threads; None: the checkup's (one per worker process when there are several)


def run(case: Case, evidence: Evidence, options: ArchitectureOptions) -> CheckResult:
    """Run the check with torch on ``options.threads`` threads."""
    return on_threads(_run, case, evidence, options)


def _run(case: Case, evidence: Evidence, options: ArchitectureOptions) -> CheckResult:
    """Model summary and a short width comparison of the same architecture."""
    model = case.model
    is_torch = hasattr(model, "state_dict")
    summary_info = evidence.cached_json(CID + ".summary", {}, lambda: _summary_of(case)) if is_torch else None
    missing = search_unavailable(CID, case)
    if missing is not None:
        if summary_info is None:
            return missing
        return CheckResult(
            id=CID,
            status="not_examined",
            summary=missing.summary
            + f" Model: {summary_info['n_params']:,} parameters, {summary_info['flops'] / 1e6:.1f} MFLOPs per sample.",
            metrics={"n_params": summary_info["n_params"], "flops": summary_info["flops"]},
        )
    factory = case.model_factory
    assert factory is not None
    if summary_info is None:
        summary_info = model_summary(factory(), case.train.x[:1])
    red = (
        evidence.cached_json(CID + ".redundancy", {"rows": 256}, lambda: redundancy(model, case.train.x[:256]))
        if is_torch
        else []
    )
    cfg, current, epochs = short_run_recipe(evidence, options)
    ratios = (1.0, *sorted({float(r) for r in options.width_ratios if 0 < r < 1}, reverse=True))
    params = {
        **current,
        "epochs": epochs,
        "ratios": list(ratios),
        "rows": [options.n_train, options.n_val],
        "seed": options.seed,
        "max_s": options.max_seconds,
        "schedule": cfg.schedule,
        "ls": cfg.label_smoothing,
    }
    runs = evidence.cached_json(
        "model.architecture.widths", params, lambda: _widths(case, evidence, options, ratios, (cfg, current, epochs))
    )
    if "error" in runs:
        return CheckResult(
            id=CID,
            status="not_examined",
            summary=f"Model: {summary_info['n_params']:,} parameters, {summary_info['flops'] / 1e6:.2f} MFLOPs per sample; narrower versions could not be built ({runs['error']}).",
            metrics={"n_params": summary_info["n_params"], "flops": summary_info["flops"]},
        )
    outcomes = {
        r: (
            TrialOutcome(o["accuracy"], np.asarray(o["correct"], dtype=bool), o["epochs"], o["seconds"]),
            o["params"],
            o["flops"],
        )
        for r, o in zip(ratios, runs["widths"])
    }
    current_recipe_runs(evidence)[run_key(current, epochs, options, cfg)] = outcomes[1.0][
        0
    ]  # hyperparameters' first trial
    budget = f"{epochs} epochs on {runs['train_rows']} train rows, validated on {runs['val_rows']} other train rows"
    return _result(options, summary_info, red, ratios, outcomes, budget)


def _summary_of(case: Case) -> dict[str, Any]:
    return model_summary(case.model, case.train.x[:1])


def _widths(
    case: Case, evidence: Evidence, options: ArchitectureOptions, ratios: tuple[float, ...], recipe: tuple[Any, ...]
) -> dict[str, Any]:
    """Train each width from the same seed with the same budget (plain values, for the cache)."""
    cfg, current, epochs = recipe
    factory = case.model_factory
    assert factory is not None
    factory = on_device(factory, cfg.device)  # each width trains where the recipe does
    x_tr, y_tr, x_va, y_va = validation_subset(case, options.n_train, options.n_val, options.seed)
    widths = []
    with evidence.progress.step("width comparison", total=len(ratios)) as advance:
        for r in ratios:
            seed_everything(options.seed)  # every width starts from the same seeded draw
            try:
                net = narrower(factory, r, case.train.x[:4])
            except Exception as exc:
                return {"error": brief(exc)}
            n_params, flops = parameter_count(net), model_summary(net, case.train.x[:1])["flops"]
            out = train_eval(
                net,
                x_tr,
                y_tr,
                x_va,
                y_va,
                **current,
                epochs=epochs,
                seed=options.seed,
                max_seconds=options.max_seconds,
                schedule=cfg.schedule,
                label_smoothing=cfg.label_smoothing,
            )
            widths.append(
                {
                    "accuracy": out.accuracy,
                    "correct": out.correct.astype(bool),
                    "epochs": out.epochs_run,
                    "seconds": out.seconds,
                    "params": n_params,
                    "flops": flops,
                }
            )
            advance(1)
    return {"widths": widths, "train_rows": len(y_tr), "val_rows": len(y_va)}


def _candidates(ratios: tuple[float, ...], outcomes: dict[float, Any]) -> list[tuple[Any, ...]]:
    """Per narrower width: (ratio, params, flops, accuracy, drop, drop low, drop high) vs full width."""
    candidates = []
    for r in ratios[1:]:
        out, n_params, flops = outcomes[r]
        full_ok, ok = outcomes[1.0][0].correct.astype(bool), out.correct.astype(bool)
        drop = float(full_ok.mean() - ok.mean())
        # exact (Clopper–Pearson, Bonferroni) bounds: a Wald interval collapses to the point
        # estimate when few rows are discordant and called 2-vs-0 on 500 rows "within 1 %"
        lo, hi = paired_difference_bounds(full_ok, ok, alpha=0.05)
        candidates.append((r, n_params, flops, out.accuracy, drop, lo, hi))
    return candidates


def _redundancy_findings(
    red: list[dict[str, Any]], options: ArchitectureOptions
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[Finding]]:
    """Layers with many dead channels, layers of low effective rank, and their findings."""
    dead = [r_ for r_ in red if r_["kind"] == "activations" and r_["dead_fraction"] >= options.dead_warn]
    low_rank = [r_ for r_ in red if r_["kind"] == "weights" and r_["rank_ratio"] < options.rank_ratio_warn]
    findings: list[Finding] = []
    for r_ in dead:
        findings.append(
            Finding(
                "dead_channels",
                f"{r_['layer']}: {r_['dead_fraction']:.0%} of {r_['channels']} channels never activate on 256 train inputs",
            )
        )
    for r_ in low_rank:
        findings.append(
            Finding(
                "low_rank",
                f"{r_['layer']}: effective rank {r_['effective_rank']:.1f} ({r_['rank_ratio']:.0%} of full): the layer could be factorised or narrowed",
            )
        )
    return dead, low_rank, findings


def _result(
    options: ArchitectureOptions,
    summary_info: dict[str, Any],
    red: list[dict[str, Any]],
    ratios: tuple[float, ...],
    outcomes: dict[float, Any],
    budget: str,
) -> CheckResult:
    """Grade the width comparison and the redundancy of the layers."""
    full_acc = outcomes[1.0][0].accuracy
    full_params = outcomes[1.0][1]
    candidates = _candidates(ratios, outcomes)
    smaller = [
        c for c in candidates if c[1] <= 0.5 * full_params and c[6] <= options.tolerance
    ]  # upper bound of the drop: within tolerance with confidence
    smallest = min(smaller, key=lambda c: c[1]) if smaller else None
    head = f"{summary_info['n_params']:,} parameters in {summary_info['n_layers_with_params']} layers, {summary_info['flops'] / 1e6:.2f} MFLOPs per sample"
    dead, low_rank, findings = _redundancy_findings(red, options)
    if smallest is not None:
        r, n_params, _, acc, drop, lo, hi = smallest
        findings.append(
            Finding(
                "oversized",
                f"at {r:.0%} width ({n_params:,} parameters, {n_params / full_params:.0%}) validation accuracy is {acc:.1%} vs {full_acc:.1%} at full width (drop {drop:+.1%}, 95% CI {lo:+.1%}..{hi:+.1%}) under the same budget",
            )
        )
        summary = f"{head}; the same architecture at {r:.0%} width ({n_params / full_params:.0%} of the parameters) matches full width within {options.tolerance:.0%} (upper 95% bound of the drop) under the same budget: the model is likely larger than the data needs."
    else:
        summary = f"{head}; narrower versions ({', '.join(f'{r:.0%}' for r in ratios[1:])} width) are not shown to stay within {options.tolerance:.0%} of full-width validation accuracy (upper 95% bound of the drop)."
    status: Status = "warn" if (smallest is not None or dead or low_rank) else "ok"
    if smallest is None and (dead or low_rank):
        summary += f" Redundancy: {len(dead)} layer(s) with ≥ {options.dead_warn:.0%} dead channels, {len(low_rank)} with effective rank < {options.rank_ratio_warn:.0%} of full."
    return CheckResult(
        id=CID,
        status=status,
        summary=summary,
        metrics={
            "n_params": summary_info["n_params"],
            "flops": summary_info["flops"],
            "full_width_val_accuracy": full_acc,
            **{f"width_{int(c[0] * 100)}_drop": c[4] for c in candidates},
            **{f"width_{int(c[0] * 100)}_drop_high": c[6] for c in candidates},
            **{f"width_{int(c[0] * 100)}_params": c[1] for c in candidates},
            "max_dead_fraction": max((r_["dead_fraction"] for r_ in red if r_["kind"] == "activations"), default=None),
            "min_rank_ratio": min((r_["rank_ratio"] for r_ in red if r_["kind"] == "weights"), default=None),
        },
        thresholds={"tolerance": options.tolerance},
        findings=tuple(findings),
        remedy=Remedy(
            command="dlclinic treat model.architecture",
            description="Optuna multi-objective search over width (and depth for dlclinic's baseline family) with full training: Pareto front of accuracy vs parameters and the smallest model within 1 point of the best, retrained and verified on test",
        ),
        details={
            "budget": budget,
            "plots": [_width_plot(ratios, outcomes)],
            "tables": _tables(summary_info, red, ratios, outcomes),
        },
    )


def _width_plot(ratios: tuple[float, ...], outcomes: dict[float, Any]) -> dict[str, Any]:
    return {
        "kind": "scatter",
        "title": "Validation accuracy vs parameters (short runs)",
        "xlabel": "parameters",
        "ylabel": "validation accuracy",
        "xscale": "log",
        "series": [
            {
                "label": "width",
                "x": [outcomes[r][1] for r in ratios],
                "y": [outcomes[r][0].accuracy for r in ratios],
                "text": [f"{r:.0%}" for r in ratios],
                "line": True,
            }
        ],
    }


def _tables(
    summary_info: dict[str, Any], red: list[dict[str, Any]], ratios: tuple[float, ...], outcomes: dict[float, Any]
) -> list[dict[str, Any]]:
    full_acc = outcomes[1.0][0].accuracy
    rows = []
    for r in ratios:
        out, n_params, flops = outcomes[r]
        rows.append(
            [f"{r:.0%}", n_params, round(flops / 1e6, 3), round(out.accuracy, 4), round(full_acc - out.accuracy, 4)]
        )
    return [
        {
            "title": "Width comparison",
            "columns": ["width", "params", "MFLOPs", "val accuracy", "drop vs full"],
            "rows": rows,
        },
        {
            "title": "Redundancy (effective rank of weights, dead activation channels)",
            "columns": ["layer", "kind", "effective rank", "rank ratio", "dead fraction"],
            "rows": [
                [r_["layer"], r_["kind"], r_.get("effective_rank"), r_.get("rank_ratio"), r_.get("dead_fraction")]
                for r_ in red
            ],
        },
        {
            "title": "Model summary",
            "columns": ["layer", "type", "params", "output"],
            "rows": [
                [layer["name"], layer["type"], layer["params"], "×".join(str(s) for s in layer["output"])]
                for layer in summary_info["layers"]
            ],
        },
    ]


# --------------------------------------------------------------------------- remedy


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

    def user(trial: Any) -> Callable[[], Any]:
        ratio = trial.suggest_categorical("width_ratio", [0.125, 0.25, 0.5, 0.75, 1.0])
        return lambda: narrower(case.model_factory, ratio, case.train.x[:4])

    return "the user's architecture at a width ratio (channel pruning of a fresh model)", user


def _search(
    ctx: TreatContext,
    params: ArchitectureParams,
    build: Callable[[Any], Callable[[], Any]],
    storage: str | None,
) -> tuple[Any, dict[int, Callable[[], Any]]]:
    """Run the multi-objective study; the study and the factory of every trial."""
    cfg = ctx.fit_config
    tr, va = split_rows(len(ctx.case.train), params.val_fraction, params.seed)
    x, y = ctx.case.train.x, np.asarray(ctx.case.train.y)
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
        net = on_device(factory, cfg.device)()
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
    return study, factories


def treat(ctx: TreatContext, params: ArchitectureParams) -> TreatOutcome:
    """Multi-objective search, then retrain the smallest model within tolerance and verify."""
    case, cfg = ctx.case, ctx.fit_config
    if case.train.y is None:
        raise ConfigError("treat model.architecture needs labelled training data")
    family, build = _space(case)
    before = ctx.measure(case)
    x, y = case.train.x, np.asarray(case.train.y)
    storage = study_storage(ctx, params.storage)
    study, factories = _search(ctx, params, build, storage)
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
        reference = reference_model(ctx)
        model = fit(factories[chosen.number](), x, y, cfg).model
        advance(1)
    acc_old, acc_new, ci = verify_on_test(ctx, reference, model)
    artifacts = _write_artifacts(ctx, family, chosen.params, front, model)
    treated = dataclasses.replace(
        case, model=model, model_source=f"{case.model_source}, architecture searched ({chosen.params})"
    )
    after = ctx.measure(treated)
    return conclude(
        ctx,
        before=before,
        after=after,
        action=f"multi-objective Optuna search over {family}: {len(done)} trials, Pareto front of {len(front)}; chose {chosen.params} ({int(chosen.values[1]):,} parameters), the smallest within {params.tolerance:.0%} of the best validation accuracy, retrained with the recipe",
        before_values={
            "test_accuracy": acc_old,
            "n_params": parameter_count(case.model) if hasattr(case.model, "parameters") else None,
        },
        after_values={
            "test_accuracy": acc_new,
            "n_params": parameter_count(model),
            "gain_ci_low": ci[0],
            "gain_ci_high": ci[1],
        },
        artifacts=artifacts,
        notes=(
            f"Pareto front (trial, val accuracy, params): {[(n, round(a, 4), p) for n, a, p, _ in front]}",
            f"study {params.study_name!r} stored in {storage or 'memory'} (resumable)",
        ),
    )


def _write_artifacts(
    ctx: TreatContext, family: str, chosen: dict[str, Any], front: list[tuple[Any, ...]], model: Any
) -> dict[str, str]:
    """The Pareto front and the chosen architecture, the retrained weights and (when it exports) a .pt2."""
    artifacts: dict[str, str] = {}
    if ctx.out_dir is None:
        return artifacts
    artifacts["architecture"] = str(
        write_json(
            ctx.out_dir / "architecture.json",
            {
                "family": family,
                "chosen": chosen,
                "pareto_front": [{"trial": n, "val_accuracy": a, "params": p, **ps} for n, a, p, ps in front],
            },
            default=str,
        )
    )
    artifacts["weights"] = str(write_weights(model, ctx.out_dir / "model_searched.safetensors"))
    try:
        artifacts["model"] = str(export_pt2(model, ctx.case.train.x[:64], ctx.out_dir / "model_searched.pt2").path)
    except Exception:  # the weights file still holds the model
        pass
    return artifacts


CHECK = CheckSpec(
    id=CID,
    requires=(),
    options=ArchitectureOptions,
    run=run,
    description="model summary (layers, params, FLOPs) and the same architecture at fewer channels trained with the recipe (at most max_seconds each)",
)
REMEDY = RemedySpec(
    id=CID,
    params=ArchitectureParams,
    run=treat,
    description="Optuna multi-objective search over depth/width (accuracy vs parameters), retrain the smallest model within tolerance, verify on test.",
)
