"""research.open_ended: transitional shim (the code still lives in checks/ and remedies/)."""

from __future__ import annotations

from dlclinic.checks.research import OPEN_ENDED_CHECK as CHECK
from dlclinic.remedies.research import OPEN_ENDED_REMEDY as REMEDY

__all__ = ["CHECK", "REMEDY"]
