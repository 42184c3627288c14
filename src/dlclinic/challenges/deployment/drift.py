"""deployment.drift: transitional shim (the code still lives in checks/ and remedies/)."""

from __future__ import annotations

from dlclinic.checks.deployment import DRIFT as CHECK
from dlclinic.remedies.drift import REMEDY as REMEDY

__all__ = ["CHECK", "REMEDY"]
