"""data.quantity — learning curve, power-law extrapolation, and whether more data would help.

Two ways to measure the curve on stratified subsets (``fractions`` × ``seeds``):

* ``mode="model"`` retrains the real model with its recipe at each size — faithful, and the
  default (``"auto"``) when the recipe is cheap (the baseline dlclinic trains itself);
* ``mode="proxy"`` fits a logistic-regression head on the cached train embeddings — fast,
  the default for your own models. The embeddings were learned from the full train split,
  so the proxy curve is a lower bound on the steepness: a "steep" verdict is reliable, a
  "flat" one only says that a head on today's representation is saturated.

The fitted law ``err(n) = a·n^-b + c`` gives the error expected from doubling
the data and the number of samples needed for ``target_accuracy``. The check warns when
the gain from doubling, capped by the error measured at full size (no test set can gain
more than its error), exceeds ``warn_gain_from_doubling``; the bootstrap interval of the
gain is reported, not graded (with 5 sizes × 2 seeds its 5 % bound is too wide to decide).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from dlclinic.core.case import Case
from dlclinic.core.evidence import Evidence
from dlclinic.core.registry import CheckSpec
from dlclinic.core.results import CheckResult, Finding, Remedy
from dlclinic.functional.labels import class_counts
from dlclinic.functional.learning_curve import fit_power_law, samples_for_error, stratified_subset

__all__ = ["CHECK", "QuantityOptions", "learning_curve", "run"]


@dataclass(frozen=True)
class QuantityOptions:
    """Learning-curve settings and the verdict thresholds of data.quantity."""

    fractions: tuple[float, ...] = (0.1, 0.2, 0.4, 0.7, 1.0)
    seeds: int = 2
    mode: str = "auto"  # "auto" | "proxy" (head on cached embeddings) | "model" (retrain the model)
    target_accuracy: float | None = None
    warn_gain_from_doubling: float = 0.01
    max_iter: int = 300

    def __post_init__(self) -> None:
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


def learning_curve(case: Case, evidence: Evidence, mode: str, options: QuantityOptions) -> dict[str, np.ndarray]:
    """Measured curve: one row per (size, seed) with the test error, and per-class errors."""
    train, test = case.train, case.splits["test"]
    y_tr, y_te = train.y, test.y
    assert y_tr is not None and y_te is not None
    ns, errs, per_class = [], [], []
    if mode == "proxy":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        e_tr, e_te = evidence.get("embeddings", "train"), evidence.get("embeddings", "test")
    else:
        if evidence.retrain is None:
            raise ValueError("mode='model' needs the model's recipe (a factory); use mode='proxy'")
    with evidence.progress.step(f"learning curve ({mode})", total=len(options.fractions) * options.seeds) as advance:
        for frac in options.fractions:
            for seed in range(options.seeds if frac < 1 else 1):
                rng = np.random.default_rng(1000 + seed)
                rows = stratified_subset(y_tr, frac, rng) if frac < 1 else np.arange(len(y_tr))
                if frac >= 1 and mode == "model":
                    pred = evidence.get("probs", "test").argmax(1)  # the case's own model is the full-size point
                elif mode == "proxy":
                    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=options.max_iter))
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        clf.fit(e_tr[rows], y_tr[rows])
                    pred = clf.predict(e_te)
                else:
                    import torch

                    model = evidence.retrain(train.x[rows], y_tr[rows], seed)  # type: ignore[misc]
                    with torch.inference_mode():
                        pred = np.concatenate(
                            [
                                model(torch.from_numpy(test.x[i : i + 512])).argmax(1).numpy()
                                for i in range(0, len(test), 512)
                            ]
                        )
                wrong = pred != y_te
                ns.append(len(rows))
                errs.append(float(wrong.mean()))
                per_class.append(
                    [float(wrong[y_te == k].mean()) if np.any(y_te == k) else np.nan for k in range(case.n_classes)]
                )
                advance(1 if frac < 1 else options.seeds)
    return {"n": np.array(ns, dtype=np.float64), "error": np.array(errs), "per_class": np.array(per_class)}


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
    params = {"mode": mode, "fractions": list(options.fractions), "seeds": options.seeds, "max_iter": options.max_iter}
    curve = evidence.cached("learning_curve", params, lambda: learning_curve(case, evidence, mode, options))
    n, err = curve["n"], curve["error"]
    law = fit_power_law(n, err)
    n_full = float(len(case.train))
    full_err = float(err[n == n.max()].mean())
    gain = law.gain_from_doubling(n_full)
    metrics: dict[str, float | int | bool | None] = {
        "train_size": int(n_full),
        "error_at_full_size": full_err,
        "power_law_a": law.a,
        "power_law_b": law.b,
        "irreducible_error": law.c,
        "fit_r2": law.r2,
        "fit_rmse": law.rmse,
        "predicted_error_at_2x": float(law(2 * n_full)),
        "gain_from_doubling": gain,
    }
    # uncertainty: refit on bootstrap resamples of the measured points
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
    if boot_gain:
        metrics["gain_from_doubling_low"], metrics["gain_from_doubling_high"] = (
            float(v) for v in np.percentile(boot_gain, [5, 95])
        )
    metrics.update(backtest(n, err, n_full, full_err, len(test)))
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
    counts = class_counts(case.train.y, case.n_classes)  # type: ignore[arg-type]
    per_class_full = curve["per_class"][n == n.max()].mean(axis=0)
    per_class_small = curve["per_class"][n == n.min()].mean(axis=0)
    hungry = [
        k
        for k in range(case.n_classes)
        if np.isfinite(per_class_full[k])
        and per_class_small[k] - per_class_full[k] > 2 * max(gain, 0.005)
        and per_class_full[k] > full_err
    ]
    if hungry:
        findings.append(
            Finding(
                "data_hungry_classes",
                "classes whose error still falls steeply with more data and is above average: "
                + ", ".join(
                    f"{case.class_names[k]} ({int(counts[k])} samples, error {per_class_full[k]:.1%})" for k in hungry
                ),
            )
        )
    if status == "ok" and gain > options.warn_gain_from_doubling:
        summary = f"No gain from more data: the fitted curve predicts {gain:.1%} less error from doubling the {int(n_full):,} training samples, but the measured error is already {full_err:.1%} (fit R² {law.r2:.2f}: the curve does not describe this flat learning curve)."
    elif status == "ok":
        summary = f"The learning curve is flat: doubling the {int(n_full):,} training samples is predicted to lower the error by only {gain:.1%} (fit {float(law(n_full)):.1%} → {float(law(2 * n_full)):.1%}; measured now {full_err:.1%}, fit R² {law.r2:.2f})."
    else:
        summary = f"The learning curve is still steep: doubling the {int(n_full):,} training samples is predicted to lower the error by {gain:.1%} (fit {float(law(n_full)):.1%} → {float(law(2 * n_full)):.1%}; measured now {full_err:.1%}, fit R² {law.r2:.2f})."
    if metrics.get("backtest_predicted_error") is not None:
        verdict = "within" if metrics["backtest_ok"] else "outside"
        summary += f" Backtest: fitted on ≤70 % of the data, the curve predicts {metrics['backtest_predicted_error']:.1%} error at full size vs {full_err:.1%} measured ({verdict} its 95 % interval ±{metrics['backtest_tolerance']:.1%})."
    if mode == "proxy":
        summary += " (Proxy: a head on the cached embeddings, a lower bound on the steepness; mode='model' retrains the model.)"
    metrics["retrained_model"] = mode == "model"
    fit_x = np.geomspace(n.min(), 4 * n_full, 40)
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
        details={
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
        },
    )


CHECK = CheckSpec(
    id="data.quantity",
    requires=(("embeddings", "train"), ("embeddings", "test"), ("probs", "test")),
    options=QuantityOptions,
    run=run,
    description="learning curve on stratified subsets, power-law fit, gain from doubling the data, samples for a target accuracy",
)
