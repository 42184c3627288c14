"""data.privacy: transitional shim (the code still lives in checks/ and remedies/)."""

from __future__ import annotations

from dlclinic.checks.data_privacy import CHECK as CHECK
from dlclinic.remedies.privacy import REMEDY as REMEDY

__all__ = ["CHECK", "REMEDY"]
