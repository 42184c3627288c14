"""compute.realtime: transitional shim (the code still lives in checks/ and remedies/)."""

from __future__ import annotations

from dlclinic.checks.model_compression import REALTIME as CHECK
from dlclinic.remedies.compress import REALTIME_REMEDY as REMEDY

__all__ = ["CHECK", "REMEDY"]
