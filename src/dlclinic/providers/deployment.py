"""The reference a deployment is compared with, shared by deployment.drift and deployment.monitoring.

The held-out ``test`` split's logits (and embeddings, when the model has them) become a
:class:`~dlclinic.monitoring.Reference`, temperature-calibrated on its labels.
"""

from __future__ import annotations

from dlclinic.core.case import Case
from dlclinic.core.evidence import Evidence
from dlclinic.monitoring.reference import Reference

__all__ = ["deployment_reference", "missing_reference"]


def missing_reference(case: Case) -> str | None:
    """What is missing for a reference (``None`` when the case has a labelled test split)."""
    test = case.get("test")
    if test is None or not test.labelled:
        return "a labelled test split (the reference the deployment is compared with; pass --test)"
    return None


def deployment_reference(case: Case, evidence: Evidence) -> Reference:
    """The test split's outputs as the :class:`Reference` the deploy stream and served windows are compared with."""
    test = case.splits["test"]
    emb = evidence.get("embeddings", "test") if evidence.available("embeddings", "test") else None
    return Reference.build(
        evidence.get("logits", "test"),
        test.y,
        emb,
        case.class_names,
        meta={"split": "test", "model": case.model_source},
    )
