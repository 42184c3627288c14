"""optimization.forgetting: transitional shim (the code still lives in checks/ and remedies/)."""

from __future__ import annotations

from dlclinic.checks.optimization_forgetting import CHECK as CHECK
from dlclinic.remedies.continual import REMEDY as REMEDY

__all__ = ["CHECK", "REMEDY"]
