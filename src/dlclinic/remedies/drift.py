"""The deployment.drift remedy: act on the windows that drifted (retraining trigger, recalibration).

The check windows the deploy split in time order and names the windows that differ from
the reference. This remedy takes the rows of those windows and:

* without deploy labels, writes the **retraining trigger** (``drift_trigger.json``: the
  drifted windows, their rows, the reasons): label these rows, then run it again;
* with labels, splits the deploy rows at random into an *adapt* part (``adapt_fraction``)
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

from dlclinic.core.errors import ConfigError
from dlclinic.core.registry import RemedySpec, TreatContext, TreatOutcome

__all__ = ["REMEDY", "DriftParams", "drifted_rows", "treat_drift"]

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


def treat_drift(ctx: TreatContext, params: DriftParams) -> TreatOutcome:
    """Trigger file always; recalibration and/or retraining on half of the drifted labelled rows, verified on the other half."""
    from dlclinic.core.atomic import write_json, write_weights
    from dlclinic.core.inference import predict_logits
    from dlclinic.core.results import Treatment
    from dlclinic.functional.calibration import TemperatureScaled, estimate_ece, fit_temperature
    from dlclinic.functional.stats import mcnemar_test, paired_accuracy_ci
    from dlclinic.monitoring.reference import softmax

    case = ctx.case
    deploy = case.get("deploy")
    if deploy is None:
        raise ConfigError(
            "treat deployment.drift needs the deploy split the check windows (pass --deploy, rows in time order)"
        )
    before = ctx.measure(case)
    res = before[ctx.challenge_id]
    windows = list(res.details.get("windows", [])) if isinstance(res.details, dict) else []
    rows = drifted_rows(windows)
    labelled = deploy.y is not None
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
    trigger: dict[str, Any] = {
        "status": res.status,
        "drifted_windows": drifted,
        "rows_to_label": int(len(rows)),
        "action": {
            "trigger": "label these rows, then retrain on train + them",
            "recalibrate": "temperature refitted on the drifted rows",
            "retrain": "retrained on train + half of the drifted rows",
        }[mode],
    }
    before_m: dict[str, float | int | None] = {"drifted_windows": len(drifted), "drifted_rows": int(len(rows))}
    after_m: dict[str, float | int | None] = dict(before_m)
    notes: list[str] = []
    model = case.model
    artifacts: dict[str, str] = {}
    action = f"retraining trigger for {len(rows)} rows in {len(drifted)} drifted window(s)"

    if len(rows) == 0:
        notes.append("no window drifted: there is nothing to retrain or recalibrate on; the trigger file lists no rows")
    elif mode in ("retrain", "recalibrate"):
        y = np.asarray(deploy.y)
        rng = np.random.default_rng(params.seed)
        n = len(deploy)
        in_adapt = np.zeros(n, dtype=bool)
        in_adapt[rng.permutation(n)[: int(round(params.adapt_fraction * n))]] = True
        adapt_pos, eval_pos = np.flatnonzero(in_adapt), np.flatnonzero(~in_adapt)
        # choose the windows on the adapt rows only, so the evaluation rows play no part in the choice
        chosen = ctx.measure(case.with_split_rows("deploy", adapt_pos))[ctx.challenge_id]
        chosen_windows = list(chosen.details.get("windows", [])) if isinstance(chosen.details, dict) else []
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
        x = np.nan_to_num(deploy.x)
        logits_old = predict_logits(case.model, x[np.concatenate([adapt, held])])
        la, lh = logits_old[: len(adapt)], logits_old[len(adapt) :]
        y_h = y[held]
        t = fit_temperature(la, y[adapt])
        p_old, p_cal = softmax(lh), softmax(lh, t)
        before_m.update(
            eval_rows=len(held),
            eval_accuracy=float((p_old.argmax(1) == y_h).mean()),
            eval_nll=_nll(p_old, y_h),
            eval_ece=estimate_ece(p_old, y_h),
        )
        after_m.update(eval_rows=len(held), temperature=t, eval_nll=_nll(p_cal, y_h), eval_ece=estimate_ece(p_cal, y_h))
        model = TemperatureScaled(case.model, t)
        action = f"recalibrate: temperature {t:.3g} fitted on {len(adapt)} drifted adapt rows, verified on {len(held)} drifted evaluation rows"
        after_m["eval_accuracy"] = before_m["eval_accuracy"]
        if mode == "retrain":
            assert ctx.retrain is not None and case.train.y is not None
            with ctx.progress.step("retraining on train + drifted rows", total=1) as advance:
                x_fit = np.concatenate([np.nan_to_num(case.train.x), x[adapt]])
                y_fit = np.concatenate([case.train.y, y[adapt]])
                retrained = ctx.retrain(x_fit, y_fit, ctx.fit_config.seed)
                advance(1)
            test = case.get("test")
            # recalibrate the retrained model on the held-out reference (its own confidences)
            t_new = (
                fit_temperature(predict_logits(retrained, np.nan_to_num(test.x)), test.y)
                if test is not None and test.y is not None
                else 1.0
            )
            lh_new = predict_logits(retrained, x[held])
            p_new = softmax(lh_new, t_new)
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
            model = TemperatureScaled(retrained, t_new)
            action = f"retrain on train + {len(adapt)} drifted adapt rows (same recipe and seed), temperature refitted on test; verified on {len(held)} drifted evaluation rows"
            notes.append(
                f"on the {len(held)} drifted evaluation rows, accuracy {before_m['eval_accuracy']:.1%} → {after_m['eval_accuracy']:.1%} (paired 95 % CI of the gain [{low:+.3f}, {high:+.3f}], exact McNemar p={mc.p_exact:.2g})"
            )
        else:
            notes.append(
                f"on the {len(held)} drifted evaluation rows, NLL {before_m['eval_nll']:.3f} → {after_m['eval_nll']:.3f} and ECE {before_m['eval_ece']:.3f} → {after_m['eval_ece']:.3f}; the predicted classes are unchanged (temperature only rescales confidences)"
            )
        notes.append(
            "the re-measured drift check sees the treated model on the whole deploy stream, adapt rows included; the evaluation rows above (never used to choose windows or to train) are the verification. Input drift is a property of the data and can persist after a successful treatment"
        )
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
    treatment = Treatment(
        challenge_id=ctx.challenge_id,
        action=action,
        before=before_m,
        after=after_m,
        before_status=res.status,
        after_status=after[ctx.challenge_id].status,
        artifacts=artifacts,
        notes=tuple(notes),
    )
    return TreatOutcome(treatment, before, after)


REMEDY = RemedySpec(
    id="deployment.drift",
    params=DriftParams,
    run=treat_drift,
    description="Retraining trigger for the drifted windows; recalibration and retraining on half of their labelled rows, verified on the other half.",
)
