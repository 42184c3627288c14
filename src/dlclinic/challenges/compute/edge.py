"""compute.edge: transitional shim (the code still lives in checks/ and remedies/)."""

from __future__ import annotations

from dlclinic.checks.model_compression import EDGE as CHECK
from dlclinic.remedies.compress import EDGE_REMEDY as REMEDY

__all__ = ["CHECK", "REMEDY"]
