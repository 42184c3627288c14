"""ethics.misuse: transitional shim (the code still lives in checks/ and remedies/)."""

from __future__ import annotations

from dlclinic.checks.ethics_governance import MISUSE_CHECK as CHECK
from dlclinic.remedies.governance import MISUSE_REMEDY as REMEDY

__all__ = ["CHECK", "REMEDY"]
