"""ethics.compliance — the records a regulator or a data subject can ask for, and erasure readiness.

The check measures *documentation*, not the model: an intact audit trail, lineage hashes,
PII findings matched by a lawful basis, a retention policy, GDPR / EU AI Act headings
(the answers come from the user's card file, fields in
:data:`dlclinic.governance.card.COMPLIANCE_FIELDS`; a missing answer is a warning that
names the field, never a guess), and the ability to honour an erasure request (per-sample
ids plus a retraining recipe).

The audit trail (:mod:`dlclinic.governance.audit`): each run of ethics.compliance appends
one record (when, who, which inputs by SHA-256, tool versions) to ``audit_log`` (default
``<cache dir>/audit/audit.jsonl``), a hash-chained append-only file with a head anchor
beside it (so an edit to the newest record is caught too), then verifies the chain.
A card answer that is a placeholder (``TODO``, ``TBD``, ``…``) counts as missing.

The remedy (``treat ethics.compliance``) writes the technical documentation (GDPR / EU AI
Act headings), a copy of the audit trail and a manifest. With ``forget=ids.txt`` it
honours an erasure request: retrains without those rows (exact unlearning by retraining;
the SISA sharded variant of Bourtoule et al. 2021 is not implemented) and shows with the
loss-threshold membership audit that the forgotten rows now score like non-members.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dlclinic.core.case import Case, usable_inputs
from dlclinic.core.errors import ConfigError, InputError
from dlclinic.core.evidence import Evidence
from dlclinic.core.inference import predict_logits
from dlclinic.core.registry import CheckSpec, RemedySpec, TreatContext, TreatOutcome, conclude
from dlclinic.core.results import CheckResult, Finding, Remedy, Report, Status, worst
from dlclinic.functional.membership import audit_scores, loss_scores
from dlclinic.governance.audit import append_audit, audit_record, verify_audit
from dlclinic.governance.bundle import evaluation_report, need_out, read_key, save_model, write_manifest, write_text
from dlclinic.governance.card import (
    COMPLIANCE_FIELDS,
    card_config_for,
    fingerprint_rows,
    load_card_config,
    missing_fields,
)
from dlclinic.governance.documents import render_technical_documentation
from dlclinic.providers.pii import pii_sources, scan_pii_files

__all__ = [
    "CHECK",
    "REMEDY",
    "ComplianceOptions",
    "ComplianceParams",
    "forget_rows",
    "run_compliance",
    "treat_compliance",
]

ID = "ethics.compliance"


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


@dataclass
class _Items:
    """The compliance items: one row per item, its status, and a finding for each gap."""

    rows: list[list[Any]] = field(default_factory=list)
    statuses: list[Status] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    def add(self, name: str, status: Status, detail: str, code: str | None = None) -> None:
        self.rows.append([name, status, detail])
        self.statuses.append(status)
        if status != "ok" and code:
            self.findings.append(Finding(code, f"{name}: {detail}"))


def _audit_item(
    case: Case, evidence: Evidence, options: ComplianceOptions, items: _Items
) -> tuple[Path, int, list[str]]:
    """Append this run to the audit trail (when ``record_run``) and verify the chain."""
    log = Path(options.audit_log) if options.audit_log else evidence.cache_dir / "audit" / "audit.jsonl"
    if options.record_run:
        try:
            append_audit(log, audit_record(case, evidence))
        except OSError as exc:
            items.add("audit trail", "warn", f"could not append to {log}: {exc.strerror}", "audit_trail")
    n_records, problems = verify_audit(log)
    if problems and n_records:
        items.add(
            "audit trail",
            "fail",
            f"{log}: {problems[0]} ({len(problems)} problem(s) in {n_records} records)",
            "audit_tampered",
        )
    elif n_records:
        items.add("audit trail", "ok", f"{n_records} hash-chained record(s) in {log}")
    elif not any(r[0] == "audit trail" for r in items.rows):
        items.add("audit trail", "warn", f"no audit trail at {log} (record_run is off)", "audit_trail")
    return log, n_records, problems


def _pii_item(case: Case, options: ComplianceOptions, cfg: dict[str, Any], items: _Items) -> int:
    """PII found in the case's tabular/text sources must be matched by a lawful basis."""
    sources = pii_sources(case, options.pii_files)
    if not sources:
        items.rows.append(
            [
                "personal data",
                "not_examined",
                "no tabular/text source to scan (pass --option ethics.compliance.pii_files=FILE)",
            ]
        )
        return 0
    _, pii_findings, rows, totals = scan_pii_files(sources, 100_000)
    pii_total = int(sum(totals.values()))
    if pii_total and not cfg.get("lawful_basis"):
        items.add(
            "personal data",
            "warn",
            f"{pii_total} PII match(es) in {len(rows)} column(s) and no lawful basis documented (card field 'lawful_basis')",
            "pii_without_basis",
        )
    else:
        items.add(
            "personal data",
            "ok",
            f"{pii_total} PII match(es) in {len(sources)} file(s)" + ("; lawful basis documented" if pii_total else ""),
        )
    return pii_total


def _documentation_items(cfg: dict[str, Any], items: _Items) -> int:
    """Retention policy and the GDPR / AI Act headings; returns how many headings are filled."""
    if cfg.get("retention"):
        items.add("retention", "ok", str(cfg["retention"])[:120])
    else:
        items.add(
            "retention",
            "warn",
            "no retention period / deletion policy documented (card field 'retention')",
            "retention_missing",
        )
    missing = missing_fields(cfg, list(COMPLIANCE_FIELDS))
    filled = len(COMPLIANCE_FIELDS) - len(missing)
    items.add(
        "documentation headings",
        "ok" if not missing else "warn",
        f"{filled} of {len(COMPLIANCE_FIELDS)} filled" + (f"; missing: {', '.join(missing)}" if missing else ""),
        "documentation_missing",
    )
    return filled


def _erasure_item(case: Case, evidence: Evidence, items: _Items) -> bool:
    """Erasure readiness: per-sample ids on train and a retraining recipe."""
    has_ids = case.train.ids is not None
    can_retrain = evidence.retrain is not None
    if has_ids and can_retrain:
        items.add(
            "right to erasure",
            "ok",
            "per-sample ids on train and a retraining recipe: `dlclinic treat ethics.compliance --option forget=ids.txt` retrains without given ids",
        )
        return True
    why = [
        w
        for w, ok in (
            ("no per-sample ids on train (pass --id-col)", has_ids),
            ("no retraining recipe (pass --model file.py:factory)", can_retrain),
        )
        if not ok
    ]
    items.add(
        "right to erasure",
        "warn",
        "; ".join(why) + (" — row numbers can still be forgotten" if not has_ids and can_retrain else ""),
        "erasure_not_ready",
    )
    return False


def run_compliance(case: Case, evidence: Evidence, options: ComplianceOptions) -> CheckResult:
    """Audit trail, lineage, PII vs lawful basis, retention, documentation headings, erasure readiness."""
    try:
        cfg, source = card_config_for(case, options.card_config)
    except ConfigError as exc:
        return CheckResult(id=ID, status="error", summary=f"The card config could not be read: {exc}")
    cfg = cfg or {}
    items = _Items()
    log, n_records, problems = _audit_item(case, evidence, options, items)
    fps = evidence.fingerprints()
    items.add("data lineage", "ok", f"SHA-256 of model and {len(fps) - 1} split(s) recorded")
    pii_total = _pii_item(case, options, cfg, items)
    filled = _documentation_items(cfg, items)
    erasure_ready = _erasure_item(case, evidence, items)
    status = worst(items.statuses)
    gaps = [r[0] for r in items.rows if r[1] in ("warn", "fail")]
    if status == "ok":
        summary = f"Audit trail intact ({n_records} records), lineage hashed, documentation complete and erasure requests can be honoured."
    else:
        summary = (
            f"Compliance gaps: {', '.join(gaps)}"
            + ("" if source else " (no card config: pass --option ethics.compliance.card_config=card.yaml)")
            + "."
        )
    return CheckResult(
        id=ID,
        status=status,
        summary=summary,
        metrics={
            "audit_records": n_records,
            "audit_chain_intact": not problems,
            "pii_matches": pii_total,
            "documentation_fields_filled": filled,
            "erasure_ready": erasure_ready,
        },
        thresholds={},
        findings=tuple(items.findings),
        remedy=Remedy(
            command="dlclinic treat ethics.compliance"
            + (f" --option card_config={shlex.quote(source)}" if source else ""),
            description="export the audit bundle (technical documentation with GDPR / EU AI Act headings, audit trail, SHA-256 manifest); with --option forget=ids.txt retrain without those samples and show with the membership audit that they now look like non-members",
        )
        if status != "ok"
        else None,
        details={
            "tables": [
                {"title": "Compliance items", "columns": ["item", "status", "detail"], "rows": items.rows},
                {
                    "title": "Data lineage (SHA-256)",
                    "columns": ["artifact", "sha256"],
                    "rows": fingerprint_rows(evidence),
                },
            ],
            "audit_log": str(log),
        },
    )


CHECK = CheckSpec(
    id=ID,
    requires=(),
    options=ComplianceOptions,
    run=run_compliance,
    description="hash-chained audit trail, lineage hashes, PII vs lawful basis, retention, GDPR / EU AI Act documentation headings, right-to-erasure readiness",
)


# -- remedy --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ComplianceParams:
    """``forget``: a file of train ids (or row numbers) to erase; ``card_config``, ``audit_log``, ``key_file`` as for the checks."""

    forget: str | None = None
    card_config: str | None = None
    audit_log: str | None = None
    key_file: str | None = None
    evaluate: tuple[str, ...] = ("model.overfitting", "ethics.fairness", "data.privacy")


_RECORD_METRICS = ("audit_records", "documentation_fields_filled", "erasure_ready")


def forget_rows(case: Any, ids_file: str) -> np.ndarray:
    """Train rows named in ``ids_file`` (one id per line: matched against train ids, else row numbers)."""
    p = Path(ids_file)
    if not p.is_file():
        raise ConfigError(f"forget {p}: expected a text file with one sample id per line, found nothing there")
    wanted = [
        line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip() and not line.startswith("#")
    ]
    if not wanted:
        raise InputError(f"forget {p}: expected at least one id, found an empty file")
    ids = case.train.ids
    if ids is not None:
        lookup = {str(v): i for i, v in enumerate(ids.tolist())}
        unknown = [w for w in wanted if w not in lookup]
        if unknown:
            raise InputError(f"forget {p}: {len(unknown)} id(s) not in the train split, e.g. {unknown[:3]}")
        return np.array(sorted({lookup[w] for w in wanted}), dtype=np.int64)
    try:
        rows = np.array(sorted({int(w) for w in wanted}), dtype=np.int64)
    except ValueError:
        raise InputError(
            f"forget {p}: the train split has no ids (pass --id-col), so expected row numbers, found e.g. {wanted[0]!r}"
        ) from None
    if rows.min() < 0 or rows.max() >= len(case.train):
        raise InputError(
            f"forget {p}: expected row numbers in 0..{len(case.train) - 1}, found {int(rows.min())}..{int(rows.max())}"
        )
    return rows


def _loss(model: Any, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    z = predict_logits(model, usable_inputs(x)).astype(np.float64)
    z -= z.max(1, keepdims=True)
    return -(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(1)))


@dataclass
class _Erasure:
    """What honouring an erasure request produced: the retrained case, its numbers, notes and files."""

    case: Case
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)


def _erase(ctx: TreatContext, case: Case, forget: str, out: Path) -> _Erasure:
    """Retrain without the rows in ``forget``; audit their membership before and after."""
    test = case.get("test")
    if ctx.retrain is None:
        raise ConfigError(
            "treat ethics.compliance --option forget=... retrains the model: pass --model file.py:factory"
        )
    if test is None or test.y is None:
        raise ConfigError(
            "treat ethics.compliance --option forget=... needs a labelled test split (non-members for the membership audit)"
        )
    rows = forget_rows(case, forget)
    keep = np.setdiff1d(np.arange(len(case.train)), rows)
    y_tr = case.train.y
    assert y_tr is not None
    with ctx.progress.step(f"retraining without {len(rows)} forgotten row(s)", total=1) as advance:
        model = ctx.retrain(usable_inputs(case.train.x[keep]), y_tr[keep], ctx.fit_config.seed)
        advance(1)
    treated = dataclasses.replace(
        case.with_train(keep),
        model=model,
        model_source=f"{case.model_source.replace(', from cache', '')}, retrained without {len(rows)} forgotten rows",
    )
    non = _loss(case.model, test.x, test.y)
    a_before = audit_scores(
        loss_scores(_loss(case.model, case.train.x[rows], y_tr[rows])),
        loss_scores(non),
        attack="loss threshold (forgotten rows)",
    )
    a_after = audit_scores(
        loss_scores(_loss(model, case.train.x[rows], y_tr[rows])),
        loss_scores(_loss(model, test.x, test.y)),
        attack="loss threshold (forgotten rows)",
    )
    erasure = _Erasure(treated)
    erasure.before.update(forgotten_rows=len(rows), forgotten_mia_auc=a_before.auc)
    erasure.after.update(
        forgotten_rows=len(rows),
        forgotten_mia_auc=a_after.auc,
        forgotten_mia_auc_ci_low=a_after.auc_ci[0],
        forgotten_mia_auc_ci_high=a_after.auc_ci[1],
        train_rows=len(keep),
    )
    erasure.notes.append(
        f"membership AUC of the {len(rows)} forgotten rows vs the test rows: {a_before.auc:.3f} with the original model, {a_after.auc:.3f} (95 % CI {a_after.auc_ci[0]:.3f}–{a_after.auc_ci[1]:.3f}) after retraining without them; 0.5 = indistinguishable from data never seen"
    )
    erasure.notes.append(
        "exact unlearning: a full retrain without the rows (SISA shards, which retrain only the affected shard, are not implemented)"
    )
    w = save_model(model, out / "model_after_erasure.safetensors")
    if w:
        erasure.files["model_after_erasure"] = w
    erasure.files["erasure"] = write_text(
        out / "erasure_report.json",
        json.dumps(
            {
                "forgotten_train_rows": rows.tolist(),
                "auc_before": a_before.auc,
                "auc_after": a_after.auc,
                "auc_after_ci": list(a_after.auc_ci),
            },
            indent=1,
        ),
    )
    return erasure


def _audit_text(result: CheckResult, out: Path, files: dict[str, str]) -> str | None:
    """Copy the audit trail into the bundle and describe it (``None`` without a trail)."""
    log_path = result.details.get("audit_log") if isinstance(result.details, dict) else None
    if not (log_path and Path(log_path).is_file()):
        return None
    files["audit_trail"] = str(shutil.copyfile(log_path, out / "audit_trail.jsonl"))
    n, problems = verify_audit(log_path)
    return f"{n} hash-chained records ({'intact' if not problems else problems[0]}); copy in audit_trail.jsonl"


def _pii_text(case: Case) -> str | None:
    sources = pii_sources(case)
    if not sources:
        return None
    _, _, pii_rows, totals = scan_pii_files(sources, 100_000)
    return (
        f"{sum(totals.values())} match(es) in {len(pii_rows)} column(s) of {len(sources)} file(s): "
        + ", ".join(f"{k} {v}" for k, v in totals.items() if v)
        if sum(totals.values())
        else f"none found in {len(sources)} file(s)"
    )


def _erasure_text(params: ComplianceParams, result: CheckResult) -> str:
    if params.forget:
        return "erasure request executed in this bundle (see erasure_report.json)"
    if result.metrics.get("erasure_ready"):
        return "ready: ids on train and a retraining recipe"
    return "not ready: see the ethics.compliance check"


def _write_documents(
    ctx: TreatContext,
    params: ComplianceParams,
    cfg: dict[str, Any] | None,
    key: bytes | None,
    treated: Case,
    after: Report,
    files: dict[str, str],
) -> None:
    """Technical documentation, evaluation report, card file and the manifest over all ``files``."""
    out = need_out(ctx, "the audit bundle")
    report = evaluation_report(ctx, treated, params.evaluate, after)
    own = after[ctx.challenge_id]
    audit_text = _audit_text(own, out, files)
    files["technical_documentation"] = write_text(
        out / "technical_documentation.md",
        render_technical_documentation(
            report, cfg, pii_summary=_pii_text(treated), audit_log=audit_text, erasure=_erasure_text(params, own)
        ),
    )
    files["report"] = write_text(out / "evaluation_report.json", json.dumps(report.to_dict(), indent=1))
    if params.card_config:
        files["card_config"] = str(
            shutil.copyfile(params.card_config, out / f"card_config{Path(params.card_config).suffix}")
        )
    write_manifest(
        files,
        out / "manifest.json",
        key=key,
        extra={"data_sha256": dict(report.case.get("fingerprints", {}))},
    )


def treat_compliance(ctx: TreatContext, params: ComplianceParams) -> TreatOutcome:
    """Export the audit bundle; with ``forget`` retrain without those rows and audit their membership."""
    out = need_out(ctx, "the audit bundle")
    key = read_key(params.key_file)
    case = ctx.case
    cfg = load_card_config(params.card_config) if params.card_config else None
    if params.card_config:
        case = dataclasses.replace(case, metadata={**case.metadata, "card_config": params.card_config})
    before = ctx.measure(case)
    erasure = _erase(ctx, case, params.forget, out) if params.forget else _Erasure(case)
    after = ctx.measure(erasure.case)
    files = dict(erasure.files)
    _write_documents(ctx, params, cfg, key, erasure.case, after, files)
    return conclude(
        ctx,
        before=before,
        after=after,
        action=("retrain without the rows in " + Path(params.forget).name + " and " if params.forget else "")
        + f"export the audit bundle ({len(files)} files, SHA-256 manifest{', HMAC-signed' if key else ''})",
        before_values=erasure.before,
        after_values=erasure.after,
        check_metrics=_RECORD_METRICS,
        artifacts={**files, "manifest": str(out / "manifest.json")},
        notes=(*erasure.notes, f"verify with: dlclinic bundle verify {out / 'manifest.json'}"),
    )


REMEDY = RemedySpec(
    id=ID,
    params=ComplianceParams,
    run=treat_compliance,
    description="Export the audit bundle (technical documentation, audit trail, manifest); forget=ids.txt retrains without those rows and audits them.",
)
