"""Model-card facts: the user's card file, its fields, and which answers are missing.

* :func:`load_card_config` reads the user's small JSON / YAML / TOML file (intended use,
  out-of-scope uses, data provenance, owner, …; see :data:`CARD_FIELDS`, and the
  GDPR / EU AI Act answers in :data:`COMPLIANCE_FIELDS`).
* :func:`missing_fields` names the fields that are absent, empty or a placeholder
  (``TODO``, ``TBD``, ``…``: :data:`PLACEHOLDERS`); :func:`filled` says whether one answer
  says something.
* :func:`card_config_for` finds the card file of a case (an option, or
  ``case.metadata["card_config"]``), shared by ethics.misuse and ethics.compliance.

The card itself is written as Markdown by :mod:`dlclinic.governance.documents`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dlclinic.core.case import Case
from dlclinic.core.errors import ConfigError
from dlclinic.core.evidence import Evidence

try:  # PyYAML is optional: only .yaml card files need it
    import yaml
except ImportError:  # pragma: no cover
    yaml = None  # type: ignore[assignment]
try:  # Python 3.11+
    import tomllib
except ImportError:  # pragma: no cover
    tomllib = None  # type: ignore[assignment]

__all__ = [
    "CARD_FIELDS",
    "COMPLIANCE_FIELDS",
    "NOT_PROVIDED",
    "PLACEHOLDERS",
    "REQUIRED_CARD_FIELDS",
    "card_config_for",
    "filled",
    "fingerprint_rows",
    "load_card_config",
    "missing_fields",
]

REQUIRED_CARD_FIELDS: tuple[str, ...] = ("intended_use", "out_of_scope", "data_provenance", "owner")
CARD_FIELDS: dict[str, str] = {
    "model_name": "Model name",
    "version": "Version",
    "owner": "Owner / provider",
    "contact": "Contact",
    "license": "License",
    "intended_use": "Intended use",
    "intended_users": "Intended users",
    "out_of_scope": "Out-of-scope uses",
    "data_provenance": "Data provenance",
    "limitations": "Known limitations",
    "risks": "Known risks",
    "ethical_considerations": "Ethical considerations",
}
COMPLIANCE_FIELDS: dict[str, str] = {
    "lawful_basis": "Lawful basis for processing personal data (GDPR Art. 6)",
    "data_controller": "Data controller",
    "retention": "Retention period and deletion policy",
    "dpia": "Data protection impact assessment",
    "human_oversight": "Human oversight measures (AI Act Art. 14)",
    "risk_management": "Risk management system (AI Act Art. 9)",
    "post_market_monitoring": "Post-market monitoring plan",
}
NOT_PROVIDED = "_not provided — to be written by the provider_"


def load_card_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a card config (``.json``, ``.yaml``/``.yml`` or ``.toml``) into a dict.

    Example:
        >>> load_card_config("card.yaml")["intended_use"]  # doctest: +SKIP
        'Sorting handwritten digits on scanned forms'
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"card config {p}: expected a JSON/YAML/TOML file, found nothing there")
    text = p.read_text(encoding="utf-8")
    suffix = p.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            if yaml is None:
                raise ModuleNotFoundError("No module named 'yaml'")
            data = yaml.safe_load(text)
        elif suffix == ".toml":
            if tomllib is None:
                raise ModuleNotFoundError("No module named 'tomllib'")
            data = tomllib.loads(text)
        else:
            raise ConfigError(
                f"card config {p}: expected a .json, .yaml/.yml or .toml file, found {suffix or 'no extension'}"
            )
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"card config {p}: could not parse it ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"card config {p}: expected a mapping of fields (intended_use, out_of_scope, …), found {type(data).__name__}"
        )
    return {str(k): v for k, v in data.items()}


#: Answers that say "not written yet" (compared lower-case, surrounding punctuation stripped):
#: a card whose ``intended_use`` is ``TODO`` documents nothing. ``n/a`` / ``none`` are *not*
#: placeholders: they state that a field does not apply.
PLACEHOLDERS: frozenset[str] = frozenset(
    {
        "",
        "todo",
        "tbd",
        "tba",
        "tbc",
        "fixme",
        "xxx",
        "placeholder",
        "to do",
        "to be written",
        "to be determined",
        "to be defined",
        "to be decided",
        "to be completed",
        "lorem ipsum",
        "not provided",
        "not provided — to be written by the provider",
    }
)
_PLACEHOLDER_PREFIXES = ("todo", "tbd", "fixme")


def _placeholder(text: str) -> bool:
    t = text.strip().lower().strip(" \t\r\n_*.:;,!?…-–—()[]<>\"'`")
    return t in PLACEHOLDERS or any(
        t.startswith(p) and not t[len(p)].isalnum() for p in _PLACEHOLDER_PREFIXES if len(t) > len(p)
    )


def filled(value: Any) -> bool:
    """Whether a card answer says something: not missing, empty, or a placeholder (:data:`PLACEHOLDERS`, ``TODO: …``)."""
    if value is None:
        return False
    if isinstance(value, str):
        return not _placeholder(value)
    if isinstance(value, (list, tuple)):
        return any(filled(v) for v in value)
    if isinstance(value, dict):
        return any(filled(v) for v in value.values())
    return True


def missing_fields(config: Mapping[str, Any], fields: Sequence[str]) -> list[str]:
    """Fields of ``fields`` that are absent, empty or placeholders (``TODO``, ``TBD``, ``…``) in ``config``."""
    return [f for f in fields if not filled(config.get(f))]


def card_config_for(case: Case, path: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """The card config from ``path`` or ``case.metadata["card_config"]``, and where it came from."""
    source = path or (case.metadata.get("card_config") if isinstance(case.metadata.get("card_config"), str) else None)
    if not source:
        return None, None
    return load_card_config(source), str(source)


def fingerprint_rows(evidence: Evidence) -> list[list[str]]:
    """``[artifact, sha256]`` rows of the evidence's fingerprints (model and splits), sorted."""
    return [[k, v] for k, v in sorted(evidence.fingerprints().items())]
