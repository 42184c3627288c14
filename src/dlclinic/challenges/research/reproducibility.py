"""research.reproducibility: transitional shim (the code still lives in checks/ and remedies/)."""

from __future__ import annotations

from dlclinic.checks.research import REPRODUCIBILITY_CHECK as CHECK
from dlclinic.remedies.research import REPRODUCIBILITY_REMEDY as REMEDY

__all__ = ["CHECK", "REMEDY"]
