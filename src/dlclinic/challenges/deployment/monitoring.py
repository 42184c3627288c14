"""deployment.monitoring: transitional shim (the code still lives in checks/ and remedies/)."""

from __future__ import annotations

from dlclinic.checks.deployment import MONITORING as CHECK

REMEDY = None

__all__ = ["CHECK", "REMEDY"]
