"""research.benchmark_saturation: transitional shim (the code still lives in checks/ and remedies/)."""

from __future__ import annotations

from dlclinic.checks.research import BENCHMARK_CHECK as CHECK
from dlclinic.remedies.research import BENCHMARK_REMEDY as REMEDY

__all__ = ["CHECK", "REMEDY"]
