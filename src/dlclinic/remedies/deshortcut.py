"""The model.interpretability remedy: remove a named shortcut from training and verify it is gone.

The region (``suspect_region="r0:r1,c0:c1"``) or features (``suspect_feature="3,age"``)
the user names are set to their train median in every training input, the model is
retrained with the case's recipe and seed, and the interpretability check runs again
with the same options: the attribution enrichment and the flip rate of the named region
must fall. Accuracy is reported on test as given and on test with the region blanked
(what the model scores when the shortcut is absent, e.g. in deployment).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from dlclinic.core.errors import ConfigError
from dlclinic.core.registry import RemedySpec, TreatContext, TreatOutcome

__all__ = ["DeshortcutParams", "REMEDY", "treat_shortcut"]

CID = "model.interpretability"


@dataclass(frozen=True)
class DeshortcutParams:
    """The shortcut to remove (one of the two is required)."""

    suspect_region: str | None = None
    suspect_feature: str | None = None

    def __post_init__(self) -> None:
        if not self.suspect_region and not self.suspect_feature:
            raise ConfigError(
                "treat model.interpretability: expected --option suspect_region=r0:r1,c0:c1 (images) or suspect_feature=NAME_OR_INDEX (tables), found neither"
            )


def treat_shortcut(ctx: TreatContext, params: DeshortcutParams) -> TreatOutcome:
    """Blank the named region in train, retrain, re-run the check with the same options."""
    import dlclinic
    from dlclinic.checks.model_interpretability import _feature_mask
    from dlclinic.core.inference import predict_logits
    from dlclinic.core.results import Treatment
    from dlclinic.functional.attribution import parse_region

    case = ctx.case
    if ctx.retrain is None:
        raise ConfigError(
            "treat model.interpretability retrains the model, so it needs the architecture: pass --model file.py:factory"
        )
    test = case.get("test")
    if test is None or not test.labelled:
        raise ConfigError("treat model.interpretability verifies on a labelled test split; pass --test")
    options = {k: v for k, v in dataclasses.asdict(params).items() if v}
    try:
        mask = (
            parse_region(str(params.suspect_region), case.input_shape)
            if params.suspect_region
            else _feature_mask(str(params.suspect_feature), case)
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None

    def measure(c: object) -> dlclinic.Report:
        return dlclinic.checkup(
            c,
            only=[CID],
            options={CID: options},
            evidence_config=ctx.evidence_config,
            fit_config=ctx.fit_config,
            cache_dir=ctx.cache_dir,
            progress=ctx.progress,
        )  # type: ignore[arg-type]

    before = measure(case)
    x = np.asarray(case.train.x)
    fill = float(np.median(x.reshape(len(x), -1)[:, np.broadcast_to(mask, x.shape[1:]).reshape(-1)]))
    masked = np.where(np.broadcast_to(mask, x.shape), fill, x).astype(x.dtype, copy=False)
    with ctx.progress.step("retraining without the shortcut", total=1) as advance:
        model = ctx.retrain(masked, case.train.y, ctx.fit_config.seed)
        advance(1)
    train = dataclasses.replace(case.train, x=masked)
    treated = dataclasses.replace(
        case,
        splits={**case.splits, "train": train},
        model=model,
        model_source=f"{case.model_source}, retrained with the named shortcut blanked",
    )
    after = measure(treated)
    y = np.asarray(test.y)
    blanked = np.where(np.broadcast_to(mask, test.x.shape), fill, test.x).astype(test.x.dtype, copy=False)

    def acc(m: object, xs: np.ndarray) -> float:
        return float((predict_logits(m, xs).argmax(1) == y).mean())

    b, a = before[CID], after[CID]
    treatment = Treatment(
        challenge_id=CID,
        action=f"set {params.suspect_region or params.suspect_feature} to its train median ({fill:.3g}) in every training input and retrained with the same recipe and seed",
        before={
            "shortcut_enrichment": b.metrics.get("shortcut_enrichment"),
            "shortcut_flip_rate": b.metrics.get("shortcut_flip_rate"),
            "test_accuracy": acc(case.model, test.x),
            "test_accuracy_region_blanked": acc(case.model, blanked),
        },
        after={
            "shortcut_enrichment": a.metrics.get("shortcut_enrichment"),
            "shortcut_flip_rate": a.metrics.get("shortcut_flip_rate"),
            "test_accuracy": acc(model, test.x),
            "test_accuracy_region_blanked": acc(model, blanked),
        },
        before_status=b.status,
        after_status=a.status,
        notes=(
            "test accuracy with the region blanked is what the model scores when the shortcut is absent; a shortcut model loses most there",
        ),
    )
    return TreatOutcome(treatment, before, after)


REMEDY = RemedySpec(
    id=CID,
    params=DeshortcutParams,
    run=treat_shortcut,
    description="Blank the named shortcut region/feature in train, retrain, verify the attribution enrichment and flip rate fell.",
)
