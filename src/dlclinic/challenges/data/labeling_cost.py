"""data.labeling_cost: transitional shim (the code still lives in checks/ and remedies/)."""

from __future__ import annotations

from dlclinic.checks.data_labeling_cost import CHECK as CHECK
from dlclinic.remedies.labeling import REMEDY as REMEDY

__all__ = ["CHECK", "REMEDY"]
