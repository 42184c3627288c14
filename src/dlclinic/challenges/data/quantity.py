"""data.quantity: transitional shim (the code still lives in checks/ and remedies/)."""

from __future__ import annotations

from dlclinic.checks.data_quantity import CHECK as CHECK
from dlclinic.remedies.quantity import REMEDY as REMEDY

__all__ = ["CHECK", "REMEDY"]
