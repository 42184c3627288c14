"""ethics.security: transitional shim (the code still lives in checks/ and remedies/)."""

from __future__ import annotations

from dlclinic.checks.ethics_security import CHECK as CHECK
from dlclinic.remedies.adversarial import REMEDY as REMEDY

__all__ = ["CHECK", "REMEDY"]
