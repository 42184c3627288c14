"""The data.quality remedy end to end: clean the train split, retrain, measure again.

The pure pieces (cleaning plan, paired interval, artifacts) live in
:mod:`dlclinic.remedies.clean`; this adapter orchestrates them through a
:class:`~dlclinic.core.registry.TreatContext`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np

from dlclinic.core.errors import ConfigError
from dlclinic.core.registry import RemedySpec, TreatContext, TreatOutcome

__all__ = ["REMEDY", "QualityParams", "treat_quality"]


@dataclass(frozen=True)
class QualityParams:
    """``mode``: ``drop`` removes flagged label issues, ``relabel`` gives them the likely label."""

    mode: Literal["drop", "relabel"] = "drop"


def treat_quality(ctx: TreatContext, params: QualityParams) -> TreatOutcome:
    """Drop/relabel label issues, drop duplicates and NaN rows, retrain with the same recipe and seed."""
    from dlclinic.core.inference import predict_logits
    from dlclinic.core.results import Treatment
    from dlclinic.functional.stats import paired_accuracy_ci
    from dlclinic.remedies.clean import plan_cleaning, write_cleaning_artifacts

    case, cfg, progress = ctx.case, ctx.fit_config, ctx.progress
    test = case.get("test")
    if test is None or not test.labelled:
        raise ConfigError("treat data.quality needs a labelled test split to verify the treatment (pass --test)")
    if ctx.retrain is None:
        raise ConfigError(
            "treat data.quality retrains the model, so it needs the architecture: pass --model file.py:factory (a .pt2/.onnx file or a bare module cannot be retrained)"
        )
    before = ctx.measure(case)
    res = before[ctx.challenge_id]
    plan = plan_cleaning(len(case.train), res, mode=params.mode, n_test=len(test))
    eval_rows = np.setdiff1d(np.arange(len(test)), plan.test_leaks)
    if len(eval_rows) < 30:
        raise ConfigError(
            f"treat data.quality: expected at least 30 test rows that did not leak from train to verify the treatment, found {len(eval_rows)} (of {len(test)}); use a test set collected separately from train"
        )
    if len(plan.keep) < max(2 * case.n_classes, 10):
        raise ConfigError(
            f"treat data.quality: cleaning would leave {len(plan.keep)} train rows, expected at least {max(2 * case.n_classes, 10)}; inspect the findings before treating"
        )
    x_eval, y_eval = test.x[eval_rows], test.y[eval_rows]  # type: ignore[index]
    cleaned = case.with_train(plan.keep, plan.relabel)
    if len(plan.test_leaks):
        cleaned = cleaned.with_split_rows("test", eval_rows)
    with progress.step("retraining on the cleaned data", total=2) as advance:
        # a controlled comparison: the same recipe and seed on the full and on the cleaned train split
        reference = (
            case.model
            if case.metadata.get("dlclinic_baseline")
            else ctx.retrain(np.nan_to_num(case.train.x), case.train.y, cfg.seed)
        )
        advance(1)
        model = ctx.retrain(np.nan_to_num(cleaned.train.x), cleaned.train.y, cfg.seed)
        advance(1)
    pred_before = predict_logits(reference, x_eval).argmax(1)
    pred_after = predict_logits(model, x_eval).argmax(1)
    acc_before, acc_after = float((pred_before == y_eval).mean()), float((pred_after == y_eval).mean())
    low, high = paired_accuracy_ci(pred_before == y_eval, pred_after == y_eval)
    treated = dataclasses.replace(
        cleaned, model=model, model_source=f"{case.model_source.replace(', from cache', '')}, retrained on cleaned data"
    )
    after = ctx.measure(treated)
    artifacts = (
        write_cleaning_artifacts(ctx.out_dir, plan, cleaned.train.y, eval_rows, model)
        if ctx.out_dir is not None
        else {}
    )  # type: ignore[arg-type]
    after_res = after[ctx.challenge_id]
    treatment = Treatment(
        challenge_id=ctx.challenge_id,
        action=f"{params.mode} {len(plan.relabel) or plan.dropped_label_issues} flagged label issue(s), drop {plan.dropped_duplicates} duplicate(s) and {plan.dropped_nonfinite} NaN/Inf row(s), retrain with the same recipe and seed",
        before={
            "test_accuracy": acc_before,
            "train_rows": len(case.train),
            "label_issue_fraction": res.metrics.get("label_issue_fraction"),
            "duplicate_fraction": res.metrics.get("duplicate_fraction"),
        },
        after={
            "test_accuracy": acc_after,
            "train_rows": len(cleaned.train),
            "label_issue_fraction": after_res.metrics.get("label_issue_fraction"),
            "duplicate_fraction": after_res.metrics.get("duplicate_fraction"),
            "accuracy_gain_ci_low": low,
            "accuracy_gain_ci_high": high,
        },
        before_status=res.status,
        after_status=after_res.status,
        artifacts=artifacts,
        notes=(
            f"both accuracies are measured on the {len(eval_rows)} test rows that did not leak from train ({len(plan.test_leaks)} leaked rows excluded), with models trained by the same recipe and seed",
            f"95 % paired-bootstrap interval of the accuracy gain over test rows: [{low:+.3f}, {high:+.3f}] (test-set sampling only, one training seed)",
            "leaked test rows are removed from the test split of the treated case (cleaned_test_rows.csv); remove them from your test data too",
        ),
    )
    return TreatOutcome(treatment, before, after)


REMEDY = RemedySpec(
    id="data.quality",
    params=QualityParams,
    run=treat_quality,
    description="Drop or relabel flagged label issues, drop duplicates and NaN rows, retrain, measure again.",
)
