"""Model card, technical documentation, hash-manifest bundles and the audit trail.

* :func:`load_card_config` reads the user's small JSON / YAML / TOML file (intended use,
  out-of-scope uses, data provenance, owner, …; see :data:`CARD_FIELDS`).
* :func:`render_model_card` writes the card as Markdown from that config and a
  :class:`~dlclinic.core.results.Report` (Mitchell et al. 2019, "Model Cards for Model
  Reporting"): evaluation results including per-group, robustness and privacy numbers,
  limitations taken from the checks that warned or failed, SHA-256 fingerprints.
* :func:`render_technical_documentation` fills GDPR / EU AI Act (Annex IV) style headings
  with what was measured and marks "not provided" where only the user can write it.
* :func:`write_manifest` / :func:`verify_manifest`: a bundle manifest of SHA-256 hashes
  (optionally HMAC-SHA256 signed with a key file); any changed byte fails verification.
* :func:`append_audit` / :func:`verify_audit`: an append-only JSON-lines audit trail in
  which every record carries the hash of the previous one (a hash chain), so editing or
  deleting a past record is detected. A chain alone cannot see a change to its *newest*
  record (nothing after it holds its hash; the next append would even chain onto the edited
  line), so each append also writes a head anchor next to the log (``<log>.head``: record
  count and hash of the newest line) and copies the anchor it found into the new record:
  an edited, removed or hand-appended newest record no longer matches it.

Pure functions on plain data; no rendering library needed (Markdown is text).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import hmac
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from dlclinic.core.atomic import atomic_path
from dlclinic.core.errors import ConfigError, InputError

__all__ = [
    "CARD_FIELDS",
    "COMPLIANCE_FIELDS",
    "PLACEHOLDERS",
    "REQUIRED_CARD_FIELDS",
    "append_audit",
    "load_card_config",
    "render_model_card",
    "render_technical_documentation",
    "sha256_file",
    "verify_audit",
    "verify_manifest",
    "write_manifest",
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
            import yaml

            data = yaml.safe_load(text)
        elif suffix == ".toml":
            import tomllib

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


def _filled(value: Any) -> bool:
    """Whether a card answer says something: not missing, empty, or a placeholder (:data:`PLACEHOLDERS`, ``TODO: …``)."""
    if value is None:
        return False
    if isinstance(value, str):
        return not _placeholder(value)
    if isinstance(value, (list, tuple)):
        return any(_filled(v) for v in value)
    if isinstance(value, dict):
        return any(_filled(v) for v in value.values())
    return True


def missing_fields(config: Mapping[str, Any], fields: Sequence[str]) -> list[str]:
    """Fields of ``fields`` that are absent, empty or placeholders (``TODO``, ``TBD``, ``…``) in ``config``."""
    return [f for f in fields if not _filled(config.get(f))]


def _md(value: Any) -> str:
    if not _filled(value):
        return NOT_PROVIDED
    if isinstance(value, (list, tuple)):
        return "\n".join(f"- {v}" for v in value)
    if isinstance(value, dict):
        return "\n".join(f"- **{k}**: {v}" for k, v in value.items())
    return str(value)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _result(report: Any, cid: str) -> Any:
    for r in getattr(report, "challenges", ()):
        if r.id == cid:
            return r
    return None


def _pct(v: Any) -> str:
    return "—" if v is None else f"{float(v):.1%}"


def _evaluation(report: Any) -> list[str]:
    lines: list[str] = []
    ov = _result(report, "model.overfitting")
    if ov is not None and ov.status != "not_examined":
        m = ov.metrics
        lines.append(
            f"- Accuracy: train {_pct(m.get('train_accuracy'))}, test {_pct(m.get('test_accuracy'))}; expected calibration error {m.get('ece', float('nan')):.3f} on test."
        )
    fa = _result(report, "ethics.fairness")
    if fa is not None and fa.status != "not_examined":
        m = fa.metrics
        lines.append(
            f"- Fairness ({fa.details.get('positive', '')}): worst-group accuracy {_pct(m.get('worst_group_accuracy'))} (group {fa.details.get('worst_group', '?')!r}), accuracy gap {m.get('accuracy_gap', 0):.3f}, equalized-odds difference {m.get('equalized_odds_difference', 0):.3f} (95 % CI {m.get('equalized_odds_ci_low', 0):.3f}–{m.get('equalized_odds_ci_high', 0):.3f})."
        )
        for t in fa.details.get("tables", []):
            lines.append("")
            lines.append("| " + " | ".join(map(str, t["columns"])) + " |")
            lines.append("|" + "---|" * len(t["columns"]))
            lines += ["| " + " | ".join(map(str, row)) + " |" for row in t["rows"]]
            lines.append("")
    se = _result(report, "ethics.security")
    if se is not None and "robust_accuracy" in se.metrics:
        m = se.metrics
        lines.append(
            f"- Robustness: PGD-L∞ at ε={m.get('epsilon')} leaves {_pct(m.get('robust_accuracy'))} correct (clean {_pct(m.get('clean_accuracy'))}); attack success rate {_pct(m.get('attack_success_rate'))}."
        )
    pr = _result(report, "data.privacy")
    if pr is not None and "mia_auc" in pr.metrics:
        m = pr.metrics
        lines.append(
            f"- Privacy: membership-inference AUC {m.get('mia_auc', 0):.3f} (0.5 = no leakage); TPR {_pct(m.get('mia_tpr_at_low_fpr'))} at FPR ≤ {_pct(m.get('mia_low_fpr'))}."
        )
    return lines or ["- No evaluation results in the report this card was built from."]


def render_model_card(
    report: Any, config: Mapping[str, Any] | None, *, fingerprints: Mapping[str, str] | None = None
) -> str:
    """The model card as Markdown (fields the user did not provide say so).

    Args:
        report: a :class:`~dlclinic.core.results.Report` (or ``None``: no measurements).
        config: the user's card fields (:func:`load_card_config`), or ``None``.
        fingerprints: extra ``name → sha256`` (files written with the card).
    """
    cfg = dict(config or {})
    case = dict(getattr(report, "case", {}) or {})
    model = dict(case.get("model") or {})
    name = cfg.get("model_name") or case.get("name") or "model"
    out = [f"# Model card: {name}", ""]
    created = getattr(report, "created", None) or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    out += [
        f"_Generated by dlclinic {getattr(report, 'dlclinic_version', '')} on {created}; every number below was measured on the data named in the fingerprints._",
        "",
    ]
    out += ["## Model details", ""]
    for key in ("version", "owner", "contact", "license"):
        out.append(f"- **{CARD_FIELDS[key]}**: {_md(cfg.get(key))}")
    if model:
        source = str(model.get("source", "?"))
        params = model.get("parameters")
        out.append(
            f"- **Model**: {source}"
            + (f", {params:,} parameters" if isinstance(params, int) and f"{params:,}" not in source else "")
        )
    if case:
        out.append(
            f"- **Task**: {case.get('task', 'classification')}, {case.get('n_classes', '?')} classes, {case.get('modality', '?')} inputs of shape {case.get('input_shape', '?')}"
        )
    out.append("")
    for key in ("intended_use", "intended_users", "out_of_scope"):
        out += [f"## {CARD_FIELDS[key]}", "", _md(cfg.get(key)), ""]
    out += ["## Data provenance", "", _md(cfg.get("data_provenance")), ""]
    if case.get("splits"):
        out.append(
            "Splits examined: "
            + ", ".join(f"{k} ({v:,} rows)" for k, v in case["splits"].items())
            + (
                f"; source: {case['metadata']['source']}"
                if isinstance(case.get("metadata"), dict) and case["metadata"].get("source")
                else ""
            )
            + "."
        )
        out.append("")
    out += ["## Evaluation results", ""] + _evaluation(report) + [""]
    flagged = [r for r in getattr(report, "challenges", ()) if r.status in ("warn", "fail")]
    out += ["## Limitations", ""]
    if _filled(cfg.get("limitations")):
        out += [_md(cfg.get("limitations")), ""]
    if flagged:
        out += (
            ["Measured by dlclinic (checks that warned or failed):", ""]
            + [f"- **{r.id}** ({r.status}): {r.summary}" for r in flagged]
            + [""]
        )
    elif not _filled(cfg.get("limitations")):
        out += [NOT_PROVIDED, ""]
    out += ["## Risks and ethical considerations", "", _md(cfg.get("risks")), ""]
    if _filled(cfg.get("ethical_considerations")):
        out += [_md(cfg.get("ethical_considerations")), ""]
    examined = [r for r in getattr(report, "challenges", ()) if r.status != "not_examined"]
    if examined:
        out += ["## All examined challenges", "", "| challenge | status | summary |", "|---|---|---|"]
        out += [f"| {r.id} | {r.status} | {r.summary.replace('|', '/')} |" for r in examined] + [""]
    fps = dict(case.get("fingerprints") or {})
    fps.update(fingerprints or {})
    out += ["## Fingerprints (SHA-256)", ""]
    out += [f"- `{k}`: `{v}`" for k, v in sorted(fps.items())] if fps else [NOT_PROVIDED]
    out.append("")
    return "\n".join(out)


def render_technical_documentation(
    report: Any,
    config: Mapping[str, Any] | None,
    *,
    pii_summary: str | None = None,
    audit_log: str | None = None,
    erasure: str | None = None,
) -> str:
    """Technical documentation with GDPR / EU AI Act (Annex IV) style headings, as Markdown."""
    cfg = dict(config or {})
    case = dict(getattr(report, "case", {}) or {})
    env = dict(getattr(report, "environment", {}) or {})
    out = [
        f"# Technical documentation: {cfg.get('model_name') or case.get('name') or 'model'}",
        "",
        "_Headings follow EU AI Act Annex IV and GDPR Art. 5/6/17/30/35; sections marked “not provided” must be written by the provider._",
        "",
    ]
    out += [
        "## 1. General description of the AI system",
        "",
        f"- **Intended purpose**: {_md(cfg.get('intended_use'))}",
        f"- **Provider**: {_md(cfg.get('owner'))}",
        f"- **Version**: {_md(cfg.get('version'))}",
        f"- **Out-of-scope uses**: {_md(cfg.get('out_of_scope'))}",
        "",
    ]
    model = dict(case.get("model") or {})
    out += [
        "## 2. Elements of the system and its development",
        "",
        f"- **Model**: {model.get('source', NOT_PROVIDED)}",
        f"- **Software**: dlclinic {getattr(report, 'dlclinic_version', '')}, "
        + ", ".join(f"{k} {v}" for k, v in env.items() if k in ("python", "torch", "numpy", "sklearn") and v),
        "",
    ]
    out += [
        "## 3. Data and data governance",
        "",
        f"- **Provenance**: {_md(cfg.get('data_provenance'))}",
        f"- **Splits**: {case.get('splits', NOT_PROVIDED)}",
        f"- **Personal data found (PII scan)**: {pii_summary or NOT_PROVIDED}",
        f"- **{COMPLIANCE_FIELDS['lawful_basis']}**: {_md(cfg.get('lawful_basis'))}",
        f"- **{COMPLIANCE_FIELDS['data_controller']}**: {_md(cfg.get('data_controller'))}",
        f"- **{COMPLIANCE_FIELDS['retention']}**: {_md(cfg.get('retention'))}",
        f"- **{COMPLIANCE_FIELDS['dpia']}**: {_md(cfg.get('dpia'))}",
        "",
    ]
    out += [
        "## 4. Monitoring, functioning and control",
        "",
        f"- **{COMPLIANCE_FIELDS['human_oversight']}**: {_md(cfg.get('human_oversight'))}",
        f"- **{COMPLIANCE_FIELDS['post_market_monitoring']}**: {_md(cfg.get('post_market_monitoring'))}",
        "",
    ]
    out += (
        ["## 5. Performance metrics, accuracy, robustness and cybersecurity (Art. 15)", ""] + _evaluation(report) + [""]
    )
    flagged = [r for r in getattr(report, "challenges", ()) if r.status in ("warn", "fail")]
    out += [
        "## 6. Risk management (Art. 9)",
        "",
        f"- **Risk management system**: {_md(cfg.get('risk_management'))}",
        f"- **Known risks**: {_md(cfg.get('risks'))}",
    ]
    out += [f"- measured: **{r.id}** ({r.status}) — {r.summary}" for r in flagged] + [""]
    fps = dict(case.get("fingerprints") or {})
    out += [
        "## 7. Record-keeping and traceability (Art. 12, GDPR Art. 30)",
        "",
        f"- **Audit trail**: {audit_log or NOT_PROVIDED}",
        "- **Lineage (SHA-256)**: "
        + (", ".join(f"{k} `{v[:16]}…`" for k, v in sorted(fps.items())) if fps else NOT_PROVIDED),
        "",
    ]
    out += [
        "## 8. Data-subject rights (GDPR Art. 17, right to erasure)",
        "",
        f"- **Erasure readiness**: {erasure or NOT_PROVIDED}",
        "",
    ]
    return "\n".join(out)


# -- bundles -------------------------------------------------------------------------------------
def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def write_manifest(
    files: Mapping[str, str | os.PathLike[str]],
    manifest: str | os.PathLike[str],
    *,
    key: bytes | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a manifest of SHA-256 hashes of ``files`` (name → path, paths stored relative to the manifest).

    With ``key`` the manifest also carries an HMAC-SHA256 signature over its entries.
    """
    mpath = Path(manifest)
    entries = []
    for name, path in sorted(files.items()):
        p = Path(path)
        if not p.is_file():
            raise InputError(f"bundle: expected a file for {name!r}, found nothing at {p}")
        try:
            rel = os.path.relpath(p.resolve(), mpath.resolve().parent)
        except ValueError:  # another drive on Windows
            rel = str(p.resolve())
        entries.append({"name": name, "path": rel, "sha256": sha256_file(p), "bytes": p.stat().st_size})
    body: dict[str, Any] = {
        "schema": "dlclinic.bundle/1",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "files": entries,
    }
    if extra:
        body["extra"] = dict(extra)
    body["digest"] = hashlib.sha256(_canonical({"files": entries, "extra": body.get("extra")})).hexdigest()
    if key is not None:
        body["signature"] = {
            "alg": "HMAC-SHA256",
            "value": hmac.new(
                key, _canonical({"files": entries, "extra": body.get("extra")}), hashlib.sha256
            ).hexdigest(),
        }
    with atomic_path(mpath) as tmp:
        tmp.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    return body


def verify_manifest(manifest: str | os.PathLike[str], *, key: bytes | None = None) -> list[str]:
    """Problems found (empty list = the bundle is intact): changed, missing or unsigned files."""
    mpath = Path(manifest)
    try:
        body = json.loads(mpath.read_text(encoding="utf-8"))
        entries = body["files"]
    except Exception as exc:
        return [f"manifest {mpath}: unreadable ({type(exc).__name__})"]
    problems = []
    payload = _canonical({"files": entries, "extra": body.get("extra")})
    if body.get("digest") != hashlib.sha256(payload).hexdigest():
        problems.append("manifest entries were edited (digest mismatch)")
    if key is not None:
        sig = (body.get("signature") or {}).get("value")
        if not sig:
            problems.append("manifest is not signed, but a key was given")
        elif not hmac.compare_digest(sig, hmac.new(key, payload, hashlib.sha256).hexdigest()):
            problems.append("signature does not match (wrong key, or the manifest was changed)")
    for e in entries:
        p = Path(e["path"])
        p = p if p.is_absolute() else mpath.resolve().parent / p
        if not p.is_file():
            problems.append(f"{e['name']}: missing ({p})")
        elif sha256_file(p) != e["sha256"]:
            problems.append(f"{e['name']}: changed (SHA-256 differs from the manifest)")
    return problems


# -- audit trail ---------------------------------------------------------------------------------
def _head_path(log: Path) -> Path:
    return log.with_name(log.name + ".head")


def _read_head(log: Path) -> dict[str, Any] | None:
    """The head anchor ``{"records": n, "sha256": hash of line n}`` written by the last append, if any."""
    try:
        head = json.loads(_head_path(log).read_text(encoding="utf-8"))
        return {"records": int(head["records"]), "sha256": str(head["sha256"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextlib.contextmanager
def _locked(log: Path, *, exclusive: bool) -> Iterator[None]:
    """An advisory ``flock`` on ``<log>.lock`` (no-op where ``fcntl`` does not exist): two checkups
    sharing a cache directory must not chain onto the same record or race on the head file."""
    try:
        import fcntl
    except ImportError:  # Windows: best effort
        yield
        return
    lock = log.with_name(log.name + ".lock")
    with open(lock, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _interrupted(lines: list[bytes], head: dict[str, Any] | None) -> bool:
    """The last append wrote its record but not the head file (a crash in between): the head lags by
    exactly one record, and that record carries the head it found — which is the head file's."""
    if head is None or head["records"] != len(lines) - 1 or not lines:
        return False
    try:
        embedded = json.loads(lines[-1]).get("head")
    except (ValueError, AttributeError):
        return False
    prev = hashlib.sha256(lines[-2]).hexdigest() if len(lines) > 1 else None
    return embedded == head and head["sha256"] == prev


def append_audit(path: str | os.PathLike[str], record: Mapping[str, Any]) -> dict[str, Any]:
    """Append ``record`` to the JSON-lines audit trail at ``path``, chained to the previous record's hash.

    The new record also carries the head anchor the previous append left (``head``), and the
    anchor is then moved to the new record, so a change to the newest record is detectable.
    Appends hold an exclusive lock on ``<path>.lock``; an append interrupted between the
    record and the head file is completed by the next one.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with _locked(p, exclusive=True):
        prev = "0" * 64
        lines: list[bytes] = []
        if p.exists():
            with open(p, "rb") as fh:
                lines = [line for line in fh.read().splitlines() if line.strip()]
            if lines:
                prev = hashlib.sha256(lines[-1]).hexdigest()
        head = _read_head(p)
        if _interrupted(lines, head):
            head = {"records": len(lines), "sha256": prev}
        entry = {
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
            **dict(record),
            "prev_sha256": prev,
        }
        if head is not None:
            entry["head"] = head
        line = json.dumps(entry, sort_keys=True, default=str)
        with open(p, "a", encoding="utf-8") as fh:  # append-only: never rewritten
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        with atomic_path(_head_path(p)) as tmp:
            tmp.write_text(
                json.dumps({"records": len(lines) + 1, "sha256": hashlib.sha256(line.encode("utf-8")).hexdigest()})
                + "\n",
                encoding="utf-8",
            )
    return entry


def verify_audit(path: str | os.PathLike[str]) -> tuple[int, list[str]]:
    """``(records, problems)``: a broken hash chain means a past record was edited or removed.

    Records that carry a ``head`` anchor must follow exactly the record it names, and the
    head file (when present) must name the newest record: otherwise the newest record of
    that time was edited, removed or appended by hand.
    """
    p = Path(path)
    if not p.exists():
        return 0, [f"no audit trail at {p}"]
    with _locked(p, exclusive=False), open(p, "rb") as fh:
        lines = [line for line in fh.read().splitlines() if line.strip()]
        head_file = _read_head(p)
    prev = "0" * 64
    anchored = False
    problems = []
    for i, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            problems.append(f"record {i}: not JSON")
            prev = hashlib.sha256(line).hexdigest()
            continue
        if entry.get("prev_sha256") != prev:
            problems.append(f"record {i}: hash chain broken (a record before it was edited, inserted or removed)")
        head = entry.get("head") if isinstance(entry, dict) else None
        anchored = anchored or isinstance(head, dict)
        if isinstance(head, dict) and (head.get("records") != i - 1 or head.get("sha256") != prev):
            problems.append(
                f"record {i}: the trail's head before it was record {head.get('records')} with another hash (the newest record was edited, removed or appended by hand before this run)"
            )
        prev = hashlib.sha256(line).hexdigest()
    if head_file is None and anchored:
        problems.append(
            f"head file {_head_path(p).name} is missing or unreadable although the trail's records are anchored to it (the newest record cannot be verified)"
        )
    elif (
        head_file is not None
        and not _interrupted(lines, head_file)
        and (head_file["records"] != len(lines) or (lines and head_file["sha256"] != prev))
    ):
        problems.append(
            f"head anchor names record {head_file['records']}, the trail has {len(lines)} (the newest record was edited, removed or appended by hand)"
        )
    return len(lines), problems
