"""optimization.nonconvex: transitional shim (the code still lives in checks/ and remedies/)."""

from __future__ import annotations

from dlclinic.checks.training import NONCONVEX as CHECK
from dlclinic.remedies.training import NONCONVEX as REMEDY

__all__ = ["CHECK", "REMEDY"]
