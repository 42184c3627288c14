"""ethics.compliance: transitional shim (the code still lives in checks/ and remedies/)."""

from __future__ import annotations

from dlclinic.checks.ethics_governance import COMPLIANCE_CHECK as CHECK
from dlclinic.remedies.governance import COMPLIANCE_REMEDY as REMEDY

__all__ = ["CHECK", "REMEDY"]
