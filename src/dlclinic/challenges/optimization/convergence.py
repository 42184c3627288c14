"""optimization.convergence: transitional shim (the code still lives in checks/ and remedies/)."""

from __future__ import annotations

from dlclinic.checks.training import CONVERGENCE as CHECK
from dlclinic.remedies.training import CONVERGENCE as REMEDY

__all__ = ["CHECK", "REMEDY"]
