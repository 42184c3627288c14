"""How much to trust a status: each check's measured false-alarm rate on clean data.

The validation suite (``python -m validation``, published in ``docs/validation.md``) runs
every check that can warn on clean cases and on planted defects; the compact per-check
table it writes ships with dlclinic as ``report/validation.json``. The HTML report shows
the rate next to each status ("this check's false-alarm rate on clean data: 2 % [0 %, 9 %]"),
so a user knows how much a ``warn`` weighs.

Pure functions, no heavy imports; a missing or malformed table means "not validated"
(``None``), never an error.

Example:
    >>> entry = false_alarm_for("deployment.drift")  # doctest: +SKIP
    >>> entry["false_alarm_rate"], entry["ci95"]     # doctest: +SKIP
    (0.0, [0.0, 0.06])
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

__all__ = ["false_alarm_for", "false_alarm_note", "power_rows", "validation_table"]


@functools.lru_cache(maxsize=1)
def validation_table() -> dict[str, dict[str, Any]]:
    """The packaged per-check table (``{}`` when it is missing or unreadable)."""
    try:
        text = resources.files("dlclinic.report").joinpath("validation.json").read_text(encoding="utf-8")
        data = json.loads(text)
    except (OSError, ValueError, ModuleNotFoundError):
        return {}
    checks = data.get("checks") if isinstance(data, dict) else None
    if not isinstance(checks, dict):
        return {}
    return {str(k): dict(v) for k, v in checks.items() if isinstance(v, dict)}


def false_alarm_for(check_id: str) -> dict[str, Any] | None:
    """The validation row of ``check_id``, or ``None`` when the check was not validated.

    Keys: ``false_alarm_rate`` (share of clean cases flagged ``warn``/``fail``, or None),
    ``ci95`` (Clopper–Pearson interval), ``flagged``, ``n`` (clean cases), ``level`` (the
    check's stated level) and ``exceeds_level`` (``"no"``, ``"point"``, ``"significant"``).
    """
    entry = validation_table().get(check_id)
    return dict(entry) if entry is not None else None


def false_alarm_note(check_id: str) -> str | None:
    """One sentence for the report, e.g. ``"This check's false-alarm rate on clean data: 2 % [0 %, 9 %] (1 of 48 clean cases)."``."""
    entry = false_alarm_for(check_id)
    if entry is None or entry.get("false_alarm_rate") is None:
        return None
    try:
        rate = float(entry["false_alarm_rate"])
        lo, hi = (float(v) for v in entry["ci95"])
        k, n = int(entry["flagged"]), int(entry["n"])
    except (KeyError, TypeError, ValueError):
        return None
    return f"This check's false-alarm rate on clean data: {rate:.0%} [{lo:.0%}, {hi:.0%}] ({k} of {n} clean cases)."


def power_rows(check_id: str) -> list[dict[str, str]]:
    """The check's validation row for the report: one line per planted defect, its power at each strength.

    Example: ``[{"defect": "label_noise", "unit": "fraction of train labels flipped",
    "power": "0.02: 1/8 · 0.05: 6/8 · 0.2: 8/8"}]``; ``[]`` when not validated.
    """
    entry = false_alarm_for(check_id)
    power = entry.get("power") if entry is not None else None
    if not isinstance(power, dict):
        return []
    out = []
    for name, d in power.items():
        try:
            cells = " · ".join(f"{float(s):g}: {int(k)}/{int(n)}" for s, k, n in d["rows"])
        except (KeyError, TypeError, ValueError):
            continue
        out.append({"defect": str(name), "unit": str(d.get("unit", "")), "power": cells})
    return out
