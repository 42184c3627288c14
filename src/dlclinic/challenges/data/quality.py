"""data.quality: transitional shim (the code still lives in checks/ and remedies/)."""

from __future__ import annotations

from dlclinic.checks.data_quality import CHECK as CHECK
from dlclinic.remedies.quality import REMEDY as REMEDY

__all__ = ["CHECK", "REMEDY"]
