"""model.interpretability: transitional shim (the code still lives in checks/ and remedies/)."""

from __future__ import annotations

from dlclinic.checks.model_interpretability import CHECK as CHECK
from dlclinic.remedies.deshortcut import REMEDY as REMEDY

__all__ = ["CHECK", "REMEDY"]
