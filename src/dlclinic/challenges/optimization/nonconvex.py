"""optimization.nonconvex — how sharp is the loss landscape around the trained weights?

Check: 1-D/2-D filter-normalised loss slices, the top Hessian eigenvalue (power iteration on
Hessian-vector products) against the edge of stability, and the loss barrier between two seeds.
Remedy: retrain with SAM (Foret et al., ICLR 2021); the sharpness (top Hessian eigenvalue) and
test accuracy are compared with the same recipe without SAM.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from dlclinic.core.case import Case, usable_inputs
from dlclinic.core.errors import ConfigError
from dlclinic.core.evidence import Evidence
from dlclinic.core.inference import model_tensors, predict_logits
from dlclinic.core.recipe import FitConfig, fit, prepare_inputs, seed_everything
from dlclinic.core.registry import CheckSpec, RemedySpec, TreatContext, TreatOutcome, conclude
from dlclinic.core.results import CheckResult, Finding, Remedy, Status
from dlclinic.functional.landscape import (
    hessian_top_eigenvalue,
    interpolation_barrier,
    loss_slice_1d,
    loss_slice_2d,
    make_loss,
)
from dlclinic.providers.retraining import retrain_factory, save_weights
from dlclinic.providers.training_run import fresh_model, recipe, subsample


def _is_module(model: Any) -> bool:
    return hasattr(model, "named_modules") and hasattr(model, "parameters")


def _fmt(v: float) -> str:
    return f"{v:.2e}" if v and (abs(v) < 1e-2 or abs(v) >= 1e4) else f"{v:.3g}"


@dataclass(frozen=True)
class NonconvexOptions:
    """Landscape budget and the sharpness limit.

    Warns when ``sharpness × lr`` exceeds ``stability`` (2 = the edge of stability of
    gradient descent: a step of size lr along the top eigenvector overshoots; Cohen et al.,
    ICLR 2021). ``rows``: training rows for the loss; ``grid``: points per axis of the 2-D
    slice; ``power_iters`` / ``power_tol``: power-iteration budget and relative tolerance;
    ``barrier``: train two short seeds (``barrier_steps`` each) to measure linear mode
    connectivity.
    """

    stability: float = 2.0
    rows: int = 128
    points_1d: int = 11
    grid: int = 5
    span: float = 1.0
    power_iters: int = 20
    power_tol: float = 1e-3
    barrier: bool = True
    barrier_steps: int = 100


def _landscape(evidence: Evidence, options: NonconvexOptions, model: Any, loss: Any) -> dict[str, np.ndarray]:
    """1-D/2-D loss slices and the top Hessian eigenvalue at the trained weights (cached)."""
    params = {
        "rows": options.rows,
        "p1": options.points_1d,
        "grid": options.grid,
        "span": options.span,
        "iters": options.power_iters,
        "tol": options.power_tol,
    }

    def compute() -> dict[str, np.ndarray]:
        alphas = np.linspace(-options.span, options.span, options.points_1d)
        grid = np.linspace(-options.span, options.span, options.grid)
        eig, its = hessian_top_eigenvalue(model, loss, iters=options.power_iters, tol=options.power_tol)
        return {
            "alphas": alphas,
            "slice1": loss_slice_1d(model, loss, alphas),
            "grid": grid,
            "slice2": loss_slice_2d(model, loss, grid, grid),
            "eig": np.asarray(eig, dtype=np.float64),
            "iters": np.asarray(its, dtype=np.int64),
        }

    return evidence.cached("training.landscape", params, compute)


def _barrier(case: Case, evidence: Evidence, options: NonconvexOptions, cfg: Any, loss: Any) -> dict[str, np.ndarray]:
    """The loss on the straight path between two short runs with seeds 0 and 1 (cached)."""
    bparams = {
        "rows": options.rows,
        "steps": options.barrier_steps,
        "lr": cfg.lr,
        "bs": cfg.batch_size,
        "wd": cfg.weight_decay,
    }

    def compute_barrier() -> dict[str, np.ndarray]:
        trows = subsample(len(case.train), 1024, 5)
        xt, yt = usable_inputs(case.train.x[trows]), case.train.y[trows]  # type: ignore[index]
        epochs = max(2, math.ceil(options.barrier_steps / max(1, math.ceil(len(trows) / cfg.batch_size))))
        models = []
        for seed in (0, 1):
            seed_everything(seed)
            m, _ = fresh_model(case)
            models.append(
                fit(
                    m,
                    xt,
                    yt,
                    FitConfig(
                        epochs=epochs,
                        batch_size=cfg.batch_size,
                        lr=cfg.lr,
                        weight_decay=cfg.weight_decay,
                        val_fraction=0.0,
                        seed=seed,
                    ),
                ).model
            )
        b = interpolation_barrier(models[0], models[1], loss)
        return {
            "t": b.t,
            "loss": b.loss,
            "barrier": np.asarray(b.barrier, dtype=np.float64),
            "endpoint": np.asarray(b.endpoint_mean, dtype=np.float64),
        }

    return evidence.cached("training.barrier", bparams, compute_barrier)


def _plots(land: dict[str, np.ndarray], bar: dict[str, np.ndarray] | None) -> list[dict[str, Any]]:
    s1 = land["slice1"]
    plots: list[dict[str, Any]] = [
        {
            "kind": "line",
            "title": "1-D loss slice (filter-normalised direction)",
            "xlabel": "α",
            "ylabel": "loss",
            "series": [{"label": "loss", "x": land["alphas"].tolist(), "y": s1.tolist()}],
        },
        {
            "kind": "heatmap",
            "title": "2-D loss slice",
            "xlabel": "α",
            "ylabel": "β",
            "series": [
                {
                    "label": "loss",
                    "z": land["slice2"].tolist(),
                    "x": [f"{v:.2f}" for v in land["grid"]],
                    "y": [f"{v:.2f}" for v in land["grid"]],
                }
            ],
        },
    ]
    if bar is not None:
        plots.append(
            {
                "kind": "line",
                "title": "Loss on the straight path between two seeds",
                "xlabel": "t",
                "ylabel": "loss",
                "series": [{"label": "interpolated", "x": bar["t"].tolist(), "y": bar["loss"].tolist()}],
            }
        )
    return plots


def run_nonconvex(case: Case, evidence: Evidence, options: NonconvexOptions) -> CheckResult:
    """Loss slices, top Hessian eigenvalue and the loss barrier between two seeds."""
    model = case.model
    if not _is_module(model) or not any(p.requires_grad for p in model.parameters()):
        return CheckResult(
            id="optimization.nonconvex",
            status="not_examined",
            summary="The loss landscape needs a differentiable nn.Module; this model exposes no parameters (ONNX). Give --model file.py:factory with --weights.",
        )
    rows = subsample(len(case.train), options.rows, 4)
    x, y = usable_inputs(case.train.x[rows]), case.train.y[rows]  # type: ignore[index]
    loss = make_loss(x, y)
    land = _landscape(evidence, options, model, loss)
    eig = float(land["eig"])
    cfg = recipe(evidence)
    product = eig * cfg.lr
    barrier_note = ""
    bar = None
    if options.barrier:
        fresh, how = fresh_model(case)
        if fresh is not None:
            bar = _barrier(case, evidence, options, cfg, loss)
        else:
            barrier_note = f" Mode connectivity not measured: {how}."
    findings: list[Finding] = []
    status: Status = "ok"
    if math.isfinite(product) and product > options.stability:
        status = "warn"
        findings.append(
            Finding(
                "sharp",
                f"sharpness λ_max={_fmt(eig)} × LR {_fmt(cfg.lr)} = {product:.2g} > {options.stability:g}: the solution sits in a region too sharp for stable steps at this LR (consider SAM/SWA or a lower LR)",
            )
        )
    s1 = land["slice1"]
    centre = float(s1[len(s1) // 2])
    summary = f"Top Hessian eigenvalue {_fmt(eig)} (λ·LR = {product:.2g}); loss {_fmt(centre)} at the trained weights rises to {_fmt(float(np.nanmax(s1)))} one filter-norm away"
    if bar is not None:
        summary += f"; the straight path between two seeds has a loss barrier of {_fmt(float(bar['barrier']))}"
    summary += "." + barrier_note
    plots = _plots(land, bar)
    return CheckResult(
        id="optimization.nonconvex",
        status=status,
        summary=summary,
        metrics={
            "hessian_top_eigenvalue": eig,
            "power_iterations": int(land["iters"]),
            "sharpness_x_lr": product,
            "loss_at_weights": centre,
            "slice_max_loss": float(np.nanmax(s1)),
            "seed_barrier": float(bar["barrier"]) if bar is not None else None,
        },
        thresholds={"sharpness_x_lr.warn": options.stability},
        findings=tuple(findings),
        remedy=Remedy(
            "dlclinic treat optimization.nonconvex",
            "retrain with SAM (sharpness-aware minimisation) and verify the lower sharpness and the accuracy",
        )
        if status != "ok"
        else None,
        details={"plots": plots},
    )


CHECK = CheckSpec(
    id="optimization.nonconvex",
    requires=(),
    options=NonconvexOptions,
    run=run_nonconvex,
    description="1-D/2-D filter-normalised loss slices, top Hessian eigenvalue (power iteration on HVPs), loss barrier between two seeds",
)


# ---------------------------------------------------------------------------------------
# remedy


@dataclass(frozen=True)
class NonconvexParams:
    """``rho``: SAM neighbourhood radius (Foret et al. use 0.05); ``epochs``: default the recipe's."""

    rho: float = 0.05
    epochs: int | None = None


def train_sam(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    *,
    lr: float,
    epochs: int,
    batch_size: int,
    weight_decay: float,
    rho: float = 0.05,
    seed: int = 0,
) -> Any:
    """Sharpness-aware minimisation (Foret et al., ICLR 2021) around AdamW, cosine LR; trains ``model`` in place.

    Each step takes the gradient at ``w + ρ·g/‖g‖`` (the worst point of a small ball) and
    applies it at ``w``; ``rho=0`` is the same loop without SAM (the controlled reference). Written by hand: SAM is ~20 lines and has no maintained package.
    """
    if not rho >= 0:
        raise ConfigError(f"`rho >= 0` must hold, but got rho={rho}")
    seed_everything(seed)
    prepare_inputs(model, x)
    xt, yt = model_tensors(model, x, y)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    total = max(1, math.ceil(len(xt) / batch_size)) * epochs
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen).to(xt.device)
        for i in range(0, len(perm), batch_size):
            idx = perm[i : i + batch_size]
            if len(idx) < 2:
                continue
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            if rho == 0:  # the plain recipe, for a controlled comparison
                opt.step()
                sched.step()
                continue
            with torch.no_grad():
                norm = torch.sqrt(sum((p.grad * p.grad).sum() for p in params if p.grad is not None))
                eps = [(rho / (norm + 1e-12)) * p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
                for p, e in zip(params, eps):
                    p.add_(e)
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            with torch.no_grad():
                for p, e in zip(params, eps):
                    p.sub_(e)
            opt.step()
            sched.step()
    model.eval()
    return model


def treat_nonconvex(ctx: TreatContext, params: NonconvexParams) -> TreatOutcome:
    """Retrain with SAM; compare sharpness and test accuracy with the same recipe without SAM."""
    factory = retrain_factory(ctx, "optimization.nonconvex")
    case, cfg = ctx.case, ctx.fit_config
    epochs = params.epochs or cfg.epochs
    x, y = usable_inputs(case.train.x), case.train.y
    with ctx.progress.step("training the reference and the SAM model", total=2) as advance:
        runs = []
        for rho in (0.0, params.rho):  # the same loop, seed and data: only SAM differs
            seed_everything(cfg.seed)
            runs.append(
                train_sam(
                    factory(),
                    x,
                    y,  # type: ignore[arg-type]
                    lr=cfg.lr,
                    epochs=epochs,
                    batch_size=cfg.batch_size,
                    weight_decay=cfg.weight_decay,
                    rho=rho,
                    seed=cfg.seed,
                )
            )
            advance(1)
    reference, model = runs
    ref_case = dataclasses.replace(case, model=reference)
    before = ctx.measure(ref_case)
    treated = dataclasses.replace(
        case, model=model, model_source=f"{case.model_source}, retrained with SAM (rho={params.rho:g})"
    )
    after = ctx.measure(treated)
    test = case.get("test")
    acc: dict[str, float | None] = {"before": None, "after": None}
    if test is not None and test.y is not None:
        acc = {
            k: float((predict_logits(m, usable_inputs(test.x)).argmax(1) == test.y).mean())
            for k, m in (("before", reference), ("after", model))
        }
    return conclude(
        ctx,
        before=before,
        after=after,
        action=f"retrain with SAM (rho={params.rho:g}) around AdamW, {epochs} epochs, same recipe otherwise",
        before_values={"test_accuracy": acc["before"]},
        after_values={"test_accuracy": acc["after"]},
        check_metrics=("hessian_top_eigenvalue",),
        artifacts=save_weights(ctx.out_dir, model),
        notes=(
            "before = the training loop without SAM, after = the same loop, seed and data with SAM; sharpness is the top Hessian eigenvalue on the same training rows",
        ),
    )


REMEDY = RemedySpec(
    id="optimization.nonconvex",
    params=NonconvexParams,
    run=treat_nonconvex,
    description="retrain with SAM (sharpness-aware minimisation); verify lower sharpness and report accuracy",
)
