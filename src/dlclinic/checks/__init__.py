"""Thin check adapters: evidence in, :class:`~dlclinic.core.results.CheckResult` out.

``CHECKS`` maps challenge id → :class:`~dlclinic.core.registry.CheckSpec` for every
challenge that has a check; an id without one would be reported ``not_examined`` with the
reason in ``PENDING``. The specs are listed in the taxonomy's order.
"""

from __future__ import annotations

from dlclinic.checks import (
    data_generalization,
    data_labeling_cost,
    data_privacy,
    data_quality,
    data_quantity,
    deployment,
    ethics_fairness,
    ethics_governance,
    ethics_security,
    model_compression,
    model_interpretability,
    model_overfitting,
    model_search,
    optimization_forgetting,
    research,
    training,
)
from dlclinic.core.registry import CheckSpec

__all__ = ["CHECKS", "PENDING"]

_SPECS: tuple[CheckSpec, ...] = (
    data_quantity.CHECK,
    data_quality.CHECK,
    data_labeling_cost.CHECK,
    data_privacy.CHECK,
    data_generalization.CHECK,
    training.TRAINING_COST,
    training.ENERGY,
    model_compression.EDGE,
    model_compression.REALTIME,
    model_overfitting.CHECK,
    training.GRADIENTS,
    model_search.ARCHITECTURE,
    model_search.HYPERPARAMETERS,
    model_interpretability.CHECK,
    model_compression.COMPRESSION,
    training.NONCONVEX,
    training.CONVERGENCE,
    training.BATCHNORM,
    optimization_forgetting.CHECK,
    ethics_fairness.CHECK,
    ethics_security.CHECK,
    ethics_governance.MISUSE_CHECK,
    ethics_governance.COMPLIANCE_CHECK,
    research.REPRODUCIBILITY_CHECK,
    research.BENCHMARK_CHECK,
    research.THEORY_CHECK,
    research.OPEN_ENDED_CHECK,
    deployment.DRIFT,
    deployment.INTEGRATION,
    deployment.MONITORING,
    deployment.SCALABILITY,
)

CHECKS: dict[str, CheckSpec] = {spec.id: spec for spec in _SPECS}

# challenges without a check in this version, with the reason shown in the report (none today)
PENDING: dict[str, str] = {}
