"""Treatments: remedies that change the data, the training or the model, then re-measure.

Remedies return new artifacts (row selections, weights, model files); they never modify
the user's model or data. :func:`dlclinic.api.treat` (``dlclinic.treat``) builds the
:class:`~dlclinic.core.registry.TreatContext` and runs one.

``REMEDIES`` maps a challenge id to ``"module:ATTRIBUTE"`` of its
:class:`~dlclinic.core.registry.RemedySpec`; modules are imported only when that remedy
is asked for (:func:`get_remedy`), so heavy optional libraries stay unloaded otherwise.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dlclinic.core.registry import RemedySpec

__all__ = ["REMEDIES", "get_remedy"]

REMEDIES: dict[str, str] = {
    "data.quantity": "dlclinic.remedies.quantity:REMEDY",
    "data.quality": "dlclinic.remedies.quality:REMEDY",
    "data.labeling_cost": "dlclinic.remedies.labeling:REMEDY",
    "data.privacy": "dlclinic.remedies.privacy:REMEDY",
    "data.generalization": "dlclinic.remedies.generalization:REMEDY",
    "compute.edge": "dlclinic.remedies.compress:EDGE_REMEDY",
    "compute.realtime": "dlclinic.remedies.compress:REALTIME_REMEDY",
    "model.overfitting": "dlclinic.remedies.training:OVERFITTING",
    "model.gradients": "dlclinic.remedies.training:GRADIENTS",
    "model.architecture": "dlclinic.remedies.tune:ARCHITECTURE",
    "model.hyperparameters": "dlclinic.remedies.tune:HYPERPARAMETERS",
    "model.interpretability": "dlclinic.remedies.deshortcut:REMEDY",
    "model.compression": "dlclinic.remedies.compress:REMEDY",
    "optimization.nonconvex": "dlclinic.remedies.training:NONCONVEX",
    "optimization.convergence": "dlclinic.remedies.training:CONVERGENCE",
    "optimization.batchnorm": "dlclinic.remedies.training:BATCHNORM",
    "optimization.forgetting": "dlclinic.remedies.continual:REMEDY",
    "ethics.fairness": "dlclinic.remedies.fairness:REMEDY",
    "ethics.security": "dlclinic.remedies.adversarial:REMEDY",
    "ethics.misuse": "dlclinic.remedies.governance:MISUSE_REMEDY",
    "ethics.compliance": "dlclinic.remedies.governance:COMPLIANCE_REMEDY",
    "research.reproducibility": "dlclinic.remedies.research:REPRODUCIBILITY_REMEDY",
    "research.benchmark_saturation": "dlclinic.remedies.research:BENCHMARK_REMEDY",
    "research.open_ended": "dlclinic.remedies.research:OPEN_ENDED_REMEDY",
    "deployment.drift": "dlclinic.remedies.drift:REMEDY",
}


def get_remedy(challenge_id: str) -> RemedySpec:
    """The remedy of ``challenge_id`` (a one-line ConfigError naming the ones that exist)."""
    from dlclinic.core.errors import ConfigError
    from dlclinic.taxonomy import get_challenge

    get_challenge(challenge_id)  # unknown ids: UnknownChallengeError
    target = REMEDIES.get(challenge_id)
    if target is None:
        raise ConfigError(f"no remedy for {challenge_id!r} in this version; expected one of: {', '.join(REMEDIES)}")
    module, _, attr = target.partition(":")
    spec: RemedySpec = getattr(importlib.import_module(module), attr)
    return spec
