"""Checks: what each one needs, how options are validated, how they run.

A check is a :class:`CheckSpec`: an id from the taxonomy, the evidence it requires as
``(kind, split)`` pairs, an options dataclass (defaults = dlclinic's thresholds) and a
``run(case, evidence, options) -> CheckResult`` function. Check modules build their spec
explicitly; ``dlclinic.checks.CHECKS`` lists them (no import-time registration).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dlclinic.core.case import Case
from dlclinic.core.errors import ConfigError
from dlclinic.core.evidence import Evidence
from dlclinic.core.results import CheckResult

__all__ = ["CheckSpec", "build_options"]


@dataclass(frozen=True)
class CheckSpec:
    """One check: id, required evidence, options type and the function that runs it."""

    id: str
    requires: tuple[tuple[str, str], ...]
    options: type
    run: Callable[[Case, Evidence, Any], CheckResult]
    description: str = ""


def build_options(spec: CheckSpec, given: Mapping[str, Any] | None) -> Any:
    """Instantiate ``spec.options`` from a mapping, naming unknown keys and the valid ones."""
    given = dict(given or {})
    fields = {f.name: f for f in dataclasses.fields(spec.options)}
    unknown = sorted(set(given) - set(fields))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(map(repr, unknown))} for {spec.id}; expected some of: {', '.join(sorted(fields))}")
    try:
        return spec.options(**given)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad option for {spec.id}: {exc}") from None
