"""Frozen result objects of a checkup: one ``CheckResult`` per challenge, one ``Report``.

Results hold numbers and plain data only; rendering lives in ``dlclinic.report``.
``Report.to_dict()`` produces the ``dlclinic.report/1`` JSON contract
(``shared/report.schema.json``); fields beyond the schema are additions that
consumers may ignore.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from dlclinic.taxonomy import CHALLENGES, get_challenge

__all__ = [
    "SCHEMA",
    "CheckResult",
    "Finding",
    "Remedy",
    "Report",
    "Status",
    "Treatment",
    "grade",
    "remedy_command",
    "with_case_args",
    "worst",
]

SCHEMA = "dlclinic.report/1"

Status = Literal["ok", "warn", "fail", "not_examined", "error"]
STATUS_ORDER: dict[str, int] = {"ok": 0, "not_examined": 1, "warn": 2, "error": 3, "fail": 4}


def _clean_number(value: Any) -> float | int | bool | None:
    """JSON has no NaN/Inf: map them to ``None``; numpy scalars to Python ones."""
    if value is None or isinstance(value, bool):
        return value
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    value = float(value)
    return value if math.isfinite(value) else None


def _jsonable(obj: Any) -> Any:
    """Recursively turn numpy arrays/scalars and tuples into JSON-ready values."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return _jsonable(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (float, int, bool)) or obj is None or hasattr(obj, "item"):
        return _clean_number(obj)
    return obj


@dataclass(frozen=True)
class Finding:
    """One thing a check found, e.g. the samples flagged as label issues.

    ``indices`` are row positions in ``split``, most severe first; ``scores`` align with
    them (for label issues: the label-quality score, lower = worse).
    ``extra`` holds per-finding data for the report (e.g. given and suggested labels).
    """

    code: str
    message: str
    split: str | None = None
    indices: tuple[int, ...] = ()
    scores: tuple[float, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.split is not None:
            out["split"] = self.split
        if self.indices:
            out["indices"] = [int(i) for i in self.indices]
        if self.scores:
            out["scores"] = [_clean_number(s) for s in self.scores]
        if self.extra:
            out["extra"] = _jsonable(self.extra)
        return out


@dataclass(frozen=True)
class Remedy:
    """How to treat a challenge: the CLI command (``None`` while no remedy is built) and what it does."""

    command: str | None
    description: str

    def to_dict(self) -> dict[str, str]:
        out = {"description": self.description}
        if self.command:
            out["command"] = self.command
        return out


@dataclass(frozen=True)
class CheckResult:
    """The verdict on one challenge.

    ``metrics`` are the numbers that decided ``status``; ``thresholds`` the limits they
    were compared with. ``details`` holds plain data for plots (histograms, reliability
    bins, per-class tables); it is not part of the schema's required fields. ``budget`` is set
    when the checkup ran under a time budget: the check's share, the seconds it used and
    what it sampled or skipped to stay inside it (:mod:`dlclinic.core.budget`).
    """

    id: str
    status: Status
    summary: str
    metrics: Mapping[str, float | int | bool | None] = field(default_factory=dict)
    thresholds: Mapping[str, float | int | None] = field(default_factory=dict)
    findings: tuple[Finding, ...] = ()
    remedy: Remedy | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    budget: Mapping[str, Any] | None = None

    @property
    def category(self) -> str:
        return self.id.split(".")[0]

    @property
    def title(self) -> str:

        return get_challenge(self.id).title

    def with_seconds(self, seconds: float) -> CheckResult:
        return replace(self, seconds=float(seconds))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "category": self.category,
            "title": self.title,
            "status": self.status,
            "summary": self.summary,
            "metrics": {k: _clean_number(v) for k, v in self.metrics.items()},
            "thresholds": {k: _clean_number(v) for k, v in self.thresholds.items()},
            "findings": [f.to_dict() for f in self.findings],
            "seconds": round(max(self.seconds, 0.0), 4),
        }
        if self.remedy is not None:
            out["remedy"] = self.remedy.to_dict()
        if self.details:
            out["details"] = _jsonable(self.details)
        if self.budget is not None:
            out["budget"] = _jsonable(self.budget)
        return out


def not_examined(challenge_id: str, reason: str) -> CheckResult:
    """A challenge that was not measured in this checkup, with the reason why."""
    return CheckResult(id=challenge_id, status="not_examined", summary=reason)


@dataclass(frozen=True)
class Treatment:
    """A remedy applied, and the same check measured again afterwards."""

    challenge_id: str
    action: str
    before: Mapping[str, float | int | None]
    after: Mapping[str, float | int | None]
    before_status: Status
    after_status: Status
    artifacts: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "challenge_id": self.challenge_id,
            "action": self.action,
            "before": {k: _clean_number(v) for k, v in self.before.items()},
            "after": {k: _clean_number(v) for k, v in self.after.items()},
            "before_status": self.before_status,
            "after_status": self.after_status,
            "artifacts": dict(self.artifacts),
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class Report:
    """The result of one checkup: all 31 challenges, in taxonomy order."""

    dlclinic_version: str
    created: str
    case: Mapping[str, Any]
    challenges: tuple[CheckResult, ...]
    environment: Mapping[str, Any] = field(default_factory=dict)
    treatments: tuple[Treatment, ...] = ()
    timings: Mapping[str, float] = field(default_factory=dict)

    def __getitem__(self, challenge_id: str) -> CheckResult:
        for result in self.challenges:
            if result.id == challenge_id:
                return result

        get_challenge(challenge_id)  # raises UnknownChallengeError for a bad id
        raise KeyError(challenge_id)

    @property
    def worst_status(self) -> Status:
        examined = [r.status for r in self.challenges]
        return max(examined, key=lambda s: STATUS_ORDER[s]) if examined else "ok"

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in ("ok", "warn", "fail", "error", "not_examined")}
        for r in self.challenges:
            out[r.status] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema": SCHEMA,
            "dlclinic_version": self.dlclinic_version,
            "created": self.created,
            "case": _jsonable(self.case),
            "challenges": [r.to_dict() for r in self.challenges],
            "environment": _jsonable(self.environment),
        }
        if self.treatments:
            out["treatments"] = [t.to_dict() for t in self.treatments]
        if self.timings:
            out["timings"] = {k: round(float(v), 4) for k, v in self.timings.items()}
        return out


def sequence_of_results(results: Sequence[CheckResult]) -> tuple[CheckResult, ...]:
    """Order results by the taxonomy and fill every missing id with ``not_examined``."""

    by_id = {r.id: r for r in results}
    return tuple(by_id.get(c.id) or not_examined(c.id, "not selected for this checkup (--only)") for c in CHALLENGES)


def worst(statuses: Iterable[Status]) -> Status:
    """The most severe status (ok < not_examined < warn < error < fail)."""
    items = list(statuses)
    return max(items, key=lambda s: STATUS_ORDER[s]) if items else "ok"


def grade(value: float | None, warn: float | None, fail: float | None, *, higher_is_worse: bool = True) -> Status:
    """``fail`` past the fail limit, ``warn`` past the warn limit, else ``ok``; ``None`` values are ok."""
    if value is None:
        return "ok"
    v = value if higher_is_worse else -value
    if fail is not None and v > (fail if higher_is_worse else -fail):
        return "fail"
    if warn is not None and v > (warn if higher_is_worse else -warn):
        return "warn"
    return "ok"


# commands that take the case's own data and model options right after the verb (and, for treat, the id)
_CASE_VERBS = ("treat", "serve")


def remedy_command(command: str | None, case_args: str | None) -> str | None:
    """The one place a printed command gets the case's own arguments, so it runs as printed.

    Checks write the command without the data part (``dlclinic treat data.quality``,
    ``dlclinic serve --out serve/``); the case's arguments (``--demo``, or ``--train … --test …
    --model … --weights …`` and the recipe options that differ from the defaults) go right
    after the verb and, for ``treat``, the challenge id. A case built in Python has no
    recorded arguments: ``<data options>`` stands in their place.

    Example:
        >>> remedy_command("dlclinic treat model.compression --option max_accuracy_drop=0.01", "--demo")
        'dlclinic treat model.compression --demo --option max_accuracy_drop=0.01'
        >>> remedy_command("dlclinic serve --out serve/", None)
        'dlclinic serve <data options> --out serve/'
    """
    if not command:
        return command
    words = command.split(" ")
    if len(words) < 2 or words[0] != "dlclinic" or words[1] not in _CASE_VERBS:
        return command
    head = 3 if words[1] == "treat" else 2
    args = "<data options>" if case_args is None else case_args.strip()
    return " ".join([*words[:head], *([args] if args else []), *words[head:]])


def with_case_args(result: CheckResult, case_args: str | None) -> CheckResult:
    """``result`` with its remedy command completed by :func:`remedy_command`."""
    if result.remedy is None or not result.remedy.command:
        return result
    return replace(result, remedy=replace(result.remedy, command=remedy_command(result.remedy.command, case_args)))
