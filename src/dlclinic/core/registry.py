"""Checks and remedies: what each one needs, how options are validated, how they run.

A check is a :class:`CheckSpec`: an id from the taxonomy, the evidence it requires as
``(kind, split)`` pairs, an options dataclass (defaults = dlclinic's thresholds) and a
``run(case, evidence, options) -> CheckResult`` function. Check modules build their spec
explicitly; ``dlclinic.challenges.CHECKS`` lists them, derived from the 31 ids.

A remedy is a :class:`RemedySpec`: an id, a parameters dataclass and a
``run(context, params) -> TreatOutcome`` function. :func:`dlclinic.api.treat` builds the
:class:`TreatContext` (the case with its model, the training recipe, a ``measure``
function that re-runs the same check with the same settings) and calls it;
``dlclinic.challenges.REMEDIES`` lists them; :func:`conclude` writes the before/after record.

Options and parameters may be given as strings (``--option key=value`` on the command
line); :func:`build_options` converts them to the dataclass field's type.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlclinic.core.case import Case
from dlclinic.core.errors import ConfigError
from dlclinic.core.evidence import Evidence
from dlclinic.core.progress import Progress
from dlclinic.core.recipe import FitConfig
from dlclinic.core.results import CheckResult, Report, Treatment

__all__ = [
    "CheckSpec",
    "RemedySpec",
    "TreatContext",
    "TreatOutcome",
    "build_options",
    "check_bounds",
    "conclude",
    "parse_assignments",
]


@dataclass(frozen=True)
class CheckSpec:
    """One check: id, required evidence, options type and the function that runs it.

    ``validate(case, options)``, when given, checks the option values that depend on the data
    (a region inside the image, a column that exists) before any work, raising ``ConfigError``.
    """

    id: str
    requires: tuple[tuple[str, str], ...]
    options: type
    run: Callable[[Case, Evidence, Any], CheckResult]
    description: str = ""
    validate: Callable[[Case, Any], None] | None = None


@dataclass(frozen=True)
class TreatContext:
    """Everything a remedy needs; built by :func:`dlclinic.api.treat`.

    ``case`` already has a model (the user's, or the baseline dlclinic trained).
    ``retrain(x, y, seed) -> model`` trains a fresh model with the case's recipe (``None``
    when the architecture is unknown, e.g. a ``.pt2``/ONNX file). ``measure(case, *, options=None, only=None)``
    runs the treated challenge's check on a case with the same evidence/fit settings and
    returns the report; call it before and after the treatment. ``options`` overrides the
    treated check's options (e.g. the shortcut to test); ``only`` measures other challenges
    too (the governance remedies document several checks).
    ``out_dir`` is where artifacts go (write them atomically, ``core.atomic``).
    """

    challenge_id: str
    case: Case
    fit_config: FitConfig
    evidence_config: Any
    cache_dir: Path
    out_dir: Path | None
    progress: Progress
    retrain: Callable[..., Any] | None
    recipe: str
    measure: Callable[..., Report]


@dataclass(frozen=True)
class TreatOutcome:
    """What a remedy returns: the treatment (before/after numbers) and both reports."""

    treatment: Treatment
    before: Report
    after: Report


def conclude(
    ctx: TreatContext,
    *,
    before: Report,
    after: Report,
    action: str,
    before_values: Mapping[str, float | int | None] | None = None,
    after_values: Mapping[str, float | int | None] | None = None,
    check_metrics: Iterable[str] = (),
    artifacts: Mapping[str, str] | None = None,
    notes: Iterable[str] = (),
) -> TreatOutcome:
    """The one ending every remedy shares: the before/after treatment record and both reports.

    ``before``/``after`` are the treated challenge's reports (from ``ctx.measure``); their
    statuses, and the check metrics named in ``check_metrics``, are read from them. The
    remedy's own numbers (accuracy before/after, ε, …) come in ``before_values`` and
    ``after_values`` and are listed first.
    """
    res_before, res_after = before[ctx.challenge_id], after[ctx.challenge_id]
    names = tuple(check_metrics)
    treatment = Treatment(
        challenge_id=ctx.challenge_id,
        action=action,
        before={**(before_values or {}), **{k: res_before.metrics.get(k) for k in names}},
        after={**(after_values or {}), **{k: res_after.metrics.get(k) for k in names}},
        before_status=res_before.status,
        after_status=res_after.status,
        artifacts=dict(artifacts or {}),
        notes=tuple(notes),
    )
    return TreatOutcome(treatment, before, after)


@dataclass(frozen=True)
class RemedySpec:
    """One remedy: id, parameters type and the function that applies and verifies it."""

    id: str
    params: type
    run: Callable[[TreatContext, Any], TreatOutcome]
    description: str = ""


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(name: str, raw: str, tp: Any) -> Any:
    """Convert a command-line string to the field type ``tp`` (a one-line ConfigError otherwise)."""
    inner, optional = _strip_optional(tp)
    text = raw.strip()
    if optional and text.lower() in ("", "none", "null"):
        return None
    origin = typing.get_origin(inner)
    try:
        if inner is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true/false")
        if inner is int:
            return int(text)
        if inner is float:
            return float(text)
        if inner is Path:
            return Path(text)
        if origin in (tuple, list):
            args = [a for a in typing.get_args(inner) if a is not Ellipsis] or [str]
            items = [s for s in text.split(",") if s.strip()]
            values = [_coerce(name, s, args[0] if len(args) == 1 else args[i]) for i, s in enumerate(items)]
            return tuple(values) if origin is tuple else values
        if origin is typing.Literal:
            allowed = typing.get_args(inner)
            for a in allowed:
                if str(a) == text:
                    return a
            raise ValueError(f"expected one of {', '.join(map(str, allowed))}")
    except (ValueError, IndexError) as exc:
        raise ConfigError(f"option {name}={raw!r}: {exc}") from None
    return text


def _numeric_kind(tp: Any) -> type | None:
    """``int`` or ``float`` for a field typed ``int``/``float`` (optional, or a tuple/list of them), else ``None``."""
    inner, _ = _strip_optional(tp)
    if typing.get_origin(inner) in (tuple, list):
        args = {a for a in typing.get_args(inner) if a is not Ellipsis}
        inner = args.pop() if len(args) == 1 else None
    return inner if inner in (int, float) else None


def check_bounds(spec: CheckSpec | RemedySpec, options: Any) -> Any:
    """Every number of an options/params object within its bounds; returns ``options``.

    Counts, sizes, thresholds, rates and seeds are never negative and never NaN: a numeric
    field (``int``, ``float``, optional or a tuple of them) must be ``>= 0`` unless its
    ``dataclasses.field(metadata={"min": ..., "max": ...})`` declares other bounds.

    Raises:
        ConfigError: naming the option, the bound and the value given.
    """
    hints = typing.get_type_hints(type(options))
    for f in dataclasses.fields(options):
        kind = _numeric_kind(hints.get(f.name))
        value = getattr(options, f.name)
        if kind is None or value is None:
            continue
        lo, hi = f.metadata.get("min", 0), f.metadata.get("max", math.inf)
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if math.isnan(v) or not lo <= v <= hi:
                bound = f"{f.name} >= {lo}" if hi == math.inf else f"{lo} <= {f.name} <= {hi}"
                raise ConfigError(f"bad option for {spec.id}: `{bound}` must hold, but got {f.name}={value!r}")
    return options


def build_options(spec: CheckSpec | RemedySpec, given: Any) -> Any:
    """Instantiate the spec's options (checks) or params (remedies) from a mapping, and check its bounds.

    Unknown keys are named with the valid ones; string values are converted to the
    field's declared type (so ``"0.05"`` becomes a float where the field is a float);
    numbers are checked by :func:`check_bounds`. An already-built object is only checked.
    """
    cls = spec.options if isinstance(spec, CheckSpec) else spec.params
    if isinstance(given, cls):
        return check_bounds(spec, given)
    given = dict(given or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(given) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for {spec.id}; expected some of: {', '.join(sorted(fields)) or '(none)'}"
        )
    hints = typing.get_type_hints(cls)
    for key, value in list(given.items()):
        if isinstance(value, str) and hints.get(key, str) is not str:
            given[key] = _coerce(key, value, hints[key])
    try:
        built = cls(**given)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad option for {spec.id}: {exc}") from None
    return check_bounds(spec, built)


def parse_assignments(items: Iterable[str], *, scoped: bool) -> dict[str, Any]:
    """Parse ``key=value`` strings from the command line.

    With ``scoped=True`` keys are ``challenge.id.option`` and the result is nested by
    challenge id (``{"data.quality": {"warn_label_issue_fraction": "0.05"}}``); otherwise
    it is a flat mapping. Values stay strings; :func:`build_options` converts them.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--option {item!r}: expected KEY=VALUE")
        if scoped:
            cid, dot, opt = key.rpartition(".")
            if not dot or "." not in cid:
                raise ConfigError(
                    f"--option {item!r}: expected CHALLENGE.ID.OPTION=VALUE, e.g. data.quality.warn_label_issue_fraction=0.05"
                )
            out.setdefault(cid, {})[opt] = value
        else:
            out[key] = value
    return out
