"""model.hyperparameters: transitional shim (the code still lives in checks/ and remedies/)."""

from __future__ import annotations

from dlclinic.checks.model_search import HYPERPARAMETERS as CHECK
from dlclinic.remedies.tune import HYPERPARAMETERS as REMEDY

__all__ = ["CHECK", "REMEDY"]
