"""model.gradients: transitional shim (the code still lives in checks/ and remedies/)."""

from __future__ import annotations

from dlclinic.checks.training import GRADIENTS as CHECK
from dlclinic.remedies.training import GRADIENTS as REMEDY

__all__ = ["CHECK", "REMEDY"]
