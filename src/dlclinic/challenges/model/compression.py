"""model.compression: transitional shim (the code still lives in checks/ and remedies/)."""

from __future__ import annotations

from dlclinic.checks.model_compression import COMPRESSION as CHECK
from dlclinic.remedies.compress import REMEDY as REMEDY

__all__ = ["CHECK", "REMEDY"]
