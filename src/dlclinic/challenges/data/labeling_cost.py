"""data.labeling_cost — does active learning beat random labelling *on this dataset*?

A pool-based active-learning simulation (:func:`dlclinic.functional.active_learning.simulate`):
the labelled train split plays the unlabelled pool (its labels revealed only when
"bought"), a logistic-regression head on the model's embeddings is refitted after each
round of acquisitions, and its accuracy is measured on the test split. Each strategy
(random, entropy, margin, k-center core-set, optionally BALD with MC dropout on the head)
starts from the same stratified random set per seed. The verdict compares the labels
each strategy needs to reach random's final accuracy ("labels saved at equal accuracy")
over several seeds.

The embeddings were learned from every train label, so the simulated curves are
optimistic in absolute terms (a head on a representation that already knows the task);
what the check measures is the *relative* value of choosing which samples to label.

Remedy: rank an unlabelled pool and write the next samples to label.

The strategy is the one the check's simulation found best on the labelled data
(``strategy="auto"``; random when no strategy reliably beat random), or the one asked
for. Scores come from the case's model on the pool (entropy / margin of its
probabilities), from k-center core-set selection on its embeddings relative to the
already-labelled train split, or from BALD with MC dropout on a logistic head fitted to
the train embeddings. The output is a CSV (rank, row, id, score, predicted class).

Nothing is retrained: labelling is the user's step. The treatment reports, besides the
file, how the picked batch differs from the pool (mean uncertainty, predicted classes
covered) and the check's simulated labels-saved estimate as the expected benefit.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

from dlclinic.core.atomic import atomic_path
from dlclinic.core.case import Case
from dlclinic.core.errors import ConfigError
from dlclinic.core.evidence import Evidence
from dlclinic.core.registry import CheckSpec, RemedySpec, TreatContext, TreatOutcome, conclude
from dlclinic.core.results import CheckResult, Finding, Remedy
from dlclinic.core.sampling import stratified_rows
from dlclinic.functional.active_learning import (
    STRATEGIES,
    common_target,
    labels_saved,
    labels_to_reach,
    mc_dropout_probs,
    score_bald,
    score_entropy,
    score_margin,
    select_kcenter,
    simulate,
)
from dlclinic.io import load_like

__all__ = [
    "CHECK",
    "REMEDY",
    "LabelingCostOptions",
    "LabelingParams",
    "rank_pool",
    "run",
    "simulation_plan",
    "treat_labeling",
]

_ID = "data.labeling_cost"
_MIN_ROWS = 100


@dataclass(frozen=True)
class LabelingCostOptions:
    """Active-learning simulation settings and the verdict threshold of data.labeling_cost.

    Attributes:
        strategies: acquisition strategies to compare; ``"random"`` (the reference) must be
            among them. Also available: ``"bald"`` (MC dropout on the head's inputs).
        seeds: repetitions with different initial sets and random picks.
        initial: labels before the first round: a fraction of the pool if < 1, else a
            count; at most a fifth of the budget, and at least 2 per class either way.
        budget: labels at the end: a fraction of the pool if ≤ 1, else a count; capped at
            ``max_budget``.
        max_budget: upper limit on the budget, which keeps the check fast on big pools.
        rounds: acquisition rounds between ``initial`` and ``budget``.
        tolerance: accuracy below random's final accuracy that still counts as reaching
            it; ``None`` = one test sample (``1 / len(test)``), the resolution of the
            evaluation.
        warn_saved_fraction: active learning "pays off" (status ``ok``) when the best
            strategy's labels saved, mean − std over seeds, exceeds this fraction of the
            labels random needed; otherwise ``warn``.
        min_accuracy_gain: active learning also "pays off" when the best strategy's final
            accuracy, paired by seed, exceeds random's by more than this (mean − std);
            ``None`` = one test sample.
        max_iter: L-BFGS iterations of each head fit.
        mc_samples: MC-dropout passes for ``"bald"``.
        mc_dropout: dropout rate for ``"bald"``.
        max_pool: rows of the pool (0: all). A larger train split is replayed on a seeded,
            class-stratified sample of this many rows: the simulation buys at most
            ``max_budget`` labels, and beyond ~15,000 rows the plan (initial set, step,
            budget) no longer changes with the pool, while each round scores every pool row
            (k-center updates a distance per pool row), so the cost would grow with N for
            nothing. The report says when the pool was sampled.
    """

    strategies: tuple[str, ...] = ("random", "entropy", "margin", "kcenter")
    seeds: int = 3
    initial: float = 0.02
    budget: float = 0.3
    max_budget: int = 1500
    rounds: int = 8
    tolerance: float | None = None
    warn_saved_fraction: float = 0.0
    min_accuracy_gain: float | None = None
    max_iter: int = 200
    mc_samples: int = 20
    mc_dropout: float = 0.5
    max_pool: int = 20_000

    def __post_init__(self) -> None:
        strategies = tuple(self.strategies)
        object.__setattr__(self, "strategies", strategies)  # lists from JSON/CLI become tuples
        unknown = [s for s in strategies if s not in STRATEGIES]
        if unknown:
            raise ValueError(
                f"strategies must be among {', '.join(map(repr, STRATEGIES))}, but got {', '.join(map(repr, unknown))}"
            )
        if "random" not in strategies or len(set(strategies)) < 2:
            raise ValueError(
                f"strategies must include 'random' (the reference) and at least one other, but got {strategies}"
            )
        if len(set(strategies)) != len(strategies):
            raise ValueError(f"strategies must not repeat, but got {strategies}")
        if self.seeds < 1:
            raise ValueError(f"`seeds >= 1` must hold, but got seeds={self.seeds}")
        if self.max_pool < 0:
            raise ValueError(f"`max_pool >= 0` must hold, but got max_pool={self.max_pool}")
        if not self.initial > 0:
            raise ValueError(
                f"`initial > 0` must hold (a fraction < 1 or a count >= 1), but got initial={self.initial}"
            )
        if not self.budget > 0:
            raise ValueError(f"`budget > 0` must hold (a fraction <= 1 or a count > 1), but got budget={self.budget}")
        if self.max_budget < 2:
            raise ValueError(f"`max_budget >= 2` must hold, but got max_budget={self.max_budget}")
        if self.rounds < 1:
            raise ValueError(f"`rounds >= 1` must hold, but got rounds={self.rounds}")
        if self.tolerance is not None and not 0.0 <= self.tolerance < 1.0:
            raise ValueError(f"`0 <= tolerance < 1` must hold, but got tolerance={self.tolerance}")
        if not 0.0 <= self.warn_saved_fraction < 1.0:
            raise ValueError(
                f"`0 <= warn_saved_fraction < 1` must hold, but got warn_saved_fraction={self.warn_saved_fraction}"
            )
        if self.mc_samples < 2:
            raise ValueError(f"`mc_samples >= 2` must hold, but got mc_samples={self.mc_samples}")
        if not 0.0 < self.mc_dropout < 1.0:
            raise ValueError(f"`0 < mc_dropout < 1` must hold, but got mc_dropout={self.mc_dropout}")


def simulation_plan(n_pool: int, n_classes: int, options: LabelingCostOptions) -> tuple[int, int, int]:
    """``(initial, step, budget)`` label counts for a pool of ``n_pool`` rows.

    Example:
        >>> simulation_plan(3118, 10, LabelingCostOptions())
        (62, 110, 935)
        >>> simulation_plan(100_000, 10, LabelingCostOptions())
        (300, 150, 1500)
    """
    budget = int(round(options.budget * n_pool)) if options.budget <= 1 else int(options.budget)
    budget = min(budget, options.max_budget, n_pool)
    initial = int(round(options.initial * n_pool)) if options.initial < 1 else int(options.initial)
    initial = min(max(min(initial, budget // 5), 2 * n_classes), n_pool)
    step = max(1, math.ceil((budget - initial) / options.rounds))
    return initial, step, budget


def _pool_rows(case: Case, options: LabelingCostOptions) -> np.ndarray | None:
    """The pool's rows of train when ``max_pool`` samples it (seeded, class-stratified); ``None``: all of train."""
    if not 0 < options.max_pool < len(case.train):
        return None
    assert case.train.y is not None
    return stratified_rows(case.train.y, options.max_pool, seed=0)


def _simulate_all(
    case: Case, evidence: Evidence, options: LabelingCostOptions, plan: tuple[int, int, int]
) -> dict[str, np.ndarray]:
    """One curve per (strategy, seed): ``n_labels`` (R,) and ``acc_<strategy>`` (seeds×R)."""
    initial, step, budget = plan
    e_tr, e_te = evidence.get("embeddings", "train"), evidence.get("embeddings", "test")
    y_tr, y_te = case.train.y, case.splits["test"].y
    assert y_tr is not None and y_te is not None
    pool = _pool_rows(case, options)
    if pool is not None:
        e_tr, y_tr = e_tr[pool], y_tr[pool]
    out: dict[str, np.ndarray] = {}
    with evidence.progress.step("active-learning simulation", total=len(options.strategies) * options.seeds) as advance:
        for strategy in options.strategies:
            curves = []
            for seed in range(options.seeds):
                mc = (
                    functools.partial(mc_dropout_probs, samples=options.mc_samples, rate=options.mc_dropout, seed=seed)
                    if strategy == "bald"
                    else None
                )
                n, acc = simulate(
                    e_tr,
                    y_tr,
                    e_te,
                    y_te,
                    strategy,
                    initial=initial,
                    step=step,
                    budget=budget,
                    seed=seed,
                    mc_probs_fn=mc,
                    max_iter=options.max_iter,
                )
                out["n_labels"] = n
                curves.append(acc)
                advance(1)
            out[f"acc_{strategy}"] = np.stack(curves)
    return out


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else 0.0)


def _end_slope(n: np.ndarray, acc: np.ndarray, points: int = 3) -> float:
    """Least-squares slope of the last ``points`` points: accuracy gained per extra label."""
    n, acc = np.asarray(n[-points:], dtype=np.float64), np.asarray(acc[-points:], dtype=np.float64)
    if len(n) < 2 or np.ptp(n) == 0:
        return math.nan
    return float(np.polyfit(n, acc, 1)[0])


def _not_examined(case: Case, options: LabelingCostOptions) -> CheckResult | None:
    """A ``not_examined`` result when the case cannot be simulated, else ``None``."""
    test = case.get("test")
    if test is None or not test.labelled:
        summary = "Needs a labelled test split to measure the accuracy of each labelling strategy (pass --test)."
    elif not case.train.labelled:
        summary = "Needs a labelled train split to replay labelling as an active-learning simulation."
    elif len(case.train) < _MIN_ROWS or len(test) < _MIN_ROWS:
        summary = f"Too few rows to simulate active learning: {len(case.train)} train and {len(test)} test rows, expected at least {_MIN_ROWS} in each."
    else:
        initial, _, budget = simulation_plan(len(case.train), case.n_classes, options)
        if budget > initial:
            return None
        summary = f"The labelling budget ({budget}) leaves no room after the initial random set ({initial} labels, at least 2 per class); raise budget."
    return CheckResult(id=_ID, status="not_examined", summary=summary)


@dataclass(frozen=True)
class _Comparison:
    """The simulated curves read two ways: labels saved at equal accuracy, accuracy at equal budget."""

    n: np.ndarray
    acc: dict[str, np.ndarray]
    seeds: int
    stats: dict[str, tuple[float, float]]
    best: str
    ref: float
    pays_off: bool
    best_acc: str
    gain: tuple[float, float]
    pays_by_accuracy: bool
    min_gain: float
    random_curve: np.ndarray
    slope: float


def _compare(sim: dict[str, np.ndarray], options: LabelingCostOptions, n_test: int) -> _Comparison:
    """Labels saved per strategy against random (per seed), the best strategy, and whether it pays off."""
    n = sim["n_labels"]
    acc = {s: sim[f"acc_{s}"] for s in options.strategies}
    rand = acc["random"]
    seeds = rand.shape[0]
    tol = options.tolerance if options.tolerance is not None else 1.0 / n_test
    # target: the accuracy both curves reach (the lower final, minus one test sample). On a
    # plateau random's last-round accuracy is evaluation noise, and a strategy that got to the
    # plateau in two rounds must not count as "never reaching" a lucky last round.
    saved = {
        s: np.array(
            [labels_saved(n, rand[i], n, acc[s][i], monotone=True, tolerance=tol, common=True) for i in range(seeds)]
        )
        for s in options.strategies
        if s != "random"
    }
    # the other reading of the same curves: accuracy at equal budget, paired by seed. When random's
    # curve is flat, "labels to reach it" is noisy while the accuracy gap is not.
    acc_gain = {s: _mean_std(acc[s][:, -1] - rand[:, -1]) for s in saved}
    min_gain = options.min_accuracy_gain if options.min_accuracy_gain is not None else tol
    # a strategy that gets to a lower plateau sooner saves nothing: it must not end reliably below random
    not_worse = {s: acc_gain[s][0] + acc_gain[s][1] >= -min_gain for s in saved}
    stats = {s: _mean_std(v) for s, v in saved.items()}
    best = max(stats, key=lambda s: (not_worse[s], stats[s][0] - stats[s][1], stats[s][0]))
    best_mean, best_std = stats[best]
    # the denominator at the same target as the savings: random's labels to the accuracy both curves reach
    ref = float(
        np.mean(
            [
                labels_to_reach(
                    n, rand[i], common_target(rand[i], acc[best][i], monotone=True, tolerance=tol), monotone=True
                )
                for i in range(seeds)
            ]
        )
    )
    best_acc = max(acc_gain, key=lambda s: acc_gain[s][0] - acc_gain[s][1])
    gain_mean, gain_std = acc_gain[best_acc]
    random_curve = rand.mean(axis=0)
    return _Comparison(
        n=n,
        acc=acc,
        seeds=seeds,
        stats=stats,
        best=best,
        ref=ref,
        pays_off=not_worse[best] and best_mean - best_std > options.warn_saved_fraction * ref,
        best_acc=best_acc,
        gain=(gain_mean, gain_std),
        pays_by_accuracy=gain_mean - gain_std > min_gain,
        min_gain=min_gain,
        random_curve=random_curve,
        slope=_end_slope(n, random_curve),
    )


def _metrics(c: _Comparison, n_pool: int, options: LabelingCostOptions) -> dict[str, float | int | bool | None]:
    best_mean, best_std = c.stats[c.best]
    metrics: dict[str, float | int | bool | None] = {
        "pool_size": n_pool,
        "initial_labels": int(c.n[0]),
        "budget": int(c.n[-1]),
        "rounds": len(c.n) - 1,
        "seeds": c.seeds,
        "random_labels_needed": c.ref,
        "random_final_accuracy": float(c.random_curve[-1]),
        "accuracy_gain_per_label": c.slope if math.isfinite(c.slope) else None,
        "best_labels_saved_mean": best_mean,
        "best_labels_saved_std": best_std,
        "best_labels_saved_fraction": best_mean / c.ref if c.ref > 0 else None,
        "best_accuracy_gain_at_budget_mean": c.gain[0],
        "best_accuracy_gain_at_budget_std": c.gain[1],
        "active_learning_pays_off": bool(c.pays_off or c.pays_by_accuracy),
    }
    for s in options.strategies:
        fm, fs = _mean_std(c.acc[s][:, -1])
        metrics[f"final_accuracy_{s}_mean"], metrics[f"final_accuracy_{s}_std"] = fm, fs
        if s in c.stats:
            metrics[f"labels_saved_{s}_mean"], metrics[f"labels_saved_{s}_std"] = c.stats[s]
    return metrics


def _verdict(c: _Comparison) -> tuple[str, str, tuple[Finding, ...], Remedy]:
    """Status, summary, findings and remedy: the best strategy pays off in labels, in accuracy, or not at all."""
    n, best, seeds = c.n, c.best, c.seeds
    best_mean, best_std = c.stats[best]
    gain_mean, gain_std = c.gain
    pct = 100 * best_mean / c.ref if c.ref > 0 else math.nan
    per_strategy = {s: {"labels_saved_mean": c.stats[s][0], "labels_saved_std": c.stats[s][1]} for s in c.stats}
    gain = (
        f" At the end of the budget, random labelling gains {1e4 * c.slope:+.2f} accuracy points per 100 extra labels."
        if math.isfinite(c.slope)
        else ""
    )
    reached = f"the accuracy both it and random labelling reach (at most random's final {c.random_curve[-1]:.1%} with {int(n[-1])} labels; random needed {c.ref:.0f} labels for it on average)"
    extra = {"best_strategy": best, "strategies": per_strategy}
    at_budget = f" With all {int(n[-1])} labels, {best} ends at {c.acc[best][:, -1].mean():.1%} and random at {c.random_curve[-1]:.1%}."
    if c.pays_off:
        message = f"active learning saves {best_mean:.0f} ± {best_std:.0f} labels ({pct:.0f} %) with {best}"
        summary = f"Active learning pays off here: {best} reaches {reached} with {best_mean:.0f} ± {best_std:.0f} fewer labels ({pct:.0f} %, {seeds} seeds).{at_budget}{gain}"
        findings = (Finding("active_learning_saves", message, split="train", extra=extra),)
        remedy = Remedy(
            command="dlclinic treat data.labeling_cost --pool UNLABELLED_FILE --budget N",
            description=f"rank unlabelled samples with {best} and write the next N to label (next_to_label.csv)",
        )
        return "ok", summary, findings, remedy
    if c.pays_by_accuracy:
        message = f"{c.best_acc} ends {100 * gain_mean:+.1f} ± {100 * gain_std:.1f} accuracy points above random at the same {int(n[-1])} labels"
        summary = (
            f"Active learning pays off here in accuracy: with the same {int(n[-1])} labels, {c.best_acc} ends {100 * gain_mean:+.1f} ± {100 * gain_std:.1f} points above random sampling ({seeds} seeds, paired);"
            f" in labels to reach random's final accuracy the best, {best}, saves {best_mean:+.0f} ± {best_std:.0f}.{gain}"
        )
        findings = (
            Finding(
                "active_learning_saves", message, split="train", extra={**extra, "best_accuracy_strategy": c.best_acc}
            ),
        )
        remedy = Remedy(
            command="dlclinic treat data.labeling_cost --pool UNLABELLED_FILE --budget N",
            description=f"rank unlabelled samples with {c.best_acc} and write the next N to label (next_to_label.csv)",
        )
        return "ok", summary, findings, remedy
    message = f"no strategy saves labels reliably over random sampling (best: {best}, {best_mean:+.0f} ± {best_std:.0f} labels)"
    summary = (
        f"On this dataset active learning does not pay off, so label at random: no strategy reliably needs fewer labels than random sampling to reach {reached}; "
        f"the best, {best}, saves {best_mean:+.0f} ± {best_std:.0f} labels over {seeds} seeds.{at_budget}{gain}"
    )
    findings = (Finding("active_learning_no_gain", message, split="train", extra=extra),)
    remedy = Remedy(
        command="dlclinic treat data.labeling_cost --pool UNLABELLED_FILE --budget N --option strategy=random",
        description="label new samples at random (stratified by class where known): choosing them with an active-learning strategy did not save labels here",
    )
    return "warn", summary, findings, remedy


def _details(c: _Comparison, options: LabelingCostOptions) -> dict[str, Any]:
    """The simulated curves (plot) and labels saved / final accuracy per strategy (table)."""
    n = c.n

    def fmt(s: str) -> str:
        if s not in c.stats:
            return "reference"
        m, sd = c.stats[s]
        return f"{m:+.0f} ± {sd:.0f}"

    return {
        "plots": [
            {
                "kind": "line",
                "title": f"Active-learning simulation: test accuracy vs labels (mean of {c.seeds} seeds)",
                "xlabel": "labels used",
                "ylabel": "test accuracy",
                "series": [
                    {"label": s, "x": n.tolist(), "y": c.acc[s].mean(axis=0).tolist()} for s in options.strategies
                ],
            }
        ],
        "tables": [
            {
                "title": f"Labels saved vs random at equal accuracy ({c.random_curve[-1]:.1%}, reached by random with {c.ref:.0f} labels) and accuracy at {int(n[-1])} labels",
                "columns": ["strategy", "labels saved (mean ± std)", "final accuracy (mean ± std)"],
                "rows": [
                    [s, fmt(s), "{:.1%} ± {:.1%}".format(*_mean_std(c.acc[s][:, -1]))] for s in options.strategies
                ],
            }
        ],
    }


def run(case: Case, evidence: Evidence, options: LabelingCostOptions) -> CheckResult:
    """Simulate active learning on the train split and say whether it beats random labelling.

    Per seed, each strategy's labels saved against random come from
    :func:`~dlclinic.functional.active_learning.labels_saved` on the monotone (isotonic)
    fits of the curves, read at the accuracy both curves reach (the lower of the two final
    accuracies, minus one test sample, so both curves always reach it). A strategy whose
    final accuracy is reliably below random's (paired mean + std < −one test sample) does
    not pay off however early it plateaus. The best strategy is the one with the highest
    ``mean − std`` over seeds; active learning pays off when that lower bound is above
    ``warn_saved_fraction`` × the labels random needed.
    """
    skipped = _not_examined(case, options)
    if skipped is not None:
        return skipped
    pool = _pool_rows(case, options)
    n_pool = len(case.train) if pool is None else len(pool)
    plan = simulation_plan(n_pool, case.n_classes, options)
    params = {
        "strategies": list(options.strategies),
        "seeds": options.seeds,
        "plan": list(plan),
        "max_iter": options.max_iter,
        **({"pool": n_pool} if pool is not None else {}),
    }
    if "bald" in options.strategies:
        params.update(mc_samples=options.mc_samples, mc_dropout=options.mc_dropout)
    sim = evidence.cached("labeling_cost", params, lambda: _simulate_all(case, evidence, options, plan))
    comparison = _compare(sim, options, len(case.splits["test"]))
    status, summary, findings, remedy = _verdict(comparison)
    summary += " (Simulated with a logistic head on the model's embeddings, which learned from every train label: compare the strategies, not the absolute accuracies.)"
    if pool is not None:
        summary += f" The pool is a seeded, class-stratified sample of {n_pool:,} of the {len(case.train):,} train rows (option max_pool)."
    return CheckResult(
        id=_ID,
        status=status,  # type: ignore[arg-type]
        summary=summary,
        metrics=_metrics(comparison, n_pool, options),
        thresholds={
            "best_labels_saved_lower_bound_fraction.warn": options.warn_saved_fraction,
            "best_accuracy_gain_at_budget.min": comparison.min_gain,
        },
        findings=findings,
        remedy=remedy,
        details=_details(comparison, options),
    )


CHECK = CheckSpec(
    id=_ID,
    requires=(("embeddings", "train"), ("embeddings", "test")),
    options=LabelingCostOptions,
    run=run,
    description="active-learning simulation on the train split: labels saved at equal accuracy by entropy, margin, k-center (and BALD) versus random",
)


_STRATEGIES = ("auto", "random", "entropy", "margin", "kcenter", "bald")


@dataclass(frozen=True)
class LabelingParams:
    """``pool``: file of unlabelled inputs (same format as train); ``budget``: how many to pick;
    ``strategy``: auto | random | entropy | margin | kcenter | bald; ``id_col``: id column/key of the pool."""

    pool: str | None = None
    budget: int = 100
    strategy: str = "auto"
    id_col: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.budget < 1:
            raise ValueError(f"`budget >= 1` must hold, but got budget={self.budget}")
        if self.strategy not in _STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(_STRATEGIES)}, but got {self.strategy!r}")


def rank_pool(
    strategy: str,
    probs: np.ndarray,
    emb_pool: np.ndarray,
    emb_train: np.ndarray,
    y_train: np.ndarray,
    budget: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, scores)`` of the ``budget`` pool rows to label next, best first.

    For k-center the score is the distance to the nearest already-labelled or
    already-picked row at the time of the pick (decreasing by construction).
    """
    n = len(probs)
    budget = min(budget, n)
    if strategy == "random":
        scores = np.random.default_rng(seed).random(n)
    elif strategy == "entropy":
        scores = score_entropy(probs)
    elif strategy == "margin":
        scores = score_margin(probs)
    elif strategy == "bald":
        head = LogisticRegression(max_iter=300).fit(emb_train, y_train)
        scores = score_bald(mc_dropout_probs(head, emb_pool, seed=seed))
    elif strategy == "kcenter":
        both = np.concatenate([emb_train, emb_pool]).astype(np.float64)
        picks = select_kcenter(both, np.arange(len(emb_train)), budget) - len(emb_train)
        d = np.sqrt(
            np.maximum(((both[len(emb_train) + picks][:, None] - both[None, : len(emb_train)]) ** 2).sum(-1).min(1), 0)
        )
        return picks, d
    else:  # pragma: no cover - validated by LabelingParams
        raise ConfigError(f"unknown strategy {strategy!r}")
    order = np.argsort(-scores, kind="stable")[:budget]
    return order, scores[order]


def treat_labeling(ctx: TreatContext, params: LabelingParams) -> TreatOutcome:
    """Rank the pool with the chosen strategy and write ``next_to_label.csv``."""
    if params.pool is None:
        raise ConfigError(
            "treat data.labeling_cost needs the unlabelled pool: --option pool=FILE (same format as --train), and --option budget=N"
        )
    case = ctx.case
    loaded = load_like(params.pool, case, name="pool", id_col=params.id_col)
    before = ctx.measure(case)
    res = before[ctx.challenge_id]
    strategy = params.strategy
    if strategy == "auto":
        picked = None
        for f in res.findings:
            if f.code == "active_learning_saves":
                picked = f.extra.get("best_accuracy_strategy") or f.extra.get("best_strategy")
        strategy = str(picked) if picked else "random"
    evidence = Evidence(case, ctx.evidence_config, recipe=ctx.recipe, cache_dir=ctx.cache_dir, progress=ctx.progress)
    pool_ev = evidence.on_extra(loaded.x, name="deploy")
    probs = pool_ev.get("probs", "deploy")
    emb_pool = pool_ev.get("embeddings", "deploy")
    assert case.train.y is not None
    rows, scores = rank_pool(
        strategy, probs, emb_pool, evidence.get("embeddings", "train"), case.train.y, params.budget, params.seed
    )
    pred = probs.argmax(1)
    ids = loaded.ids if loaded.ids is not None else np.arange(len(loaded.x))
    names = case.class_names or tuple(str(k) for k in range(case.n_classes))
    lines = ["rank,row,id,score,predicted_class"] + [
        f"{r + 1},{int(i)},{ids[i]},{float(s):.6g},{names[int(pred[i])]}" for r, (i, s) in enumerate(zip(rows, scores))
    ]
    artifacts: dict[str, str] = {}
    if ctx.out_dir is not None:
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        path = ctx.out_dir / "next_to_label.csv"
        with atomic_path(path) as tmp:
            tmp.write_text("\n".join(lines) + "\n")
        artifacts["next_to_label"] = str(path)
    ent = score_entropy(probs)
    saved = res.metrics.get(f"labels_saved_{strategy}_mean")
    return conclude(
        ctx,
        before=before,
        after=before,  # nothing changes until the picked rows are labelled
        action=f"rank {len(loaded.x)} unlabelled pool rows with {strategy} and pick the next {len(rows)} to label",
        before_values={
            "pool_rows": len(loaded.x),
            "pool_mean_entropy": float(ent.mean()),
            "pool_predicted_classes": int(len(np.unique(pred))),
        },
        after_values={
            "picked_rows": len(rows),
            "picked_mean_entropy": float(ent[rows].mean()),
            "picked_predicted_classes": int(len(np.unique(pred[rows]))),
            "simulated_labels_saved_mean": saved,
        },
        artifacts=artifacts,
        notes=(
            f"strategy {strategy}"
            + (" (chosen by the check's simulation)" if params.strategy == "auto" else " (asked for)")
            + (
                f"; in the simulation it saved {saved:.0f} labels on average versus random at equal accuracy"
                if isinstance(saved, (int, float))
                else ""
            ),
            "the check's status is unchanged until the picked rows are labelled and added to train: label them, then run the checkup again",
        ),
    )


REMEDY = RemedySpec(
    id="data.labeling_cost",
    params=LabelingParams,
    run=treat_labeling,
    description="Rank an unlabelled pool with the best strategy and write the next N samples to label (CSV).",
)
