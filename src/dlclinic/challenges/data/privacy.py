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

Remedy: DP-SGD retraining with opacus at a target (ε, δ), then the audit again.

DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy") clips every
per-sample gradient to ``max_grad_norm`` and adds Gaussian noise calibrated by opacus'
accountant (RDP) so that the whole training run is (ε, δ)-differentially private with
respect to one training row. δ defaults to ``1 / (10 n)``, below the 1/n that would
allow leaking one full row. The ε *actually spent* is read back from the accountant and
reported.

opacus needs per-sample gradients, which BatchNorm does not allow (it mixes samples):
``opacus.validators.ModuleValidator.fix`` replaces BatchNorm with GroupNorm, and the
treatment notes say so. The treated model therefore has a slightly different architecture;
its weights are saved as safetensors together with that fact.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dlclinic.core import distributed
from dlclinic.core.atomic import write_json, write_weights
from dlclinic.core.case import Case, usable_inputs
from dlclinic.core.device import on_device
from dlclinic.core.errors import ConfigError, MissingDependencyError
from dlclinic.core.evidence import Evidence
from dlclinic.core.inference import input_tensor, model_device, predict_logits
from dlclinic.core.recipe import FitConfig, fit, prepare_inputs, seed_everything
from dlclinic.core.registry import CheckSpec, RemedySpec, TreatContext, TreatOutcome, conclude
from dlclinic.core.results import CheckResult, Finding, Remedy, Status, worst
from dlclinic.functional.membership import audit_scores, calibrated_scores, loss_scores
from dlclinic.functional.pii import KINDS
from dlclinic.providers.pii import pii_sources, scan_pii_files

__all__ = ["CHECK", "REMEDY", "DPParams", "PrivacyOptions", "dp_fit", "membership_audits", "run", "treat_privacy"]

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
        seed_everything(options.seed)
        base = getattr(evidence, "fit_config", None) or FitConfig()  # the case's recipe, shortened
        cfg = replace(base, epochs=options.reference_epochs, seed=options.seed)
        ref = fit(case.model_factory(), usable_inputs(test.x[ref_rows]), test.y[ref_rows], cfg).model
        lm = _per_sample_ce(
            predict_logits(ref, usable_inputs(train.x[member_rows])).astype(np.float64), train.y[member_rows]
        )
        ln = _per_sample_ce(predict_logits(ref, usable_inputs(test.x[non_rows])).astype(np.float64), test.y[non_rows])
    else:
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


@dataclass
class _Parts:
    """What the membership audit and the PII scan add to the result."""

    statuses: list[Status] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    plots: list[dict[str, Any]] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    bits: list[str] = field(default_factory=list)


def _audit_table(audits: list[Any]) -> dict[str, Any]:
    return {
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


def _membership(case: Case, evidence: Evidence, options: PrivacyOptions, parts: _Parts) -> None:
    """Grade each attack: a leak when its AUC is significant and above the limits, or its low-FPR TPR is."""
    audits, kind, plot = membership_audits(case, evidence, options)
    parts.plots.append(plot)
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
        parts.statuses.append(st)
        if st != "ok":
            parts.findings.append(
                Finding(
                    "membership",
                    f"{a.attack}: AUC {a.auc:.3f} (95 % CI {a.auc_ci[0]:.3f}–{a.auc_ci[1]:.3f}, p = {a.auc_p:.2g}); TPR {a.tpr:.1%} at FPR ≤ {fpr_ref:.2%} on {a.n_members} members vs {a.n_nonmembers} non-members",
                )
            )
    parts.tables.append(_audit_table(audits))
    loss_a = audits[0]
    parts.metrics.update(
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
        parts.notes.append(
            f"TPR at {options.target_fpr:.1%} FPR needs ≥ {int(np.ceil(1 / options.target_fpr))} non-members; with {strongest.n_nonmembers} the lowest certifiable FPR is {strongest.fpr_upper_bound:.2%}"
        )
    parts.bits.append(
        f"membership-inference AUC {strongest.auc:.3f} ({strongest.attack}, p = {strongest.auc_p:.2g}), TPR {strongest.tpr:.1%} at FPR ≤ {max(strongest.target_fpr, strongest.fpr_upper_bound):.2%}"
    )
    if kind == "none":
        parts.notes.append("calibrated attack not run (no reference available)")


def _pii(sources: list[str], options: PrivacyOptions, parts: _Parts) -> None:
    """Scan the sources for PII (counts only)."""
    st, fnd, rows, totals = scan_pii_files(sources, options.pii_max_rows)
    parts.statuses.append(st)
    parts.findings.extend(fnd)
    parts.metrics["pii_files_scanned"] = len(sources)
    parts.metrics["pii_matches"] = int(sum(totals.values()))
    parts.metrics["pii_columns_flagged"] = len(rows)
    for k, v in totals.items():
        parts.metrics[f"pii_{k}"] = v
    if rows:
        parts.tables.append(
            {
                "title": "PII found per column (counts only; values never shown)",
                "columns": ["file", "column", "rows with PII", *KINDS],
                "rows": rows,
            }
        )
    parts.bits.append(
        f"{len(rows)} column(s) with PII in {len(sources)} file(s)"
        if rows
        else f"no PII pattern in {len(sources)} file(s)"
    )


def _remedy(case: Case, findings: list[Finding]) -> Remedy:
    if any(f.code == "membership" for f in findings):
        return Remedy(
            command="dlclinic treat data.privacy --option target_epsilon=8",
            description="retrain with DP-SGD (opacus) at a target (ε, δ), then re-run the membership audit and compare accuracy",
        )
    return Remedy(
        command=None,
        description="remove or pseudonymise the flagged columns before training (hash or tokenise identifiers, drop free-text contact details)",
    )


def run(case: Case, evidence: Evidence, options: PrivacyOptions) -> CheckResult:
    """Membership-inference audit (train vs test) and PII scan of the tabular/text sources."""
    parts = _Parts()
    test = case.get("test")
    if test is not None and test.labelled and len(test) >= 10:
        _membership(case, evidence, options, parts)
    else:
        parts.notes.append("membership not audited: needs a labelled test split (non-members)")
    sources = pii_sources(case, options.pii_files)
    if sources:
        _pii(sources, options, parts)
    else:
        parts.notes.append("no tabular/text source to scan for PII (pass --option data.privacy.pii_files=FILE.csv)")
    notes = parts.notes
    if not parts.statuses:
        return CheckResult(id=ID, status="not_examined", summary="Nothing to examine: " + "; ".join(notes) + ".")
    status = worst(parts.statuses)
    summary = "; ".join(parts.bits) + "."
    summary = summary[:1].upper() + summary[1:]
    if notes:
        summary += " Note: " + "; ".join(notes) + "."
    return CheckResult(
        id=ID,
        status=status,
        summary=summary,
        metrics=parts.metrics,
        thresholds={
            "mia_auc.warn": options.warn_auc,
            "mia_auc.fail": options.fail_auc,
            "mia_auc_p.max": options.alpha,
            "low_fpr_lift": options.low_fpr_lift,
            "target_fpr": options.target_fpr,
        },
        findings=tuple(parts.findings),
        remedy=_remedy(case, parts.findings) if status in ("warn", "fail") else None,
        details={"plots": parts.plots, "tables": parts.tables, "notes": notes},
    )


CHECK = CheckSpec(
    id=ID,
    requires=(("losses", "train"), ("losses", "test")),
    options=PrivacyOptions,
    run=run,
    description="membership-inference audit (loss and difficulty-calibrated attacks: AUC, TPR at low FPR) and a PII scan of tabular/text sources",
)


@dataclass(frozen=True)
class DPParams:
    """Privacy budget and DP-SGD settings.

    Attributes:
        target_epsilon: ε of the whole training run.
        delta: δ (default ``1 / (10 n_train)``).
        max_grad_norm: per-sample gradient clipping bound.
        epochs: default: the recipe's epochs.
        batch_size: expected (Poisson) batch size; DP-SGD prefers large batches.
        lr: learning rate (default: the recipe's × 2, compensating for clipping).
    """

    target_epsilon: float = 8.0
    delta: float | None = None
    max_grad_norm: float = 1.0
    epochs: int | None = None
    batch_size: int = 256
    lr: float | None = None

    def __post_init__(self) -> None:
        if not self.target_epsilon > 0:
            raise ConfigError(f"`target_epsilon > 0` must hold, but got target_epsilon={self.target_epsilon}")
        if self.delta is not None and not 0 < self.delta < 1:
            raise ConfigError(f"`0 < delta < 1` must hold, but got delta={self.delta}")


def dp_fit(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    *,
    target_epsilon: float,
    delta: float,
    max_grad_norm: float = 1.0,
    epochs: int = 10,
    batch_size: int = 256,
    lr: float = 4e-3,
    seed: int = 0,
    progress: Any = None,
) -> tuple[Any, float, list[str]]:
    """Train ``model`` with DP-SGD; returns ``(plain nn.Module, ε spent, notes)``."""
    try:
        from opacus import PrivacyEngine
        from opacus.validators import ModuleValidator
    except ImportError:
        raise MissingDependencyError("opacus", "privacy") from None

    notes: list[str] = []
    seed_everything(seed)
    device = model_device(model)  # the batches go to the model's device (the loader draws on the CPU)
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        model = ModuleValidator.fix(model).to(device)  # the replacement layers are built on the CPU
        notes.append(
            f"opacus ModuleValidator.fix changed the architecture for per-sample gradients ({len(errors)} incompatible module(s), e.g. BatchNorm → GroupNorm)"
        )
    prepare_inputs(model, x)
    data = TensorDataset(input_tensor(x), torch.from_numpy(np.asarray(y, dtype=np.int64)))
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()  # opacus refuses a model in eval mode
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # opacus warns about secure_mode=False and Poisson-sampling details
        engine = PrivacyEngine(accountant="rdp", secure_mode=False)
        private, optimizer, loader = engine.make_private_with_epsilon(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            target_epsilon=target_epsilon,
            target_delta=delta,
            epochs=epochs,
            max_grad_norm=max_grad_norm,
        )
        for _ in range(epochs):
            private.train()
            for xb, yb in loader:
                if len(xb) == 0:
                    continue
                optimizer.zero_grad(set_to_none=True)
                loss = nn.functional.cross_entropy(private(xb.to(device)), yb.to(device))
                loss.backward()
                optimizer.step()
            if progress is not None:
                progress(1)
        spent = float(engine.get_epsilon(delta))
    plain = private._module if hasattr(private, "_module") else private
    plain.eval()
    notes.append(
        f"noise multiplier {optimizer.noise_multiplier:.3f}, clipping {max_grad_norm}, expected batch {batch_size} (Poisson sampling), {epochs} epochs"
    )
    return plain, spent, notes


def _accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:

    return float((predict_logits(model, usable_inputs(x)).argmax(1) == y).mean())


def _dp_factory(factory: Callable[[], Any]) -> Callable[[], Any]:
    """The DP model may have another architecture (GroupNorm): remedies that retrain it must rebuild it the same way."""

    def dp_factory() -> Any:
        from opacus.validators import ModuleValidator

        m = factory()
        return ModuleValidator.fix(m) if ModuleValidator.validate(m, strict=False) else m

    return dp_factory


def _write_dp_artifacts(
    out_dir: Path, model: Any, params: DPParams, spent: float, delta: float, epochs: int, notes: list[str]
) -> dict[str, str]:
    """The DP model's weights and its privacy budget."""
    return {
        "model": str(write_weights(model, out_dir / "dp_model.safetensors")),
        "budget": str(
            write_json(
                out_dir / "dp_budget.json",
                {
                    "epsilon_target": params.target_epsilon,
                    "epsilon_spent": spent,
                    "delta": delta,
                    "max_grad_norm": params.max_grad_norm,
                    "epochs": epochs,
                    "notes": notes,
                },
                indent=1,
            )
        ),
    }


def treat_privacy(ctx: TreatContext, params: DPParams) -> TreatOutcome:
    """Retrain with DP-SGD at the target ε, then re-run the membership audit."""
    case = ctx.case
    if case.model_factory is None:
        raise ConfigError(
            "treat data.privacy retrains the model with DP-SGD, so it needs the architecture: pass --model file.py:factory"
        )
    test = case.get("test")
    if test is None or test.y is None:
        raise ConfigError("treat data.privacy needs a labelled test split (the audit's non-members; pass --test)")
    if case.train.y is None:  # pragma: no cover - Case guarantees train labels
        raise ConfigError("treat data.privacy needs train labels")
    n = len(case.train)
    delta = params.delta if params.delta is not None else 1.0 / (10 * n)
    epochs = params.epochs or ctx.fit_config.epochs
    before = ctx.measure(case)
    with ctx.progress.step(
        f"DP-SGD training (target ε={params.target_epsilon:g}, δ={delta:.1e})", total=epochs
    ) as advance:
        model, spent, notes = dp_fit(
            on_device(case.model_factory, ctx.fit_config.device)(),
            usable_inputs(case.train.x),
            case.train.y,
            target_epsilon=params.target_epsilon,
            delta=delta,
            max_grad_norm=params.max_grad_norm,
            epochs=epochs,
            batch_size=min(params.batch_size, n),
            lr=params.lr or 2 * ctx.fit_config.lr,
            seed=ctx.fit_config.seed,
            progress=advance,
        )
    distributed.broadcast_weights(model)  # several processes: each trained alone; rank 0's model is the one
    treated = dataclasses.replace(
        case,
        model=model,
        model_factory=_dp_factory(case.model_factory),
        model_source=f"{case.model_source.replace(', from cache', '')}, DP-SGD (ε={spent:.2f}, δ={delta:.1e})",
    )
    after = ctx.measure(treated)
    acc_b, acc_a = _accuracy(case.model, test.x, test.y), _accuracy(model, test.x, test.y)
    artifacts = (
        _write_dp_artifacts(ctx.out_dir, model, params, spent, delta, epochs, notes) if ctx.out_dir is not None else {}
    )
    return conclude(
        ctx,
        before=before,
        after=after,
        action=f"retrain with DP-SGD (opacus) at ε={spent:.2f} (target {params.target_epsilon:g}), δ={delta:.1e}",
        before_values={"test_accuracy": acc_b},
        after_values={"test_accuracy": acc_a, "epsilon": spent, "delta": delta},
        check_metrics=("mia_auc", "mia_auc_loss", "mia_auc_calibrated", "mia_tpr_at_low_fpr", "mia_advantage"),
        artifacts=artifacts,
        notes=(
            f"(ε, δ) = ({spent:.2f}, {delta:.1e}) from opacus' RDP accountant: a guarantee about any single training row, stronger than the empirical audit",
            *notes,
        ),
    )


REMEDY = RemedySpec(
    id="data.privacy",
    params=DPParams,
    run=treat_privacy,
    description="DP-SGD retraining with opacus at a target (ε, δ); membership audit and accuracy before/after.",
)
