"""Thin check adapters: evidence in, :class:`~dlclinic.core.results.CheckResult` out.

``CHECKS`` maps challenge id → :class:`~dlclinic.core.registry.CheckSpec` for every
challenge that has a check; every other id is reported ``not_examined`` with the reason
in ``PENDING``.
"""

from __future__ import annotations

from dlclinic.checks import data_generalization, data_labeling_cost, data_quality, data_quantity, model_overfitting
from dlclinic.core.registry import CheckSpec

__all__ = ["CHECKS", "PENDING"]

_SPECS: tuple[CheckSpec, ...] = (
    data_quantity.CHECK,
    data_quality.CHECK,
    data_labeling_cost.CHECK,
    data_generalization.CHECK,
    model_overfitting.CHECK,
)

CHECKS: dict[str, CheckSpec] = {spec.id: spec for spec in _SPECS}

_ISSUES = {
    "data.privacy": "ethics, security and privacy",
    "compute.training_cost": "training & optimization diagnostics",
    "compute.energy": "training & optimization diagnostics",
    "compute.edge": "model challenges",
    "compute.realtime": "model challenges",
    "model.gradients": "training & optimization diagnostics",
    "model.architecture": "model challenges",
    "model.hyperparameters": "model challenges",
    "model.interpretability": "model challenges",
    "model.compression": "model challenges",
    "optimization.nonconvex": "training & optimization diagnostics",
    "optimization.convergence": "training & optimization diagnostics",
    "optimization.batchnorm": "training & optimization diagnostics",
    "optimization.forgetting": "research & continual learning",
    "ethics.fairness": "ethics, security and privacy",
    "ethics.security": "ethics, security and privacy",
    "ethics.misuse": "ethics, security and privacy",
    "ethics.compliance": "ethics, security and privacy",
    "research.reproducibility": "research & continual learning",
    "research.benchmark_saturation": "research & continual learning",
    "research.theory": "research & continual learning",
    "research.open_ended": "research & continual learning",
    "deployment.drift": "deployment",
    "deployment.integration": "deployment",
    "deployment.monitoring": "deployment",
    "deployment.scalability": "deployment",
}

PENDING: dict[str, str] = {cid: f"No check in this version of dlclinic yet (planned with the {area} work); nothing was measured." for cid, area in _ISSUES.items() if cid not in CHECKS}
