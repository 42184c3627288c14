"""The 31 challenges, one module each: the id *is* the path.

``data.quality`` lives in ``dlclinic.challenges.data.quality``, ``optimization.batchnorm``
in ``dlclinic.challenges.optimization.batchnorm`` and so on for every row of the taxonomy.
Each module holds that challenge's options, its check (a thin adapter: evidence in,
:class:`~dlclinic.core.results.CheckResult` out) and its remedy, and exports two names:

- ``CHECK``: a :class:`~dlclinic.core.registry.CheckSpec`;
- ``REMEDY``: a :class:`~dlclinic.core.registry.RemedySpec`, or ``None`` for a challenge
  that has no remedy in this version (the report then names the commands or suggestions).

The registry is derived from the taxonomy's ids, in its order; nothing registers itself at
import time. Heavy optional libraries are imported inside the functions that need them, so
loading the 31 modules stays cheap.

Example:
    >>> from dlclinic.challenges import CHECKS, module_name
    >>> module_name("optimization.batchnorm")
    'dlclinic.challenges.optimization.batchnorm'
    >>> len(CHECKS)
    31
"""

from __future__ import annotations

import importlib
from types import ModuleType

from dlclinic.core.errors import ConfigError
from dlclinic.core.registry import CheckSpec, RemedySpec
from dlclinic.taxonomy import CHALLENGES, get_challenge

__all__ = ["CHECKS", "PENDING", "REMEDIES", "get_check", "get_remedy", "load", "module_name"]


def module_name(challenge_id: str) -> str:
    """The module that holds ``challenge_id``'s check and remedy."""
    return f"{__name__}.{challenge_id}"


def load(challenge_id: str) -> ModuleType:
    """Import the module of ``challenge_id`` (an unknown id: ``UnknownChallengeError``)."""
    get_challenge(challenge_id)
    return importlib.import_module(module_name(challenge_id))


def _collect() -> tuple[dict[str, CheckSpec], dict[str, RemedySpec]]:
    checks: dict[str, CheckSpec] = {}
    remedies: dict[str, RemedySpec] = {}
    for challenge in CHALLENGES:
        module = load(challenge.id)
        check: CheckSpec | None = getattr(module, "CHECK", None)
        remedy: RemedySpec | None = getattr(module, "REMEDY", None)
        if check is not None:
            if check.id != challenge.id:
                raise RuntimeError(f"{module.__name__}.CHECK has id {check.id!r}, expected {challenge.id!r}")
            checks[challenge.id] = check
        if remedy is not None:
            if remedy.id != challenge.id:
                raise RuntimeError(f"{module.__name__}.REMEDY has id {remedy.id!r}, expected {challenge.id!r}")
            remedies[challenge.id] = remedy
    return checks, remedies


CHECKS, REMEDIES = _collect()

# challenges without a check in this version, with the reason shown in the report (none today)
PENDING: dict[str, str] = {c.id: "no check in this version" for c in CHALLENGES if c.id not in CHECKS}


def get_check(challenge_id: str) -> CheckSpec:
    """The check of ``challenge_id`` (a one-line ConfigError naming the ones that exist)."""
    get_challenge(challenge_id)
    spec = CHECKS.get(challenge_id)
    if spec is None:
        raise ConfigError(f"no check for {challenge_id!r} in this version; expected one of: {', '.join(CHECKS)}")
    return spec


def get_remedy(challenge_id: str) -> RemedySpec:
    """The remedy of ``challenge_id`` (a one-line ConfigError naming the ones that exist)."""
    get_challenge(challenge_id)
    spec = REMEDIES.get(challenge_id)
    if spec is None:
        raise ConfigError(f"no remedy for {challenge_id!r} in this version; expected one of: {', '.join(REMEDIES)}")
    return spec
