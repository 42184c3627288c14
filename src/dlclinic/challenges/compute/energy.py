"""compute.energy: transitional shim (the code still lives in checks/ and remedies/)."""

from __future__ import annotations

from dlclinic.checks.training import ENERGY as CHECK

REMEDY = None

__all__ = ["CHECK", "REMEDY"]
