"""ethics.misuse — is the intended use written down, and are the artifacts fingerprinted?

The check measures *documentation*, not the model: whether the intended use and
out-of-scope uses, data provenance and owner are written down in the user's small card
file (``card_config``, JSON/YAML/TOML; fields in :data:`dlclinic.governance.card.CARD_FIELDS`).
A missing answer is a warning that names the field, never a guess; a placeholder answer
(``TODO``, ``TBD``, ``…``) counts as missing. The SHA-256 fingerprints of model and splits
are listed too.

The remedy (``treat ethics.misuse``) writes the model card (Markdown) from the measured
results (``evaluate``: accuracy, per-group, robustness and privacy checks) and the user's
card file, the model weights as safetensors, the report JSON, and a SHA-256 manifest over
all of them (HMAC-signed with ``key_file`` when given). ``dlclinic bundle verify
OUT/manifest.json`` then detects any changed byte.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlclinic.core.case import Case
from dlclinic.core.errors import ConfigError
from dlclinic.core.evidence import Evidence
from dlclinic.core.registry import CheckSpec, RemedySpec, TreatContext, TreatOutcome, conclude
from dlclinic.core.results import CheckResult, Finding, Remedy, Status
from dlclinic.governance.bundle import (
    evaluation_report,
    need_out,
    read_key,
    save_model,
    sha256_file,
    write_manifest,
    write_text,
)
from dlclinic.governance.card import (
    CARD_FIELDS,
    REQUIRED_CARD_FIELDS,
    card_config_for,
    fingerprint_rows,
    load_card_config,
    missing_fields,
)
from dlclinic.governance.documents import render_model_card

__all__ = ["CHECK", "REMEDY", "MisuseOptions", "MisuseParams", "run_misuse", "treat_misuse"]

ID = "ethics.misuse"
HOW_TO_CARD = "write a small card file (JSON/YAML/TOML) with intended_use, out_of_scope, data_provenance, owner (and limitations, risks, license) and pass --option ethics.misuse.card_config=card.yaml"
_EVALUATE = ("model.overfitting", "ethics.fairness", "ethics.security", "data.privacy")


@dataclass(frozen=True)
class MisuseOptions:
    """``card_config``: path to the user's card fields (JSON/YAML/TOML)."""

    card_config: str | None = None


def _undocumented(tables: list[dict[str, Any]], remedy: Remedy) -> CheckResult:
    return CheckResult(
        id=ID,
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


def run_misuse(case: Case, evidence: Evidence, options: MisuseOptions) -> CheckResult:
    """Completeness of the model card's user-provided fields, and the artifact fingerprints."""
    try:
        cfg, source = card_config_for(case, options.card_config)
    except ConfigError as exc:
        return CheckResult(id=ID, status="error", summary=f"The card config could not be read: {exc}")
    tables = [
        {
            "title": "Artifact fingerprints (SHA-256)",
            "columns": ["artifact", "sha256"],
            "rows": fingerprint_rows(evidence),
        }
    ]
    remedy = Remedy(
        command="dlclinic treat ethics.misuse" + (f" --option card_config={shlex.quote(source)}" if source else ""),
        description="generate the model card (Markdown) from the measured results and your card file, and a SHA-256 manifest bundle of model, data, config and report (`dlclinic bundle verify` detects any change)",
    )
    if cfg is None:
        return _undocumented(tables, remedy)
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
        id=ID,
        status=status,
        summary=summary,
        metrics={"card_fields_documented": documented, "card_required_missing": len(missing_req)},
        thresholds={"card_required_missing.max": 0},
        findings=tuple(findings),
        remedy=remedy,
        details={"tables": tables},
    )


CHECK = CheckSpec(
    id=ID,
    requires=(),
    options=MisuseOptions,
    run=run_misuse,
    description="model-card completeness against the user's card file (intended use, out-of-scope uses, provenance, owner) and SHA-256 artifact fingerprints",
)


# -- remedy --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MisuseParams:
    """``card_config``: your card file; ``evaluate``: checks whose numbers go into the card; ``key_file``: HMAC key for signing."""

    card_config: str | None = None
    evaluate: tuple[str, ...] = _EVALUATE
    key_file: str | None = None


def treat_misuse(ctx: TreatContext, params: MisuseParams) -> TreatOutcome:
    """Write the model card and a signed/hashed bundle; re-measure card completeness."""
    out = need_out(ctx, "the model card and bundle")
    key = read_key(params.key_file)
    case = ctx.case
    cfg = load_card_config(params.card_config) if params.card_config else None
    before = ctx.measure(case)
    carded = (
        dataclasses.replace(case, metadata={**case.metadata, "card_config": params.card_config})
        if params.card_config
        else case
    )
    after = ctx.measure(carded)
    report = evaluation_report(ctx, case, params.evaluate, after)
    files: dict[str, str] = {}
    weights = save_model(case.model, out / "model.safetensors")
    if weights:
        files["model"] = weights
    files["report"] = write_text(out / "evaluation_report.json", json.dumps(report.to_dict(), indent=1))
    if params.card_config:
        files["card_config"] = str(
            shutil.copyfile(params.card_config, out / f"card_config{Path(params.card_config).suffix}")
        )
    card = render_model_card(report, cfg, fingerprints={f"file.{k}": sha256_file(v) for k, v in files.items()})
    files["model_card"] = write_text(out / "model_card.md", card)
    body = write_manifest(
        files,
        out / "manifest.json",
        key=key,
        extra={"data_sha256": {k: v for k, v in report.case.get("fingerprints", {}).items()}},
    )
    return conclude(
        ctx,
        before=before,
        after=after,
        action=f"model card written from {len(params.evaluate)} measured checks"
        + (
            f" and {Path(params.card_config).name}"
            if params.card_config
            else " (no card config: user fields marked 'not provided')"
        )
        + f"; bundle of {len(files)} files hashed{' and HMAC-signed' if key else ''}",
        after_values={"bundle_files": len(body["files"])},
        check_metrics=("card_fields_documented", "card_required_missing"),
        artifacts={**files, "manifest": str(out / "manifest.json")},
        notes=(
            f"verify the bundle with: dlclinic bundle verify {out / 'manifest.json'}"
            + (" --key-file KEY" if key else ""),
            "the card's evaluation numbers come from this run; re-run treat after retraining",
        ),
    )


REMEDY = RemedySpec(
    id=ID,
    params=MisuseParams,
    run=treat_misuse,
    description="Write the model card from the measured results and your card file; hash (and sign) the bundle.",
)
