"""compute.training_cost: transitional shim (the code still lives in checks/ and remedies/)."""

from __future__ import annotations

from dlclinic.checks.training import TRAINING_COST as CHECK

REMEDY = None

__all__ = ["CHECK", "REMEDY"]
