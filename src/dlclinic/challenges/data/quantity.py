"""data.quantity — learning curve, power-law extrapolation, and whether more data would help.

Two ways to measure the curve on stratified subsets (``fractions`` × ``seeds``):

* ``mode="model"`` retrains the real model with its recipe at each size — faithful, and the
  default (``"auto"``) when the recipe is cheap (the baseline dlclinic trains itself). The
  point at ``(K−1)/K`` of the data (0.75 with the default 4 folds) is measured by the K
  models the K-fold out-of-fold probabilities already trained (stratified ``(K−1)/K``
  subsets, the recipe, K seeds), so it costs no retraining and has K repeats;
* ``mode="proxy"`` fits a logistic-regression head on the cached train embeddings — fast,
  the default for your own models. The embeddings were learned from the full train split,
  so the proxy curve is a lower bound on the steepness: a "steep" verdict is reliable, a
  "flat" one only says that a head on today's representation is saturated. Beyond
  ``max_proxy_rows`` train rows (default 50,000) the curve is measured on fractions of a
  seeded, class-stratified pool of that many rows, and the error at full size and the gain
  from doubling are read off the fitted law, extrapolated (the summary says so): each head
  fit costs time linear in its rows, so without the cap the check grows with the data (at
  600,000 Fashion-MNIST rows the heads took 333 s, against ~30 s for the whole curve at
  60,000), while a linear head on a fixed representation has long reached its plateau at
  tens of thousands of rows (its estimation error falls like its parameter count over n).

The fitted law ``err(n) = a·n^-b + c`` gives the error expected from doubling
the data and the number of samples needed for ``target_accuracy``. The check warns when
the gain from doubling, capped by the error measured at full size (no test set can gain
more than its error), exceeds ``warn_gain_from_doubling``; the bootstrap interval of the
gain is reported, not graded (with 5 sizes × 2 seeds its 5 % bound is too wide to decide).

Remedy: how many labels to buy, and the augmentation that stretches the data you have.

1. **Labels to buy.** The check's power law ``err(n) = a·n^(−b) + c`` is inverted for a
   few target accuracies (``targets``; by default the measured accuracy plus 1, 2 and 5
   points, when below the curve's floor ``1 − c``): the training-set size each target
   needs and the labels to add (``labels_to_buy.json``). A target beyond the floor is
   written as not reachable with more data of this kind.
2. **Augmentation, measured.** Each policy of :mod:`dlclinic.functional.augment` (images:
   shift, noise, same-class blend; tables: noise, blend) is tried by retraining with one
   augmented copy of a ``1 − val_fraction`` part of train and scoring on the held-out rest;
   the best policy (if it beats no augmentation there) is then retrained on all of train
   and compared with the un-augmented model on the test split, paired (bootstrap interval
   and exact McNemar test). The control without augmentation trains on the rows repeated
   as many times, so both see the same number of optimiser steps: a gain is the
   augmentation's, not extra training. The choice is made on train rows only, so the test
   comparison is not inflated by it.

The check is measured again with the treated model; its learning curve describes the
data, so expect it to move little — the paired test accuracy is the verification.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

from dlclinic.core.atomic import write_json, write_weights
from dlclinic.core.case import Case, usable_inputs
from dlclinic.core.errors import ConfigError
from dlclinic.core.evidence import Evidence, fit_head
from dlclinic.core.fingerprint import fingerprint_array
from dlclinic.core.inference import predict_logits
from dlclinic.core.registry import CheckSpec, RemedySpec, TreatContext, TreatOutcome, conclude
from dlclinic.core.results import CheckResult, Finding, Remedy, Report
from dlclinic.functional.augment import augment_copy, policies_for
from dlclinic.functional.labels import class_counts
from dlclinic.functional.learning_curve import PowerLaw, fit_power_law, samples_for_error, stratified_subset
from dlclinic.functional.stats import mcnemar_test, paired_accuracy_ci

__all__ = [
    "CHECK",
    "REMEDY",
    "QuantityOptions",
    "QuantityParams",
    "labels_to_buy",
    "learning_curve",
    "run",
    "treat_quantity",
]


@dataclass(frozen=True)
class QuantityOptions:
    """Learning-curve settings and the verdict thresholds of data.quantity."""

    fractions: tuple[float, ...] = (0.1, 0.2, 0.4, 0.75, 1.0)
    seeds: int = 2
    mode: str = "auto"  # "auto" | "proxy" (head on cached embeddings) | "model" (retrain the model)
    target_accuracy: float | None = None
    warn_gain_from_doubling: float = 0.01
    max_iter: int = 300
    max_proxy_rows: int = 50_000

    def __post_init__(self) -> None:
        if self.max_proxy_rows < 1000:
            raise ValueError(f"`max_proxy_rows >= 1000` must hold, but got {self.max_proxy_rows}")
        if self.mode not in ("auto", "proxy", "model"):
            raise ValueError(f"mode must be 'auto', 'proxy' or 'model', but got {self.mode!r}")
        if len(self.fractions) < 3 or not all(0 < f <= 1 for f in self.fractions):
            raise ValueError(f"expected at least 3 fractions in (0, 1], but got {self.fractions}")
        if self.target_accuracy is not None and not 0 < self.target_accuracy < 1:
            raise ValueError(f"`0 < target_accuracy < 1` must hold, but got {self.target_accuracy}")
        if self.seeds < 1:
            raise ValueError(f"`seeds >= 1` must hold, but got {self.seeds}")


def resolve_mode(options: QuantityOptions, evidence: Evidence) -> str:
    """``auto`` → ``model`` when the recipe is cheap to rerun, else ``proxy``."""
    if options.mode != "auto":
        return options.mode
    return "model" if evidence.retrain is not None and evidence.cheap_retrain else "proxy"


def _fold_point(evidence: Evidence, mode: str, frac: float) -> tuple[np.ndarray, np.ndarray] | None:
    """The K-fold models' ``(train rows, test predictions)`` when ``frac`` is their ``(K−1)/K`` share of
    train: those trained as the recipe trains, like the curve's other points."""
    if mode != "model" or frac >= 1:
        return None
    got = evidence.fold_predictions("test")
    if got is None or abs(frac - (len(got[0]) - 1) / len(got[0])) > 1e-9:
        return None
    return evidence.fold_predictions("test", as_the_recipe_trains=True)


def proxy_pool(y: np.ndarray, options: QuantityOptions) -> np.ndarray:
    """The train rows the proxy curve is measured on: all of them, or a seeded class-stratified
    pool of ``max_proxy_rows`` (module docstring)."""
    if len(y) <= options.max_proxy_rows:
        return np.arange(len(y))
    return stratified_subset(y, options.max_proxy_rows / len(y), np.random.default_rng(999))


def learning_curve(case: Case, evidence: Evidence, mode: str, options: QuantityOptions) -> dict[str, np.ndarray]:
    """Measured curve: one row per (size, seed) with the test error, and per-class errors."""
    train, test = case.train, case.splits["test"]
    y_tr, y_te = train.y, test.y
    assert y_tr is not None and y_te is not None
    ns, errs, per_class = [], [], []
    heads: dict[int, LogisticRegression] = {}  # per seed, warm-started from the previous (smaller) size
    if mode == "proxy":
        e_tr, e_te = evidence.get("embeddings", "train"), evidence.get("embeddings", "test")
        if len(y_tr) > options.max_proxy_rows:  # else all rows, uncopied
            pool = proxy_pool(y_tr, options)
            e_tr, y_tr = e_tr[pool], y_tr[pool]
    else:
        if evidence.retrain is None:
            raise ValueError("mode='model' needs the model's recipe (a factory); use mode='proxy'")
    with evidence.progress.step(f"learning curve ({mode})", total=len(options.fractions) * options.seeds) as advance:
        for frac in options.fractions:
            fold = _fold_point(evidence, mode, frac)
            for rows_k, pred in zip(*fold) if fold is not None else ():  # the K-fold models: no retraining
                wrong = pred != y_te
                ns.append(int(rows_k))
                errs.append(float(wrong.mean()))
                per_class.append(_per_class(wrong, y_te, case.n_classes))
            if fold is not None:
                advance(options.seeds)
                continue
            for seed in range(options.seeds if frac < 1 else 1):
                rng = np.random.default_rng(1000 + seed)
                rows = stratified_subset(y_tr, frac, rng) if frac < 1 else np.arange(len(y_tr))
                if frac >= 1 and mode == "model":
                    pred = evidence.get("probs", "test").argmax(1)  # the case's own model is the full-size point
                elif mode == "proxy":
                    head = heads.setdefault(seed, LogisticRegression(max_iter=options.max_iter, warm_start=True))
                    pred = _proxy_predict(head, e_tr[rows], y_tr[rows], e_te)
                else:
                    model = evidence.retrain(train.x[rows], y_tr[rows], seed)  # type: ignore[misc]
                    pred = predict_logits(model, test.x).argmax(1)  # inference_batch rows at a time
                wrong = pred != y_te
                ns.append(len(rows))
                errs.append(float(wrong.mean()))
                per_class.append(_per_class(wrong, y_te, case.n_classes))
                advance(1 if frac < 1 else options.seeds)
    return {"n": np.array(ns, dtype=np.float64), "error": np.array(errs), "per_class": np.array(per_class)}


def _proxy_predict(head: LogisticRegression, x: np.ndarray, y: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """Fit the proxy head (standardised logistic regression) on ``x, y``; its predicted test classes.

    ``head`` keeps its coefficients between the sizes of one seed (``warm_start``,
    :func:`~dlclinic.core.evidence.fit_head`): L-BFGS then starts near the optimum of the
    previous, smaller subset, and the fitted head is the same up to the solver's tolerance.
    Measured on 32-d features of Fashion-MNIST: a 45,000-row fit started from a neighbouring
    fit's head took 24–31 L-BFGS iterations instead of 85–91.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = fit_head(head, x, y)
    return np.asarray(clf.predict(x_test))


def _per_class(wrong: np.ndarray, y: np.ndarray, n_classes: int) -> list[float]:
    return [float(wrong[y == k].mean()) if np.any(y == k) else np.nan for k in range(n_classes)]


def _largest_subset(n: np.ndarray, n_full: float) -> float:
    """The largest measured size below the full data, as a fraction of it: the backtest fits up to it."""
    below = n[n < n_full]
    return float(below.max() / n_full) if len(below) else 0.7


def backtest(
    n: np.ndarray, err: np.ndarray, n_full: float, full_err: float, n_test: int, *, upto: float = 0.7, boots: int = 100
) -> dict[str, float | bool | None]:
    """Does the curve extrapolate? Fit on the points up to ``upto`` of the data, predict the full-size error.

    The tolerance is a 95 % prediction interval for one new measurement at full size:
    ``1.96·sqrt(se_fit² + se_test² + sd_seed²)`` — the spread of the extrapolation over
    bootstrap refits, the binomial standard error of the measured test error, and the
    seed-to-seed standard deviation measured at the largest repeated size. A measured
    error inside it means the fitted law is trustworthy at this scale.
    """
    small = n <= upto * n_full + 0.5
    if len(np.unique(n[small])) < 3:
        return {"backtest_predicted_error": None}
    law = fit_power_law(n[small], err[small])
    pred = float(law(n_full))
    rng = np.random.default_rng(1)
    xs, es = n[small], err[small]
    preds = []
    for _ in range(boots):
        idx = rng.integers(0, len(xs), len(xs))
        if len(np.unique(xs[idx])) >= 3:
            preds.append(float(fit_power_law(xs[idx], es[idx], start=law)(n_full)))
    se_fit = float(np.std(preds)) if len(preds) > 1 else 0.0
    se_test = math.sqrt(max(full_err * (1 - full_err), 1e-12) / max(n_test, 1))
    top = xs.max()
    reps = es[xs == top]
    sd_seed = float(np.std(reps, ddof=1)) if len(reps) > 1 else 0.0
    tol = 1.96 * math.sqrt(se_fit**2 + se_test**2 + sd_seed**2)
    return {
        "backtest_predicted_error": pred,
        "backtest_abs_error": abs(pred - full_err),
        "backtest_tolerance": tol,
        "backtest_ok": abs(pred - full_err) <= tol,
    }


def _bootstrap(
    n: np.ndarray, err: np.ndarray, law: PowerLaw, n_full: float, options: QuantityOptions
) -> tuple[list[float], list[float]]:
    """Gains from doubling and samples for the target, refitted on bootstrap resamples of the measured points."""
    rng = np.random.default_rng(0)
    boot_gain, boot_need = [], []
    for _ in range(100):
        idx = rng.integers(0, len(n), len(n))
        if len(np.unique(n[idx])) < 3:
            continue
        b = fit_power_law(n[idx], err[idx], start=law)
        boot_gain.append(b.gain_from_doubling(n_full))
        if options.target_accuracy is not None:
            boot_need.append(samples_for_error(b, 1 - options.target_accuracy))
    return boot_gain, boot_need


def _cached_curve(case: Case, evidence: Evidence, mode: str, options: QuantityOptions) -> dict[str, np.ndarray]:
    params = {"mode": mode, "fractions": list(options.fractions), "seeds": options.seeds, "max_iter": options.max_iter}
    if mode == "proxy":
        params.update(max_proxy_rows=options.max_proxy_rows, warm_start=True)
    if mode == "model" and evidence.oof_method == "kfold":  # the K fold models are the (K-1)/K point
        params.update(fold_models=True, folds=evidence.config.folds, fold_seed=evidence.config.seed)
    return evidence.cached("learning_curve", params, lambda: learning_curve(case, evidence, mode, options))


def _uncertainty(
    evidence: Evidence,
    fitted: tuple[np.ndarray, np.ndarray, PowerLaw],
    n_full: float,
    full_err: float,
    n_test: int,
    options: QuantityOptions,
    metrics: dict[str, float | int | bool | None],
) -> list[float]:
    """Bootstrap interval of the gain and the backtest (200 refits, cached with the curve) into ``metrics``;
    the bootstrap samples needed for the target.

    The gain is at ``n_full`` (the train rows); the backtest predicts the largest measured size
    (``n_full``, or the proxy pool when the curve was capped) whose measured error is ``full_err``.
    """
    n, err, law = fitted
    upto = _largest_subset(n, float(n.max()))
    refits = evidence.cached_json(
        "data.quantity.refits",
        {
            "curve": fingerprint_array(n, err),
            "target": options.target_accuracy,
            "upto": upto,
            "n_test": n_test,
            "n_full": n_full,
        },
        lambda: _refits(n, err, law, n_full, full_err, n_test, upto, options),
    )
    if refits["gain"]:
        metrics["gain_from_doubling_low"], metrics["gain_from_doubling_high"] = (
            float(v) for v in np.percentile(refits["gain"], [5, 95])
        )
    metrics["backtest_fit_fraction"] = upto
    metrics.update(refits["backtest"])
    return list(refits["need"])


def _refits(
    n: np.ndarray,
    err: np.ndarray,
    law: PowerLaw,
    n_full: float,
    full_err: float,
    n_test: int,
    upto: float,
    options: QuantityOptions,
) -> dict[str, Any]:
    """The bootstrap refits of the power law and the backtest, as plain values."""
    boot_gain, boot_need = _bootstrap(n, err, law, n_full, options)
    return {
        "gain": boot_gain,
        "need": boot_need,
        "backtest": backtest(n, err, float(n.max()), full_err, n_test, upto=upto),
    }


def _target(
    law: PowerLaw,
    n_full: float,
    full_err: float,
    boot_need: list[float],
    options: QuantityOptions,
    metrics: dict[str, float | int | bool | None],
    findings: list[Finding],
    status: str,
) -> str:
    """Samples needed for ``target_accuracy``: metrics, findings, and the status they imply."""
    assert options.target_accuracy is not None
    need = samples_for_error(law, 1 - options.target_accuracy)
    metrics["target_accuracy"] = options.target_accuracy
    metrics["samples_for_target"] = need if math.isfinite(need) else None
    metrics["target_reachable"] = math.isfinite(need)
    if boot_need:
        finite = np.array(boot_need)
        metrics["samples_for_target_low"], metrics["samples_for_target_high"] = (
            float(v) if math.isfinite(v) else None for v in np.percentile(finite, [5, 95])
        )
    if not math.isfinite(need):
        status = "fail" if full_err > 1 - options.target_accuracy else status
        findings.append(
            Finding(
                "target_unreachable",
                f"the fitted curve levels off at {law.c:.1%} error: {options.target_accuracy:.1%} accuracy is not reachable with more data of this kind alone",
            )
        )
    elif need > n_full:
        status = "warn" if status == "ok" else status
        findings.append(
            Finding(
                "more_data_needed",
                f"about {need:,.0f} training samples ({need / n_full:.1f}× today) are predicted for {options.target_accuracy:.1%} accuracy",
            )
        )
    return status


def _hungry_classes(
    case: Case,
    per_class_full: np.ndarray,
    per_class_small: np.ndarray,
    counts: np.ndarray,
    gain: float,
    full_err: float,
) -> Finding | None:
    """Classes whose error still falls steeply with more data and is above average."""
    hungry = [
        k
        for k in range(case.n_classes)
        if np.isfinite(per_class_full[k])
        and per_class_small[k] - per_class_full[k] > 2 * max(gain, 0.005)
        and per_class_full[k] > full_err
    ]
    if not hungry:
        return None
    return Finding(
        "data_hungry_classes",
        "classes whose error still falls steeply with more data and is above average: "
        + ", ".join(f"{case.class_names[k]} ({int(counts[k])} samples, error {per_class_full[k]:.1%})" for k in hungry),
    )


def _summary(
    status: str,
    law: PowerLaw,
    gain: float,
    n_full: float,
    full_err: float,
    metrics: dict[str, float | int | bool | None],
    mode: str,
    options: QuantityOptions,
) -> str:
    if status == "ok" and gain > options.warn_gain_from_doubling:
        summary = f"No gain from more data: the fitted curve predicts {gain:.1%} less error from doubling the {int(n_full):,} training samples, but the measured error is already {full_err:.1%} (fit R² {law.r2:.2f}: the curve does not describe this flat learning curve)."
    elif status == "ok":
        summary = f"The learning curve is flat: doubling the {int(n_full):,} training samples is predicted to lower the error by only {gain:.1%} (fit {float(law(n_full)):.1%} → {float(law(2 * n_full)):.1%}; measured now {full_err:.1%}, fit R² {law.r2:.2f})."
    else:
        summary = f"The learning curve is still steep: doubling the {int(n_full):,} training samples is predicted to lower the error by {gain:.1%} (fit {float(law(n_full)):.1%} → {float(law(2 * n_full)):.1%}; measured now {full_err:.1%}, fit R² {law.r2:.2f})."
    if metrics.get("backtest_predicted_error") is not None:
        verdict = "within" if metrics["backtest_ok"] else "outside"
        summary += f" Backtest: fitted on ≤{metrics['backtest_fit_fraction']:.0%} of the data, the curve predicts {metrics['backtest_predicted_error']:.1%} error at full size vs {full_err:.1%} measured ({verdict} its 95 % interval ±{metrics['backtest_tolerance']:.1%})."
    if metrics.get("curve_extrapolated"):
        pool = int(metrics["curve_max_rows"] or 0)
        summary = summary.replace("measured now", f"measured at {pool:,} rows").replace(
            "error at full size vs", f"error at {pool:,} rows vs"
        )
        summary += f" The curve was measured on a class-stratified pool of {pool:,} of the {int(n_full):,} train rows (max_proxy_rows) and extrapolated to full size."
    if mode == "proxy":
        summary += " (Proxy: a head on the cached embeddings, a lower bound on the steepness; mode='model' retrains the model.)"
    return summary


def _details(
    case: Case,
    mode: str,
    n: np.ndarray,
    err: np.ndarray,
    law: PowerLaw,
    n_full: float,
    counts: np.ndarray,
    per_class_small: np.ndarray,
    per_class_full: np.ndarray,
) -> dict[str, Any]:
    """The learning-curve plot (measured and fitted) and the per-class table."""
    fit_x = np.geomspace(n.min(), 4 * n_full, 40)
    return {
        "plots": [
            {
                "kind": "line",
                "title": f"Learning curve ({'retrained model' if mode == 'model' else 'proxy head on embeddings'})",
                "xlabel": "training samples",
                "ylabel": "test error",
                "series": [
                    {"label": "measured", "x": n.tolist(), "y": err.tolist()},
                    {
                        "label": f"fit {law.a:.2g}·n^-{law.b:.2f} + {law.c:.3f}",
                        "x": fit_x.tolist(),
                        "y": law(fit_x).tolist(),
                    },
                ],
            }
        ],
        "tables": [
            {
                "title": "Per-class samples and test error (smallest → full training set)",
                "columns": ["class", "train samples", f"error at n={int(n.min())}", f"error at n={int(n_full)}"],
                "rows": [
                    [case.class_names[k], int(counts[k]), f"{per_class_small[k]:.1%}", f"{per_class_full[k]:.1%}"]
                    for k in range(case.n_classes)
                ],
            }
        ],
    }


def run(case: Case, evidence: Evidence, options: QuantityOptions) -> CheckResult:
    """Measure the learning curve, fit the power law, and say whether more data would help."""
    test = case.get("test")
    if test is None or not test.labelled:
        return CheckResult(
            id="data.quantity",
            status="not_examined",
            summary="Needs a labelled test split to measure the learning curve (pass --test).",
        )
    mode = resolve_mode(options, evidence)
    curve = _cached_curve(case, evidence, mode, options)
    n, err = curve["n"], curve["error"]
    law = fit_power_law(n, err)
    n_full = float(len(case.train))
    full_err = float(err[n == n.max()].mean())  # measured at the largest size: n_full unless the proxy pool was capped
    gain = law.gain_from_doubling(n_full)
    metrics: dict[str, float | int | bool | None] = {
        "train_size": int(n_full),
        "curve_max_rows": int(n.max()),
        "curve_extrapolated": bool(n.max() < n_full),
        "error_at_full_size": full_err if n.max() >= n_full else float(law(n_full)),
        "error_at_largest_measured": full_err,
        "power_law_a": law.a,
        "power_law_b": law.b,
        "irreducible_error": law.c,
        "fit_r2": law.r2,
        "fit_rmse": law.rmse,
        "predicted_error_at_2x": float(law(2 * n_full)),
        "gain_from_doubling": gain,
    }
    boot_need = _uncertainty(evidence, (n, err, law), n_full, full_err, len(test), options, metrics)
    findings: list[Finding] = []
    # no test set can gain more than its measured error: an ill-fitting law on a flat, noisy curve
    # extrapolates gains above 1 point on saturated tasks at 0 % error (validation suite, docs/validation.md)
    decisive = min(gain, full_err)
    metrics["gain_from_doubling_decisive"] = decisive
    status = "warn" if decisive > options.warn_gain_from_doubling else "ok"
    if status == "warn":
        findings.append(
            Finding(
                "steep_learning_curve",
                f"doubling the {int(n_full):,} training samples is predicted to lower the error by {gain:.1%} (measured error now {full_err:.1%}, threshold {options.warn_gain_from_doubling:.1%})",
            )
        )
    if options.target_accuracy is not None:
        status = _target(law, n_full, full_err, boot_need, options, metrics, findings, status)
    counts = class_counts(case.train.y, case.n_classes)  # type: ignore[arg-type]
    per_class_full = curve["per_class"][n == n.max()].mean(axis=0)
    per_class_small = curve["per_class"][n == n.min()].mean(axis=0)
    hungry = _hungry_classes(case, per_class_full, per_class_small, counts, gain, full_err)
    if hungry is not None:
        findings.append(hungry)
    summary = _summary(status, law, gain, n_full, full_err, metrics, mode, options)
    metrics["retrained_model"] = mode == "model"
    remedy = None
    if status in ("warn", "fail"):
        remedy = Remedy(
            command="dlclinic treat data.quantity",
            description="labels to buy for target accuracies (labels_to_buy.json; see data.labeling_cost for which samples to label first), and the augmentation policy that helps most, chosen on held-out train rows and verified on test",
        )
    return CheckResult(
        id="data.quantity",
        status=status,  # type: ignore[arg-type]
        summary=summary,
        metrics=metrics,
        thresholds={
            "gain_from_doubling.warn": options.warn_gain_from_doubling,
            "target_accuracy": options.target_accuracy,
        },
        findings=tuple(findings),
        remedy=remedy,
        details=_details(case, mode, n, err, law, n_full, counts, per_class_small, per_class_full),
    )


CHECK = CheckSpec(
    id="data.quantity",
    requires=(("embeddings", "train"), ("embeddings", "test"), ("probs", "test"), ("oof_probs", "train")),
    options=QuantityOptions,
    run=run,
    description="learning curve on stratified subsets, power-law fit, gain from doubling the data, samples for a target accuracy",
)


@dataclass(frozen=True)
class QuantityParams:
    """``policies``: augmentation policies to try (empty: all for the modality); ``copies``:
    augmented copies added to train; ``val_fraction``: train rows held out to choose the
    policy; ``targets``: accuracies for the labels-to-buy table (empty: measured + 1/2/5 points)."""

    policies: tuple[str, ...] = ()
    copies: int = 1
    val_fraction: float = 0.2
    targets: tuple[float, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.copies <= 4:
            raise ValueError(f"`1 <= copies <= 4` must hold, but got copies={self.copies}")
        if not 0.1 <= self.val_fraction <= 0.5:
            raise ValueError(f"`0.1 <= val_fraction <= 0.5` must hold, but got val_fraction={self.val_fraction}")
        if not all(0 < t < 1 for t in self.targets):
            raise ValueError(f"expected target accuracies in (0, 1), but got targets={self.targets}")


def labels_to_buy(a: float, b: float, c: float, n_train: int, targets: list[float]) -> list[dict[str, Any]]:
    """Per target accuracy: training-set size the power law needs, and the labels to add (``None``: beyond the curve's floor).

    Example:
        >>> rows = labels_to_buy(1.0, 0.5, 0.02, 400, [0.9, 0.99])
        >>> rows[0]["samples_needed"], rows[0]["labels_to_add"], rows[1]["reachable"]
        (157, 0, False)
    """
    law = PowerLaw(a, b, c, math.nan, math.nan)
    out = []
    for t in targets:
        need = samples_for_error(law, 1.0 - t)
        ok = math.isfinite(need)
        out.append(
            {
                "target_accuracy": t,
                "reachable": ok,
                "samples_needed": int(math.ceil(need)) if ok else None,
                "labels_to_add": max(0, int(math.ceil(need)) - n_train) if ok else None,
            }
        )
    return out


def _augmented(
    x: np.ndarray, y: np.ndarray, policy: str, copies: int, modality: str, seed: int
) -> tuple[np.ndarray, np.ndarray]:

    if policy == "none":  # the control sees the same number of rows (and optimiser steps) as the augmented runs
        return np.concatenate([x] * (copies + 1)), np.concatenate([y] * (copies + 1))
    xs = [x] + [augment_copy(x, y, policy, modality=modality, seed=seed * 100 + i) for i in range(copies)]
    return np.concatenate(xs), np.concatenate([y] * (copies + 1))


def _policies(ctx: TreatContext, params: QuantityParams) -> tuple[str, ...]:
    """Check what the treatment needs; the augmentation policies to try."""
    case = ctx.case
    test = case.get("test")
    if test is None or test.y is None:
        raise ConfigError("treat data.quantity needs a labelled test split to verify the treatment (pass --test)")
    if ctx.retrain is None:
        raise ConfigError(
            "treat data.quantity retrains the model, so it needs the architecture: pass --model file.py:factory"
        )
    if case.train.y is None:
        raise ConfigError("treat data.quantity needs train labels")
    available = policies_for(case.modality)
    unknown = [p for p in params.policies if p not in available]
    if unknown:
        raise ConfigError(
            f"treat data.quantity: unknown augmentation polic{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)} for {case.modality} data; expected some of: {', '.join(available)}"
        )
    return tuple(params.policies) or available


def _buy_table(m: Mapping[str, Any], n_train: int, params: QuantityParams) -> list[dict[str, Any]]:
    """Labels to buy from the check's fitted power law (empty when the check has none)."""
    if not all(
        isinstance(m.get(k), (int, float))
        for k in ("power_law_a", "power_law_b", "irreducible_error", "error_at_full_size")
    ):
        return []
    acc_now = 1.0 - float(m["error_at_full_size"])
    targets = list(params.targets) or [round(t, 4) for t in (acc_now + 0.01, acc_now + 0.02, acc_now + 0.05) if t < 1]
    return labels_to_buy(
        float(m["power_law_a"]), float(m["power_law_b"]), float(m["irreducible_error"]), n_train, targets
    )


def _held_out_scores(
    ctx: TreatContext, x: np.ndarray, y: np.ndarray, policies: tuple[str, ...], params: QuantityParams
) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Accuracy on held-out train rows after training on the rest with each policy (and ``none``)."""
    assert ctx.retrain is not None
    rng = np.random.default_rng(params.seed)
    order = rng.permutation(len(x))
    cut = int(round(params.val_fraction * len(x)))
    val, fit_rows = np.sort(order[:cut]), np.sort(order[cut:])
    scores: dict[str, float] = {}
    with ctx.progress.step(
        "choosing an augmentation policy on held-out train rows", total=len(policies) + 1
    ) as advance:
        for policy in ("none", *policies):
            xa, ya = _augmented(x[fit_rows], y[fit_rows], policy, params.copies, ctx.case.modality, params.seed)
            net = ctx.retrain(xa, ya, ctx.fit_config.seed)
            scores[policy] = float((predict_logits(net, x[val]).argmax(1) == y[val]).mean())
            advance(1)
    return scores, val, fit_rows


def _retrain_augmented(
    ctx: TreatContext,
    chosen: str,
    x: np.ndarray,
    y: np.ndarray,
    params: QuantityParams,
    before_m: dict[str, float | int | None],
    after_m: dict[str, float | int | None],
    notes: list[str],
) -> tuple[Any, Report, str]:
    """Retrain with the chosen policy and, as the paired control, without it; verify on test."""
    assert ctx.retrain is not None
    case, cfg = ctx.case, ctx.fit_config
    test = case.splits["test"]
    y_test = np.asarray(test.y)
    xa, ya = _augmented(x, y, chosen, params.copies, case.modality, params.seed)
    with ctx.progress.step(f"retraining with {chosen} augmentation", total=2) as advance:
        xr, yr = _augmented(x, y, "none", params.copies, case.modality, params.seed)
        reference = ctx.retrain(xr, yr, cfg.seed)  # same rows and steps, no augmentation
        advance(1)
        model = ctx.retrain(xa, ya, cfg.seed)
        advance(1)
    ok_before = predict_logits(reference, usable_inputs(test.x)).argmax(1) == y_test
    ok_after = predict_logits(model, usable_inputs(test.x)).argmax(1) == y_test
    low, high = paired_accuracy_ci(ok_before, ok_after)
    mc = mcnemar_test(ok_after, ok_before)
    before_m["test_accuracy"] = float(ok_before.mean())
    after_m.update(
        test_accuracy=float(ok_after.mean()),
        gain_ci_low=low,
        gain_ci_high=high,
        mcnemar_p=mc.p_exact,
        train_rows=len(ya),
    )
    action = f"retrain with {params.copies} {chosen}-augmented cop{'y' if params.copies == 1 else 'ies'} of train (same recipe and seed); test accuracy {ok_before.mean():.1%} → {ok_after.mean():.1%}"
    notes.append(
        f"on the {len(y_test)} test rows, paired 95 % CI of the gain [{low:+.3f}, {high:+.3f}], exact McNemar p={mc.p_exact:.2g}"
    )
    treated = dataclasses.replace(
        case,
        model=model,
        model_source=f"{case.model_source.replace(', from cache', '')}, retrained with {chosen} augmentation",
    )
    after = ctx.measure(treated)
    notes.append(
        "data.quantity describes the data (its learning curve), so its status moves little after augmentation: the paired test accuracy above is the verification"
    )
    return model, after, action


def _buy_notes(buy: list[dict[str, Any]], m: Mapping[str, Any]) -> list[str]:
    notes = []
    if buy and not m.get("retrained_model", False):
        notes.append(
            "the labels-to-buy figures invert the proxy learning curve (a head on the model's embeddings, which learned from every train row): it is flatter than the model's own curve, so read them as a lower bound on what more data gives; run the check with --option data.quantity.mode=model for the retrained-model curve"
        )
    for row in buy:
        if row["reachable"]:
            notes.append(
                f"{row['target_accuracy']:.1%} accuracy: about {row['samples_needed']:,} training samples by the fitted curve ({row['labels_to_add']:,} more labels)"
            )
        else:
            notes.append(
                f"{row['target_accuracy']:.1%} accuracy: beyond the curve's floor — not reachable with more data of this kind alone"
            )
    return notes


def _write_artifacts(
    out_dir: Path,
    m: Mapping[str, Any],
    n_train: int,
    buy: list[dict[str, Any]],
    chosen: str,
    scores: dict[str, float],
    model: Any,
    treated_model: bool,
) -> dict[str, str]:
    path = write_json(
        out_dir / "labels_to_buy.json",
        {
            "train_size": n_train,
            "power_law": {
                "a": m.get("power_law_a"),
                "b": m.get("power_law_b"),
                "c": m.get("irreducible_error"),
                "curve": "retrained model" if m.get("retrained_model") else "proxy (head on embeddings)",
            },
            "targets": buy,
            "augmentation": {"chosen": chosen, "held_out_accuracy": scores},
        },
    )
    artifacts = {"labels_to_buy": str(path)}
    if treated_model:
        artifacts["model"] = str(write_weights(model, out_dir / "model_treated.safetensors"))
    return artifacts


def treat_quantity(ctx: TreatContext, params: QuantityParams) -> TreatOutcome:
    """Labels-to-buy table from the fitted curve; augmentation chosen on held-out train rows, verified on test."""
    case = ctx.case
    policies = _policies(ctx, params)
    before = ctx.measure(case)
    m = before[ctx.challenge_id].metrics
    n_train = len(case.train)
    buy = _buy_table(m, n_train, params)
    x, y = usable_inputs(case.train.x), np.asarray(case.train.y)
    scores, val, fit_rows = _held_out_scores(ctx, x, y, policies, params)
    best = max(policies, key=lambda p: scores[p])
    chosen = best if scores[best] > scores["none"] else "none"
    before_m: dict[str, float | int | None] = {"train_rows": n_train, "val_accuracy_no_augmentation": scores["none"]}
    after_m: dict[str, float | int | None] = {f"val_accuracy_{p}": s for p, s in scores.items() if p != "none"}
    notes = [
        f"policy chosen on {len(val)} held-out train rows (trained on the other {len(fit_rows)}): "
        + ", ".join(f"{p} {s:.1%}" for p, s in scores.items())
    ]
    model = case.model
    if chosen == "none":
        action = "no augmentation policy beat training without augmentation on held-out train rows; the model is unchanged (labels_to_buy.json says what more data would bring)"
        after = before
    else:
        model, after, action = _retrain_augmented(ctx, chosen, x, y, params, before_m, after_m, notes)
    notes += _buy_notes(buy, m)
    artifacts: dict[str, str] = {}
    if ctx.out_dir is not None:
        artifacts = _write_artifacts(ctx.out_dir, m, n_train, buy, chosen, scores, model, model is not case.model)
    return conclude(
        ctx,
        before=before,
        after=after,
        action=action,
        before_values=before_m,
        after_values=after_m,
        artifacts=artifacts,
        notes=notes,
    )


REMEDY = RemedySpec(
    id="data.quantity",
    params=QuantityParams,
    run=treat_quantity,
    description="Labels to buy for target accuracies (inverted learning curve); augmentation policy chosen on held-out train rows and verified on test.",
)
