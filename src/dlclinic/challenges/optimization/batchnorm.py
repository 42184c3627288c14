"""optimization.batchnorm: transitional shim (the code still lives in checks/ and remedies/)."""

from __future__ import annotations

from dlclinic.checks.training import BATCHNORM as CHECK
from dlclinic.remedies.training import BATCHNORM as REMEDY

__all__ = ["CHECK", "REMEDY"]
