"""model.hyperparameters and model.architecture — is the recipe or the size the bottleneck?

Both checks train short runs of the case's architecture (``case.model_factory``) on a
subset of train, scored on a disjoint validation slice of train (never on test), so they
fit a checkup budget. They indicate; the remedies (``dlclinic treat model.hyperparameters``
/ ``model.architecture``) run the full Optuna search with the real recipe and verify.

* ``model.hyperparameters`` — a short Optuna study (TPE, median pruning) over learning rate,
  weight decay and batch size, whose first trial is the current recipe (the case's fit
  config, trained for the recipe's epochs); fANOVA parameter importances. Warns when the
  best trial beats the current recipe by ≥ ``min_gain`` and an exact one-sided McNemar
  test on the same validation rows rejects "not better" at ``alpha / m``, ``m`` = the
  completed trials the best was picked from (Bonferroni for the selection), so the
  false-alarm rate for a recipe that no trial beats is ≤ ``alpha``. (A Wald interval on
  the paired difference with no selection correction warned on 2 of 30 near-optimal
  recipes on 224 validation rows: 5 discordant rows against 0 put its bound above 0.)
* ``model.architecture`` — model summary (layers, parameters, FLOPs) and the same
  architecture at fewer channels (``width_ratios``, built by channel pruning a fresh
  model) trained with the same budget (the case's recipe). Warns when a model with at most
  half the parameters is within ``tolerance`` of full width with confidence — the upper
  95 % bound of its paired accuracy drop is ≤ ``tolerance`` (exact Clopper–Pearson bounds of
  the discordant shares, :func:`~dlclinic.functional.stats.paired_difference_bounds`: a
  non-inferiority test at ≤ 2.5 % per width; the point estimate alone called
  7 of 15 digits CNNs at 3× width oversized although half width lost 1.3 points on
  average, more than the tolerance);
  also when a ReLU layer has ≥ ``dead_warn`` of its channels never active on 256 train
  inputs, or when a layer's weights have an effective rank below ``rank_ratio_warn`` of
  full (Roy & Vetterli, 2007).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dlclinic.core.case import Case
from dlclinic.core.evidence import Evidence
from dlclinic.core.registry import CheckSpec
from dlclinic.core.results import CheckResult, Finding, Remedy, Status
from dlclinic.core.threads import on_threads
from dlclinic.functional.stats import paired_difference_bounds

__all__ = ["ARCHITECTURE", "ArchitectureOptions", "HYPERPARAMETERS", "HyperparameterOptions"]


def _subset(case: Case, n_train: int, n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Disjoint train/validation rows of the train split (stratification not needed at these sizes)."""
    y = case.train.y
    assert y is not None  # checked by the callers
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    n_val = min(n_val, len(y) // 4)
    val, tr = order[:n_val], order[n_val : n_val + n_train]
    x = case.train.x
    return x[tr], y[tr], x[val], y[val]


def _unavailable(cid: str, case: Case) -> CheckResult | None:
    if case.model_factory is None:
        return CheckResult(
            id=cid,
            status="not_examined",
            summary="Needs the model's architecture to retrain it (a file.py:factory model, or no model so dlclinic trains its baseline); a .pt2/ONNX file cannot be retrained.",
        )
    if case.train.y is None:
        return CheckResult(id=cid, status="not_examined", summary="Needs labelled training data.")
    try:
        import optuna  # noqa: F401
    except ImportError:
        return CheckResult(id=cid, status="not_examined", summary="Needs optuna: pip install 'dlclinic[tune]'.")
    return None


# --------------------------------------------------------------------------- hyperparameters


@dataclass(frozen=True)
class HyperparameterOptions:
    """Checkup budget of the study and the current recipe it is compared with.

    ``lr`` / ``weight_decay`` / ``batch_size``: the current recipe; ``None`` = the case's
    recipe (the fit config the checkup trains with), as the remedy uses. ``epochs``: epochs
    of every trial; ``None`` = the recipe's epochs, at most ``max_epochs``. Trials shorter
    than the recipe rank recipes at the wrong horizon: a 2-epoch proxy favours large
    learning rates so strongly that a recipe within 1 point of the best at its own 15
    epochs looked 25 points behind (short-horizon bias; Wu et al., ICLR 2018).
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
    threads: int | None = 1


def _better_p(discordant: tuple[int, int] | None) -> float:
    """One-sided exact McNemar p-value of "the best trial is not more accurate than the current recipe"."""
    from scipy.stats import binom

    if discordant is None:
        return float("nan")
    b, c = discordant
    return float(binom.sf(b - 1, b + c, 0.5)) if b + c else 1.0


def run_hyperparameters(case: Case, evidence: Evidence, options: HyperparameterOptions) -> CheckResult:
    """Run the check with torch on ``options.threads`` threads."""
    return on_threads(_run_hyperparameters, case, evidence, options)


def _run_hyperparameters(case: Case, evidence: Evidence, options: HyperparameterOptions) -> CheckResult:
    """A short Optuna study against the current recipe."""
    from dlclinic.functional.search import hyperparameter_study

    cid = "model.hyperparameters"
    missing = _unavailable(cid, case)
    if missing is not None:
        return missing
    factory = case.model_factory
    assert factory is not None
    from dlclinic.checks.training_run import recipe

    cfg = recipe(evidence)
    current = {
        "lr": float(cfg.lr if options.lr is None else options.lr),
        "weight_decay": float(cfg.weight_decay if options.weight_decay is None else options.weight_decay),
        "batch_size": int(cfg.batch_size if options.batch_size is None else options.batch_size),
    }
    epochs = (
        int(options.epochs) if options.epochs is not None else max(1, min(int(cfg.epochs), int(options.max_epochs)))
    )
    x_tr, y_tr, x_va, y_va = _subset(case, options.n_train, options.n_val, options.seed)
    with evidence.progress.step("short Optuna study", total=options.n_trials) as advance:
        result = hyperparameter_study(
            factory,
            x_tr,
            y_tr,
            x_va,
            y_va,
            baseline=current,
            n_trials=options.n_trials,
            timeout=options.timeout_s,
            trial_seconds=options.timeout_s / 2,
            epochs=epochs,
            schedule=cfg.schedule,
            label_smoothing=cfg.label_smoothing,
            seed=options.seed,
            progress=lambda _n: advance(1),
        )
    compared = max(1, sum(t.get("state") == "COMPLETE" for t in result.trials) - 1)
    p_better = _better_p(result.discordant)
    if result.discordant is None:  # resumed study without per-row outcomes: fall back on the interval
        significant = result.gain >= options.min_gain and result.gain_ci[0] > 0
    else:
        significant = result.gain >= options.min_gain and p_better <= options.alpha / compared
    status: Status = "warn" if significant else "ok"
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
    remedy = Remedy(
        command="dlclinic treat model.hyperparameters --option n_trials=40",
        description="full Optuna study (TPE + median/Hyperband pruning, SQLite storage in the output folder, resumable; --option storage=postgresql://… for many workers), then retrain with the best values and verify on test",
    )
    trials = [t for t in result.trials if t.get("value") is not None]
    return CheckResult(
        id=cid,
        status=status,
        summary=summary,
        metrics={
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
        },
        thresholds={"min_gain": options.min_gain, "alpha": options.alpha},
        findings=tuple(findings),
        remedy=remedy,
        details={
            "budget": f"{options.n_trials} trials / {options.timeout_s:g} s, {epochs} epochs on {len(y_tr)} train rows, validated on {len(y_va)} other train rows",
            "plots": [
                {
                    "kind": "bar",
                    "title": "Parameter importance (fANOVA)",
                    "xlabel": "hyperparameter",
                    "ylabel": "importance",
                    "series": [{"label": "importance", "x": [k for k, _ in imp], "y": [v for _, v in imp]}],
                },
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
            ],
            "tables": [
                {
                    "title": "Trials",
                    "columns": ["trial", "state", "val accuracy", "lr", "weight decay", "batch size"],
                    "rows": [
                        [
                            t["number"],
                            t["state"],
                            t.get("value"),
                            t.get("lr"),
                            t.get("weight_decay"),
                            t.get("batch_size"),
                        ]
                        for t in result.trials
                    ],
                }
            ],
        },
    )


# --------------------------------------------------------------------------- architecture


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
    threads: int | None = 1


def run_architecture(case: Case, evidence: Evidence, options: ArchitectureOptions) -> CheckResult:
    """Run the check with torch on ``options.threads`` threads."""
    return on_threads(_run_architecture, case, evidence, options)


def _run_architecture(case: Case, evidence: Evidence, options: ArchitectureOptions) -> CheckResult:
    """Model summary and a short width comparison of the same architecture."""
    from dlclinic.functional.compression import parameter_count
    from dlclinic.functional.search import model_summary, narrower, redundancy, train_eval

    cid = "model.architecture"
    model = case.model
    summary_info = model_summary(model, case.train.x[:1]) if hasattr(model, "state_dict") else None
    missing = _unavailable(cid, case)
    if missing is not None:
        if summary_info is None:
            return missing
        return CheckResult(
            id=cid,
            status="not_examined",
            summary=missing.summary
            + f" Model: {summary_info['n_params']:,} parameters, {summary_info['flops'] / 1e6:.1f} MFLOPs per sample.",
            metrics={"n_params": summary_info["n_params"], "flops": summary_info["flops"]},
        )
    factory = case.model_factory
    assert factory is not None
    if summary_info is None:
        summary_info = model_summary(factory(), case.train.x[:1])
    red = redundancy(model, case.train.x[:256]) if hasattr(model, "state_dict") else []
    from dlclinic.checks.training_run import recipe

    cfg = recipe(evidence)
    lr = float(cfg.lr if options.lr is None else options.lr)
    weight_decay = float(cfg.weight_decay if options.weight_decay is None else options.weight_decay)
    batch_size = int(cfg.batch_size if options.batch_size is None else options.batch_size)
    epochs = (
        int(options.epochs) if options.epochs is not None else max(1, min(int(cfg.epochs), int(options.max_epochs)))
    )
    x_tr, y_tr, x_va, y_va = _subset(case, options.n_train, options.n_val, options.seed)
    rows = []
    outcomes: dict[float, Any] = {}
    ratios = (1.0, *sorted({float(r) for r in options.width_ratios if 0 < r < 1}, reverse=True))
    with evidence.progress.step("width comparison", total=len(ratios)) as advance:
        for r in ratios:
            try:
                net = narrower(factory, r, case.train.x[:4])
            except Exception as exc:
                from dlclinic.core.errors import brief

                return CheckResult(
                    id=cid,
                    status="not_examined",
                    summary=f"Model: {summary_info['n_params']:,} parameters, {summary_info['flops'] / 1e6:.2f} MFLOPs per sample; narrower versions could not be built ({brief(exc)}).",
                    metrics={"n_params": summary_info["n_params"], "flops": summary_info["flops"]},
                )
            n_params = parameter_count(net)
            info = model_summary(net, case.train.x[:1])
            out = train_eval(
                net,
                x_tr,
                y_tr,
                x_va,
                y_va,
                lr=lr,
                weight_decay=weight_decay,
                batch_size=batch_size,
                epochs=epochs,
                seed=options.seed,
                max_seconds=options.max_seconds,
                schedule=cfg.schedule,
                label_smoothing=cfg.label_smoothing,
            )
            outcomes[r] = (out, n_params, info["flops"])
            advance(1)
    full_acc = outcomes[1.0][0].accuracy
    full_params = outcomes[1.0][1]
    candidates = []
    for r in ratios[1:]:
        out, n_params, flops = outcomes[r]
        full_ok, ok = outcomes[1.0][0].correct.astype(bool), out.correct.astype(bool)
        drop = float(full_ok.mean() - ok.mean())
        # exact (Clopper–Pearson, Bonferroni) bounds: a Wald interval collapses to the point
        # estimate when few rows are discordant and called 2-vs-0 on 500 rows "within 1 %"
        lo, hi = paired_difference_bounds(full_ok, ok, alpha=0.05)
        candidates.append((r, n_params, flops, out.accuracy, drop, lo, hi))
    for r in ratios:
        out, n_params, flops = outcomes[r]
        rows.append(
            [f"{r:.0%}", n_params, round(flops / 1e6, 3), round(out.accuracy, 4), round(full_acc - out.accuracy, 4)]
        )
    smaller = [
        c for c in candidates if c[1] <= 0.5 * full_params and c[6] <= options.tolerance
    ]  # upper bound of the drop: within tolerance with confidence
    smallest = min(smaller, key=lambda c: c[1]) if smaller else None
    findings: list[Finding] = []
    head = f"{summary_info['n_params']:,} parameters in {summary_info['n_layers_with_params']} layers, {summary_info['flops'] / 1e6:.2f} MFLOPs per sample"
    dead = [r_ for r_ in red if r_["kind"] == "activations" and r_["dead_fraction"] >= options.dead_warn]
    low_rank = [r_ for r_ in red if r_["kind"] == "weights" and r_["rank_ratio"] < options.rank_ratio_warn]
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
    remedy = Remedy(
        command="dlclinic treat model.architecture",
        description="Optuna multi-objective search over width (and depth for dlclinic's baseline family) with full training: Pareto front of accuracy vs parameters and the smallest model within 1 point of the best, retrained and verified on test",
    )
    return CheckResult(
        id=cid,
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
        remedy=remedy,
        details={
            "budget": f"{epochs} epochs on {len(y_tr)} train rows, validated on {len(y_va)} other train rows",
            "plots": [
                {
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
            ],
            "tables": [
                {
                    "title": "Width comparison",
                    "columns": ["width", "params", "MFLOPs", "val accuracy", "drop vs full"],
                    "rows": rows,
                },
                {
                    "title": "Redundancy (effective rank of weights, dead activation channels)",
                    "columns": ["layer", "kind", "effective rank", "rank ratio", "dead fraction"],
                    "rows": [
                        [
                            r_["layer"],
                            r_["kind"],
                            r_.get("effective_rank"),
                            r_.get("rank_ratio"),
                            r_.get("dead_fraction"),
                        ]
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
            ],
        },
    )


HYPERPARAMETERS = CheckSpec(
    id="model.hyperparameters",
    requires=(),
    options=HyperparameterOptions,
    run=run_hyperparameters,
    description="short Optuna study (TPE, median pruning) over lr / weight decay / batch size vs the current recipe, parameter importances",
)
ARCHITECTURE = CheckSpec(
    id="model.architecture",
    requires=(),
    options=ArchitectureOptions,
    run=run_architecture,
    description="model summary (layers, params, FLOPs) and the same architecture at fewer channels trained with the recipe (at most max_seconds each)",
)
