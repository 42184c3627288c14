"""ethics.fairness — per-group accuracy, selection rate, TPR/FPR and their disparities.

Needs a group attribute on the evaluated split (``--group-col``, the ``group`` key of an
``.npz``, or ``Case.from_arrays(..., groups=...)``); without it the check is
``not_examined``. A disparity counts only when it is both large (above the threshold)
and significant: permutation p-values (see :func:`dlclinic.functional.fairness.estimate_fairness`)
Holm-adjusted over the graded disparities, so the false-alarm rate of a warning on a fair
model is at most ``alpha`` (5 %) per checkup.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dlclinic.core.case import Case
from dlclinic.core.errors import InputError
from dlclinic.core.evidence import Evidence
from dlclinic.core.registry import CheckSpec
from dlclinic.core.results import CheckResult, Finding, Remedy, Status, grade, worst
from dlclinic.functional.stats import holm as _holm

__all__ = ["CHECK", "FairnessOptions", "assess_fairness", "holm", "run"]

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
    from dlclinic.functional.fairness import estimate_fairness

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
    status = worst(statuses)
    if status == "ok":
        summary = f"No disparity across the {len(rep.groups)} groups of {split} is both above {options.warn_difference:g} and significant: worst-group accuracy {rep.worst_group_accuracy:.1%} ({rep.worst_group!r}) vs {rep.overall_accuracy:.1%} overall, equalized-odds difference {rep.eo_difference:.3f} (p = {rep.eo_p:.2g})."
    else:
        summary = f"The {what} treats groups differently on {split}: group {rep.worst_group!r} accuracy {rep.worst_group_accuracy:.1%} vs {rep.overall_accuracy:.1%} overall (gap {rep.accuracy_gap:.3f}, CI {_fmt_ci(rep.accuracy_gap_ci)}), equalized-odds difference {rep.eo_difference:.3f} (CI {_fmt_ci(rep.eo_ci)})."
    rows = []
    for j, name in enumerate(rep.groups):
        rows.append(
            [
                name,
                int(rep.count[j]),
                f"{rep.accuracy[j]:.3f} {_fmt_ci(rep.accuracy_ci[j])}",
                f"{rep.selection[j]:.3f} {_fmt_ci(rep.selection_ci[j])}",
                f"{rep.tpr[j]:.3f} {_fmt_ci(rep.tpr_ci[j])}",
                f"{rep.fpr[j]:.3f} {_fmt_ci(rep.fpr_ci[j])}",
            ]
        )
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
    remedy = None
    if status in ("warn", "fail"):
        remedy = Remedy(
            command=f"dlclinic treat ethics.fairness {case.metadata.get('cli_args', '<data options>')}".strip(),
            description="post-process the model's scores with per-group thresholds (fairlearn ThresholdOptimizer, equalized odds) or retrain with group-balanced sample weights; shows before/after disparities and the accuracy cost",
        )
    return CheckResult(
        id=ID,
        status=status,
        summary=summary,
        metrics={
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
        },
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
                    "rows": rows,
                }
            ],
            "plots": plots,
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
