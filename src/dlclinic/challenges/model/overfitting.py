"""model.overfitting: transitional shim (the code still lives in checks/ and remedies/)."""

from __future__ import annotations

from dlclinic.checks.model_overfitting import CHECK as CHECK
from dlclinic.remedies.training import OVERFITTING as REMEDY

__all__ = ["CHECK", "REMEDY"]
