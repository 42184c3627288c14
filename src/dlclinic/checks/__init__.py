"""Thin check adapters: evidence in, :class:`~dlclinic.core.results.CheckResult` out.

``CHECKS`` maps challenge id → :class:`~dlclinic.core.registry.CheckSpec` for every
challenge that has a check; every other id is reported ``not_examined`` with the reason
in ``PENDING``.
"""

from __future__ import annotations

from dlclinic.checks import data_generalization, data_labeling_cost, data_quality, data_quantity, model_overfitting
from dlclinic.checks import data_privacy, ethics_fairness, ethics_governance, ethics_security
from dlclinic.checks import deployment as deployment_checks
from dlclinic.checks import model_compression, model_interpretability, model_search
from dlclinic.checks import training as training_checks
from dlclinic.checks import optimization_forgetting, research
from dlclinic.core.registry import CheckSpec

__all__ = ["CHECKS", "PENDING"]

_SPECS: tuple[CheckSpec, ...] = (
    data_quantity.CHECK,
    data_quality.CHECK,
    data_labeling_cost.CHECK,
    data_generalization.CHECK,
    model_overfitting.CHECK,
    model_compression.COMPRESSION,
    model_compression.EDGE,
    model_compression.REALTIME,
    model_interpretability.CHECK,
    model_search.HYPERPARAMETERS,
    model_search.ARCHITECTURE,
    data_privacy.CHECK,
    ethics_fairness.CHECK,
    ethics_security.CHECK,
    ethics_governance.MISUSE_CHECK,
    ethics_governance.COMPLIANCE_CHECK,
    deployment_checks.DRIFT,
    deployment_checks.INTEGRATION,
    deployment_checks.MONITORING,
    deployment_checks.SCALABILITY,
    training_checks.GRADIENTS,
    training_checks.CONVERGENCE,
    training_checks.BATCHNORM,
    training_checks.NONCONVEX,
    training_checks.TRAINING_COST,
    training_checks.ENERGY,
    optimization_forgetting.CHECK,
    research.REPRODUCIBILITY_CHECK,
    research.BENCHMARK_CHECK,
    research.THEORY_CHECK,
    research.OPEN_ENDED_CHECK,
)

CHECKS: dict[str, CheckSpec] = {spec.id: spec for spec in _SPECS}

_ISSUES: dict[str, str] = {}

PENDING: dict[str, str] = {cid: f"No check in this version of dlclinic yet (planned with the {area} work); nothing was measured." for cid, area in _ISSUES.items() if cid not in CHECKS}
