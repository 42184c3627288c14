"""Remedies of ethics.misuse and ethics.compliance: documents, bundles, erasure.

* ``treat ethics.misuse`` writes the model card (Markdown) from the measured results
  (``evaluate``: accuracy, per-group, robustness and privacy checks) and the user's card
  file, the model weights as safetensors, the report JSON, and a SHA-256 manifest over
  all of them (HMAC-signed with ``key_file`` when given). ``dlclinic bundle verify
  OUT/manifest.json`` then detects any changed byte.
* ``treat ethics.compliance`` writes the technical documentation (GDPR / EU AI Act
  headings), a copy of the audit trail and a manifest. With ``forget=ids.txt`` it
  honours an erasure request: retrains without those rows (exact unlearning by
  retraining; the SISA sharded variant of Bourtoule et al. 2021 is not implemented) and
  shows with the loss-threshold membership audit that the forgotten rows now score like
  non-members.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dlclinic.core.errors import ConfigError, InputError
from dlclinic.core.registry import RemedySpec, TreatContext, TreatOutcome

__all__ = [
    "COMPLIANCE_REMEDY",
    "ComplianceParams",
    "MISUSE_REMEDY",
    "MisuseParams",
    "forget_rows",
    "treat_compliance",
    "treat_misuse",
]

_EVALUATE = ("model.overfitting", "ethics.fairness", "ethics.security", "data.privacy")


@dataclass(frozen=True)
class MisuseParams:
    """``card_config``: your card file; ``evaluate``: checks whose numbers go into the card; ``key_file``: HMAC key for signing."""

    card_config: str | None = None
    evaluate: tuple[str, ...] = _EVALUATE
    key_file: str | None = None


@dataclass(frozen=True)
class ComplianceParams:
    """``forget``: a file of train ids (or row numbers) to erase; ``card_config``, ``audit_log``, ``key_file`` as for the checks."""

    forget: str | None = None
    card_config: str | None = None
    audit_log: str | None = None
    key_file: str | None = None
    evaluate: tuple[str, ...] = ("model.overfitting", "ethics.fairness", "data.privacy")


def _key(path: str | None) -> bytes | None:
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"key_file {p}: expected a file holding the signing key, found nothing there")
    return p.read_bytes().strip()


def _need_out(ctx: TreatContext, what: str) -> Path:
    if ctx.out_dir is None:
        raise ConfigError(f"treat {ctx.challenge_id} writes {what}: pass --out DIR")
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    return ctx.out_dir


def _write_text(path: Path, text: str) -> str:
    from dlclinic.core.atomic import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return str(path)


def _save_model(model: Any, path: Path) -> str | None:
    if not hasattr(model, "state_dict"):
        return None
    from dlclinic.core.atomic import write_weights

    return str(write_weights(model, path))


def _evaluation_report(ctx: TreatContext, case: Any, evaluate: tuple[str, ...], after: Any) -> Any:
    """A checkup of ``evaluate`` with the treated challenge's result (from ``after``) merged in."""
    from dlclinic.api import checkup

    if not evaluate:  # nothing else to evaluate: the treated challenge's report alone
        return after
    own = after[ctx.challenge_id]
    report = checkup(
        case,
        only=list(evaluate),
        evidence_config=ctx.evidence_config,
        fit_config=ctx.fit_config,
        cache_dir=ctx.cache_dir,
        progress=ctx.progress,
    )
    return dataclasses.replace(report, challenges=tuple(own if r.id == own.id else r for r in report.challenges))


def treat_misuse(ctx: TreatContext, params: MisuseParams) -> TreatOutcome:
    """Write the model card and a signed/hashed bundle; re-measure card completeness."""
    from dlclinic.core.results import Treatment
    from dlclinic.report.model_card import load_card_config, render_model_card, write_manifest

    out = _need_out(ctx, "the model card and bundle")
    key = _key(params.key_file)
    case = ctx.case
    cfg = load_card_config(params.card_config) if params.card_config else None
    before = ctx.measure(case)
    carded = (
        dataclasses.replace(case, metadata={**case.metadata, "card_config": params.card_config})
        if params.card_config
        else case
    )
    after = ctx.measure(carded)
    report = _evaluation_report(ctx, case, params.evaluate, after)
    files: dict[str, str] = {}
    weights = _save_model(case.model, out / "model.safetensors")
    if weights:
        files["model"] = weights
    files["report"] = _write_text(out / "evaluation_report.json", json.dumps(report.to_dict(), indent=1))
    if params.card_config:
        files["card_config"] = str(
            shutil.copyfile(params.card_config, out / f"card_config{Path(params.card_config).suffix}")
        )
    from dlclinic.report.model_card import sha256_file

    card = render_model_card(report, cfg, fingerprints={f"file.{k}": sha256_file(v) for k, v in files.items()})
    files["model_card"] = _write_text(out / "model_card.md", card)
    body = write_manifest(
        files,
        out / "manifest.json",
        key=key,
        extra={"data_sha256": {k: v for k, v in report.case.get("fingerprints", {}).items()}},
    )
    rb, ra = before[ctx.challenge_id], after[ctx.challenge_id]
    treatment = Treatment(
        challenge_id=ctx.challenge_id,
        action=f"model card written from {len(params.evaluate)} measured checks"
        + (
            f" and {Path(params.card_config).name}"
            if params.card_config
            else " (no card config: user fields marked 'not provided')"
        )
        + f"; bundle of {len(files)} files hashed{' and HMAC-signed' if key else ''}",
        before={k: rb.metrics.get(k) for k in ("card_fields_documented", "card_required_missing")},
        after={
            **{k: ra.metrics.get(k) for k in ("card_fields_documented", "card_required_missing")},
            "bundle_files": len(body["files"]),
        },
        before_status=rb.status,
        after_status=ra.status,
        artifacts={**files, "manifest": str(out / "manifest.json")},
        notes=(
            f"verify the bundle with: dlclinic bundle verify {out / 'manifest.json'}"
            + (" --key-file KEY" if key else ""),
            "the card's evaluation numbers come from this run; re-run treat after retraining",
        ),
    )
    return TreatOutcome(treatment, before, after)


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
    from dlclinic.core.inference import predict_logits

    z = predict_logits(model, np.nan_to_num(x)).astype(np.float64)
    z -= z.max(1, keepdims=True)
    return -(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(1)))


def treat_compliance(ctx: TreatContext, params: ComplianceParams) -> TreatOutcome:
    """Export the audit bundle; with ``forget`` retrain without those rows and audit their membership."""
    from dlclinic.core.results import Treatment
    from dlclinic.functional.membership import audit_scores, loss_scores
    from dlclinic.providers.pii import pii_sources, scan_pii_files
    from dlclinic.report.model_card import (
        load_card_config,
        render_technical_documentation,
        verify_audit,
        write_manifest,
    )

    out = _need_out(ctx, "the audit bundle")
    key = _key(params.key_file)
    case = ctx.case
    cfg = load_card_config(params.card_config) if params.card_config else None
    if params.card_config:
        case = dataclasses.replace(case, metadata={**case.metadata, "card_config": params.card_config})
    before = ctx.measure(case)
    files: dict[str, str] = {}
    notes: list[str] = []
    before_m: dict[str, Any] = {
        k: before[ctx.challenge_id].metrics.get(k)
        for k in ("audit_records", "documentation_fields_filled", "erasure_ready")
    }
    after_m: dict[str, Any] = {}
    treated = case
    if params.forget:
        test = case.get("test")
        if ctx.retrain is None:
            raise ConfigError(
                "treat ethics.compliance --option forget=... retrains the model: pass --model file.py:factory"
            )
        if test is None or test.y is None:
            raise ConfigError(
                "treat ethics.compliance --option forget=... needs a labelled test split (non-members for the membership audit)"
            )
        rows = forget_rows(case, params.forget)
        keep = np.setdiff1d(np.arange(len(case.train)), rows)
        y_tr = case.train.y
        assert y_tr is not None
        with ctx.progress.step(f"retraining without {len(rows)} forgotten row(s)", total=1) as advance:
            model = ctx.retrain(np.nan_to_num(case.train.x[keep]), y_tr[keep], ctx.fit_config.seed)
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
        before_m.update(forgotten_rows=len(rows), forgotten_mia_auc=a_before.auc)
        after_m.update(
            forgotten_rows=len(rows),
            forgotten_mia_auc=a_after.auc,
            forgotten_mia_auc_ci_low=a_after.auc_ci[0],
            forgotten_mia_auc_ci_high=a_after.auc_ci[1],
            train_rows=len(keep),
        )
        notes.append(
            f"membership AUC of the {len(rows)} forgotten rows vs the test rows: {a_before.auc:.3f} with the original model, {a_after.auc:.3f} (95 % CI {a_after.auc_ci[0]:.3f}–{a_after.auc_ci[1]:.3f}) after retraining without them; 0.5 = indistinguishable from data never seen"
        )
        notes.append(
            "exact unlearning: a full retrain without the rows (SISA shards, which retrain only the affected shard, are not implemented)"
        )
        w = _save_model(model, out / "model_after_erasure.safetensors")
        if w:
            files["model_after_erasure"] = w
        files["erasure"] = _write_text(
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
    after = ctx.measure(treated)
    report = _evaluation_report(ctx, treated, params.evaluate, after)
    log_path = (
        after[ctx.challenge_id].details.get("audit_log") if isinstance(after[ctx.challenge_id].details, dict) else None
    )
    if log_path and Path(log_path).is_file():
        files["audit_trail"] = str(shutil.copyfile(log_path, out / "audit_trail.jsonl"))
        n, problems = verify_audit(log_path)
        audit_text = (
            f"{n} hash-chained records ({'intact' if not problems else problems[0]}); copy in audit_trail.jsonl"
        )
    else:
        audit_text = None
    sources = pii_sources(treated)
    pii_text = None
    if sources:
        _, _, pii_rows, totals = scan_pii_files(sources, 100_000)
        pii_text = (
            f"{sum(totals.values())} match(es) in {len(pii_rows)} column(s) of {len(sources)} file(s): "
            + ", ".join(f"{k} {v}" for k, v in totals.items() if v)
            if sum(totals.values())
            else f"none found in {len(sources)} file(s)"
        )
    erasure = (
        "erasure request executed in this bundle (see erasure_report.json)"
        if params.forget
        else (
            "ready: ids on train and a retraining recipe"
            if after[ctx.challenge_id].metrics.get("erasure_ready")
            else "not ready: see the ethics.compliance check"
        )
    )
    files["technical_documentation"] = _write_text(
        out / "technical_documentation.md",
        render_technical_documentation(report, cfg, pii_summary=pii_text, audit_log=audit_text, erasure=erasure),
    )
    files["report"] = _write_text(out / "evaluation_report.json", json.dumps(report.to_dict(), indent=1))
    if params.card_config:
        files["card_config"] = str(
            shutil.copyfile(params.card_config, out / f"card_config{Path(params.card_config).suffix}")
        )
    write_manifest(
        files, out / "manifest.json", key=key, extra={"data_sha256": dict(report.case.get("fingerprints", {}))}
    )
    after_m.update(
        {
            k: after[ctx.challenge_id].metrics.get(k)
            for k in ("audit_records", "documentation_fields_filled", "erasure_ready")
        }
    )
    treatment = Treatment(
        challenge_id=ctx.challenge_id,
        action=("retrain without the rows in " + Path(params.forget).name + " and " if params.forget else "")
        + f"export the audit bundle ({len(files)} files, SHA-256 manifest{', HMAC-signed' if key else ''})",
        before=before_m,
        after=after_m,
        before_status=before[ctx.challenge_id].status,
        after_status=after[ctx.challenge_id].status,
        artifacts={**files, "manifest": str(out / "manifest.json")},
        notes=(*notes, f"verify with: dlclinic bundle verify {out / 'manifest.json'}"),
    )
    return TreatOutcome(treatment, before, after)


MISUSE_REMEDY = RemedySpec(
    id="ethics.misuse",
    params=MisuseParams,
    run=treat_misuse,
    description="Write the model card from the measured results and your card file; hash (and sign) the bundle.",
)
COMPLIANCE_REMEDY = RemedySpec(
    id="ethics.compliance",
    params=ComplianceParams,
    run=treat_compliance,
    description="Export the audit bundle (technical documentation, audit trail, manifest); forget=ids.txt retrains without those rows and audits them.",
)
