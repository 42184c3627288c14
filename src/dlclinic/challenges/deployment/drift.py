"""deployment.drift — does the deploy stream, window by window, still look like the held-out reference?

The check streams the ``deploy`` split, in its order, through the same window analysis as
``dlclinic monitor`` (:func:`dlclinic.monitoring.evaluate_stream`) with the held-out ``test``
split as reference: embedding MMD, PSI/χ² of predicted classes, confidence shift, accuracy
estimated without labels (CBPE, temperature-calibrated on test) and observed accuracy where
deploy labels exist. Holm's procedure over all windows and tests keeps the chance of any
false alarm on a stationary stream at ``alpha``.

The remedy acts on the windows that drifted (retraining trigger, recalibration):

* without deploy labels, it writes the **retraining trigger** (``drift_trigger.json``: the
  drifted windows, their rows, the reasons): label these rows, then run it again;
* with labels, it splits the deploy rows at random into an *adapt* part (``adapt_fraction``)
  and an *evaluation* part **before** choosing windows: the windows are chosen by running
  the check on the adapt rows alone (in time order), and each drifted window's time span
  selects the evaluation rows that verify the treatment. Had the windows been chosen on all
  rows, the evaluation rows would have been picked partly *because* the current model
  erred on them, and any retrained model would look better there (regression to the mean).
  Then it
  - **recalibrates**: the temperature that fits the drifted adapt rows (the model's
    confidences on the new data), verified by negative log-likelihood and ECE on the
    drifted evaluation rows;
  - **retrains** (when the architecture is known): the case's recipe and seed on train plus
    the drifted adapt rows, verified against the current model on the drifted evaluation
    rows, paired (bootstrap interval and exact McNemar test).

Neither the choice of windows nor any training sees the evaluation rows. The check is then
measured again with the treated model; input drift of the stream is a property of the data
and may persist after a successful treatment — the accuracy on the drifted rows is what
the treatment is for.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlclinic.core.atomic import write_json, write_weights
from dlclinic.core.case import Case, usable_inputs
from dlclinic.core.errors import ConfigError
from dlclinic.core.evidence import Evidence
from dlclinic.core.inference import predict_logits
from dlclinic.core.registry import CheckSpec, RemedySpec, TreatContext, TreatOutcome, conclude
from dlclinic.core.results import CheckResult, Finding, Remedy, Status
from dlclinic.functional.calibration import TemperatureScaled, estimate_ece, fit_temperature
from dlclinic.functional.stats import mcnemar_test, paired_accuracy_ci
from dlclinic.monitoring import MonitorConfig, MonitorResult, evaluate_stream, softmax
from dlclinic.providers.deployment import deployment_reference, missing_reference

__all__ = ["CHECK", "REMEDY", "DriftOptions", "DriftParams", "drift_result", "drifted_rows", "run_drift", "treat_drift"]


# ----------------------------------------------------------------------------- check


@dataclass(frozen=True)
class DriftOptions:
    """Windows and alert levels of deployment.drift (see :class:`dlclinic.monitoring.MonitorConfig`).

    The false-alarm level is ``alpha`` for the whole deploy stream (Holm over windows × tests).
    """

    window: int = 100
    alpha: float = 0.01
    warn_accuracy_drop: float = 0.05
    fail_accuracy_drop: float = 0.10
    max_reference_rows: int = 300
    seed: int = 0

    def __post_init__(self) -> None:
        if self.window < 10:
            raise ValueError(f"`window >= 10` must hold, but got window={self.window}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"`0 < alpha < 1` must hold, but got alpha={self.alpha}")


def _known_accuracy(result: MonitorResult) -> list[tuple[float, float]]:
    """``(estimated, observed)`` accuracy of the windows with enough fed-back labels."""
    return [
        (w.estimated_accuracy, w.accuracy)
        for w in result.windows
        if w.accuracy is not None and w.accuracy_n >= result.config.min_labels
    ]


def _drift_metrics(
    result: MonitorResult, alerts: list[Any], est: np.ndarray, known: list[tuple[float, float]]
) -> dict[str, float | int | bool | None]:
    ws = result.windows
    metrics: dict[str, float | int | bool | None] = {
        "windows": len(ws),
        "alert_windows": len(alerts),
        "drifted_windows": sum(w.drifted for w in ws),
        "first_alert_window": result.first_alert,
        "reference_accuracy": result.reference_accuracy,
        "reference_estimated_accuracy": result.reference_estimated_accuracy,
        "min_estimated_accuracy": float(est.min()),
        "max_estimated_drop": float(max(w.estimated_drop for w in ws)),
        "max_psi": float(max(w.psi for w in ws)),
        "max_mmd2": max((w.mmd2 for w in ws if w.mmd2 is not None), default=None),
        "temperature": result.temperature,
        "permutations": result.permutations,
    }
    if known:
        errs = np.array([e - a for e, a in known])
        metrics["min_observed_accuracy"] = float(min(a for _, a in known))
        metrics["cbpe_mean_error"] = float(errs.mean())
        metrics["cbpe_max_abs_error"] = float(np.abs(errs).max())
    return metrics


def _drift_findings(alerts: list[Any]) -> tuple[Finding, ...]:
    return tuple(
        Finding(
            "drift_window",
            f"window {w.index} (rows {w.start}–{w.stop - 1}{'' if w.t_start is None else f', t {w.t_start:.0f}–{w.t_end:.0f}'}): "
            + "; ".join(w.reasons),
            extra={"window": w.index, "status": w.status},
        )
        for w in alerts
    )


def _drift_summary(
    result: MonitorResult,
    status: Status,
    source: str,
    alerts: list[Any],
    est: np.ndarray,
    metrics: dict[str, float | int | bool | None],
    known: list[tuple[float, float]],
) -> str:
    ws = result.windows
    if status == "ok":
        return f"No window of {source} differs from the reference ({len(ws)} windows, family-wise false-alarm level {result.config.alpha:.0%}); estimated accuracy {est.min():.1%}–{est.max():.1%} vs {result.reference_estimated_accuracy:.1%}."
    first = ws[result.first_alert]  # type: ignore[index]
    drop_txt = f"estimated accuracy (CBPE) down to {est.min():.1%} from {result.reference_estimated_accuracy:.1%}"
    if known:
        drop_txt += f", observed {metrics['min_observed_accuracy']:.1%} vs {result.reference_accuracy:.1%}"
    return f"Drift from window {first.index} on ({len(alerts)} of {len(ws)} windows alert): {drop_txt}."


def _drift_remedy(result: MonitorResult, alerts: list[Any]) -> Remedy:
    acc_fell = any("accuracy" in r for w in alerts for r in w.reasons)
    what = (
        "Accuracy fell: retrain (or fine-tune) on labelled data from the drifted windows, starting at window "
        + str(result.first_alert)
        if acc_fell
        else "Inputs moved but accuracy held: recalibrate (temperature on recent labelled rows) and keep watching; retrain if the observed accuracy falls"
    )
    return Remedy(
        command="dlclinic treat deployment.drift",
        description=what
        + " (the remedy writes the rows to label as drift_trigger.json, and with labels recalibrates and retrains on half of the drifted rows, verified on the other half). Label-free estimates (CBPE) assume calibration carries over; confirm with fed-back labels (POST /feedback, `dlclinic monitor`).",
    )


def _drift_plots(
    result: MonitorResult, est: np.ndarray, *, labels_known: bool, seconds_windows: bool
) -> list[dict[str, Any]]:
    ws = result.windows
    obs = [w.accuracy for w in ws]
    series_acc: list[dict[str, Any]] = [{"label": "estimated (CBPE)", "x": list(range(len(ws))), "y": est.tolist()}]
    if labels_known and any(a is not None for a in obs):
        series_acc.append(
            {
                "label": "observed",
                "x": [i for i, a in enumerate(obs) if a is not None],
                "y": [a for a in obs if a is not None],
            }
        )
    series_acc.append(
        {"label": "reference (est.)", "x": [0, len(ws) - 1], "y": [result.reference_estimated_accuracy] * 2}
    )
    return [
        {
            "kind": "line",
            "title": "Accuracy per window",
            "xlabel": "window (seconds)" if seconds_windows else "window",
            "ylabel": "accuracy",
            "series": series_acc,
        },
        {
            "kind": "line",
            "title": "Shift per window",
            "xlabel": "window",
            "ylabel": "statistic",
            "series": [
                s
                for s in (
                    {"label": "PSI (predicted classes)", "x": list(range(len(ws))), "y": [w.psi for w in ws]},
                    {"label": "embedding MMD²", "x": list(range(len(ws))), "y": [w.mmd2 for w in ws]}
                    if ws[0].mmd2 is not None
                    else None,
                )
                if s is not None
            ],
        },
    ]


def _drift_table(result: MonitorResult) -> dict[str, Any]:
    ws = result.windows
    labels = [str(w.index) for w in ws]
    return {
        "title": "Windows vs reference (p-values Holm-adjusted)",
        "columns": ["window", "rows", "status", "est. acc", "obs. acc", "MMD² (p)", "PSI", "χ² p", "conf. mean (p)"],
        "rows": [
            [
                labels[i],
                f"{w.start}–{w.stop - 1}",
                w.status,
                f"{w.estimated_accuracy:.3f}",
                "" if w.accuracy is None else f"{w.accuracy:.3f} (n={w.accuracy_n})",
                "" if w.mmd2 is None else f"{w.mmd2:.3g} ({w.adjusted.get('mmd', 1):.2g})",
                f"{w.psi:.3f}",
                f"{w.adjusted.get('chi2', 1):.2g}",
                f"{w.confidence_mean:.3f} ({w.adjusted.get('confidence', 1):.2g})",
            ]
            for i, w in enumerate(ws)
        ],
    }


def drift_result(result: Any, *, source: str, labels_known: bool, seconds_windows: bool = False) -> CheckResult:
    """The deployment.drift row from a :class:`~dlclinic.monitoring.MonitorResult` (checkup and ``monitor`` share it)."""
    ws = result.windows
    if not ws:
        return CheckResult(
            id="deployment.drift",
            status="not_examined",
            summary=f"No complete window in {source}: nothing to compare with the reference yet.",
        )
    status: Status = result.status  # type: ignore[assignment]
    alerts = [w for w in ws if w.status != "ok"]
    est = np.array([w.estimated_accuracy for w in ws])
    known = _known_accuracy(result)
    metrics = _drift_metrics(result, alerts, est, known)
    cfg = result.config
    return CheckResult(
        id="deployment.drift",
        status=status,
        summary=_drift_summary(result, status, source, alerts, est, metrics, known),
        metrics=metrics,
        thresholds={
            "alpha.family_wise": cfg.alpha,
            "accuracy_drop.warn": cfg.warn_accuracy_drop,
            "accuracy_drop.fail": cfg.fail_accuracy_drop,
            "window": cfg.window,
        },
        findings=_drift_findings(alerts),
        remedy=_drift_remedy(result, alerts) if status != "ok" else None,
        details={
            "plots": _drift_plots(result, est, labels_known=labels_known, seconds_windows=seconds_windows),
            "tables": [_drift_table(result)],
            "windows": [w.to_dict() for w in ws],
            "note": "CBPE (estimated accuracy) reads accuracy off calibrated confidences: it needs the temperature fitted on the reference to carry over, and it cannot see concept shift (labels changing for the same inputs).",
        },
    )


def run_drift(case: Case, evidence: Evidence, options: DriftOptions) -> CheckResult:
    """Window the deploy split in order and compare each window with the test split."""
    deploy = case.get("deploy")
    if deploy is None:
        return CheckResult(
            id="deployment.drift",
            status="not_examined",
            summary="Needs a deploy split (rows seen after deployment, in time order; pass --deploy) or a prediction log (`dlclinic monitor`).",
        )
    missing = missing_reference(case)
    if missing:
        return CheckResult(id="deployment.drift", status="not_examined", summary=f"Needs {missing}.")
    ref = deployment_reference(case, evidence)
    n = len(deploy)
    window = min(options.window, max(10, n))
    cfg = MonitorConfig(
        window=window,
        min_window=max(2, window // 2),
        alpha=options.alpha,
        warn_accuracy_drop=options.warn_accuracy_drop,
        fail_accuracy_drop=options.fail_accuracy_drop,
        max_reference_rows=options.max_reference_rows,
        seed=options.seed,
    )
    emb = evidence.get("embeddings", "deploy") if ref.embeddings is not None else None
    labels = deploy.y
    res = evaluate_stream(ref, softmax(evidence.get("logits", "deploy")), embeddings=emb, labels=labels, config=cfg)
    return drift_result(
        res, source=f"the deploy split ({n} rows in windows of {window})", labels_known=labels is not None
    )


CHECK = CheckSpec(
    id="deployment.drift",
    requires=(("logits", "test"), ("embeddings", "test"), ("logits", "deploy"), ("embeddings", "deploy")),
    options=DriftOptions,
    run=run_drift,
    description="windows of the deploy split vs test: embedding MMD, PSI/χ² of predictions, confidence shift, CBPE estimated accuracy, observed accuracy; Holm-controlled alerts",
)


# ----------------------------------------------------------------------------- remedy

_MODES = ("auto", "retrain", "recalibrate", "trigger")


@dataclass(frozen=True)
class DriftParams:
    """``mode``: ``auto`` (retrain when the architecture is known and labels exist, else
    recalibrate; only the trigger without labels), ``retrain``, ``recalibrate`` or
    ``trigger``; ``adapt_fraction``: share of the deploy rows that choose the windows and
    adapt the model (the rest verifies); ``seed``: the adapt/evaluation split."""

    mode: str = "auto"
    adapt_fraction: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"`mode` must be one of {', '.join(_MODES)}, but got mode={self.mode!r}")
        if not 0.1 <= self.adapt_fraction <= 0.9:
            raise ValueError(f"`0.1 <= adapt_fraction <= 0.9` must hold, but got adapt_fraction={self.adapt_fraction}")


def drifted_rows(windows: list[dict[str, Any]], positions: np.ndarray | None = None) -> np.ndarray:
    """Row indices (sorted, unique) of every window whose status is not ``ok``.

    ``positions``: the stream rows the windowed rows stand for (the check ran on a subset of
    the deploy split); the result is then in those positions.
    """
    rows = [np.arange(int(w["start"]), int(w["stop"])) for w in windows if w.get("status") != "ok"]
    out = np.unique(np.concatenate(rows)) if rows else np.zeros(0, dtype=np.int64)
    return out if positions is None else np.asarray(positions)[out]


def _spans(windows: list[dict[str, Any]], positions: np.ndarray) -> list[tuple[int, int]]:
    """The stream positions ``[first, last]`` each drifted window covers."""
    return [
        (int(positions[int(w["start"])]), int(positions[int(w["stop"]) - 1]))
        for w in windows
        if w.get("status") != "ok"
    ]


def _nll(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None))))


def _windows_of(result: CheckResult) -> list[dict[str, Any]]:
    return list(result.details.get("windows", [])) if isinstance(result.details, dict) else []


def _resolve_mode(ctx: TreatContext, params: DriftParams, labelled: bool) -> str:
    """``params.mode`` with ``auto`` decided; a ConfigError when the mode cannot run on this case."""
    mode = params.mode
    if mode == "auto":
        mode = "trigger" if not labelled else ("retrain" if ctx.retrain is not None else "recalibrate")
    if mode in ("retrain", "recalibrate") and not labelled:
        raise ConfigError(
            f"treat deployment.drift --option mode={mode} needs labels for the deploy rows (a y column or --deploy-labels); mode=trigger writes the rows to label"
        )
    if mode == "retrain" and ctx.retrain is None:
        raise ConfigError(
            "treat deployment.drift --option mode=retrain retrains the model, so it needs the architecture: pass --model file.py:factory"
        )
    return mode


def _trigger(result: CheckResult, windows: list[dict[str, Any]], rows: np.ndarray, mode: str) -> dict[str, Any]:
    """The retraining trigger (``drift_trigger.json`` without its row list)."""
    drifted = [
        {
            "window": int(w["index"]),
            "rows": [int(w["start"]), int(w["stop"]) - 1],
            "status": w["status"],
            "reasons": list(w.get("reasons", [])),
        }
        for w in windows
        if w.get("status") != "ok"
    ]
    return {
        "status": result.status,
        "drifted_windows": drifted,
        "rows_to_label": int(len(rows)),
        "action": {
            "trigger": "label these rows, then retrain on train + them",
            "recalibrate": "temperature refitted on the drifted rows",
            "retrain": "retrained on train + half of the drifted rows",
        }[mode],
    }


@dataclass
class _Adaptation:
    """What the adapt/evaluation split leaves for recalibration or retraining."""

    x: np.ndarray
    y: np.ndarray
    adapt: np.ndarray
    held: np.ndarray


def _split_adapt_eval(ctx: TreatContext, params: DriftParams, notes: list[str]) -> _Adaptation:
    """Choose the drifted windows on a random adapt part only; the drifted evaluation rows in their spans verify."""
    case = ctx.case
    deploy = case.splits["deploy"]
    y = np.asarray(deploy.y)
    rng = np.random.default_rng(params.seed)
    n = len(deploy)
    in_adapt = np.zeros(n, dtype=bool)
    in_adapt[rng.permutation(n)[: int(round(params.adapt_fraction * n))]] = True
    adapt_pos, eval_pos = np.flatnonzero(in_adapt), np.flatnonzero(~in_adapt)
    # choose the windows on the adapt rows only, so the evaluation rows play no part in the choice
    chosen = ctx.measure(case.with_split_rows("deploy", adapt_pos))[ctx.challenge_id]
    chosen_windows = _windows_of(chosen)
    adapt = drifted_rows(chosen_windows, adapt_pos)
    spans = _spans(chosen_windows, adapt_pos)
    held = np.array([i for i in eval_pos if any(a <= i <= b for a, b in spans)], dtype=np.int64)
    notes.append(
        f"windows chosen on {len(adapt_pos)} of the {n} deploy rows ({chosen.status}: {len(spans)} drifted); the other {len(eval_pos)} rows only verify"
    )
    if min(len(adapt), len(held)) < 10:
        raise ConfigError(
            f"treat deployment.drift: the windows chosen on the adapt rows leave {len(adapt)} drifted rows to adapt and {len(held)} to verify; expected at least 10 of each (more deploy rows, or a smaller --option window=)"
        )
    return _Adaptation(x=usable_inputs(deploy.x), y=y, adapt=adapt, held=held)


def _retrain(
    ctx: TreatContext,
    ad: _Adaptation,
    p_old: np.ndarray,
    before_m: dict[str, float | int | None],
    after_m: dict[str, float | int | None],
    notes: list[str],
) -> tuple[Any, str]:
    """Retrain on train + the drifted adapt rows, recalibrate on test, compare paired on the drifted evaluation rows."""
    case = ctx.case
    assert ctx.retrain is not None and case.train.y is not None
    adapt, held, y_h = ad.adapt, ad.held, ad.y[ad.held]
    with ctx.progress.step("retraining on train + drifted rows", total=1) as advance:
        x_fit = np.concatenate([usable_inputs(case.train.x), ad.x[adapt]])
        y_fit = np.concatenate([case.train.y, ad.y[adapt]])
        retrained = ctx.retrain(x_fit, y_fit, ctx.fit_config.seed)
        advance(1)
    test = case.get("test")
    # recalibrate the retrained model on the held-out reference (its own confidences)
    t_new = (
        fit_temperature(predict_logits(retrained, usable_inputs(test.x)), test.y)
        if test is not None and test.y is not None
        else 1.0
    )
    p_new = softmax(predict_logits(retrained, ad.x[held]), t_new)
    ok_old, ok_new = p_old.argmax(1) == y_h, p_new.argmax(1) == y_h
    low, high = paired_accuracy_ci(ok_old, ok_new)
    mc = mcnemar_test(ok_new, ok_old)
    after_m.update(
        eval_accuracy=float(ok_new.mean()),
        eval_nll=_nll(p_new, y_h),
        eval_ece=estimate_ece(p_new, y_h),
        temperature=t_new,
        accuracy_gain_ci_low=low,
        accuracy_gain_ci_high=high,
        mcnemar_p=mc.p_exact,
        train_rows=len(y_fit),
    )
    before_m["train_rows"] = len(case.train)
    notes.append(
        f"on the {len(held)} drifted evaluation rows, accuracy {before_m['eval_accuracy']:.1%} → {after_m['eval_accuracy']:.1%} (paired 95 % CI of the gain [{low:+.3f}, {high:+.3f}], exact McNemar p={mc.p_exact:.2g})"
    )
    action = f"retrain on train + {len(adapt)} drifted adapt rows (same recipe and seed), temperature refitted on test; verified on {len(held)} drifted evaluation rows"
    return TemperatureScaled(retrained, t_new), action


def _adapt(
    ctx: TreatContext,
    params: DriftParams,
    mode: str,
    before_m: dict[str, float | int | None],
    after_m: dict[str, float | int | None],
    notes: list[str],
) -> tuple[Any, str]:
    """Recalibrate (and with ``mode="retrain"`` retrain) on the drifted adapt rows; the treated model and the action."""
    case = ctx.case
    ad = _split_adapt_eval(ctx, params, notes)
    adapt, held = ad.adapt, ad.held
    logits_old = predict_logits(case.model, ad.x[np.concatenate([adapt, held])])
    la, lh = logits_old[: len(adapt)], logits_old[len(adapt) :]
    y_h = ad.y[held]
    t = fit_temperature(la, ad.y[adapt])
    p_old, p_cal = softmax(lh), softmax(lh, t)
    before_m.update(
        eval_rows=len(held),
        eval_accuracy=float((p_old.argmax(1) == y_h).mean()),
        eval_nll=_nll(p_old, y_h),
        eval_ece=estimate_ece(p_old, y_h),
    )
    after_m.update(eval_rows=len(held), temperature=t, eval_nll=_nll(p_cal, y_h), eval_ece=estimate_ece(p_cal, y_h))
    model: Any = TemperatureScaled(case.model, t)
    action = f"recalibrate: temperature {t:.3g} fitted on {len(adapt)} drifted adapt rows, verified on {len(held)} drifted evaluation rows"
    after_m["eval_accuracy"] = before_m["eval_accuracy"]
    if mode == "retrain":
        model, action = _retrain(ctx, ad, p_old, before_m, after_m, notes)
    else:
        notes.append(
            f"on the {len(held)} drifted evaluation rows, NLL {before_m['eval_nll']:.3f} → {after_m['eval_nll']:.3f} and ECE {before_m['eval_ece']:.3f} → {after_m['eval_ece']:.3f}; the predicted classes are unchanged (temperature only rescales confidences)"
        )
    notes.append(
        "the re-measured drift check sees the treated model on the whole deploy stream, adapt rows included; the evaluation rows above (never used to choose windows or to train) are the verification. Input drift is a property of the data and can persist after a successful treatment"
    )
    return model, action


def treat_drift(ctx: TreatContext, params: DriftParams) -> TreatOutcome:
    """Trigger file always; recalibration and/or retraining on half of the drifted labelled rows, verified on the other half."""
    case = ctx.case
    deploy = case.get("deploy")
    if deploy is None:
        raise ConfigError(
            "treat deployment.drift needs the deploy split the check windows (pass --deploy, rows in time order)"
        )
    before = ctx.measure(case)
    res = before[ctx.challenge_id]
    windows = _windows_of(res)
    rows = drifted_rows(windows)
    mode = _resolve_mode(ctx, params, deploy.y is not None)
    trigger = _trigger(res, windows, rows, mode)
    before_m: dict[str, float | int | None] = {
        "drifted_windows": len(trigger["drifted_windows"]),
        "drifted_rows": int(len(rows)),
    }
    after_m: dict[str, float | int | None] = dict(before_m)
    notes: list[str] = []
    model = case.model
    artifacts: dict[str, str] = {}
    action = f"retraining trigger for {len(rows)} rows in {len(trigger['drifted_windows'])} drifted window(s)"

    if len(rows) == 0:
        notes.append("no window drifted: there is nothing to retrain or recalibrate on; the trigger file lists no rows")
    elif mode in ("retrain", "recalibrate"):
        model, action = _adapt(ctx, params, mode, before_m, after_m, notes)
    else:
        notes.append(
            "no labels for the deploy rows: label the rows listed in drift_trigger.json, then run `dlclinic treat deployment.drift` again to retrain on them"
        )

    treated = (
        case
        if model is case.model
        else dataclasses.replace(
            case,
            model=model,
            model_source=f"{case.model_source.replace(', from cache', '')}, {mode} on drifted windows",
        )
    )
    after = before if treated is case else ctx.measure(treated)
    if ctx.out_dir is not None:
        artifacts["trigger"] = str(
            write_json(ctx.out_dir / "drift_trigger.json", {**trigger, "rows": [int(i) for i in rows]})
        )
        if model is not case.model:
            artifacts["model"] = str(write_weights(model, ctx.out_dir / "model_treated.safetensors"))
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
    id="deployment.drift",
    params=DriftParams,
    run=treat_drift,
    description="Retraining trigger for the drifted windows; recalibration and retraining on half of their labelled rows, verified on the other half.",
)
