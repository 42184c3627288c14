"""ethics.misuse and ethics.compliance — documentation, fingerprints, audit trail, erasure readiness.

These checks measure *documentation*, not the model: whether the intended use and
out-of-scope uses are written down (misuse), and whether the records a regulator or a
data subject can ask for exist (compliance): an intact audit trail, lineage hashes, PII
findings matched by a lawful basis, a retention policy, GDPR / EU AI Act headings, and
the ability to honour an erasure request (per-sample ids plus a retraining recipe).
The user's answers come from a small JSON/YAML/TOML file (``card_config``; fields in
:data:`dlclinic.report.model_card.CARD_FIELDS` and ``COMPLIANCE_FIELDS``); a missing
answer is a warning that names the field, never a guess.

The audit trail: each run of ethics.compliance appends one record (when, who, which
inputs by SHA-256, tool versions) to ``audit_log`` (default
``<cache dir>/audit/audit.jsonl``), a hash-chained append-only file with a head anchor
beside it (so an edit to the newest record is caught too), then verifies the chain.
A card answer that is a placeholder (``TODO``, ``TBD``, ``…``) counts as missing.
"""

from __future__ import annotations

import getpass
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlclinic.core.case import Case
from dlclinic.core.errors import ConfigError
from dlclinic.core.evidence import Evidence
from dlclinic.core.registry import CheckSpec
from dlclinic.core.results import CheckResult, Finding, Remedy, Status, worst

__all__ = [
    "COMPLIANCE_CHECK",
    "ComplianceOptions",
    "MISUSE_CHECK",
    "MisuseOptions",
    "card_config_for",
    "run_compliance",
    "run_misuse",
]

HOW_TO_CARD = "write a small card file (JSON/YAML/TOML) with intended_use, out_of_scope, data_provenance, owner (and limitations, risks, license) and pass --option ethics.misuse.card_config=card.yaml"


@dataclass(frozen=True)
class MisuseOptions:
    """``card_config``: path to the user's card fields (JSON/YAML/TOML)."""

    card_config: str | None = None


@dataclass(frozen=True)
class ComplianceOptions:
    """Compliance inputs.

    Attributes:
        card_config: the same card file, with the compliance fields (lawful_basis,
            retention, data_controller, dpia, human_oversight, risk_management,
            post_market_monitoring).
        audit_log: the audit trail (default ``<cache dir>/audit/audit.jsonl``).
        record_run: append this run to the audit trail.
        pii_files: tabular/text files to scan for personal data (besides the case's own).
    """

    card_config: str | None = None
    audit_log: str | None = None
    record_run: bool = True
    pii_files: tuple[str, ...] = ()


def card_config_for(case: Case, path: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """The card config from ``path`` or ``case.metadata["card_config"]``, and where it came from."""
    from dlclinic.report.model_card import load_card_config

    source = path or (case.metadata.get("card_config") if isinstance(case.metadata.get("card_config"), str) else None)
    if not source:
        return None, None
    return load_card_config(source), str(source)


def _fingerprint_rows(evidence: Evidence) -> list[list[str]]:
    return [[k, v] for k, v in sorted(evidence.fingerprints().items())]


def run_misuse(case: Case, evidence: Evidence, options: MisuseOptions) -> CheckResult:
    """Completeness of the model card's user-provided fields, and the artifact fingerprints."""
    from dlclinic.report.model_card import CARD_FIELDS, REQUIRED_CARD_FIELDS, missing_fields

    try:
        cfg, source = card_config_for(case, options.card_config)
    except ConfigError as exc:
        return CheckResult(id="ethics.misuse", status="error", summary=f"The card config could not be read: {exc}")
    tables = [
        {
            "title": "Artifact fingerprints (SHA-256)",
            "columns": ["artifact", "sha256"],
            "rows": _fingerprint_rows(evidence),
        }
    ]
    remedy = Remedy(
        command=f"dlclinic treat ethics.misuse {case.metadata.get('cli_args', '<data options>')} --option card_config=card.yaml".strip(),
        description="generate the model card (Markdown) from the measured results and your card file, and a SHA-256 manifest bundle of model, data, config and report (`dlclinic bundle verify` detects any change)",
    )
    if cfg is None:
        return CheckResult(
            id="ethics.misuse",
            status="warn",
            summary=f"Intended use and out-of-scope uses are undocumented, so misuse cannot be ruled out; {HOW_TO_CARD}.",
            metrics={"card_fields_documented": 0, "card_required_missing": len(REQUIRED_CARD_FIELDS)},
            thresholds={"card_required_missing.max": 0},
            findings=(
                Finding(
                    "undocumented_use",
                    "no model card config: intended use, out-of-scope uses, data provenance and owner are unknown",
                ),
            ),
            remedy=remedy,
            details={"tables": tables},
        )
    missing_req = missing_fields(cfg, REQUIRED_CARD_FIELDS)
    optional = [f for f in CARD_FIELDS if f not in REQUIRED_CARD_FIELDS]
    missing_opt = missing_fields(cfg, optional)
    documented = len(CARD_FIELDS) - len(missing_req) - len(missing_opt)
    status: Status = "warn" if missing_req else "ok"
    findings = [
        Finding("card_field_missing", f"card field {f!r} ({CARD_FIELDS[f]}) is required and missing in {source}")
        for f in missing_req
    ]
    if status == "ok":
        summary = (
            f"The model card documents intended use, out-of-scope uses, data provenance and owner ({documented} of {len(CARD_FIELDS)} fields in {Path(source or '').name})"
            + (f"; optional fields missing: {', '.join(missing_opt)}." if missing_opt else ".")
        )
    else:
        summary = f"The model card is incomplete: {', '.join(missing_req)} missing in {Path(source or '').name}."
    rows = [
        [
            CARD_FIELDS[f],
            "yes" if f not in missing_req + missing_opt else ("MISSING (required)" if f in missing_req else "missing"),
        ]
        for f in CARD_FIELDS
    ]
    tables.insert(0, {"title": f"Model card fields ({source})", "columns": ["field", "provided"], "rows": rows})
    return CheckResult(
        id="ethics.misuse",
        status=status,
        summary=summary,
        metrics={"card_fields_documented": documented, "card_required_missing": len(missing_req)},
        thresholds={"card_required_missing.max": 0},
        findings=tuple(findings),
        remedy=remedy,
        details={"tables": tables},
    )


def _audit_record(case: Case, evidence: Evidence) -> dict[str, Any]:
    from dlclinic import __version__

    try:
        user = getpass.getuser()
    except Exception:  # no login name in some containers
        user = "unknown"
    versions: dict[str, Any] = {"dlclinic": __version__, "python": platform.python_version()}
    try:
        import torch

        versions["torch"] = torch.__version__
    except Exception:  # pragma: no cover
        pass
    return {
        "event": "checkup",
        "who": user,
        "host": platform.node(),
        "case": case.name,
        "cli_args": case.metadata.get("cli_args"),
        "model_source": case.model_source,
        "inputs_sha256": evidence.fingerprints(),
        "versions": versions,
    }


def run_compliance(case: Case, evidence: Evidence, options: ComplianceOptions) -> CheckResult:
    """Audit trail, lineage, PII vs lawful basis, retention, documentation headings, erasure readiness."""
    from dlclinic.providers.pii import pii_sources, scan_pii_files
    from dlclinic.report.model_card import COMPLIANCE_FIELDS, append_audit, missing_fields, verify_audit

    try:
        cfg, source = card_config_for(case, options.card_config)
    except ConfigError as exc:
        return CheckResult(id="ethics.compliance", status="error", summary=f"The card config could not be read: {exc}")
    cfg = cfg or {}
    items: list[list[Any]] = []
    statuses: list[Status] = []
    findings: list[Finding] = []

    def item(name: str, status: Status, detail: str, code: str | None = None) -> None:
        items.append([name, status, detail])
        statuses.append(status)
        if status != "ok" and code:
            findings.append(Finding(code, f"{name}: {detail}"))

    log = Path(options.audit_log) if options.audit_log else evidence.cache_dir / "audit" / "audit.jsonl"
    if options.record_run:
        try:
            append_audit(log, _audit_record(case, evidence))
        except OSError as exc:
            item("audit trail", "warn", f"could not append to {log}: {exc.strerror}", "audit_trail")
    n_records, problems = verify_audit(log)
    if problems and n_records:
        item(
            "audit trail",
            "fail",
            f"{log}: {problems[0]} ({len(problems)} problem(s) in {n_records} records)",
            "audit_tampered",
        )
    elif n_records:
        item("audit trail", "ok", f"{n_records} hash-chained record(s) in {log}")
    elif not any(r[0] == "audit trail" for r in items):
        item("audit trail", "warn", f"no audit trail at {log} (record_run is off)", "audit_trail")
    fps = evidence.fingerprints()
    item("data lineage", "ok", f"SHA-256 of model and {len(fps) - 1} split(s) recorded")
    sources = pii_sources(case, options.pii_files)
    pii_total = 0
    if sources:
        _, pii_findings, rows, totals = scan_pii_files(sources, 100_000)
        pii_total = int(sum(totals.values()))
        if pii_total and not cfg.get("lawful_basis"):
            item(
                "personal data",
                "warn",
                f"{pii_total} PII match(es) in {len(rows)} column(s) and no lawful basis documented (card field 'lawful_basis')",
                "pii_without_basis",
            )
        else:
            item(
                "personal data",
                "ok",
                f"{pii_total} PII match(es) in {len(sources)} file(s)"
                + ("; lawful basis documented" if pii_total else ""),
            )
    else:
        items.append(
            [
                "personal data",
                "not_examined",
                "no tabular/text source to scan (pass --option ethics.compliance.pii_files=FILE)",
            ]
        )
    if cfg.get("retention"):
        item("retention", "ok", str(cfg["retention"])[:120])
    else:
        item(
            "retention",
            "warn",
            "no retention period / deletion policy documented (card field 'retention')",
            "retention_missing",
        )
    missing = missing_fields(cfg, list(COMPLIANCE_FIELDS))
    filled = len(COMPLIANCE_FIELDS) - len(missing)
    item(
        "documentation headings",
        "ok" if not missing else "warn",
        f"{filled} of {len(COMPLIANCE_FIELDS)} filled" + (f"; missing: {', '.join(missing)}" if missing else ""),
        "documentation_missing",
    )
    has_ids = case.train.ids is not None
    can_retrain = evidence.retrain is not None
    if has_ids and can_retrain:
        item(
            "right to erasure",
            "ok",
            "per-sample ids on train and a retraining recipe: `dlclinic treat ethics.compliance --option forget=ids.txt` retrains without given ids",
        )
    else:
        why = [
            w
            for w, ok in (
                ("no per-sample ids on train (pass --id-col)", has_ids),
                ("no retraining recipe (pass --model file.py:factory)", can_retrain),
            )
            if not ok
        ]
        item(
            "right to erasure",
            "warn",
            "; ".join(why) + (" — row numbers can still be forgotten" if not has_ids and can_retrain else ""),
            "erasure_not_ready",
        )
    status = worst(statuses)
    gaps = [r[0] for r in items if r[1] in ("warn", "fail")]
    if status == "ok":
        summary = f"Audit trail intact ({n_records} records), lineage hashed, documentation complete and erasure requests can be honoured."
    else:
        summary = (
            f"Compliance gaps: {', '.join(gaps)}"
            + ("" if source else " (no card config: pass --option ethics.compliance.card_config=card.yaml)")
            + "."
        )
    return CheckResult(
        id="ethics.compliance",
        status=status,
        summary=summary,
        metrics={
            "audit_records": n_records,
            "audit_chain_intact": not problems,
            "pii_matches": pii_total,
            "documentation_fields_filled": filled,
            "erasure_ready": has_ids and can_retrain,
        },
        thresholds={},
        findings=tuple(findings),
        remedy=Remedy(
            command=f"dlclinic treat ethics.compliance {case.metadata.get('cli_args', '<data options>')} --option card_config=card.yaml".strip(),
            description="export the audit bundle (technical documentation with GDPR / EU AI Act headings, audit trail, SHA-256 manifest); with --option forget=ids.txt retrain without those samples and show with the membership audit that they now look like non-members",
        )
        if status != "ok"
        else None,
        details={
            "tables": [
                {"title": "Compliance items", "columns": ["item", "status", "detail"], "rows": items},
                {
                    "title": "Data lineage (SHA-256)",
                    "columns": ["artifact", "sha256"],
                    "rows": _fingerprint_rows(evidence),
                },
            ],
            "audit_log": str(log),
        },
    )


MISUSE_CHECK = CheckSpec(
    id="ethics.misuse",
    requires=(),
    options=MisuseOptions,
    run=run_misuse,
    description="model-card completeness against the user's card file (intended use, out-of-scope uses, provenance, owner) and SHA-256 artifact fingerprints",
)
COMPLIANCE_CHECK = CheckSpec(
    id="ethics.compliance",
    requires=(),
    options=ComplianceOptions,
    run=run_compliance,
    description="hash-chained audit trail, lineage hashes, PII vs lawful basis, retention, GDPR / EU AI Act documentation headings, right-to-erasure readiness",
)
