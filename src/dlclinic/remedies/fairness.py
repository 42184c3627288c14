"""The ethics.fairness remedy: per-group thresholds on the model's scores, or group-balanced retraining.

* ``threshold`` — fairlearn's ``ThresholdOptimizer`` (Hardt et al. 2016) with the
  equalized-odds constraint, fitted on the model's positive-class probability (binary
  tasks, or one-vs-rest for ``positive_class``). It is fitted on one half of the test
  split and judged on the other half, so the after-numbers are not measured on the rows
  that chose the thresholds. Multiclass without a positive class has no
  ThresholdOptimizer: ``auto`` then picks ``reweight``.
* ``reweight`` — retrain with the recipe and per-sample weights ``1 / n(group, class)``
  (normalised), so every (group, class) cell carries the same total weight
  (group-balanced loss; Kamiran & Calders 2012 "Data preprocessing techniques for
  classification without discrimination").

Both report the disparities and accuracy before/after on the same held-out rows, and
the accuracy cost of the treatment.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlclinic.core.errors import ConfigError, MissingDependencyError
from dlclinic.core.registry import RemedySpec, TreatContext, TreatOutcome

__all__ = ["REMEDY", "FairnessParams", "group_balanced_weights", "treat_fairness"]


@dataclass(frozen=True)
class FairnessParams:
    """``method``: ``auto``, ``threshold`` (ThresholdOptimizer) or ``reweight``; ``positive_class`` for multiclass thresholds."""

    method: str = "auto"
    positive_class: int | None = None
    constraint: str = "equalized_odds"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in ("auto", "threshold", "reweight"):
            raise ConfigError(f"method must be 'auto', 'threshold' or 'reweight', but got {self.method!r}")
        if self.constraint not in ("equalized_odds", "demographic_parity", "true_positive_rate_parity"):
            raise ConfigError(
                f"constraint must be equalized_odds, demographic_parity or true_positive_rate_parity, but got {self.constraint!r}"
            )


def group_balanced_weights(groups: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Weights ``1 / n(group, class)`` scaled to mean 1: each (group, class) cell weighs the same.

    Example:
        >>> group_balanced_weights(np.array(["a", "a", "a", "b"]), np.array([0, 0, 1, 0])).round(2).tolist()
        [0.5, 0.5, 1.0, 1.0]
    """
    g = np.asarray(groups).astype(str)
    keys = np.char.add(np.char.add(g, "\x00"), np.asarray(labels).astype(str))
    _, inv, counts = np.unique(keys, return_inverse=True, return_counts=True)
    w = 1.0 / counts[inv]
    return (w / w.mean()).astype(np.float32)


def _score_estimator() -> Any:
    """A fitted sklearn classifier whose input already is the score: ``predict_proba(x) = [1 - x, x]``."""
    from sklearn.base import BaseEstimator, ClassifierMixin

    class ScoreEstimator(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
        def fit(self, x: Any, y: Any) -> Any:
            self.classes_ = np.array([0, 1])
            return self

        def predict(self, x: Any) -> np.ndarray:
            return (np.asarray(x, dtype=float)[:, 0] >= 0.5).astype(int)

        def predict_proba(self, x: Any) -> np.ndarray:
            s = np.asarray(x, dtype=float)[:, 0]
            return np.stack([1 - s, s], axis=1)

    return ScoreEstimator().fit(None, None)


def treat_fairness(ctx: TreatContext, params: FairnessParams) -> TreatOutcome:
    """Apply post-processing thresholds or group-balanced retraining and re-measure the disparities."""
    from dlclinic.checks.ethics_fairness import FairnessOptions, assess_fairness
    from dlclinic.core.inference import predict_logits
    from dlclinic.core.results import Treatment

    case = ctx.case
    test = case.get("test")
    if test is None or test.y is None or test.groups is None:
        raise ConfigError("treat ethics.fairness needs a labelled test split with groups (pass --test and --group-col)")
    if case.train.groups is None and params.method == "reweight":
        raise ConfigError(
            "treat ethics.fairness --option method=reweight needs groups on the train split too (--group-col)"
        )
    method = params.method
    binary = case.n_classes == 2 or params.positive_class is not None
    if method == "auto":
        method = "threshold" if binary else ("reweight" if case.train.groups is not None else "threshold")
    if method == "threshold" and not binary:
        raise ConfigError(
            f"ThresholdOptimizer is binary: for {case.n_classes} classes pass --option positive_class=K (one-vs-rest) or --option method=reweight"
        )
    before = ctx.measure(case)
    opts = FairnessOptions(positive_class=params.positive_class, seed=params.seed)
    rng = np.random.default_rng(params.seed)
    # fit on one half of test, judge on the other, stratified by group
    fit_rows, eval_rows = [], []
    for g in np.unique(test.groups.astype(str)):
        rows = rng.permutation(np.flatnonzero(test.groups.astype(str) == g))
        fit_rows.append(rows[: len(rows) // 2])
        eval_rows.append(rows[len(rows) // 2 :])
    fit_idx, eval_idx = np.sort(np.concatenate(fit_rows)), np.sort(np.concatenate(eval_rows))
    y_eval, g_eval = test.y[eval_idx], test.groups[eval_idx]
    logits = predict_logits(case.model, np.nan_to_num(test.x)).astype(np.float64)
    pred_before = logits.argmax(1)
    artifacts: dict[str, str] = {}
    notes: list[str] = []
    if method == "threshold":
        try:
            from fairlearn.postprocessing import ThresholdOptimizer
        except ImportError:
            raise MissingDependencyError("fairlearn", "fairness") from None
        pos = params.positive_class if params.positive_class is not None else 1
        z = logits - logits.max(1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        score = probs[:, pos : pos + 1]
        y_bin = (test.y == pos).astype(int)
        opt = ThresholdOptimizer(
            estimator=_score_estimator(),
            constraints=params.constraint,
            objective="balanced_accuracy_score" if params.constraint != "demographic_parity" else "accuracy_score",
            prefit=True,
            predict_method="predict_proba",
        )
        opt.fit(score[fit_idx], y_bin[fit_idx], sensitive_features=test.groups[fit_idx].astype(str))
        is_pos = np.asarray(
            opt.predict(score[eval_idx], sensitive_features=g_eval.astype(str), random_state=params.seed)
        ).astype(bool)
        if case.n_classes == 2:
            pred_after = np.where(is_pos, pos, 1 - pos)
        else:
            others = logits[eval_idx].copy()
            others[:, pos] = -np.inf
            pred_after = np.where(is_pos, pos, others.argmax(1))
        action = f"fairlearn ThresholdOptimizer ({params.constraint}) on the model's class-{pos} probability, per-group thresholds fitted on {len(fit_idx)} test rows"
        notes.append(
            f"thresholds were fitted on half of the test split ({len(fit_idx)} rows) and every before/after number is measured on the other half ({len(eval_idx)} rows)"
        )
        notes.append(
            "ThresholdOptimizer predictions are randomised between two thresholds for some groups (seeded); deploy it with the group attribute at prediction time"
        )
        treated_model = case.model
    else:
        from dlclinic.core.recipe import fit, seed_everything

        factory = case.model_factory
        if factory is None or case.train.y is None or case.train.groups is None:
            raise ConfigError(
                "treat ethics.fairness --option method=reweight retrains the model: pass --model file.py:factory and groups on train"
            )
        weights = group_balanced_weights(case.train.groups, case.train.y)
        with ctx.progress.step("retraining with group-balanced weights", total=2) as advance:
            seed_everything(ctx.fit_config.seed)
            reference = (
                case.model
                if case.metadata.get("dlclinic_baseline")
                else fit(factory(), np.nan_to_num(case.train.x), case.train.y, ctx.fit_config).model
            )
            advance(1)
            seed_everything(ctx.fit_config.seed)
            treated_model = fit(
                factory(), np.nan_to_num(case.train.x), case.train.y, ctx.fit_config, sample_weight=weights
            ).model
            advance(1)
        pred_before = predict_logits(reference, np.nan_to_num(test.x)).argmax(1)
        pred_after = predict_logits(treated_model, np.nan_to_num(test.x[eval_idx])).argmax(1)
        action = f"retrain with group-balanced sample weights 1/n(group, class) (weights {weights.min():.2f}–{weights.max():.2f}), same recipe and seed"
        notes.append(
            f"before and after are models trained with the same recipe and seed, compared on the same {len(eval_idx)} held-out test rows"
        )
        if ctx.out_dir is not None:
            from dlclinic.core.atomic import write_weights

            artifacts["model"] = str(write_weights(treated_model, ctx.out_dir / "fair_model.safetensors"))
    res_before = assess_fairness(case, y_eval, pred_before[eval_idx], g_eval, opts, split="test (held-out half)")
    res_after = assess_fairness(
        case, y_eval, pred_after, g_eval, opts, split="test (held-out half)", what="treated model"
    )
    acc_b, acc_a = float((pred_before[eval_idx] == y_eval).mean()), float((pred_after == y_eval).mean())
    after_case = (
        dataclasses.replace(case, model=treated_model, model_source=f"{case.model_source}, {method}")
        if method == "reweight"
        else case
    )
    after = (
        ctx.measure(after_case)
        if method == "reweight"
        else dataclasses.replace(
            before, challenges=tuple(res_after if r.id == ctx.challenge_id else r for r in before.challenges)
        )
    )
    if ctx.out_dir is not None:
        from dlclinic.core.atomic import write_json

        artifacts["before_after"] = str(
            write_json(
                ctx.out_dir / "fairness_before_after.json",
                {
                    "method": method,
                    "eval_rows": eval_idx.tolist(),
                    "before": res_before.to_dict(),
                    "after": res_after.to_dict(),
                },
                indent=1,
            )
        )
    keys = ("accuracy_gap", "equalized_odds_difference", "demographic_parity_difference", "worst_group_accuracy")
    treatment = Treatment(
        challenge_id=ctx.challenge_id,
        action=action,
        before={"accuracy": acc_b, **{k: res_before.metrics.get(k) for k in keys}},
        after={"accuracy": acc_a, "accuracy_cost": acc_b - acc_a, **{k: res_after.metrics.get(k) for k in keys}},
        before_status=res_before.status,
        after_status=res_after.status,
        artifacts=artifacts,
        notes=tuple(notes),
    )
    return TreatOutcome(treatment, before, after)


REMEDY = RemedySpec(
    id="ethics.fairness",
    params=FairnessParams,
    run=treat_fairness,
    description="Per-group thresholds (fairlearn ThresholdOptimizer) or group-balanced retraining; disparities and accuracy before/after.",
)
