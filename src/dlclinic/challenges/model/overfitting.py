"""model.overfitting — train/test gap in accuracy and loss, calibration (ECE), curves, memorisation.

The verdict is decided on the user's trained model: the train/test gap with a
significance test and the ECE graded against a calibrated-model null. Two training
measurements add the *why* (informational: they do not change the status, because a short
re-run on a subsample overfits sooner than the user's full run):

* per-epoch train/validation curves from the shared monitored run
  (:mod:`dlclinic.providers.training_run`): the epoch where the gap opens (from then on the
  train-minus-validation accuracy stays above ``warn_gap``) and the best validation epoch;
* memorisation (Zhang et al., "Understanding deep learning requires rethinking
  generalization", ICLR 2017): a fresh copy trained on ``memorization_rows`` rows whose
  labels were replaced by random ones; its accuracy on those random labels (with a Wilson
  interval, against chance 1/K) measures the capacity to memorise noise.

Remedy: temperature scaling (Guo et al., ICML 2017) verified by ECE before/after on the test
split, cross-fitted (T fitted on one half, ECE measured on the other, and the reverse) so the
improvement is not measured on the rows it was fitted to; and, when the architecture is
known, a retrain with early stopping (best-checkpoint restore), weight decay and label
smoothing, verified by the train/test gap.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import softmax

from dlclinic.core.case import Case, usable_inputs
from dlclinic.core.errors import ConfigError, InputError
from dlclinic.core.evidence import Evidence
from dlclinic.core.inference import predict_logits
from dlclinic.core.recipe import FitConfig, fit, seed_everything
from dlclinic.core.registry import CheckSpec, RemedySpec, TreatContext, TreatOutcome, conclude
from dlclinic.core.results import CheckResult, Finding, Remedy, Status, grade, worst
from dlclinic.functional.calibration import (
    Reliability,
    TemperatureScaled,
    ece_calibrated_null,
    estimate_ece,
    fit_temperature,
    reliability_bins,
)
from dlclinic.functional.stats import proportion_difference_z, wilson_interval
from dlclinic.providers.retraining import retrain_factory, save_weights
from dlclinic.providers.training_run import fresh_model, history_of, monitored_run, recipe, run_settings, subsample

__all__ = ["CHECK", "REMEDY", "OverfittingOptions", "OverfittingParams", "gap_open_epoch", "run", "treat_overfitting"]


@dataclass(frozen=True)
class OverfittingOptions:
    """Gap and calibration thresholds.

    A gap only counts when it is also significant (z > ``z``); an ECE only counts when a
    perfectly calibrated model would show a smaller one with probability ≥ 1 − ``alpha``
    (consistency resampling), so small test sets do not raise false alarms.
    ``curves`` adds the short re-run's per-epoch curves and the memorisation test
    (``memorization_rows`` random labels, ``memorization_steps`` steps); ``steps``,
    ``rows``, ``every``, ``lr``, ``batch_size`` set the shared run.
    """

    warn_gap: float = 0.05
    fail_gap: float = 0.15
    warn_ece: float = 0.05
    fail_ece: float = 0.15
    z: float = 2.0
    alpha: float = 0.05
    bins: int = 15
    curves: bool = True
    memorization_rows: int = 256
    memorization_steps: int = 200
    steps: int = 300
    rows: int = 1024
    every: int = 10
    lr: float | None = None
    batch_size: int | None = None


def gap_open_epoch(train_acc: np.ndarray, val_acc: np.ndarray, gap: float) -> int | None:
    """First epoch from which train − validation accuracy stays above ``gap`` (``None``: never)."""
    d = np.asarray(train_acc, dtype=np.float64) - np.asarray(val_acc, dtype=np.float64)
    if not len(d) or not d[-1] > gap:
        return None
    below = np.flatnonzero(~(d > gap))
    return int(below[-1] + 1) if len(below) else 0


def _memorization(case: Case, evidence: Evidence, options: OverfittingOptions) -> dict[str, np.ndarray] | None:
    """Accuracy of a fresh copy on ``memorization_rows`` randomly relabelled rows it was trained on."""
    probe, _ = fresh_model(case)
    if probe is None or options.memorization_rows < 10 or options.memorization_steps < 1:
        return None
    cfg = recipe(evidence)
    params = {
        "rows": options.memorization_rows,
        "steps": options.memorization_steps,
        "lr": cfg.lr,
        "bs": cfg.batch_size,
        "wd": cfg.weight_decay,
    }

    def compute() -> dict[str, np.ndarray]:
        idx = subsample(len(case.train), options.memorization_rows, 7)
        x = usable_inputs(case.train.x[idx])
        y = np.random.default_rng(7).integers(0, case.n_classes, len(idx))
        epochs = max(1, math.ceil(options.memorization_steps / max(1, math.ceil(len(idx) / cfg.batch_size))))
        seed_everything(7)
        model, _ = fresh_model(case)
        net = fit(
            model,
            x,
            y,
            FitConfig(
                epochs=epochs,
                batch_size=cfg.batch_size,
                lr=cfg.lr,
                weight_decay=cfg.weight_decay,
                val_fraction=0.0,
                seed=7,
            ),
        ).model
        hits = int((predict_logits(net, x).argmax(1) == y).sum())
        return {
            "hits": np.asarray(hits, dtype=np.int64),
            "n": np.asarray(len(idx), dtype=np.int64),
            "epochs": np.asarray(epochs, dtype=np.int64),
        }

    return evidence.cached("training.memorization", params, compute)


def _curve_evidence(
    hist: dict[str, np.ndarray],
    rows: int,
    options: OverfittingOptions,
    findings: list[Finding],
    metrics_extra: dict[str, float | int | bool | None],
    extra_plots: list[dict[str, object]],
) -> None:
    """Where the train/validation gap opens in the short re-run, and its per-epoch curves."""
    ep = list(range(1, len(hist["train_loss"]) + 1))
    opens = gap_open_epoch(hist["train_acc"], hist["val_acc"], options.warn_gap)
    best = int(np.nanargmin(np.where(np.isfinite(hist["val_loss"]), hist["val_loss"], np.inf))) + 1
    rise = float(hist["val_loss"][-1] / hist["val_loss"][best - 1] - 1) if hist["val_loss"][best - 1] > 0 else math.nan
    metrics_extra.update(
        {
            "curve_gap_open_epoch": None if opens is None else opens + 1,
            "curve_best_val_epoch": best,
            "curve_epochs": len(ep),
            "curve_final_accuracy_gap": float(hist["train_acc"][-1] - hist["val_acc"][-1]),
            "curve_val_loss_rise": rise,
        }
    )
    if opens is not None:
        findings.append(
            Finding(
                "gap_opens",
                f"in a short re-run ({len(ep)} epochs on {rows} rows) the train/validation accuracy gap opens at epoch {opens + 1} and stays above {options.warn_gap:.0%}; validation loss is lowest at epoch {best} and ends {rise:+.0%} above it",
                extra={"epoch": opens + 1, "best_epoch": best},
            )
        )
    extra_plots.append(
        {
            "kind": "line",
            "title": "Loss per epoch (short re-run)",
            "xlabel": "epoch",
            "ylabel": "cross-entropy",
            "series": [
                {
                    "label": "train",
                    "x": ep,
                    "y": [float(v) if math.isfinite(v) else None for v in hist["train_loss"]],
                },
                {
                    "label": "validation",
                    "x": ep,
                    "y": [float(v) if math.isfinite(v) else None for v in hist["val_loss"]],
                },
            ],
        }
    )
    extra_plots.append(
        {
            "kind": "line",
            "title": "Accuracy per epoch (short re-run)",
            "xlabel": "epoch",
            "ylabel": "accuracy",
            "series": [
                {"label": "train", "x": ep, "y": hist["train_acc"].tolist()},
                {"label": "validation", "x": ep, "y": hist["val_acc"].tolist()},
            ],
        }
    )


def _memorization_evidence(
    case: Case,
    evidence: Evidence,
    options: OverfittingOptions,
    findings: list[Finding],
    metrics_extra: dict[str, float | int | bool | None],
) -> None:
    """How much of a randomly relabelled subset a fresh copy memorises (Wilson interval vs chance)."""
    mem = _memorization(case, evidence, options)
    if mem is None:
        return
    hits, n = int(mem["hits"]), int(mem["n"])
    lo, hi = wilson_interval(hits, n)
    chance = 1.0 / case.n_classes
    metrics_extra.update(
        {
            "memorization_accuracy": hits / n,
            "memorization_ci_low": lo,
            "memorization_ci_high": hi,
            "memorization_chance": chance,
        }
    )
    if lo > chance:
        findings.append(
            Finding(
                "memorization",
                f"a fresh copy fits {hits / n:.0%} (95 % CI {lo:.0%}–{hi:.0%}) of {n} randomly relabelled rows in {int(mem['epochs'])} epochs (chance {chance:.0%}): it has the capacity to memorise noise, so regularisation and early stopping matter",
            )
        )


def _training_evidence(
    case: Case,
    evidence: Evidence,
    options: OverfittingOptions,
    findings: list[Finding],
    metrics_extra: dict[str, float | int | bool | None],
    extra_plots: list[dict[str, object]],
) -> str:
    """The short re-run's curves and the memorisation test (informational); a note when not measured."""
    arrays, how = monitored_run(case, evidence, run_settings(options))
    if arrays is None:
        return f" Training curves and the memorisation test were not measured: {how}."
    hist = history_of(arrays)
    if len(hist.get("val_loss", [])):
        _curve_evidence(hist, int(arrays["rows"]), options, findings, metrics_extra, extra_plots)
    _memorization_evidence(case, evidence, options, findings, metrics_extra)
    return ""


def _verdict_findings(
    gap_status: Status,
    ece_status: Status,
    acc_tr: float,
    acc_te: float,
    gap: float,
    z: float,
    ece: float,
    p_te: np.ndarray,
) -> list[Finding]:
    """The findings that decide the status: a significant gap, a miscalibration beyond noise."""
    findings: list[Finding] = []
    if gap_status != "ok":
        findings.append(
            Finding(
                "generalization_gap", f"train accuracy {acc_tr:.1%} vs test {acc_te:.1%}: gap {gap:+.1%} (z={z:.1f})"
            )
        )
    if ece_status != "ok":
        mean_conf = float(p_te.max(1).mean())
        direction = "over-confident" if mean_conf > acc_te else "under-confident"
        findings.append(
            Finding(
                "miscalibration",
                f"expected calibration error {ece:.3f} on test: the model is {direction} (mean confidence {mean_conf:.1%} vs accuracy {acc_te:.1%})",
            )
        )
    return findings


def _summary(
    status: Status,
    gap_status: Status,
    ece_status: Status,
    acc_tr: float,
    acc_te: float,
    ece: float,
    findings: list[Finding],
) -> str:
    gap = acc_tr - acc_te
    if status == "ok":
        summary = f"Train/test accuracy gap {gap:+.1%} and ECE {ece:.3f} are within limits."
    else:
        bits = []
        if gap_status != "ok":
            bits.append(f"train/test accuracy gap {gap:+.1%} ({acc_tr:.1%} vs {acc_te:.1%})")
        if ece_status != "ok":
            bits.append(f"ECE {ece:.3f} on test")
        summary = "Overfitting signs: " + "; ".join(bits) + "."
    gap_find = next((f for f in findings if f.code == "gap_opens"), None)
    if gap_find is not None and status != "ok":
        summary += f" In a short re-run the gap opens at epoch {gap_find.extra['epoch']}."
    return summary


def _plots(
    rel: Reliability, evidence: Evidence, held: str, extra_plots: list[dict[str, object]]
) -> list[dict[str, Any]]:
    return [
        {
            "kind": "reliability",
            "title": "Reliability diagram (test)",
            "xlabel": "confidence",
            "ylabel": "accuracy",
            "series": [
                {
                    "label": "test",
                    "x": rel.confidence.tolist(),
                    "y": rel.accuracy.tolist(),
                    "count": rel.count.tolist(),
                }
            ],
        },
        {
            "kind": "hist",
            "title": "Per-sample loss: train vs test",
            "xlabel": "cross-entropy",
            "ylabel": "density",
            "series": [
                {"label": "train", "values": np.clip(evidence.get("losses", "train"), 0, 10).tolist()},
                {"label": "test", "values": np.clip(evidence.get("losses", held), 0, 10).tolist()},
            ],
        },
        *extra_plots,
    ]


def run(case: Case, evidence: Evidence, options: OverfittingOptions) -> CheckResult:
    """Compare train and held-out accuracy/loss, and measure held-out calibration."""
    held = "test" if case.get("test") is not None and case.splits["test"].labelled else None
    if held is None:
        return CheckResult(
            id="model.overfitting",
            status="not_examined",
            summary="Needs a labelled test split to measure the generalization gap (pass --test).",
        )
    train, test = case.train, case.splits[held]
    if train.y is None or test.y is None:  # pragma: no cover - guaranteed by Case and the check above
        raise InputError("model.overfitting needs labelled train and test splits")
    p_tr, p_te = evidence.get("probs", "train"), evidence.get("probs", held)
    acc_tr = float((p_tr.argmax(1) == train.y).mean())
    acc_te = float((p_te.argmax(1) == test.y).mean())
    loss_tr = float(evidence.get("losses", "train").mean())
    loss_te = float(evidence.get("losses", held).mean())
    gap = acc_tr - acc_te
    z = proportion_difference_z(acc_tr, len(train), acc_te, len(test))
    rel = reliability_bins(p_te, test.y, options.bins)
    ece = rel.ece
    statuses: list[Status] = []
    gap_status = grade(gap, options.warn_gap, options.fail_gap) if z > options.z else "ok"
    statuses.append(gap_status)
    null = ece_calibrated_null(p_te, options.bins)
    ece_p = float((1 + np.sum(null >= ece)) / (1 + len(null)))
    # grade only what sampling noise cannot explain: a calibrated model shows ECE ≈ null on small test sets
    ece_status = grade(ece, options.warn_ece, options.fail_ece) if ece_p < options.alpha else "ok"
    statuses.append(ece_status)
    findings: list[Finding] = []
    metrics_extra: dict[str, float | int | bool | None] = {}
    extra_plots: list[dict[str, object]] = []
    curve_note = ""
    if options.curves:
        curve_note = _training_evidence(case, evidence, options, findings, metrics_extra, extra_plots)
    findings.extend(_verdict_findings(gap_status, ece_status, acc_tr, acc_te, gap, z, ece, p_te))
    status = worst(statuses)
    summary = _summary(status, gap_status, ece_status, acc_tr, acc_te, ece, findings) + curve_note
    remedy = None
    if status in ("warn", "fail"):
        remedy = Remedy(
            command="dlclinic treat model.overfitting",
            description="temperature scaling verified by ECE before/after (cross-fitted on test), and a retrain with early stopping (best-checkpoint restore), weight decay and label smoothing verified by the train/test gap",
        )
    return CheckResult(
        id="model.overfitting",
        status=status,
        summary=summary,
        metrics={
            "train_accuracy": acc_tr,
            "test_accuracy": acc_te,
            "accuracy_gap": gap,
            "gap_z": z,
            "train_loss": loss_tr,
            "test_loss": loss_te,
            "loss_gap": loss_te - loss_tr,
            "ece": ece,
            "ece_if_calibrated_median": float(np.median(null)),
            "ece_p_value": ece_p,
            **metrics_extra,
        },
        thresholds={
            "accuracy_gap.warn": options.warn_gap,
            "accuracy_gap.fail": options.fail_gap,
            "gap_z.min": options.z,
            "ece_p_value.max": options.alpha,
            "ece.warn": options.warn_ece,
            "ece.fail": options.fail_ece,
        },
        findings=tuple(findings),
        remedy=remedy,
        details={"plots": _plots(rel, evidence, held, extra_plots)},
    )


CHECK = CheckSpec(
    id="model.overfitting",
    requires=(("probs", "train"), ("probs", "test"), ("losses", "train"), ("losses", "test")),
    options=OverfittingOptions,
    run=run,
    description="train/test gap (accuracy, loss) with a significance test, ECE and reliability diagram, per-epoch curves with the epoch the gap opens, memorisation of random labels",
)


# ---------------------------------------------------------------------------------------
# remedy


@dataclass(frozen=True)
class OverfittingParams:
    """``retrain``: also retrain with early stopping, ``weight_decay`` and ``label_smoothing`` (needs the architecture)."""

    retrain: bool = True
    weight_decay: float = 5e-3
    label_smoothing: float = 0.1
    patience: int = 3


def _regularised_model(ctx: TreatContext, params: OverfittingParams, notes: list[str]) -> Any | None:
    """The model retrained with early stopping, weight decay and label smoothing (``None``: no architecture)."""
    case, cfg = ctx.case, ctx.fit_config
    try:
        factory = retrain_factory(ctx, "model.overfitting")
    except ConfigError as exc:
        notes.append(f"no regularised retrain: {exc}")
        return None
    with ctx.progress.step("retraining with early stopping, weight decay and label smoothing", total=1) as advance:
        seed_everything(cfg.seed)
        reg_cfg = dataclasses.replace(
            cfg,
            weight_decay=params.weight_decay,
            label_smoothing=params.label_smoothing,
            patience=params.patience,
            val_fraction=max(cfg.val_fraction, 0.1),
        )
        model = fit(factory(), usable_inputs(case.train.x), case.train.y, reg_cfg).model  # type: ignore[arg-type]
        advance(1)
    notes.append(
        f"retrained with early stopping (patience {params.patience}, best checkpoint restored), weight decay {params.weight_decay:g} and label smoothing {params.label_smoothing:g}"
    )
    return model


def _cross_fitted(logits: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Logits scaled by a temperature fitted on the other half of the rows; the two temperatures."""
    order = np.random.default_rng(0).permutation(len(y))
    halves = (order[: len(y) // 2], order[len(y) // 2 :])
    scaled = np.empty_like(logits, dtype=np.float64)
    temps = []
    for fit_rows, eval_rows in (halves, halves[::-1]):
        t = fit_temperature(logits[fit_rows], y[fit_rows])
        temps.append(t)
        scaled[eval_rows] = logits[eval_rows] / t
    return scaled, temps


def treat_overfitting(ctx: TreatContext, params: OverfittingParams) -> TreatOutcome:
    """Temperature scaling (ECE before/after, cross-fitted) and an optional regularised retrain."""
    case = ctx.case
    test = case.get("test")
    if test is None or test.y is None or len(test) < 40:
        raise ConfigError(
            "treat model.overfitting needs a labelled test split of at least 40 rows to fit and verify the temperature (pass --test)"
        )
    before = ctx.measure(case)
    res = before[ctx.challenge_id]
    notes: list[str] = []
    retrained = _regularised_model(ctx, params, notes) if params.retrain else None
    regularised = retrained is not None
    base = retrained if retrained is not None else case.model
    logits = predict_logits(base, usable_inputs(test.x))
    y = test.y
    scaled, temps = _cross_fitted(logits, y)
    ece_before = estimate_ece(softmax(logits.astype(np.float64), axis=1), y)
    ece_after = estimate_ece(softmax(scaled, axis=1), y)
    t_all = fit_temperature(logits, y)
    model = TemperatureScaled(base, t_all)
    treated = dataclasses.replace(
        case,
        model=model,
        model_source=f"{case.model_source}{', regularised retrain' if regularised else ''}, temperature {t_all:.2f}",
    )
    after = ctx.measure(treated)
    notes.append(
        f"ECE after temperature scaling is cross-fitted: T fitted on one half of test ({temps[0]:.2f} / {temps[1]:.2f}) and measured on the other; the saved model uses T={t_all:.2f} fitted on all of test, so the re-measured ECE in the after report is optimistic"
    )
    return conclude(
        ctx,
        before=before,
        after=after,
        action=("regularised retrain + " if regularised else "") + f"temperature scaling (T={t_all:.2f})",
        before_values={"ece": ece_before if not regularised else res.metrics.get("ece")},
        after_values={"ece": ece_after, "ece_uncalibrated_model": ece_before, "temperature": t_all},
        check_metrics=("accuracy_gap", "test_accuracy"),
        artifacts=save_weights(ctx.out_dir, model),
        notes=notes,
    )


REMEDY = RemedySpec(
    id="model.overfitting",
    params=OverfittingParams,
    run=treat_overfitting,
    description="temperature scaling verified by ECE (cross-fitted), plus a retrain with early stopping, weight decay and label smoothing",
)
