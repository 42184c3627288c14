"""optimization.convergence — does the loss converge with the recipe's learning rate?

Check: the loss curve of the shared monitored run (divergence, instability, plateau), an LR
range test on a fresh copy, and the activation variance per layer at initialisation.
Remedy: LR range test on a fresh copy, retrain with the suggested LR and a one-cycle schedule
(linear warm-up, cosine annealing; Smith & Topin 2019), re-measure with the treated recipe;
both loss curves are written to ``curves.json``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dlclinic.core.atomic import write_json
from dlclinic.core.case import Case, usable_inputs
from dlclinic.core.evidence import Evidence
from dlclinic.core.inference import model_tensors
from dlclinic.core.recipe import prepare_inputs, seed_everything
from dlclinic.core.registry import CheckSpec, RemedySpec, TreatContext, TreatOutcome, conclude
from dlclinic.core.results import CheckResult, Finding, Remedy, Status, worst
from dlclinic.functional.lr_range import LossCurve, activation_scales, analyse_loss_curve, lr_range_test, smooth
from dlclinic.providers.retraining import retrain_factory, save_weights, suggest_lr
from dlclinic.providers.training_run import fresh_model, monitored_run, recipe, record_of, run_settings, subsample
from dlclinic.training.monitor import MonitorRecord


def _fmt(v: float) -> str:
    return f"{v:.2e}" if v and (abs(v) < 1e-2 or abs(v) >= 1e4) else f"{v:.3g}"


@dataclass(frozen=True)
class ConvergenceOptions:
    """Loss-curve verdicts, the LR range test budget and the init-scale limit.

    ``min_progress``: relative loss decrease below which the run is a plateau.
    ``blowup``: final/minimum loss ratio that counts as divergence. ``init_scale``: a
    Linear/Conv output variance more than this factor away from the first layer's at
    initialisation warns. ``lr_steps``: mini-batches of the range test (0 skips it).
    """

    min_progress: float = 0.05
    blowup: float = 2.0
    init_scale: float = 1e3
    lr_steps: int = 100
    lr_min: float = 1e-6
    lr_max: float = 10.0
    steps: int = 300
    rows: int = 1024
    every: int = 10
    lr: float | None = None
    batch_size: int | None = None


def _curve_findings(rec: MonitorRecord, lr: float, curve: LossCurve) -> tuple[list[Status], list[Finding]]:
    """Divergence, instability or a plateau of the shared run's loss curve."""
    findings: list[Finding] = []
    statuses: list[Status] = ["ok"]
    if curve.verdict == "diverging":
        statuses.append("fail")
        where = f" at step {curve.step}" if curve.step is not None else ""
        findings.append(
            Finding(
                "diverging",
                f"the loss diverged{where} with LR {_fmt(lr)} (start {_fmt(curve.initial)}, end {_fmt(curve.final)}, best {_fmt(curve.minimum)})",
            )
        )
    elif curve.verdict == "unstable":
        statuses.append("warn")
        findings.append(
            Finding(
                "unstable",
                f"the loss blew up to {_fmt(float(np.nanmax(rec.loss)))} at step {curve.step} (over 10× its start {_fmt(curve.initial)}) before recovering with LR {_fmt(lr)}",
            )
        )
    elif curve.verdict == "plateau":
        statuses.append("warn")
        findings.append(
            Finding(
                "plateau",
                f"the loss barely moved with LR {_fmt(lr)}: {curve.progress:+.1%} from {_fmt(curve.initial)} to {_fmt(curve.final)} in {rec.n_steps} steps",
            )
        )
    return statuses, findings


def _lr_range(
    case: Case,
    evidence: Evidence,
    options: ConvergenceOptions,
    arrays: dict[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
) -> dict[str, np.ndarray]:
    """The LR range test on a fresh copy (cached)."""
    cfg = recipe(evidence)
    params = {
        "steps": options.lr_steps,
        "lo": options.lr_min,
        "hi": options.lr_max,
        "bs": int(arrays["batch_size"]),
        "wd": cfg.weight_decay,
        "rows": options.rows,
    }

    def compute() -> dict[str, np.ndarray]:
        seed_everything(0)
        model, _ = fresh_model(case)
        r = lr_range_test(
            model,
            x,
            y,
            lr_min=options.lr_min,
            lr_max=options.lr_max,
            steps=options.lr_steps,
            batch_size=int(arrays["batch_size"]),
            weight_decay=cfg.weight_decay,
        )
        return {
            "lrs": r.lrs,
            "losses": r.losses,
            "smoothed": r.smoothed,
            "suggested": np.asarray(r.suggested_lr, dtype=np.float64),
            "min_loss_lr": np.asarray(r.min_loss_lr, dtype=np.float64),
            "diverged": np.asarray(r.diverged_lr if r.diverged_lr is not None else math.nan, dtype=np.float64),
        }

    return evidence.cached("training.lr_range", params, compute)


def _lr_findings(lr: float, lr_res: dict[str, np.ndarray], statuses: list[Status], findings: list[Finding]) -> None:
    """Warn when the recipe's LR is beyond the range test's divergence or far below its suggestion."""
    suggested, diverged_at = float(lr_res["suggested"]), float(lr_res["diverged"])
    if math.isfinite(diverged_at) and lr >= diverged_at:
        statuses.append("warn")
        findings.append(
            Finding(
                "lr_too_high",
                f"the recipe's LR {_fmt(lr)} is beyond where the range test diverged ({_fmt(diverged_at)}); suggested LR {_fmt(suggested)}",
            )
        )
    elif lr < suggested / 100:
        statuses.append("warn")
        findings.append(
            Finding(
                "lr_too_low",
                f"the recipe's LR {_fmt(lr)} is over 100× below the range test's suggestion {_fmt(suggested)}",
            )
        )


def _init_scale(
    case: Case, options: ConvergenceOptions, x: np.ndarray, statuses: list[Status], findings: list[Finding]
) -> list[list[Any]]:
    """Rows ``[layer, variance, relative]`` of the output variance at initialisation; warns when it drifts."""
    model0, _ = fresh_model(case)
    names, variances = activation_scales(model0, x[:256])
    scale_rows: list[list[Any]] = []
    if len(variances) > 1 and variances[0] > 0:
        rel = variances / variances[0]
        scale_rows = [[n, float(v), float(r)] for n, v, r in zip(names, variances, rel)]
        off = [(n, r) for n, r in zip(names, rel) if not (1 / options.init_scale <= r <= options.init_scale)]
        if off:
            statuses.append("warn")
            findings.append(
                Finding(
                    "init_scale",
                    f"at initialisation the output variance of `{off[0][0]}` is {_fmt(off[0][1])}× the first layer's: the signal {'shrinks' if off[0][1] < 1 else 'grows'} through depth (check the initialisation)",
                    extra={"layer": off[0][0]},
                )
            )
    return scale_rows


def _plots(
    rec: MonitorRecord, lr: float, lr_res: dict[str, np.ndarray] | None, scale_rows: list[list[Any]]
) -> list[dict[str, Any]]:
    steps_x = list(range(rec.n_steps))
    plots: list[dict[str, Any]] = [
        {
            "kind": "line",
            "title": f"Training loss per step (LR {_fmt(lr)})",
            "xlabel": "step",
            "ylabel": "loss",
            "yscale": "log",
            "series": [
                {
                    "label": "loss",
                    "x": steps_x,
                    "y": [float(v) if math.isfinite(v) and v > 0 else None for v in rec.loss],
                },
                {
                    "label": "smoothed",
                    "x": steps_x,
                    "y": [float(v) if math.isfinite(v) and v > 0 else None for v in smooth(rec.loss)],
                },
            ],
        },
    ]
    if lr_res is not None:
        plots.append(
            {
                "kind": "line",
                "title": "LR range test (loss vs learning rate)",
                "xlabel": "learning rate",
                "ylabel": "loss",
                "xscale": "log",
                "series": [
                    {
                        "label": "smoothed loss",
                        "x": lr_res["lrs"].tolist(),
                        "y": [float(v) if math.isfinite(v) else None for v in lr_res["smoothed"]],
                    },
                    {
                        "label": "suggested",
                        "x": [float(lr_res["suggested"])] * 2,
                        "y": [
                            float(np.nanmin(lr_res["smoothed"])),
                            float(np.nanmax(np.where(np.isfinite(lr_res["smoothed"]), lr_res["smoothed"], np.nan))),
                        ],
                    },
                ],
            }
        )
    if scale_rows:
        plots.append(
            {
                "kind": "bar",
                "title": "Output variance at initialisation (relative to the first layer)",
                "xlabel": "layer",
                "ylabel": "variance ratio",
                "yscale": "log",
                "series": [
                    {
                        "label": "variance ratio",
                        "x": [r[0] for r in scale_rows],
                        "y": [max(r[2], 1e-30) for r in scale_rows],
                    }
                ],
            }
        )
    return plots


def run_convergence(case: Case, evidence: Evidence, options: ConvergenceOptions) -> CheckResult:
    """Loss-curve divergence/plateau in the shared run, LR range test, activation scale at init."""
    arrays, how = monitored_run(case, evidence, run_settings(options))
    if arrays is None:
        return CheckResult(
            id="optimization.convergence",
            status="not_examined",
            summary=f"Convergence is measured by training, and {how}.",
        )
    rec = record_of(arrays)
    lr = float(arrays["lr"])
    curve = analyse_loss_curve(rec.loss, min_progress=options.min_progress, blowup=options.blowup)
    statuses, findings = _curve_findings(rec, lr, curve)
    rows = subsample(len(case.train), options.rows, 1)
    x, y = usable_inputs(case.train.x[rows]), case.train.y[rows]  # type: ignore[index]
    lr_res = None
    if options.lr_steps > 0:
        lr_res = _lr_range(case, evidence, options, arrays, x, y)
        _lr_findings(lr, lr_res, statuses, findings)
    scale_rows = _init_scale(case, options, x, statuses, findings)
    status = worst(statuses)
    if status == "ok":
        summary = f"The loss converges with LR {_fmt(lr)} ({curve.progress:.0%} lower after {rec.n_steps} steps)" + (
            f"; the range test suggests LR {_fmt(float(lr_res['suggested']))}." if lr_res is not None else "."
        )
    else:
        summary = f"In a {rec.n_steps}-step run of {how}: " + "; ".join(f.message for f in findings[:2]) + "."
    plots = _plots(rec, lr, lr_res, scale_rows)
    remedy = None
    if status in ("warn", "fail"):
        remedy = Remedy(
            "dlclinic treat optimization.convergence",
            "retrain with the LR from the range test and a one-cycle schedule (warm-up then cosine annealing), showing the loss curves before and after",
        )
    return CheckResult(
        id="optimization.convergence",
        status=status,
        summary=summary,
        metrics={
            "lr": lr,
            "initial_loss": curve.initial,
            "final_loss": curve.final,
            "min_loss": curve.minimum,
            "loss_progress": curve.progress,
            "diverged_step": curve.step,
            "suggested_lr": float(lr_res["suggested"]) if lr_res is not None else None,
            "range_test_diverged_lr": float(lr_res["diverged"])
            if lr_res is not None and math.isfinite(float(lr_res["diverged"]))
            else None,
            "steps": rec.n_steps,
        },
        thresholds={
            "loss_progress.min": options.min_progress,
            "final_over_min.max": options.blowup,
            "init_variance_ratio.max": options.init_scale,
        },
        findings=tuple(findings),
        remedy=remedy,
        details={
            "plots": plots,
            "tables": [
                {
                    "title": "Activation variance at initialisation",
                    "columns": ["layer", "output variance", "relative to first"],
                    "rows": scale_rows,
                }
            ],
            "verdict": curve.verdict,
        },
    )


CHECK = CheckSpec(
    id="optimization.convergence",
    requires=(),
    options=ConvergenceOptions,
    run=run_convergence,
    description="LR range test, loss plateau/divergence in a monitored short run, activation variance per layer at init",
)


# ---------------------------------------------------------------------------------------
# remedy


def train_one_cycle(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    *,
    lr: float,
    epochs: int,
    batch_size: int,
    weight_decay: float,
    seed: int = 0,
    clip: float | None = None,
) -> tuple[Any, list[float]]:
    """Train ``model`` in place with AdamW and a one-cycle LR (30 % warm-up, cosine decay); return it and the per-step losses."""
    seed_everything(seed)
    prepare_inputs(model, x)
    xt, yt = model_tensors(model, x, y)
    per_epoch = max(1, math.ceil(len(xt) / batch_size))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=per_epoch * epochs, pct_start=0.3, anneal_strategy="cos"
    )
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen).to(xt.device)
        for i in range(0, len(perm), batch_size):
            idx = perm[i : i + batch_size]
            if len(idx) < 2:
                sched.step()
                continue
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
    model.eval()
    return model, losses


def _save_json(out_dir: Path | None, name: str, payload: Any) -> dict[str, str]:
    if out_dir is None:
        return {}
    return {name.rsplit(".", 1)[0]: str(write_json(Path(out_dir) / name, payload, indent=1))}


@dataclass(frozen=True)
class ConvergenceParams:
    """``lr_steps``: mini-batches of the LR range test; ``epochs``: of the retrain (default: the recipe's)."""

    lr_steps: int = 100
    epochs: int | None = None


def treat_convergence(ctx: TreatContext, params: ConvergenceParams) -> TreatOutcome:
    """LR range test → retrain with the suggested LR and one-cycle → re-measure with the new recipe."""
    factory = retrain_factory(ctx, "optimization.convergence")
    case, cfg = ctx.case, ctx.fit_config
    before = ctx.measure(case)
    res = before[ctx.challenge_id]
    with ctx.progress.step("LR range test and one-cycle retrain", total=2) as advance:
        lr = suggest_lr(ctx, factory, params.lr_steps)
        advance(1)
        seed_everything(cfg.seed)
        model, losses = train_one_cycle(
            factory(),
            usable_inputs(case.train.x),
            case.train.y,  # type: ignore[arg-type]
            lr=lr,
            epochs=params.epochs or cfg.epochs,
            batch_size=cfg.batch_size,
            weight_decay=cfg.weight_decay,
            seed=cfg.seed,
        )
        advance(1)
    treated = dataclasses.replace(
        case,
        model=model,
        model_source=f"{case.model_source}, retrained with LR {lr:.3g} and one-cycle",
        metadata={**case.metadata, "fit.lr": lr},
    )
    after = ctx.measure(treated)
    after_res = after[ctx.challenge_id]
    before_curve = next(
        (p for p in res.details.get("plots", []) if str(p.get("title", "")).startswith("Training loss per step")), None
    )
    after_curve = next(
        (p for p in after_res.details.get("plots", []) if str(p.get("title", "")).startswith("Training loss per step")),
        None,
    )
    curves = {"before": before_curve, "after_check": after_curve, "after_full_retrain_loss": losses, "suggested_lr": lr}
    artifacts = {**save_weights(ctx.out_dir, model), **_save_json(ctx.out_dir, "curves.json", curves)}
    return conclude(
        ctx,
        before=before,
        after=after,
        action=f"LR range test → LR {lr:.3g}; retrain with AdamW and a one-cycle schedule (30 % warm-up, cosine decay) for {params.epochs or cfg.epochs} epochs",
        after_values={"retrain_final_loss": float(np.median(losses[-max(1, len(losses) // 10) :])) if losses else None},
        check_metrics=("lr", "loss_progress", "final_loss"),
        artifacts=artifacts,
        notes=(
            "before/after are the same short monitored run with the old and the new LR; curves.json holds both loss curves and the full retrain's",
        ),
    )


REMEDY = RemedySpec(
    id="optimization.convergence",
    params=ConvergenceParams,
    run=treat_convergence,
    description="LR from a range test, retrain with one-cycle (warm-up + cosine), compare the loss curves",
)
