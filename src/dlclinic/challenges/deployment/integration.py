"""deployment.integration: transitional shim (the code still lives in checks/ and remedies/)."""

from __future__ import annotations

from dlclinic.checks.deployment import INTEGRATION as CHECK

REMEDY = None

__all__ = ["CHECK", "REMEDY"]
