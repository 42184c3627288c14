"""model.gradients — do gradients flow through every layer while training?

Check: per-layer gradient norms across depth, their growth over steps, update ratios,
dead/saturated units, NaN/Inf and loss spikes in the shared monitored run
(:mod:`dlclinic.providers.training_run`).
Remedy: re-initialisation (Xavier for sigmoid/tanh networks, Kaiming for ReLU ones); when
gradients exploded, died or went NaN also the lower of the recipe's LR and a range test's
suggestion; verified by the same monitored run. When the gradients still vanish, the
treatment says so and points to normalisation/residuals.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from dlclinic.core.case import Case, usable_inputs
from dlclinic.core.evidence import Evidence
from dlclinic.core.recipe import fit, seed_everything
from dlclinic.core.registry import CheckSpec, RemedySpec, TreatContext, TreatOutcome, conclude
from dlclinic.core.results import CheckResult, Finding, Remedy, Status, worst
from dlclinic.functional.gradients import (
    GradientDiagnosis,
    TimeGradients,
    dead_relu_share,
    diagnose_gradients,
    gradients_through_time,
    recurrent_layers,
)
from dlclinic.providers.retraining import retrain_factory, suggest_lr
from dlclinic.providers.training_run import monitored_run, record_of, run_settings, subsample
from dlclinic.training.monitor import MonitorRecord


def _is_module(model: Any) -> bool:
    return hasattr(model, "named_modules") and hasattr(model, "parameters")


def _fmt(v: float) -> str:
    return f"{v:.2e}" if v and (abs(v) < 1e-2 or abs(v) >= 1e4) else f"{v:.3g}"


@dataclass(frozen=True)
class GradientsOptions:
    """Thresholds for gradient flow (see :mod:`dlclinic.functional.gradients`).

    A depth ratio below ``warn_ratio`` warns and below ``fail_ratio`` fails (healthy nets
    stay above 10⁻²); ``explode_growth`` is the tolerated growth of the global gradient
    norm; dead-ReLU / saturation shares above ``warn_dead`` / ``warn_saturated`` warn.
    Dead units are judged on the user's trained model (zero on every one of 1,024 train
    rows) when it is an nn.Module, else on the short run's last sampled batches.
    ``steps``, ``rows``, ``every``, ``lr``, ``batch_size``: the shared training run.

    Gradients through time (models with ``nn.RNN``/``LSTM``/``GRU``, measured on the user's
    trained model over ``bptt_rows`` train rows): warn when the loss gradient reaching a
    step falls below ``bptt_vanish_ratio`` of its value at the last step — and stays below —
    within the median row length, or when it grows above ``bptt_explode_growth`` going back.
    10⁻³ is the layer-depth limit above; at initialisation every recurrent cell forgets that
    fast (measured: the default tanh RNN, LSTM and GRU all fall below 10⁻³ within 10–14
    steps), so only a trained model is graded.
    """

    warn_ratio: float = 1e-3
    fail_ratio: float = 1e-5
    explode_growth: float = 100.0
    warn_dead: float = 0.5
    warn_saturated: float = 0.5
    warn_update_ratio: float = 0.1
    spike_z: float = 8.0
    steps: int = 300
    rows: int = 1024
    every: int = 10
    lr: float | None = None
    batch_size: int | None = None
    bptt_rows: int = 256
    bptt_vanish_ratio: float = 1e-3
    bptt_explode_growth: float = 1e3


def _recent(share: np.ndarray, last: int = 5) -> np.ndarray:
    """Per module, the smallest share over the last sampled steps (a unit must stay dead/saturated)."""
    if not share.size or not len(share):
        return np.zeros(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.asarray(np.nanmin(share[-last:], axis=0))


def _verdict_findings(diag: GradientDiagnosis, options: GradientsOptions) -> tuple[list[Status], list[Finding]]:
    """The finding for a broken-down, exploding, dead or vanishing gradient flow."""
    findings: list[Finding] = []
    statuses: list[Status] = ["ok"]
    if diag.verdict == "nonfinite":
        statuses.append("fail")
        findings.append(
            Finding(
                "nonfinite", f"NaN/Inf in the loss or gradients at {diag.nonfinite_steps} step(s): training broke down"
            )
        )
    elif diag.verdict == "exploding":
        statuses.append("fail")
        where = f" (largest at layer `{diag.layer}`)" if diag.layer else ""
        findings.append(
            Finding(
                "exploding",
                f"gradients exploded: the global gradient norm grew {_fmt(diag.growth)}× over its initial value{where}",
                extra={"layer": diag.layer},
            )
        )
    elif diag.verdict == "dead":
        statuses.append("fail")
        findings.append(
            Finding(
                "dead",
                f"all gradients were exactly zero on {diag.zero_grad_share:.0%} of sampled steps: the network died (e.g. after a too-large step)",
            )
        )
    elif diag.verdict == "vanishing":
        statuses.append("fail" if diag.min_ratio < options.fail_ratio else "warn")
        findings.append(
            Finding(
                "vanishing",
                f"gradients vanish towards the input: at layer `{diag.layer}` and below they are ≤ {_fmt(options.warn_ratio)} of the output layer's (smallest ratio {_fmt(diag.min_ratio)})",
                extra={"layer": diag.layer},
            )
        )
    return statuses, findings


def _trained_dead(case: Case) -> dict[str, float]:
    """Dead-ReLU share per activation of the user's trained model on 1,024 train rows (``{}``: not measurable)."""
    trained_dead: dict[str, float] = {}
    if _is_module(case.model):
        try:
            trained_dead = dead_relu_share(case.model, usable_inputs(case.train.x[subsample(len(case.train), 1024, 6)]))
        except Exception:  # a model that only runs in its own way: the re-run's numbers still stand
            trained_dead = {}
    return trained_dead


def _activation_findings(
    rec: MonitorRecord,
    dead: np.ndarray,
    sat: np.ndarray,
    trained_dead: dict[str, float],
    options: GradientsOptions,
    statuses: list[Status],
    findings: list[Finding],
) -> None:
    """Dead ReLU units (trained model, else short run) and saturated sigmoid/tanh outputs."""
    for name, kind, d, s in zip(
        rec.activations,
        rec.activation_kinds,
        dead if len(dead) else [math.nan] * len(rec.activations),
        sat if len(sat) else [math.nan] * len(rec.activations),
    ):
        if kind == "relu" and name in trained_dead:
            if trained_dead[name] > options.warn_dead:
                statuses.append("warn")
                findings.append(
                    Finding(
                        "dead_relu",
                        f"{trained_dead[name]:.0%} of the units after `{name}` are dead in the trained model (zero on every one of 1,024 training rows)",
                        extra={"layer": name},
                    )
                )
        elif kind == "relu" and math.isfinite(d) and d > options.warn_dead:
            statuses.append("warn")
            findings.append(
                Finding(
                    "dead_relu",
                    f"{d:.0%} of the units after `{name}` are dead in the short run (zero for whole batches)",
                    extra={"layer": name},
                )
            )
        if kind != "relu" and math.isfinite(s) and s > options.warn_saturated:
            statuses.append("warn")
            findings.append(
                Finding(
                    "saturated",
                    f"{s:.0%} of the {kind} outputs of `{name}` are saturated (derivative < 0.01)",
                    extra={"layer": name},
                )
            )


def _update_ratios(rec: MonitorRecord) -> np.ndarray:
    """Median update-to-weight ratio per layer."""
    with np.errstate(all="ignore"):
        upd = (
            np.nanmedian(rec.update_ratio, axis=0)
            if rec.update_ratio.size and np.isfinite(rec.update_ratio).any()
            else np.full(len(rec.layers), np.nan)
        )
    return upd


def _step_findings(
    rec: MonitorRecord,
    diag: GradientDiagnosis,
    upd: np.ndarray,
    options: GradientsOptions,
    statuses: list[Status],
    findings: list[Finding],
) -> list[int]:
    """Too-large updates and loss spikes of an otherwise healthy run; the spike steps."""
    big = [(n, u) for n, u in zip(rec.layers, upd) if math.isfinite(u) and u > options.warn_update_ratio]
    if big and diag.verdict == "healthy":
        statuses.append("warn")
        findings.append(
            Finding(
                "large_updates",
                f"update-to-weight ratio above {options.warn_update_ratio:g} per step at {', '.join(f'`{n}` ({u:.2g})' for n, u in big[:3])}: the learning rate is too high for these layers",
            )
        )
    spikes = [int(i) for i in diag.spikes if math.isfinite(rec.loss[int(i)])]
    if spikes and diag.verdict == "healthy":
        statuses.append("warn")
        findings.append(
            Finding(
                "loss_spikes",
                f"{len(spikes)} loss spike(s) (> {options.spike_z:g} robust σ above the running median), first at step {spikes[0]}",
            )
        )
    return spikes


def _details(
    rec: MonitorRecord,
    diag: GradientDiagnosis,
    upd: np.ndarray,
    dead: np.ndarray,
    sat: np.ndarray,
    trained_dead: dict[str, float],
) -> dict[str, Any]:
    ratio_series = [
        {
            "label": "median RMS gradient / output layer's",
            "x": list(rec.layers),
            "y": [float(r) if math.isfinite(r) and r > 0 else None for r in diag.depth_ratios],
        }
    ]
    grad_series = [
        {
            "label": layer,
            "x": rec.steps.tolist(),
            "y": [float(v) if math.isfinite(v) and v > 0 else None for v in rec.grad_rms[:, j]],
        }
        for j, layer in enumerate(rec.layers)
    ][:8]
    plots: list[dict[str, Any]] = [
        {
            "kind": "bar",
            "title": "Gradient depth ratio per layer (input → output)",
            "xlabel": "layer",
            "ylabel": "ratio",
            "yscale": "log",
            "series": ratio_series,
        },
        {
            "kind": "line",
            "title": "RMS gradient per layer over training",
            "xlabel": "step",
            "ylabel": "RMS gradient",
            "yscale": "log",
            "series": grad_series,
        },
    ]
    table_rows = [[n, float(r), float(u)] for n, r, u in zip(rec.layers, diag.depth_ratios, upd)]
    act_rows = [
        [n, k, float(d) if k == "relu" else None, trained_dead.get(n), float(s) if k != "relu" else None]
        for n, k, d, s in zip(
            rec.activations,
            rec.activation_kinds,
            dead if len(dead) else [math.nan] * len(rec.activations),
            sat if len(sat) else [math.nan] * len(rec.activations),
        )
    ]
    return {
        "plots": plots,
        "tables": [
            {
                "title": "Per layer (execution order)",
                "columns": ["layer", "gradient depth ratio", "update/weight ratio"],
                "rows": table_rows,
            },
            {
                "title": "Activations (last sampled steps)",
                "columns": [
                    "module",
                    "kind",
                    "dead share (short run)",
                    "dead share (trained model)",
                    "saturated share (short run)",
                ],
                "rows": act_rows,
            },
        ],
        "verdict": diag.verdict,
        "layer": diag.layer,
    }


def _through_time(case: Case, options: GradientsOptions) -> tuple[TimeGradients | None, str]:
    """Gradients through time of the trained model's first recurrent layer; ``(None, why)`` when not measured.

    ``why`` is empty for a model without recurrent layers: nothing is said about it at all.
    """
    if not recurrent_layers(case.model):
        return None, ""
    if case.train.y is None:
        return None, "not measured: the training rows have no labels"
    rows = subsample(len(case.train), options.bptt_rows, 7)
    x, y = usable_inputs(case.train.x[rows]), case.train.y[rows]
    try:
        tg = gradients_through_time(case.model, x, y, vanish_ratio=options.bptt_vanish_ratio)
    except Exception as exc:  # a model that only runs its own way: the rest of the check still stands
        return None, f"not measured: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if tg is None:
        return None, "not measured: the first recurrent layer's input is not a float tensor"
    return tg, ""


def _time_flag(tg: TimeGradients, options: GradientsOptions) -> str | None:
    """``exploding``, ``vanishing`` (within the median row length) or ``None``."""
    if tg.growth > options.bptt_explode_growth:
        return "exploding"
    if tg.vanishing_lag is not None and tg.vanishing_lag < tg.typical_length:
        return "vanishing"
    return None


def _time_findings(
    tg: TimeGradients, options: GradientsOptions, statuses: list[Status], findings: list[Finding]
) -> str | None:
    """The through-time finding (warn) for a vanishing or exploding signal; the flag."""
    flag = _time_flag(tg, options)
    extra = {"layer": tg.layer, "step": tg.vanishing_lag, "decay_log10": tg.decay_log10}
    if flag == "exploding":
        at = int(np.nanargmax(tg.ratios))
        statuses.append("warn")
        findings.append(
            Finding(
                "exploding_through_time",
                f"gradients explode through time in `{tg.layer}`: the loss gradient {at} steps before the last step is {_fmt(tg.growth)}× its value at the last step (limit {_fmt(options.bptt_explode_growth)}); clip the gradient norm",
                extra={**extra, "step": at},
            )
        )
    elif flag == "vanishing":
        statuses.append("warn")
        findings.append(
            Finding(
                "vanishing_through_time",
                f"gradients vanish through time in `{tg.layer}`: the loss gradient reaching step t−{tg.vanishing_lag} (t = each row's last real step) and earlier is below {_fmt(options.bptt_vanish_ratio)} of its value at step t, in rows of median length {tg.typical_length:.0f}; the model cannot learn dependencies longer than {tg.vanishing_lag} steps",
                extra=extra,
            )
        )
    return flag


def _time_plot(tg: TimeGradients) -> dict[str, Any]:
    """The loss gradient per lag relative to the last step (log scale)."""
    return {
        "kind": "line",
        "title": f"Loss gradient reaching each time step of `{tg.layer}` (relative to the last step)",
        "xlabel": "steps before each row's last real step",
        "ylabel": "‖∂L/∂x_t‖ / value at the last step",
        "yscale": "log",
        "series": [
            {
                "label": tg.layer,
                "x": list(range(len(tg.ratios))),
                "y": [float(r) if math.isfinite(r) and r > 0 else None for r in tg.ratios],
            }
        ],
    }


def _add_through_time(
    case: Case,
    options: GradientsOptions,
    statuses: list[Status],
    findings: list[Finding],
    metrics: dict[str, Any],
    details: dict[str, Any],
) -> str:
    """Measure and grade gradients through time for a recurrent model (in place); a sentence for an ok summary."""
    tg, why = _through_time(case, options)
    if tg is None:
        if why:
            details["through_time"] = {"measured": False, "reason": why}
        return ""
    flag = _time_findings(tg, options, statuses, findings)
    metrics.update(
        {
            "bptt_decay_log10": tg.decay_log10,
            "bptt_vanishing_step": tg.vanishing_lag,
            "bptt_growth": tg.growth,
            "bptt_steps": len(tg.norms),
            "bptt_median_length": tg.typical_length,
        }
    )
    details["plots"].append(_time_plot(tg))
    details["through_time"] = {
        "measured": True,
        "layer": tg.layer,
        "flag": flag,
        "vanishing_step": tg.vanishing_lag,
        "ratios": [float(r) if math.isfinite(r) else None for r in tg.ratios],
        "rows": tg.rows.tolist(),
    }
    reach = (
        f"reaches all {len(tg.norms)} steps measured"
        if tg.vanishing_lag is None
        else f"falls below {_fmt(options.bptt_vanish_ratio)} only {tg.vanishing_lag} steps back (median row {tg.typical_length:.0f} steps)"
    )
    return f" Through time, the loss gradient in `{tg.layer}` {reach} (farthest/last 10^{tg.decay_log10:.1f})."


def run_gradients(case: Case, evidence: Evidence, options: GradientsOptions) -> CheckResult:
    """Vanishing/exploding gradients, dead or saturated units and loss spikes in a short monitored run."""
    arrays, how = monitored_run(case, evidence, run_settings(options))
    if arrays is None:
        return CheckResult(
            id="model.gradients", status="not_examined", summary=f"Gradients are measured while training, and {how}."
        )
    rec = record_of(arrays)
    diag = diagnose_gradients(
        rec.layers,
        rec.grad_rms,
        rec.grad_total,
        rec.loss,
        nonfinite_grad_steps=len(rec.nonfinite_grad_steps),
        vanish_ratio=options.warn_ratio,
        explode_growth=options.explode_growth,
        spike_z=options.spike_z,
    )
    statuses, findings = _verdict_findings(diag, options)
    dead, sat = _recent(rec.dead_share), _recent(rec.saturated_share)
    trained_dead = _trained_dead(case)
    _activation_findings(rec, dead, sat, trained_dead, options, statuses, findings)
    upd = _update_ratios(rec)
    spikes = _step_findings(rec, diag, upd, options, statuses, findings)
    metrics: dict[str, Any] = {
        "min_depth_ratio": diag.min_ratio,
        "max_depth_ratio": diag.max_ratio,
        "grad_norm_growth": diag.growth,
        "nonfinite_steps": diag.nonfinite_steps,
        "zero_gradient_share": diag.zero_grad_share,
        "loss_spikes": len(spikes),
        "max_dead_relu_share": float(np.nanmax(dead)) if len(dead) and np.isfinite(dead).any() else None,
        "max_dead_relu_share_trained_model": max(trained_dead.values()) if trained_dead else None,
        "max_saturated_share": float(np.nanmax(sat)) if len(sat) and np.isfinite(sat).any() else None,
        "steps": rec.n_steps,
    }
    details = _details(rec, diag, upd, dead, sat, trained_dead)
    time_txt = _add_through_time(case, options, statuses, findings, metrics, details)
    status = worst(statuses)
    if status == "ok":
        summary = _ok_summary(rec, diag, dead, trained_dead, options) + time_txt
    else:
        summary = f"In a {rec.n_steps}-step training run of {how}: " + "; ".join(f.message for f in findings[:2]) + "."
    remedy = None
    if status in ("warn", "fail"):
        remedy = Remedy(
            "dlclinic treat model.gradients",
            "retrain with re-initialisation (Xavier for sigmoid/tanh, Kaiming for ReLU; orthogonal recurrent weights and forget-gate bias 1 for RNNs), gradient clipping and the LR from a range test, verified by the same monitor; if gradients still vanish, add normalisation (BatchNorm/LayerNorm) or residual connections, or use an LSTM/GRU instead of a vanilla RNN",
        )
    thresholds = {
        "min_depth_ratio.warn": options.warn_ratio,
        "min_depth_ratio.fail": options.fail_ratio,
        "grad_norm_growth.fail": options.explode_growth,
        "dead_relu_share.warn": options.warn_dead,
        "saturated_share.warn": options.warn_saturated,
    }
    if "bptt_decay_log10" in metrics:
        thresholds.update(
            {"bptt_vanish_ratio.warn": options.bptt_vanish_ratio, "bptt_growth.warn": options.bptt_explode_growth}
        )
    return CheckResult(
        id="model.gradients",
        status=status,
        summary=summary,
        metrics=metrics,
        thresholds=thresholds,
        findings=tuple(findings),
        remedy=remedy,
        details=details,
    )


def _ok_summary(
    rec: MonitorRecord,
    diag: GradientDiagnosis,
    dead: np.ndarray,
    trained_dead: dict[str, float],
    options: GradientsOptions,
) -> str:
    """The one-line summary of a healthy run."""
    dead_max = (
        max(trained_dead.values())
        if trained_dead
        else (float(np.nanmax(dead)) if len(dead) and np.isfinite(dead).any() else None)
    )
    dead_txt = (
        f"; at most {dead_max:.0%} dead ReLU units per layer (limit {options.warn_dead:.0%})"
        if dead_max is not None
        else ""
    )
    return f"Gradients flow through all {len(rec.layers)} layers in a {rec.n_steps}-step run (smallest input/output ratio {_fmt(diag.min_ratio)}, norm growth {_fmt(diag.growth)}×){dead_txt}."


CHECK = CheckSpec(
    id="model.gradients",
    requires=(),
    options=GradientsOptions,
    run=run_gradients,
    description="per-layer gradient norms across depth, growth over steps, update ratios, dead/saturated units, NaN/Inf, loss spikes (monitored short run)",
)


# ---------------------------------------------------------------------------------------
# remedy


@dataclass(frozen=True)
class GradientsParams:
    """``lr_steps``: mini-batches of the LR range test (run only when gradients exploded, died or went NaN)."""

    lr_steps: int = 100


def reinitialise(model: Any) -> Any:
    """Xavier-normal weights when the model uses sigmoid/tanh, Kaiming-normal (fan-in, ReLU) otherwise; zero biases. In place.

    Recurrent layers get Xavier input weights, orthogonal recurrent weights per gate (every
    singular value 1, so the linear part of the recurrence neither shrinks nor grows the
    signal: Saxe et al., ICLR 2014; Le et al., 2015) and zero biases, with an LSTM's
    forget-gate bias at 1 so that it remembers by default (Jozefowicz et al., ICML 2015).
    """
    saturating = any(isinstance(m, (nn.Sigmoid, nn.Tanh)) for m in model.modules())
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.RNNBase):
                _reinitialise_recurrent(m)
            elif isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                if saturating:
                    nn.init.xavier_normal_(m.weight)
                else:
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    m.bias.zero_()
    return model


def _reinitialise_recurrent(m: nn.RNNBase) -> None:
    """Xavier input weights, orthogonal recurrent weights per gate, zero biases (LSTM forget gate 1). In place."""
    h = m.hidden_size
    for name, p in m.named_parameters():
        if name.startswith("weight_ih"):
            for block in p.split(h):
                nn.init.xavier_uniform_(block)
        elif name.startswith("weight_hh"):
            for block in p.split(h):
                nn.init.orthogonal_(block)
        elif name.startswith("bias"):
            p.zero_()
            if isinstance(m, nn.LSTM) and name.startswith("bias_ih"):
                p[h : 2 * h] = 1.0  # gates are ordered input, forget, cell, output


def _trained_with_recipe(ctx: TreatContext, factory: Any, lr: float) -> Any:
    """A model from ``factory`` trained with the case's recipe (at ``lr``) on the training rows."""
    case, cfg = ctx.case, ctx.fit_config
    seed_everything(cfg.seed)
    x, y = usable_inputs(case.train.x), case.train.y
    return fit(factory(), x, y, dataclasses.replace(cfg, lr=lr)).model  # type: ignore[arg-type]


def treat_gradients(ctx: TreatContext, params: GradientsParams) -> TreatOutcome:
    """Re-initialise (and lower the LR after an explosion); verified by the same monitored run."""
    factory = retrain_factory(ctx, "model.gradients")
    case = ctx.case
    before = ctx.measure(case)
    res = before[ctx.challenge_id]

    def new_factory() -> Any:
        return reinitialise(factory())

    lr = float(ctx.fit_config.lr)
    if res.details.get("verdict") in ("exploding", "nonfinite", "dead"):
        # the step size is part of the problem: never go above the recipe's LR, take the range test's if lower
        lr = min(lr, suggest_lr(ctx, new_factory, params.lr_steps))
    treated = dataclasses.replace(case, model_factory=new_factory, metadata={**case.metadata, "fit.lr": lr})
    through_time = (res.details.get("through_time") or {}).get("flag")
    if through_time:  # the through-time measurement reads a trained model: train the treated architecture
        treated = dataclasses.replace(treated, model=_trained_with_recipe(ctx, new_factory, lr))
    after = ctx.measure(treated)
    after_res = after[ctx.challenge_id]
    notes = [
        "verified by the same monitored training run with the new initialisation and LR; gradient clipping (torch.nn.utils.clip_grad_norm_) is advised in your loop when norms spike"
    ]
    if after_res.details.get("verdict") == "vanishing":
        notes.append(
            "gradients still vanish after re-initialisation: the architecture needs normalisation (BatchNorm/LayerNorm) or residual connections, or ReLU-family activations instead of sigmoid/tanh"
        )
    notes.extend(_through_time_notes(through_time, after_res))
    return conclude(
        ctx,
        before=before,
        after=after,
        action=f"re-initialise ({'Xavier' if 'sigmoid' in repr(factory()).lower() or 'tanh' in repr(factory()).lower() else 'Kaiming'}{'; orthogonal recurrent weights' if through_time else ''}) and train with LR {lr:.3g}",
        after_values={"lr": lr},
        check_metrics=("min_depth_ratio", "grad_norm_growth", "nonfinite_steps")
        + (("bptt_decay_log10", "bptt_vanishing_step", "bptt_growth") if through_time else ()),
        notes=notes,
    )


def _through_time_notes(flag: str | None, after_res: CheckResult) -> list[str]:
    """What the through-time re-measurement compares, and what is left when it is still flagged."""
    if not flag:
        return []
    notes = [
        "gradients through time: before is the case's trained model, after the re-initialised architecture (orthogonal recurrent weights, LSTM forget-gate bias 1) trained with the recipe on the training rows"
    ]
    still = (after_res.details.get("through_time") or {}).get("flag")
    if still == "vanishing":
        notes.append(
            "the gradient still vanishes through time: a vanilla RNN cannot carry it far; use nn.LSTM or nn.GRU, or a shorter context"
        )
    if flag == "exploding" or still == "exploding":
        notes.append(
            "the gradient grows going back in time: clip its norm in your training loop (torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)); the recipe does not clip"
        )
    return notes


REMEDY = RemedySpec(
    id="model.gradients",
    params=GradientsParams,
    run=treat_gradients,
    description="re-initialise (Xavier/Kaiming) with the LR from a range test, verified by the gradient monitor",
)
