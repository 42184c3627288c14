"""data.privacy — membership-inference audit and a PII scan of tabular/text sources.

Membership: train rows (members) against test rows (non-members, never trained on),
equal numbers of each, with two attacks (:mod:`dlclinic.functional.membership`): the
loss threshold, and a difficulty-calibrated attack whose reference model is trained on
one half of the test split (cheap: the case's architecture for a few epochs when the
recipe is cheap, else a logistic head on the cached embeddings), leaving the other half
as audited non-members. A leak counts only when the AUC is significantly above 0.5
(one-sided, Bonferroni over the two attacks: false-alarm rate ≤ ``alpha`` = 5 % on a
model that does not leak) *and* above the threshold, or when the TPR at the lowest
resolvable FPR is, even at its lower confidence bound, several times that FPR.

PII: CSV/TSV/Parquet/JSON-lines/text files given in ``pii_files`` and the case's own
CSV/Parquet sources are scanned column by column (:mod:`dlclinic.functional.pii`);
counts only, never the values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dlclinic.core.case import Case
from dlclinic.core.evidence import Evidence
from dlclinic.core.registry import CheckSpec
from dlclinic.core.results import CheckResult, Finding, Remedy, Status, worst
from dlclinic.providers.pii import pii_sources, scan_pii_files

__all__ = ["CHECK", "PrivacyOptions", "membership_audits", "run"]

ID = "data.privacy"


@dataclass(frozen=True)
class PrivacyOptions:
    """Audit size and thresholds.

    Attributes:
        max_audit: at most this many members and as many non-members are audited.
        reference: calibrated attack's reference: ``auto`` (a model of the case's
            architecture when its recipe is cheap, else ``embeddings``), ``model``,
            ``embeddings`` or ``none``.
        reference_epochs: epochs of the reference model (small on purpose).
        warn_auc / fail_auc: attack AUC limits (when significant).
        target_fpr: the low false-positive rate of interest (0.1 %).
        low_fpr_lift: warn when the TPR's lower bound exceeds this multiple of the FPR bound.
        alpha: false-alarm level for the membership verdict.
        pii_files: extra files to scan for PII (comma-separated on the command line).
        pii_max_rows: rows read per file.
    """

    max_audit: int = 1000
    reference: str = "auto"
    reference_epochs: int = 4
    warn_auc: float = 0.6
    fail_auc: float = 0.75
    target_fpr: float = 0.001
    low_fpr_lift: float = 5.0
    alpha: float = 0.05
    pii_files: tuple[str, ...] = ()
    pii_max_rows: int = 100_000
    seed: int = 0

    def __post_init__(self) -> None:
        from dlclinic.core.errors import ConfigError

        if self.reference not in ("auto", "model", "embeddings", "none"):
            raise ConfigError(f"reference must be 'auto', 'model', 'embeddings' or 'none', but got {self.reference!r}")


def _per_sample_ce(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return -logp[np.arange(len(y)), y]


def _reference_losses(
    case: Case,
    evidence: Evidence,
    kind: str,
    ref_rows: np.ndarray,
    member_rows: np.ndarray,
    non_rows: np.ndarray,
    options: PrivacyOptions,
) -> dict[str, np.ndarray]:
    """Losses of a reference model (trained on test rows ``ref_rows``) on audited members and non-members."""
    test, train = case.splits["test"], case.train
    assert test.y is not None and train.y is not None
    if kind == "model":
        from dataclasses import replace

        from dlclinic.core.inference import predict_logits
        from dlclinic.core.recipe import FitConfig, fit, seed_everything

        seed_everything(options.seed)
        base = getattr(evidence, "fit_config", None) or FitConfig()  # the case's recipe, shortened
        cfg = replace(base, epochs=options.reference_epochs, seed=options.seed)
        ref = fit(case.model_factory(), np.nan_to_num(test.x[ref_rows]), test.y[ref_rows], cfg).model
        lm = _per_sample_ce(
            predict_logits(ref, np.nan_to_num(train.x[member_rows])).astype(np.float64), train.y[member_rows]
        )
        ln = _per_sample_ce(predict_logits(ref, np.nan_to_num(test.x[non_rows])).astype(np.float64), test.y[non_rows])
    else:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        e_tr, e_te = evidence.get("embeddings", "train"), evidence.get("embeddings", "test")
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300))
        clf.fit(e_te[ref_rows], test.y[ref_rows])
        k = case.n_classes

        def losses(emb: np.ndarray, y: np.ndarray) -> np.ndarray:
            proba = np.full((len(emb), k), 1e-6)
            proba[:, clf.classes_] = clf.predict_proba(emb)
            proba /= proba.sum(1, keepdims=True)
            return -np.log(np.clip(proba[np.arange(len(y)), y], 1e-12, 1.0))

        lm, ln = losses(e_tr[member_rows], train.y[member_rows]), losses(e_te[non_rows], test.y[non_rows])
    return {"members": lm, "nonmembers": ln}


def membership_audits(case: Case, evidence: Evidence, options: PrivacyOptions) -> tuple[list[Any], str, dict[str, Any]]:
    """Run the loss and calibrated attacks; returns the audits, the reference kind and plot data."""
    from dlclinic.functional.membership import audit_scores, calibrated_scores, loss_scores

    test, train = case.splits["test"], case.train
    rng = np.random.default_rng(options.seed)
    l_tr, l_te = evidence.get("losses", "train"), evidence.get("losses", "test")
    n = min(len(train), len(test), options.max_audit)
    members = np.sort(rng.choice(len(train), n, replace=False))
    nonmembers = np.sort(rng.choice(len(test), n, replace=False))
    audits = [
        audit_scores(
            loss_scores(l_tr[members]),
            loss_scores(l_te[nonmembers]),
            attack="loss threshold",
            target_fpr=options.target_fpr,
        )
    ]
    kind = options.reference
    if kind == "auto":
        kind = "model" if (evidence.cheap_retrain and case.model_factory is not None) else "embeddings"
    if kind == "model" and case.model_factory is None:
        kind = "embeddings"
    if kind == "embeddings" and not evidence.available("embeddings", "test"):
        kind = "none"
    if kind != "none" and len(test) >= 40:
        perm = rng.permutation(len(test))
        half = len(test) // 2
        ref_rows, non_rows = np.sort(perm[:half]), np.sort(perm[half:])
        non_rows = non_rows[: options.max_audit]
        mem_rows = np.sort(rng.choice(len(train), min(len(non_rows), len(train)), replace=False))
        ref = evidence.cached(
            "data.privacy.reference",
            {"kind": kind, "epochs": options.reference_epochs, "seed": options.seed, "max": options.max_audit, "v": 1},
            lambda: _reference_losses(case, evidence, kind, ref_rows, mem_rows, non_rows, options),
        )
        audits.append(
            audit_scores(
                calibrated_scores(l_tr[mem_rows], ref["members"]),
                calibrated_scores(l_te[non_rows], ref["nonmembers"]),
                attack=f"calibrated ({'reference model' if kind == 'model' else 'reference head on embeddings'})",
                target_fpr=options.target_fpr,
            )
        )
    plot = {
        "kind": "line",
        "title": "Membership-inference ROC (log FPR)",
        "xlabel": "false-positive rate",
        "ylabel": "true-positive rate",
        "xscale": "log",
        "series": [
            {
                "label": f"{a.attack} (AUC {a.auc:.3f})",
                "x": np.clip(a.roc_fpr, 1e-4, 1).tolist(),
                "y": a.roc_tpr.tolist(),
            }
            for a in audits
        ]
        + [{"label": "chance", "x": [1e-4, 1.0], "y": [1e-4, 1.0]}],
    }
    return audits, kind, plot


def run(case: Case, evidence: Evidence, options: PrivacyOptions) -> CheckResult:
    """Membership-inference audit (train vs test) and PII scan of the tabular/text sources."""
    from dlclinic.functional.pii import KINDS

    statuses: list[Status] = []
    findings: list[Finding] = []
    metrics: dict[str, Any] = {}
    plots: list[dict[str, Any]] = []
    tables: list[dict[str, Any]] = []
    notes: list[str] = []
    bits: list[str] = []
    test = case.get("test")
    if test is not None and test.labelled and len(test) >= 10:
        audits, kind, plot = membership_audits(case, evidence, options)
        plots.append(plot)
        alpha = options.alpha / len(audits)
        strongest = max(audits, key=lambda a: a.auc)
        for a in audits:
            st: Status = "ok"
            if a.auc_p < alpha:
                st = "fail" if a.auc >= options.fail_auc else "warn" if a.auc >= options.warn_auc else "ok"
            fpr_ref = max(a.target_fpr, a.fpr_upper_bound)
            low_fpr_leak = a.tpr_ci[0] > options.low_fpr_lift * fpr_ref
            if st == "ok" and low_fpr_leak:
                st = "warn"
            statuses.append(st)
            if st != "ok":
                findings.append(
                    Finding(
                        "membership",
                        f"{a.attack}: AUC {a.auc:.3f} (95 % CI {a.auc_ci[0]:.3f}–{a.auc_ci[1]:.3f}, p = {a.auc_p:.2g}); TPR {a.tpr:.1%} at FPR ≤ {fpr_ref:.2%} on {a.n_members} members vs {a.n_nonmembers} non-members",
                    )
                )
        tables.append(
            {
                "title": "Membership-inference audit (train = members, test = non-members)",
                "columns": [
                    "attack",
                    "members",
                    "non-members",
                    "AUC",
                    "AUC 95 % CI",
                    "p (AUC > 0.5)",
                    "TPR @ low FPR",
                    "TPR 95 % CI",
                    "FPR used",
                    "FPR upper bound",
                    "advantage",
                ],
                "rows": [
                    [
                        a.attack,
                        a.n_members,
                        a.n_nonmembers,
                        round(a.auc, 4),
                        f"{a.auc_ci[0]:.3f}–{a.auc_ci[1]:.3f}",
                        float(f"{a.auc_p:.3g}"),
                        round(a.tpr, 4),
                        f"{a.tpr_ci[0]:.3f}–{a.tpr_ci[1]:.3f}",
                        a.fpr_used,
                        round(a.fpr_upper_bound, 4),
                        round(a.advantage, 4),
                    ]
                    for a in audits
                ],
            }
        )
        loss_a = audits[0]
        metrics.update(
            mia_auc_loss=loss_a.auc,
            mia_auc_loss_ci_low=loss_a.auc_ci[0],
            mia_auc_loss_ci_high=loss_a.auc_ci[1],
            mia_auc_calibrated=audits[1].auc if len(audits) > 1 else None,
            mia_auc=strongest.auc,
            mia_auc_p=strongest.auc_p,
            mia_tpr_at_low_fpr=strongest.tpr,
            mia_low_fpr=max(strongest.target_fpr, strongest.fpr_upper_bound),
            mia_fpr_resolvable=strongest.fpr_resolvable,
            mia_advantage=strongest.advantage,
            mia_members=strongest.n_members,
        )
        if not strongest.fpr_resolvable:
            notes.append(
                f"TPR at {options.target_fpr:.1%} FPR needs ≥ {int(np.ceil(1 / options.target_fpr))} non-members; with {strongest.n_nonmembers} the lowest certifiable FPR is {strongest.fpr_upper_bound:.2%}"
            )
        bits.append(
            f"membership-inference AUC {strongest.auc:.3f} ({strongest.attack}, p = {strongest.auc_p:.2g}), TPR {strongest.tpr:.1%} at FPR ≤ {max(strongest.target_fpr, strongest.fpr_upper_bound):.2%}"
        )
        if kind == "none":
            notes.append("calibrated attack not run (no reference available)")
    else:
        notes.append("membership not audited: needs a labelled test split (non-members)")
    sources = pii_sources(case, options.pii_files)
    if sources:
        st, fnd, rows, totals = scan_pii_files(sources, options.pii_max_rows)
        statuses.append(st)
        findings += fnd
        metrics["pii_files_scanned"] = len(sources)
        metrics["pii_matches"] = int(sum(totals.values()))
        metrics["pii_columns_flagged"] = len(rows)
        for k, v in totals.items():
            metrics[f"pii_{k}"] = v
        if rows:
            tables.append(
                {
                    "title": "PII found per column (counts only; values never shown)",
                    "columns": ["file", "column", "rows with PII", *KINDS],
                    "rows": rows,
                }
            )
        bits.append(
            f"{len(rows)} column(s) with PII in {len(sources)} file(s)"
            if rows
            else f"no PII pattern in {len(sources)} file(s)"
        )
    else:
        notes.append("no tabular/text source to scan for PII (pass --option data.privacy.pii_files=FILE.csv)")
    if not statuses:
        return CheckResult(id=ID, status="not_examined", summary="Nothing to examine: " + "; ".join(notes) + ".")
    status = worst(statuses)
    summary = "; ".join(bits) + "."
    summary = summary[:1].upper() + summary[1:]
    if notes:
        summary += " Note: " + "; ".join(notes) + "."
    remedy = None
    if status in ("warn", "fail"):
        if any(f.code == "membership" for f in findings):
            remedy = Remedy(
                command=f"dlclinic treat data.privacy {case.metadata.get('cli_args', '<data options>')} --option target_epsilon=8".strip(),
                description="retrain with DP-SGD (opacus) at a target (ε, δ), then re-run the membership audit and compare accuracy",
            )
        else:
            remedy = Remedy(
                command=None,
                description="remove or pseudonymise the flagged columns before training (hash or tokenise identifiers, drop free-text contact details)",
            )
    return CheckResult(
        id=ID,
        status=status,
        summary=summary,
        metrics=metrics,
        thresholds={
            "mia_auc.warn": options.warn_auc,
            "mia_auc.fail": options.fail_auc,
            "mia_auc_p.max": options.alpha,
            "low_fpr_lift": options.low_fpr_lift,
            "target_fpr": options.target_fpr,
        },
        findings=tuple(findings),
        remedy=remedy,
        details={"plots": plots, "tables": tables, "notes": notes},
    )


CHECK = CheckSpec(
    id=ID,
    requires=(("losses", "train"), ("losses", "test")),
    options=PrivacyOptions,
    run=run,
    description="membership-inference audit (loss and difficulty-calibrated attacks: AUC, TPR at low FPR) and a PII scan of tabular/text sources",
)
