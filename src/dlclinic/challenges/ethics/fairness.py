"""ethics.fairness — per-group accuracy, selection rate, TPR/FPR and their disparities.

Needs a group attribute on the evaluated split (``--group-col``, the ``group`` key of an
``.npz``, or ``Case.from_arrays(..., groups=...)``); without it the check is
``not_examined``. A disparity counts only when it is both large (above the threshold)
and significant: permutation p-values (see :func:`dlclinic.functional.fairness.estimate_fairness`)
Holm-adjusted over the graded disparities, so the false-alarm rate of a warning on a fair
model is at most ``alpha`` (5 %) per checkup.

The remedy: per-group thresholds on the model's scores, or group-balanced retraining.

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
from sklearn.base import BaseEstimator, ClassifierMixin

from dlclinic.core.atomic import write_json, write_weights
from dlclinic.core.case import Case, Split, usable_inputs
from dlclinic.core.errors import ConfigError, InputError, MissingDependencyError
from dlclinic.core.evidence import Evidence
from dlclinic.core.inference import predict_logits
from dlclinic.core.recipe import fit, seed_everything
from dlclinic.core.registry import CheckSpec, RemedySpec, TreatContext, TreatOutcome, conclude
from dlclinic.core.results import CheckResult, Finding, Remedy, Report, Status, grade, worst
from dlclinic.functional.fairness import FairnessReport, estimate_fairness
from dlclinic.functional.stats import holm as _holm

__all__ = [
    "CHECK",
    "REMEDY",
    "FairnessOptions",
    "FairnessParams",
    "assess_fairness",
    "group_balanced_weights",
    "holm",
    "run",
    "treat_fairness",
]

ID = "ethics.fairness"
HOW_TO_GROUPS = "pass a sensitive attribute: --group-col COLUMN (CSV/Parquet), a 'group' array in the .npz files, or Case.from_arrays(..., groups={'test': ...})"


@dataclass(frozen=True)
class FairnessOptions:
    """Thresholds of the fairness check.

    Attributes:
        split: the labelled split whose groups are examined (held-out data by default).
        positive_class: binarise one-vs-rest on this class (default: class 1 for binary
            tasks, every class one-vs-rest with the worst class deciding for multiclass).
        warn_difference: a disparity (accuracy gap, equalized-odds difference, and the
            demographic-parity difference when graded) above this warns...
        fail_difference: ...and above this fails, when it is also significant.
        alpha: family-wise false-alarm level of the significance gate (Holm).
        grade_demographic_parity: grade the demographic-parity difference too. Off by
            default: it also fires when groups legitimately differ in their base rates.
        min_group_size: smaller groups are listed but not compared.
        n_boot: bootstrap replicates for the intervals.
        n_perm: permutations for the p-values.
    """

    split: str = "test"
    positive_class: int | None = None
    warn_difference: float = 0.10
    fail_difference: float = 0.20
    alpha: float = 0.05
    grade_demographic_parity: bool = False
    min_group_size: int = 30
    n_boot: int = 500
    n_perm: int = 500
    seed: int = 0


def holm(pvalues: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (NaN stays NaN); see :func:`dlclinic.functional.stats.holm`."""
    return _holm(pvalues).tolist()


def _fmt_ci(ci: Any) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _graded(rep: FairnessReport, options: FairnessOptions, split: str) -> tuple[list[Status], list[Finding]]:
    """Status of each graded disparity (large *and* significant after Holm) and its finding."""
    graded = {
        "accuracy_gap": (rep.accuracy_gap, rep.accuracy_gap_p),
        "equalized_odds_difference": (rep.eo_difference, rep.eo_p),
    }
    if options.grade_demographic_parity:
        graded["demographic_parity_difference"] = (rep.dp_difference, rep.dp_p)
    adjusted = dict(zip(graded, holm([p for _, p in graded.values()])))
    statuses: list[Status] = []
    findings: list[Finding] = []
    labels_ = {
        "accuracy_gap": f"accuracy gap (group {rep.worst_group!r} vs the rest)",
        "equalized_odds_difference": f"equalized-odds difference ({rep.positive}; class {rep.eo_class})",
        "demographic_parity_difference": f"demographic-parity difference (class {rep.dp_class})",
    }
    cis = {
        "accuracy_gap": rep.accuracy_gap_ci,
        "equalized_odds_difference": rep.eo_ci,
        "demographic_parity_difference": rep.dp_ci,
    }
    for name, (value, _) in graded.items():
        p_adj = adjusted[name]
        st: Status = (
            grade(value, options.warn_difference, options.fail_difference)
            if np.isfinite(p_adj) and p_adj < options.alpha
            else "ok"
        )
        statuses.append(st)
        if st != "ok":
            findings.append(
                Finding(
                    name,
                    f"{labels_[name]} {value:.3f}, 95 % CI of the pair's difference {_fmt_ci(cis[name])}, Holm-adjusted permutation p = {p_adj:.3g}",
                    split=split,
                )
            )
    if rep.small_groups:
        findings.append(
            Finding(
                "small_groups",
                f"{len(rep.small_groups)} group(s) with fewer than {options.min_group_size} rows were not compared: {', '.join(rep.small_groups[:10])}",
                split=split,
            )
        )
    return statuses, findings


def _summary(rep: FairnessReport, options: FairnessOptions, status: Status, split: str, what: str) -> str:
    if status == "ok":
        return f"No disparity across the {len(rep.groups)} groups of {split} is both above {options.warn_difference:g} and significant: worst-group accuracy {rep.worst_group_accuracy:.1%} ({rep.worst_group!r}) vs {rep.overall_accuracy:.1%} overall, equalized-odds difference {rep.eo_difference:.3f} (p = {rep.eo_p:.2g})."
    return f"The {what} treats groups differently on {split}: group {rep.worst_group!r} accuracy {rep.worst_group_accuracy:.1%} vs {rep.overall_accuracy:.1%} overall (gap {rep.accuracy_gap:.3f}, CI {_fmt_ci(rep.accuracy_gap_ci)}), equalized-odds difference {rep.eo_difference:.3f} (CI {_fmt_ci(rep.eo_ci)})."


def _group_rows(rep: FairnessReport) -> list[list[Any]]:
    return [
        [
            name,
            int(rep.count[j]),
            f"{rep.accuracy[j]:.3f} {_fmt_ci(rep.accuracy_ci[j])}",
            f"{rep.selection[j]:.3f} {_fmt_ci(rep.selection_ci[j])}",
            f"{rep.tpr[j]:.3f} {_fmt_ci(rep.tpr_ci[j])}",
            f"{rep.fpr[j]:.3f} {_fmt_ci(rep.fpr_ci[j])}",
        ]
        for j, name in enumerate(rep.groups)
    ]


def _plots(case: Case, rep: FairnessReport, options: FairnessOptions, split: str) -> list[dict[str, Any]]:
    plots: list[dict[str, Any]] = [
        {
            "kind": "bar",
            "title": f"Accuracy per group ({split})",
            "xlabel": "group",
            "ylabel": "accuracy",
            "series": [{"label": "accuracy", "x": list(rep.groups), "y": rep.accuracy.tolist()}],
        },
    ]
    if case.n_classes > 2 and options.positive_class is None:
        plots.append(
            {
                "kind": "heatmap",
                "title": "TPR (recall) per group and class",
                "xlabel": "class",
                "ylabel": "group",
                "series": [
                    {
                        "label": "TPR",
                        "z": np.nan_to_num(rep.tpr_by_class, nan=0.0).round(3).tolist(),
                        "x": list(case.class_names),
                        "y": list(rep.groups),
                        "annotate": len(case.class_names) <= 12,
                    }
                ],
            }
        )
    return plots


def _metrics(rep: FairnessReport) -> dict[str, Any]:
    return {
        "overall_accuracy": rep.overall_accuracy,
        "worst_group_accuracy": rep.worst_group_accuracy,
        "accuracy_gap": rep.accuracy_gap,
        "accuracy_gap_ci_low": rep.accuracy_gap_ci[0],
        "accuracy_gap_ci_high": rep.accuracy_gap_ci[1],
        "accuracy_gap_p": rep.accuracy_gap_p,
        "equalized_odds_difference": rep.eo_difference,
        "equalized_odds_ci_low": rep.eo_ci[0],
        "equalized_odds_ci_high": rep.eo_ci[1],
        "equalized_odds_p": rep.eo_p,
        "demographic_parity_difference": rep.dp_difference,
        "demographic_parity_ci_low": rep.dp_ci[0],
        "demographic_parity_ci_high": rep.dp_ci[1],
        "demographic_parity_p": rep.dp_p,
        "n_groups": len(rep.groups),
    }


def assess_fairness(
    case: Case,
    labels: np.ndarray,
    preds: np.ndarray,
    groups: np.ndarray,
    options: FairnessOptions,
    *,
    split: str,
    what: str = "model",
) -> CheckResult:
    """Grade predictions against labels per group (shared by the check and the remedy's re-measurement)."""
    rep = estimate_fairness(
        labels,
        preds,
        groups,
        n_classes=case.n_classes,
        positive_class=options.positive_class,
        min_group_size=options.min_group_size,
        n_boot=options.n_boot,
        n_perm=options.n_perm,
        seed=options.seed,
    )
    statuses, findings = _graded(rep, options, split)
    status = worst(statuses)
    remedy = None
    if status in ("warn", "fail"):
        remedy = Remedy(
            command="dlclinic treat ethics.fairness",
            description="post-process the model's scores with per-group thresholds (fairlearn ThresholdOptimizer, equalized odds) or retrain with group-balanced sample weights; shows before/after disparities and the accuracy cost",
        )
    return CheckResult(
        id=ID,
        status=status,
        summary=_summary(rep, options, status, split, what),
        metrics=_metrics(rep),
        thresholds={
            "difference.warn": options.warn_difference,
            "difference.fail": options.fail_difference,
            "p_value_holm.max": options.alpha,
        },
        findings=tuple(findings),
        remedy=remedy,
        details={
            "positive": rep.positive,
            "worst_group": rep.worst_group,
            "tables": [
                {
                    "title": f"Per-group rates on {split} (95 % bootstrap CIs; selection rate for class {rep.dp_class}, TPR/FPR for class {rep.eo_class})",
                    "columns": ["group", "n", "accuracy", "selection rate", "TPR", "FPR"],
                    "rows": _group_rows(rep),
                }
            ],
            "plots": _plots(case, rep, options, split),
        },
    )


def run(case: Case, evidence: Evidence, options: FairnessOptions) -> CheckResult:
    """Per-group rates and disparities of the model's predictions on ``options.split``."""
    split = case.get(options.split)
    if split is None or not split.labelled:
        return CheckResult(
            id=ID,
            status="not_examined",
            summary=f"Needs a labelled {options.split!r} split with groups to compare the model across groups (pass --{options.split}).",
        )
    if split.groups is None:
        return CheckResult(
            id=ID,
            status="not_examined",
            summary=f"No group attribute on the {options.split!r} split, so fairness was not measured; {HOW_TO_GROUPS}.",
        )
    assert split.y is not None
    preds = evidence.get("probs", options.split).argmax(1)
    try:
        return assess_fairness(case, split.y, preds, split.groups, options, split=options.split)
    except InputError as exc:
        return CheckResult(id=ID, status="not_examined", summary=f"Groups too small to compare: {exc}.")


CHECK = CheckSpec(
    id=ID,
    requires=(("probs", "test"),),
    options=FairnessOptions,
    run=run,
    description="per-group accuracy, selection rate, TPR/FPR with bootstrap CIs; equalized-odds and demographic-parity differences with permutation tests; worst-group accuracy",
)


# -- remedy --------------------------------------------------------------------------------------


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


class _ScoreEstimator(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """A sklearn classifier whose input already is the score: ``predict_proba(x) = [1 - x, x]``."""

    def fit(self, x: Any, y: Any) -> Any:
        self.classes_ = np.array([0, 1])
        return self

    def predict(self, x: Any) -> np.ndarray:
        return (np.asarray(x, dtype=float)[:, 0] >= 0.5).astype(int)

    def predict_proba(self, x: Any) -> np.ndarray:
        s = np.asarray(x, dtype=float)[:, 0]
        return np.stack([1 - s, s], axis=1)


def _score_estimator() -> Any:
    """A fitted :class:`_ScoreEstimator` (ThresholdOptimizer needs a prefit estimator)."""
    return _ScoreEstimator().fit(None, None)


@dataclass(frozen=True)
class _Treated:
    """What one method produced: predictions on the held-out rows and how they were made."""

    pred_before: np.ndarray
    pred_after: np.ndarray
    model: Any
    action: str
    notes: list[str]
    artifacts: dict[str, str]


def _method(case: Case, test: Split | None, params: FairnessParams) -> str:
    """The method to apply (``auto`` resolved), after checking the case allows it."""
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
    return method


def _halves(groups: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fit rows and evaluation rows: each group's test rows split in two at random."""
    rng = np.random.default_rng(seed)
    fit_rows, eval_rows = [], []
    for g in np.unique(groups.astype(str)):
        rows = rng.permutation(np.flatnonzero(groups.astype(str) == g))
        fit_rows.append(rows[: len(rows) // 2])
        eval_rows.append(rows[len(rows) // 2 :])
    return np.sort(np.concatenate(fit_rows)), np.sort(np.concatenate(eval_rows))


def _threshold(
    case: Case, test: Split, logits: np.ndarray, fit_idx: np.ndarray, eval_idx: np.ndarray, params: FairnessParams
) -> _Treated:
    """fairlearn's ThresholdOptimizer on the positive-class probability, fitted on ``fit_idx``."""
    try:
        from fairlearn.postprocessing import ThresholdOptimizer
    except ImportError:
        raise MissingDependencyError("fairlearn", "fairness") from None
    assert test.y is not None and test.groups is not None
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
        opt.predict(score[eval_idx], sensitive_features=test.groups[eval_idx].astype(str), random_state=params.seed)
    ).astype(bool)
    if case.n_classes == 2:
        pred_after = np.where(is_pos, pos, 1 - pos)
    else:
        others = logits[eval_idx].copy()
        others[:, pos] = -np.inf
        pred_after = np.where(is_pos, pos, others.argmax(1))
    return _Treated(
        pred_before=logits.argmax(1),
        pred_after=pred_after,
        model=case.model,
        action=f"fairlearn ThresholdOptimizer ({params.constraint}) on the model's class-{pos} probability, per-group thresholds fitted on {len(fit_idx)} test rows",
        notes=[
            f"thresholds were fitted on half of the test split ({len(fit_idx)} rows) and every before/after number is measured on the other half ({len(eval_idx)} rows)",
            "ThresholdOptimizer predictions are randomised between two thresholds for some groups (seeded); deploy it with the group attribute at prediction time",
        ],
        artifacts={},
    )


def _reweight(ctx: TreatContext, test: Split, eval_idx: np.ndarray) -> _Treated:
    """Retrain with group-balanced sample weights; the reference is the same recipe without them."""
    case = ctx.case
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
            else fit(factory(), usable_inputs(case.train.x), case.train.y, ctx.fit_config).model
        )
        advance(1)
        seed_everything(ctx.fit_config.seed)
        treated_model = fit(
            factory(), usable_inputs(case.train.x), case.train.y, ctx.fit_config, sample_weight=weights
        ).model
        advance(1)
    artifacts: dict[str, str] = {}
    if ctx.out_dir is not None:
        artifacts["model"] = str(write_weights(treated_model, ctx.out_dir / "fair_model.safetensors"))
    return _Treated(
        pred_before=predict_logits(reference, usable_inputs(test.x)).argmax(1),
        pred_after=predict_logits(treated_model, usable_inputs(test.x[eval_idx])).argmax(1),
        model=treated_model,
        action=f"retrain with group-balanced sample weights 1/n(group, class) (weights {weights.min():.2f}–{weights.max():.2f}), same recipe and seed",
        notes=[
            f"before and after are models trained with the same recipe and seed, compared on the same {len(eval_idx)} held-out test rows"
        ],
        artifacts=artifacts,
    )


def _with_result(report: Report, result: CheckResult) -> Report:
    """``report`` with the result of the same challenge replaced by ``result``."""
    return dataclasses.replace(report, challenges=tuple(result if r.id == result.id else r for r in report.challenges))


def treat_fairness(ctx: TreatContext, params: FairnessParams) -> TreatOutcome:
    """Apply post-processing thresholds or group-balanced retraining and re-measure the disparities."""
    case = ctx.case
    test = case.get("test")
    method = _method(case, test, params)
    assert test is not None and test.y is not None and test.groups is not None
    before = ctx.measure(case)
    opts = FairnessOptions(positive_class=params.positive_class, seed=params.seed)
    # fit on one half of test, judge on the other, stratified by group
    fit_idx, eval_idx = _halves(test.groups, params.seed)
    y_eval, g_eval = test.y[eval_idx], test.groups[eval_idx]
    if method == "threshold":
        logits = predict_logits(case.model, usable_inputs(test.x)).astype(np.float64)
        treated = _threshold(case, test, logits, fit_idx, eval_idx, params)
    else:
        treated = _reweight(ctx, test, eval_idx)
    pred_before = treated.pred_before[eval_idx]
    res_before = assess_fairness(case, y_eval, pred_before, g_eval, opts, split="test (held-out half)")
    res_after = assess_fairness(
        case, y_eval, treated.pred_after, g_eval, opts, split="test (held-out half)", what="treated model"
    )
    acc_b, acc_a = float((pred_before == y_eval).mean()), float((treated.pred_after == y_eval).mean())
    if method == "reweight":
        after = ctx.measure(
            dataclasses.replace(case, model=treated.model, model_source=f"{case.model_source}, {method}")
        )
    else:
        after = _with_result(before, res_after)
    artifacts = dict(treated.artifacts)
    if ctx.out_dir is not None:
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
    # the before/after numbers and statuses are those of the held-out half, not of the whole test split
    outcome = conclude(
        ctx,
        before=_with_result(before, res_before),
        after=_with_result(after, res_after),
        action=treated.action,
        before_values={"accuracy": acc_b},
        after_values={"accuracy": acc_a, "accuracy_cost": acc_b - acc_a},
        check_metrics=(
            "accuracy_gap",
            "equalized_odds_difference",
            "demographic_parity_difference",
            "worst_group_accuracy",
        ),
        artifacts=artifacts,
        notes=treated.notes,
    )
    return dataclasses.replace(outcome, before=before, after=after)


REMEDY = RemedySpec(
    id="ethics.fairness",
    params=FairnessParams,
    run=treat_fairness,
    description="Per-group thresholds (fairlearn ThresholdOptimizer) or group-balanced retraining; disparities and accuracy before/after.",
)
