"""Render a :class:`~dlclinic.core.results.Report` as one self-contained HTML file.

The page needs no network: CSS is inline, plots are inline SVG, thumbnails are base64
PNG data URIs, and there is no JavaScript. Everything that comes from the report or
the user's data is escaped by Jinja2's autoescaping; only SVG produced here by
matplotlib is inserted as markup.

Checks pass plots, thumbnails and tables to the report through ``CheckResult.details``,
plain data only (lists, numbers, strings), with these keys; any other key is ignored:

``details["plots"]``
    A list of ``{"kind": "line" | "bar" | "hist" | "reliability", "title": str,
    "xlabel": str, "ylabel": str, "series": [{"label": str, "x": [...], "y": [...]}]}``.
    ``"bar"`` takes category names or numbers as ``x``. ``"hist"`` series carry
    ``"values": [...]`` instead of ``x``/``y`` and are drawn as overlaid,
    density-normalised histograms on shared bins. ``"reliability"`` takes one series with
    ``x`` = mean confidence per bin, ``y`` = accuracy per bin and an optional ``"count"``
    (samples per bin); the diagonal of perfect calibration is drawn.
``details["images"]``
    A list of ``{"title": str, "split": str, "indices": [int, ...], "captions": [str, ...]}``:
    thumbnails of those rows of ``case.splits[split].x``. Shown only when the case is
    passed to :func:`render_html` and its modality is ``"image"``.
``details["tables"]``
    A list of ``{"title": str, "columns": [str, ...], "rows": [[...], ...]}``.
``details["tokens"]``
    A list of ``{"title": str, "rows": [{"caption": str, "tokens": [{"text": str,
    "score": float}, ...]}, ...]}``: text highlighted token by token, ``score`` in -1..1
    (red for > 0, blue for < 0, the colour's strength its size). Token cases' attributions.

A spec that cannot be drawn (unknown kind, empty series, bad numbers) is replaced by a
short note in the page; it never fails the report.

Example:
    >>> from dlclinic.core.results import Report, sequence_of_results
    >>> report = Report("0.1.0", "2024-01-01T00:00:00Z", {"name": "demo"}, sequence_of_results([]))
    >>> "data.quality" in render_html(report)
    True
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from dlclinic.core.results import CheckResult, Finding, Report, Treatment, not_examined
from dlclinic.report.plots import plot_to_svg, prerender
from dlclinic.report.thumbnails import thumbnails
from dlclinic.report.trust import false_alarm_note as _false_alarm_note
from dlclinic.report.trust import power_rows
from dlclinic.taxonomy import CATEGORIES, CHALLENGES

if TYPE_CHECKING:
    from dlclinic.core.case import Case

__all__ = ["fmt", "render_html"]

STATUSES = ("ok", "warn", "fail", "error", "not_examined")
STATUS_LABELS = {"ok": "ok", "warn": "warn", "fail": "fail", "error": "error", "not_examined": "not examined"}
MAX_INDICES = 10
MAX_TEXT_CHARS = 240
MAX_TABLE_ROWS = 200
_TEMPLATES = Path(__file__).parent / "templates"


def fmt(value: Any) -> str:
    """Format a metric value for people: 4 significant digits, ``—`` for missing.

    Example:
        >>> fmt(0.123456), fmt(12345), fmt(None), fmt(True)
        ('0.1235', '12,345', '—', 'yes')
    """
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (TypeError, ValueError):
            pass
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "—"
        if value == 0 or 1e-3 <= abs(value) < 1e6:
            return f"{value:.4g}"
        return f"{value:.3e}"
    if isinstance(value, (list, tuple, Mapping)):
        text = json.dumps(value, default=str)
        return text if len(text) <= 120 else text[:117] + "…"
    return str(value)


def _threshold_keys(metric: str) -> list[tuple[str, str]]:
    """Threshold keys that belong to ``metric``, with the label shown before the value."""
    out = [(metric, "")]
    for label, words in (("≤ ", ("max",)), ("≥ ", ("min",)), ("warn ", ("warn",)), ("fail ", ("fail",))):
        for w in words:
            out += [(f"{metric}.{w}", label), (f"{metric}_{w}", label), (f"{w}_{metric}", label)]
    return out


def _threshold_rows(result: CheckResult) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Metrics with their matching thresholds, and the thresholds that match no metric.

    A threshold matches metric ``m`` when its key is ``m`` itself, or ``m`` with a
    ``max``/``min``/``warn``/``fail`` qualifier (``m.warn``, ``m_max``, ``min_m`` ...).
    Each metric row lists its thresholds apart (``limits``), so the page can wrap between them.
    """
    used: set[str] = set()
    rows = []
    for name, value in result.metrics.items():
        limits = []
        for key, label in _threshold_keys(name):
            if key in result.thresholds and key not in used:
                limits.append(label + fmt(result.thresholds[key]))
                used.add(key)
        rows.append({"name": name, "value": fmt(value), "limits": limits})
    rest = [{"name": k, "value": fmt(v)} for k, v in result.thresholds.items() if k not in used]
    return rows, rest


def _row_texts(finding: Finding, shown: Sequence[int], case: Case | None) -> list[dict[str, str]]:
    """The raw text of the shown rows when the finding's split has texts (``--text-col``), each cut at :data:`MAX_TEXT_CHARS`."""
    split = case.get(finding.split) if case is not None and finding.split else None
    if split is None or split.texts is None:
        return []
    out = []
    for i in shown:
        if 0 <= int(i) < len(split.texts):
            text = str(split.texts[int(i)])
            cut = text if len(text) <= MAX_TEXT_CHARS else text[: MAX_TEXT_CHARS - 1] + "…"
            out.append({"index": str(int(i)), "text": cut})
    return out


def _finding_view(finding: Finding, case: Case | None = None) -> dict[str, Any]:
    """One finding for the template: counts, the first rows with scores (and texts), its ``extra`` data."""
    n = len(finding.indices)
    shown = finding.indices[:MAX_INDICES]
    scores = list(finding.scores[: len(shown)])
    top = [{"index": int(i), "score": fmt(scores[k]) if k < len(scores) else ""} for k, i in enumerate(shown)]
    extra = {k: v.tolist() if hasattr(v, "tolist") else v for k, v in finding.extra.items()}
    aligned = {k: list(v) for k, v in extra.items() if isinstance(v, (list, tuple)) and n and len(v) == n}
    scalars = {k: fmt(v) for k, v in extra.items() if k not in aligned}
    extra_rows = [[str(int(i))] + [fmt(col[k]) for col in aligned.values()] for k, i in enumerate(shown)]
    return {
        "code": finding.code,
        "message": finding.message,
        "split": finding.split or "",
        "count": n,
        "top": top,
        "more": max(n - len(shown), 0),
        "extra_columns": ["row", *aligned] if aligned else [],
        "extra_rows": extra_rows if aligned else [],
        "extra_scalars": scalars,
        "texts": _row_texts(finding, shown, case),
    }


def _as_list(value: Any) -> list[Any]:
    """``details`` entries as a list (a lone dict becomes a one-item list)."""
    if value is None:
        return []
    if isinstance(value, Mapping) or isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        return [value]
    return list(value)


def _plots(details: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Inline SVG for each plot spec, or an ``error`` note for a spec that cannot be drawn."""
    out = []
    for spec in _as_list(details.get("plots")):
        title = str(spec.get("title", "")) if isinstance(spec, Mapping) else ""
        try:
            out.append({"svg": Markup(plot_to_svg(spec)), "title": title, "error": ""})
        except Exception as exc:  # a bad spec must never fail the whole report
            out.append({"error": f"plot {title or '(untitled)'} skipped: {exc}", "title": title})
    return out


def _images(details: Mapping[str, Any], case: Case | None) -> list[dict[str, Any]]:
    """Thumbnails for each image spec, or an ``error`` note."""
    out: list[dict[str, Any]] = []
    for spec in _as_list(details.get("images")):
        if not isinstance(spec, Mapping):
            out.append({"title": "", "thumbs": [], "error": "image spec skipped: expected a dict"})
            continue
        title = str(spec.get("title", ""))
        try:
            thumbs = thumbnails(spec, case)
        except Exception as exc:
            out.append({"title": title, "thumbs": [], "error": f"images {title or '(untitled)'} skipped: {exc}"})
            continue
        if thumbs:
            out.append({"title": title, "thumbs": thumbs, "error": ""})
    return out


def _token_style(score: Any) -> tuple[str, str]:
    """A token's inline background (red for > 0, blue for < 0, alpha = |score|) and its tooltip; the colour comes from the number only."""
    v = float(score)
    if not math.isfinite(v):
        return "", "nan"
    alpha = min(abs(v), 1.0)
    rgb = "220, 38, 38" if v > 0 else "37, 99, 235"
    ink = "; color: #fff" if alpha > 0.6 else ""  # dark text on a strong colour does not read
    return f"background: rgba({rgb}, {alpha:.2f}){ink}", f"{v:+.2f}"


def _token_rows(details: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Highlighted token rows for each ``details["tokens"]`` spec, at most :data:`MAX_TABLE_ROWS` rows each, or an ``error`` note."""
    out: list[dict[str, Any]] = []
    for spec in _as_list(details.get("tokens")):
        title = str(spec.get("title", "")) if isinstance(spec, Mapping) else ""
        try:
            rows = []
            for row in _as_list(spec["rows"])[:MAX_TABLE_ROWS]:
                tokens = []
                for tok in _as_list(row["tokens"]):
                    style, tip = _token_style(tok.get("score", 0.0))
                    tokens.append({"text": str(tok["text"]), "style": style, "tip": tip})
                rows.append({"caption": str(row.get("caption", "")), "tokens": tokens})
        except Exception as exc:  # a bad spec must never fail the whole report
            out.append({"title": title, "rows": [], "error": f"tokens {title or '(untitled)'} skipped: {exc!r}"})
            continue
        out.append({"title": title, "rows": rows, "error": ""})
    return out


def _tables(details: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Formatted cells for each table spec, at most :data:`MAX_TABLE_ROWS` rows each."""
    out: list[dict[str, Any]] = []
    for spec in _as_list(details.get("tables")):
        if not isinstance(spec, Mapping):
            out.append({"error": "table skipped: expected a dict"})
            continue
        title = str(spec.get("title", ""))
        columns = [str(c) for c in _as_list(spec.get("columns"))]
        rows = [[fmt(cell) for cell in _as_list(row)] for row in _as_list(spec.get("rows"))]
        if not columns and not rows:
            out.append({"error": f"table {title or '(untitled)'} skipped: no columns and no rows"})
            continue
        out.append(
            {
                "title": title,
                "columns": columns,
                "rows": rows[:MAX_TABLE_ROWS],
                "more": max(len(rows) - MAX_TABLE_ROWS, 0),
                "error": "",
            }
        )
    return out


def _seconds(seconds: float) -> str:
    """Seconds taken, for people; empty when nothing was timed."""
    if not seconds > 0:
        return ""
    return "<0.01 s" if seconds < 0.01 else f"{seconds:.2f} s" if seconds < 100 else f"{seconds / 60:.1f} min"


def false_alarm_note(challenge_id: str) -> str | None:
    """The validation suite's measured false-alarm rate of this check, as one sentence (or ``None``)."""
    return _false_alarm_note(challenge_id)


def _challenge_view(result: CheckResult, description: str, case: Case | None) -> dict[str, Any]:
    """Everything the template shows about one challenge."""
    metrics, other_thresholds = _threshold_rows(result)
    details = result.details if isinstance(result.details, Mapping) else {}
    examined = result.status != "not_examined"
    return {
        "id": result.id,
        "title": result.title,
        "description": description,
        "status": result.status,
        "status_label": STATUS_LABELS.get(result.status, result.status),
        "summary": result.summary,
        "trust": false_alarm_note(result.id) if result.status in ("ok", "warn", "fail") else None,
        "trust_power": power_rows(result.id) if result.status in ("ok", "warn", "fail") else [],
        "trust_anchor": "docs/validation.md#" + result.id.replace(".", ""),
        "seconds": _seconds(result.seconds),
        "metrics": metrics,
        "other_thresholds": other_thresholds,
        "findings": [_finding_view(f, case) for f in result.findings],
        "remedy": result.remedy if result.status in ("warn", "fail") else None,
        "plots": _plots(details) if examined else [],
        "images": _images(details, case) if examined else [],
        "tables": _tables(details) if examined else [],
        "tokens": _token_rows(details) if examined else [],
    }


def _treatment_view(t: Treatment) -> dict[str, Any]:
    """A treatment with one row per metric: before, after and the change."""
    rows = []
    for key in list(dict.fromkeys([*t.before, *t.after])):
        b, a = t.before.get(key), t.after.get(key)
        delta = ""
        if (
            isinstance(b, (int, float))
            and isinstance(a, (int, float))
            and not isinstance(a, bool)
            and not isinstance(b, bool)
        ):
            d = float(a) - float(b)
            delta = ("+" if d > 0 else "") + fmt(d) if math.isfinite(d) else ""
        rows.append({"name": key, "before": fmt(b), "after": fmt(a), "delta": delta})
    return {
        "challenge_id": t.challenge_id,
        "action": t.action,
        "before_status": t.before_status,
        "after_status": t.after_status,
        "rows": rows,
        "artifacts": dict(t.artifacts),
        "notes": list(t.notes),
    }


def _header(report: Report) -> dict[str, Any]:
    """The case facts for the page header, tolerant of missing keys."""
    case = report.case if isinstance(report.case, Mapping) else {}
    model = case.get("model")
    model = model if isinstance(model, Mapping) else {"source": str(model)} if model else {}
    raw_splits = case.get("splits")
    splits: Mapping[str, Any] = raw_splits if isinstance(raw_splits, Mapping) else {}
    source = str(model.get("source", ""))
    params = fmt(model.get("parameters")) if model.get("parameters") is not None else ""
    return {
        "name": str(case.get("name") or "case"),
        "model_source": source,
        "model_parameters": params if params not in source else "",
        "model_sha256": str(model.get("sha256", ""))[:16],
        "splits": [{"name": str(k), "n": fmt(v)} for k, v in splits.items()],
        "n_classes": fmt(case.get("n_classes")) if case.get("n_classes") is not None else "",
        "modality": str(case.get("modality", "")),
        "categorical": _categorical_columns(case.get("categorical_columns")),
    }


def _categorical_columns(columns: Any) -> list[str]:
    """``occupation: one-hot (integer-coded: 6 distinct …)`` per categorical table column."""
    if not isinstance(columns, Mapping):
        return []
    return [
        f"{col}: {how.get('encoding', '')} ({how.get('rule', '')})"
        for col, how in columns.items()
        if isinstance(how, Mapping)
    ]


@functools.lru_cache(maxsize=1)
def _environment() -> Environment:
    """The Jinja2 environment (autoescape on, undefined names are errors), built once."""
    env = Environment(
        loader=FileSystemLoader(str(_TEMPLATES)),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = fmt
    return env


def render_html(report: Report, case: Case | None = None) -> str:
    """Render the report as one self-contained HTML page.

    Args:
        report: The checkup result.
        case: The case the report was made from; needed only for image thumbnails
            (``details["images"]``) and the text of flagged rows (splits with ``texts``).
            Without it both are left out.

    Returns:
        The HTML document as a string.
    """
    by_id = {r.id: r for r in report.challenges}
    prerender(
        [p for r in report.challenges if isinstance(r.details, Mapping) for p in _as_list(r.details.get("plots"))]
    )
    counts = {s: 0 for s in STATUSES}
    categories = []
    for key, name in CATEGORIES.items():
        items = []
        cat_counts = {s: 0 for s in STATUSES}
        for ch in (c for c in CHALLENGES if c.category == key):
            result = by_id.get(ch.id)
            if result is None:
                result = not_examined(ch.id, "missing from this report")
            view = _challenge_view(result, ch.description, case)
            counts[view["status"]] = counts.get(view["status"], 0) + 1
            cat_counts[view["status"]] = cat_counts.get(view["status"], 0) + 1
            items.append(view)
        categories.append({"key": key, "name": name, "challenges": items, "counts": cat_counts})
    environment = {k: fmt(v) for k, v in (report.environment or {}).items()}
    timings = {k: f"{fmt(v)} s" for k, v in (report.timings or {}).items()}
    template = _environment().get_template("report.html")
    return template.render(
        report=report,
        header=_header(report),
        counts=counts,
        total=sum(counts.values()),
        statuses=STATUSES,
        status_labels=STATUS_LABELS,
        categories=categories,
        treatments=[_treatment_view(t) for t in report.treatments],
        environment=environment,
        timings=timings,
    )
