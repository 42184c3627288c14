"""model.overfitting — train/test gap in accuracy and loss, calibration (ECE), curves, memorisation.

The verdict is decided on the user's trained model: the train/test gap with a
significance test and the ECE graded against a calibrated-model null. Two training
measurements add the *why* (informational: they do not change the status, because a short
re-run on a subsample overfits sooner than the user's full run):

* per-epoch train/validation curves from the shared monitored run
  (:mod:`dlclinic.checks.training_run`): the epoch where the gap opens (from then on the
  train-minus-validation accuracy stays above ``warn_gap``) and the best validation epoch;
* memorisation (Zhang et al., "Understanding deep learning requires rethinking
  generalization", ICLR 2017): a fresh copy trained on ``memorization_rows`` rows whose
  labels were replaced by random ones; its accuracy on those random labels (with a Wilson
  interval, against chance 1/K) measures the capacity to memorise noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dlclinic.core.case import Case
from dlclinic.core.errors import InputError
from dlclinic.core.evidence import Evidence
from dlclinic.core.registry import CheckSpec
from dlclinic.core.results import CheckResult, Finding, Remedy, Status, grade, worst
from dlclinic.functional.calibration import ece_calibrated_null, reliability_bins
from dlclinic.functional.stats import wilson_interval

__all__ = ["CHECK", "OverfittingOptions", "gap_open_epoch", "run"]


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
    from dlclinic.checks.training_run import fresh_model, recipe, subsample

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
        from dlclinic.core.inference import predict_logits
        from dlclinic.core.recipe import FitConfig, fit, seed_everything

        idx = subsample(len(case.train), options.memorization_rows, 7)
        x = np.nan_to_num(case.train.x[idx])
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


def _gap_z(acc_a: float, n_a: int, acc_b: float, n_b: int) -> float:
    """z statistic of the difference of two independent proportions (unpooled SE)."""
    se = math.sqrt(max(acc_a * (1 - acc_a), 1e-12) / n_a + max(acc_b * (1 - acc_b), 1e-12) / n_b)
    return (acc_a - acc_b) / se


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
    z = _gap_z(acc_tr, len(train), acc_te, len(test))
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
        from dlclinic.checks.training_run import RunSettings, history_of, monitored_run

        arrays, how = monitored_run(
            case,
            evidence,
            RunSettings(
                steps=options.steps,
                rows=options.rows,
                every=options.every,
                lr=options.lr,
                batch_size=options.batch_size,
            ),
        )
        if arrays is None:
            curve_note = f" Training curves and the memorisation test were not measured: {how}."
        else:
            hist = history_of(arrays)
            if len(hist.get("val_loss", [])):
                ep = list(range(1, len(hist["train_loss"]) + 1))
                opens = gap_open_epoch(hist["train_acc"], hist["val_acc"], options.warn_gap)
                best = int(np.nanargmin(np.where(np.isfinite(hist["val_loss"]), hist["val_loss"], np.inf))) + 1
                rise = (
                    float(hist["val_loss"][-1] / hist["val_loss"][best - 1] - 1)
                    if hist["val_loss"][best - 1] > 0
                    else math.nan
                )
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
                            f"in a short re-run ({len(ep)} epochs on {int(arrays['rows'])} rows) the train/validation accuracy gap opens at epoch {opens + 1} and stays above {options.warn_gap:.0%}; validation loss is lowest at epoch {best} and ends {rise:+.0%} above it",
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
            mem = _memorization(case, evidence, options)
            if mem is not None:
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
    status = worst(statuses)
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
    summary += curve_note
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
        details={
            "plots": [
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
        },
    )


CHECK = CheckSpec(
    id="model.overfitting",
    requires=(("probs", "train"), ("probs", "test"), ("losses", "train"), ("losses", "test")),
    options=OverfittingOptions,
    run=run,
    description="train/test gap (accuracy, loss) with a significance test, ECE and reliability diagram, per-epoch curves with the epoch the gap opens, memorisation of random labels",
)
