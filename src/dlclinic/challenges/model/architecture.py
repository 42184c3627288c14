"""model.architecture: transitional shim (the code still lives in checks/ and remedies/)."""

from __future__ import annotations

from dlclinic.checks.model_search import ARCHITECTURE as CHECK
from dlclinic.remedies.tune import ARCHITECTURE as REMEDY

__all__ = ["CHECK", "REMEDY"]
