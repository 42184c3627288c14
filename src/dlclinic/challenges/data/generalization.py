"""data.generalization: transitional shim (the code still lives in checks/ and remedies/)."""

from __future__ import annotations

from dlclinic.checks.data_generalization import CHECK as CHECK
from dlclinic.remedies.generalization import REMEDY as REMEDY

__all__ = ["CHECK", "REMEDY"]
