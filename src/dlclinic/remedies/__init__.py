"""Treatments: each returns new artifacts and re-measures; the user's model and data are never modified.

``treat(case, challenge_id, ...)`` dispatches to the remedy of a challenge. Remedies that
exist in this version: ``data.quality`` (drop or relabel flagged samples, dedupe, retrain).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dlclinic.core.case import Case
from dlclinic.core.errors import ConfigError
from dlclinic.taxonomy import get_challenge

__all__ = ["REMEDIES", "treat"]

REMEDIES = ("data.quality",)


def treat(case: Case, challenge_id: str, *, out_dir: str | Path | None = None, **kwargs: Any) -> Any:
    """Apply the remedy of ``challenge_id`` and return ``(treatment, report_before, report_after)``."""
    get_challenge(challenge_id)
    if challenge_id == "data.quality":
        from dlclinic.remedies.clean import treat_quality

        return treat_quality(case, out_dir=Path(out_dir) if out_dir else None, **kwargs)
    raise ConfigError(f"no remedy for {challenge_id!r} in this version; remedies exist for: {', '.join(REMEDIES)}")
