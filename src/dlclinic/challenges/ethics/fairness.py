"""ethics.fairness: transitional shim (the code still lives in checks/ and remedies/)."""

from __future__ import annotations

from dlclinic.checks.ethics_fairness import CHECK as CHECK
from dlclinic.remedies.fairness import REMEDY as REMEDY

__all__ = ["CHECK", "REMEDY"]
