"""dlclinic: measure, treat and verify the 31 classic challenges of deep learning.

Example:
    >>> import dlclinic                                  # doctest: +SKIP
    >>> case, truth = dlclinic.build_demo()              # doctest: +SKIP
    >>> report = dlclinic.checkup(case)                  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from dlclinic.core.version import __version__

__all__ = [
    "CHALLENGES",
    "Case",
    "CheckResult",
    "ConfigError",
    "DlclinicError",
    "EvidenceConfig",
    "FitConfig",
    "InputError",
    "ModelError",
    "Report",
    "Split",
    "Treatment",
    "__version__",
    "build_demo",
    "checkup",
    "fit",
    "treat",
]

_LAZY = {
    "CHALLENGES": "dlclinic.taxonomy",
    "Case": "dlclinic.core.case",
    "Split": "dlclinic.core.case",
    "CheckResult": "dlclinic.core.results",
    "Report": "dlclinic.core.results",
    "Treatment": "dlclinic.core.results",
    "ConfigError": "dlclinic.core.errors",
    "DlclinicError": "dlclinic.core.errors",
    "InputError": "dlclinic.core.errors",
    "ModelError": "dlclinic.core.errors",
    "EvidenceConfig": "dlclinic.core.evidence",
    "FitConfig": "dlclinic.core.recipe",
    "fit": "dlclinic.core.recipe",
    "build_demo": "dlclinic.demo",
    "checkup": "dlclinic.api",
    "treat": "dlclinic.api",
}

if TYPE_CHECKING:  # pragma: no cover
    from dlclinic.api import checkup, treat
    from dlclinic.core.case import Case, Split
    from dlclinic.core.errors import ConfigError, DlclinicError, InputError, ModelError
    from dlclinic.core.evidence import EvidenceConfig
    from dlclinic.core.recipe import FitConfig, fit
    from dlclinic.core.results import CheckResult, Report, Treatment
    from dlclinic.demo import build_demo
    from dlclinic.taxonomy import CHALLENGES


def __getattr__(name: str) -> Any:
    """Import public names lazily so ``import dlclinic`` stays fast (no torch at import)."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dlclinic' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
