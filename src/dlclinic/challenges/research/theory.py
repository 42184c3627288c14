"""research.theory: transitional shim (the code still lives in checks/ and remedies/)."""

from __future__ import annotations

from dlclinic.checks.research import THEORY_CHECK as CHECK

REMEDY = None

__all__ = ["CHECK", "REMEDY"]
