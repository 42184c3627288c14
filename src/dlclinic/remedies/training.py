"""Remedies for the training checks: each changes the training or the model, then re-measures.

* ``optimization.convergence`` — LR range test on a fresh copy, retrain with the suggested
  LR and a one-cycle schedule (linear warm-up, cosine annealing; Smith & Topin 2019),
  re-measure with the treated recipe; both loss curves are written to ``curves.json``.
* ``model.overfitting`` — temperature scaling (Guo et al., ICML 2017) verified by ECE
  before/after on the test split, cross-fitted (T fitted on one half, ECE measured on the
  other, and the reverse) so the improvement is not measured on the rows it was fitted
  to; and, when the architecture is known, a retrain with early stopping (best-checkpoint
  restore), weight decay and label smoothing, verified by the train/test gap.
* ``optimization.batchnorm`` — BN recalibration on clean training data (no retraining).
* ``optimization.nonconvex`` — retrain with SAM (Foret et al., ICLR 2021); the sharpness
  (top Hessian eigenvalue) and test accuracy are compared with the same recipe without SAM.
* ``model.gradients`` — re-initialisation (Xavier for sigmoid/tanh networks, Kaiming for
  ReLU ones); when gradients exploded, died or went NaN also the lower of the recipe's LR
  and a range test's suggestion; verified by the same monitored run. When the gradients
  still vanish, the treatment says so and points to normalisation/residuals.

The user's model and data are never modified; new weights go to ``out_dir`` as
safetensors, written atomically.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dlclinic.core.errors import ConfigError
from dlclinic.core.registry import RemedySpec, TreatContext, TreatOutcome
from dlclinic.functional.calibration import TemperatureScaled, fit_temperature

__all__ = [
    "BATCHNORM",
    "CONVERGENCE",
    "GRADIENTS",
    "NONCONVEX",
    "OVERFITTING",
    "fit_temperature",
    "reinitialise",
    "train_one_cycle",
    "train_sam",
]


def _save_model(out_dir: Path | None, model: Any, name: str = "model.safetensors") -> dict[str, str]:
    if out_dir is None:
        return {}
    from dlclinic.core.atomic import write_weights

    return {"model": str(write_weights(model, Path(out_dir) / name))}


def _save_json(out_dir: Path | None, name: str, payload: Any) -> dict[str, str]:
    if out_dir is None:
        return {}
    from dlclinic.core.atomic import write_json

    return {name.rsplit(".", 1)[0]: str(write_json(Path(out_dir) / name, payload, indent=1))}


def _factory(ctx: TreatContext, what: str) -> Any:
    from dlclinic.checks.training_run import fresh_model

    case = ctx.case
    if case.model_factory is not None:
        return case.model_factory
    probe, how = fresh_model(case)
    if probe is None:
        raise ConfigError(f"treat {what} retrains the model, so it needs the architecture: {how}")
    return lambda: fresh_model(case)[0]


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
    import torch
    from torch import nn

    from dlclinic.core.recipe import _prepare_inputs, seed_everything

    seed_everything(seed)
    _prepare_inputs(model, x)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    per_epoch = max(1, math.ceil(len(xt) / batch_size))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=per_epoch * epochs, pct_start=0.3, anneal_strategy="cos"
    )
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
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


# ---------------------------------------------------------------------------------------
# optimization.convergence


@dataclass(frozen=True)
class ConvergenceParams:
    """``lr_steps``: mini-batches of the LR range test; ``epochs``: of the retrain (default: the recipe's)."""

    lr_steps: int = 100
    epochs: int | None = None


def _suggest_lr(ctx: TreatContext, factory: Any, steps: int) -> float:
    from dlclinic.checks.training_run import subsample
    from dlclinic.core.recipe import seed_everything
    from dlclinic.functional.lr_range import lr_range_test

    case, cfg = ctx.case, ctx.fit_config
    rows = subsample(len(case.train), 1024, 1)
    seed_everything(cfg.seed)
    return lr_range_test(
        factory(),
        np.nan_to_num(case.train.x[rows]),
        case.train.y[rows],
        steps=steps,
        batch_size=cfg.batch_size,
        weight_decay=cfg.weight_decay,
    ).suggested_lr  # type: ignore[index]


def treat_convergence(ctx: TreatContext, params: ConvergenceParams) -> TreatOutcome:
    """LR range test → retrain with the suggested LR and one-cycle → re-measure with the new recipe."""
    from dlclinic.core.recipe import seed_everything
    from dlclinic.core.results import Treatment

    factory = _factory(ctx, "optimization.convergence")
    case, cfg = ctx.case, ctx.fit_config
    before = ctx.measure(case)
    res = before[ctx.challenge_id]
    with ctx.progress.step("LR range test and one-cycle retrain", total=2) as advance:
        lr = _suggest_lr(ctx, factory, params.lr_steps)
        advance(1)
        seed_everything(cfg.seed)
        model, losses = train_one_cycle(
            factory(),
            np.nan_to_num(case.train.x),
            case.train.y,
            lr=lr,
            epochs=params.epochs or cfg.epochs,
            batch_size=cfg.batch_size,
            weight_decay=cfg.weight_decay,
            seed=cfg.seed,
        )  # type: ignore[arg-type]
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
    artifacts = {
        **_save_model(ctx.out_dir, model),
        **_save_json(
            ctx.out_dir,
            "curves.json",
            {"before": before_curve, "after_check": after_curve, "after_full_retrain_loss": losses, "suggested_lr": lr},
        ),
    }
    treatment = Treatment(
        challenge_id=ctx.challenge_id,
        action=f"LR range test → LR {lr:.3g}; retrain with AdamW and a one-cycle schedule (30 % warm-up, cosine decay) for {params.epochs or cfg.epochs} epochs",
        before={
            "lr": res.metrics.get("lr"),
            "loss_progress": res.metrics.get("loss_progress"),
            "final_loss": res.metrics.get("final_loss"),
        },
        after={
            "lr": after_res.metrics.get("lr"),
            "loss_progress": after_res.metrics.get("loss_progress"),
            "final_loss": after_res.metrics.get("final_loss"),
            "retrain_final_loss": float(np.median(losses[-max(1, len(losses) // 10) :])) if losses else None,
        },
        before_status=res.status,
        after_status=after_res.status,
        artifacts=artifacts,
        notes=(
            "before/after are the same short monitored run with the old and the new LR; curves.json holds both loss curves and the full retrain's",
        ),
    )
    return TreatOutcome(treatment, before, after)


CONVERGENCE = RemedySpec(
    id="optimization.convergence",
    params=ConvergenceParams,
    run=treat_convergence,
    description="LR from a range test, retrain with one-cycle (warm-up + cosine), compare the loss curves",
)


# ---------------------------------------------------------------------------------------
# model.overfitting


@dataclass(frozen=True)
class OverfittingParams:
    """``retrain``: also retrain with early stopping, ``weight_decay`` and ``label_smoothing`` (needs the architecture)."""

    retrain: bool = True
    weight_decay: float = 5e-3
    label_smoothing: float = 0.1
    patience: int = 3


def treat_overfitting(ctx: TreatContext, params: OverfittingParams) -> TreatOutcome:
    """Temperature scaling (ECE before/after, cross-fitted) and an optional regularised retrain."""
    from scipy.special import softmax

    from dlclinic.core.inference import predict_logits
    from dlclinic.core.recipe import fit, seed_everything
    from dlclinic.core.results import Treatment
    from dlclinic.functional.calibration import estimate_ece

    case, cfg = ctx.case, ctx.fit_config
    test = case.get("test")
    if test is None or test.y is None or len(test) < 40:
        raise ConfigError(
            "treat model.overfitting needs a labelled test split of at least 40 rows to fit and verify the temperature (pass --test)"
        )
    before = ctx.measure(case)
    res = before[ctx.challenge_id]
    base = case.model
    notes = []
    regularised = False
    if params.retrain:
        try:
            factory = _factory(ctx, "model.overfitting")
        except ConfigError as exc:
            notes.append(f"no regularised retrain: {exc}")
        else:
            with ctx.progress.step(
                "retraining with early stopping, weight decay and label smoothing", total=1
            ) as advance:
                seed_everything(cfg.seed)
                reg_cfg = dataclasses.replace(
                    cfg,
                    weight_decay=params.weight_decay,
                    label_smoothing=params.label_smoothing,
                    patience=params.patience,
                    val_fraction=max(cfg.val_fraction, 0.1),
                )
                base = fit(factory(), np.nan_to_num(case.train.x), case.train.y, reg_cfg).model  # type: ignore[arg-type]
                advance(1)
            regularised = True
            notes.append(
                f"retrained with early stopping (patience {params.patience}, best checkpoint restored), weight decay {params.weight_decay:g} and label smoothing {params.label_smoothing:g}"
            )
    logits = predict_logits(base, np.nan_to_num(test.x))
    y = test.y
    order = np.random.default_rng(0).permutation(len(y))
    halves = (order[: len(y) // 2], order[len(y) // 2 :])
    scaled = np.empty_like(logits, dtype=np.float64)
    temps = []
    for fit_rows, eval_rows in (halves, halves[::-1]):
        t = fit_temperature(logits[fit_rows], y[fit_rows])
        temps.append(t)
        scaled[eval_rows] = logits[eval_rows] / t
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
    after_res = after[ctx.challenge_id]
    notes.append(
        f"ECE after temperature scaling is cross-fitted: T fitted on one half of test ({temps[0]:.2f} / {temps[1]:.2f}) and measured on the other; the saved model uses T={t_all:.2f} fitted on all of test, so the re-measured ECE in the after report is optimistic"
    )
    treatment = Treatment(
        challenge_id=ctx.challenge_id,
        action=("regularised retrain + " if regularised else "") + f"temperature scaling (T={t_all:.2f})",
        before={
            "ece": ece_before if not regularised else res.metrics.get("ece"),
            "accuracy_gap": res.metrics.get("accuracy_gap"),
            "test_accuracy": res.metrics.get("test_accuracy"),
        },
        after={
            "ece": ece_after,
            "ece_uncalibrated_model": ece_before,
            "accuracy_gap": after_res.metrics.get("accuracy_gap"),
            "test_accuracy": after_res.metrics.get("test_accuracy"),
            "temperature": t_all,
        },
        before_status=res.status,
        after_status=after_res.status,
        artifacts=_save_model(ctx.out_dir, model),
        notes=tuple(notes),
    )
    return TreatOutcome(treatment, before, after)


OVERFITTING = RemedySpec(
    id="model.overfitting",
    params=OverfittingParams,
    run=treat_overfitting,
    description="temperature scaling verified by ECE (cross-fitted), plus a retrain with early stopping, weight decay and label smoothing",
)


# ---------------------------------------------------------------------------------------
# optimization.batchnorm


@dataclass(frozen=True)
class BatchNormParams:
    """``rows``: training rows used to re-estimate the statistics (0 = all)."""

    rows: int = 0


def treat_batchnorm(ctx: TreatContext, params: BatchNormParams) -> TreatOutcome:
    """Re-estimate BN running statistics on clean training data and measure again."""
    from dlclinic.checks.training_run import subsample
    from dlclinic.core.results import Treatment
    from dlclinic.functional.batchnorm import bn_layers, recalibrate_bn

    case = ctx.case
    if not hasattr(case.model, "named_modules") or not bn_layers(case.model):
        raise ConfigError("treat optimization.batchnorm needs an nn.Module with BatchNorm layers; this model has none")
    before = ctx.measure(case)
    res = before[ctx.challenge_id]
    rows = subsample(len(case.train), params.rows or len(case.train), 0)
    model = recalibrate_bn(case.model, np.nan_to_num(case.train.x[rows]))
    treated = dataclasses.replace(case, model=model, model_source=f"{case.model_source}, BN statistics recalibrated")
    after = ctx.measure(treated)
    after_res = after[ctx.challenge_id]
    treatment = Treatment(
        challenge_id=ctx.challenge_id,
        action=f"re-estimate the running statistics of {len(bn_layers(model))} BatchNorm layer(s) on {len(rows)} training rows (cumulative average), no retraining",
        before={"eval_accuracy": res.metrics.get("eval_accuracy"), "max_mean_shift": res.metrics.get("max_mean_shift")},
        after={
            "eval_accuracy": after_res.metrics.get("eval_accuracy"),
            "max_mean_shift": after_res.metrics.get("max_mean_shift"),
        },
        before_status=res.status,
        after_status=after_res.status,
        artifacts=_save_model(ctx.out_dir, model),
        notes=(
            "a train-mode/eval-mode gap at tiny batch sizes is not fixed by recalibration: swap BatchNorm for GroupNorm/LayerNorm or train with larger batches",
        ),
    )
    return TreatOutcome(treatment, before, after)


BATCHNORM = RemedySpec(
    id="optimization.batchnorm",
    params=BatchNormParams,
    run=treat_batchnorm,
    description="recalibrate BatchNorm running statistics on clean training data",
)


# ---------------------------------------------------------------------------------------
# model.gradients


@dataclass(frozen=True)
class GradientsParams:
    """``lr_steps``: mini-batches of the LR range test (run only when gradients exploded, died or went NaN)."""

    lr_steps: int = 100


def reinitialise(model: Any) -> Any:
    """Xavier-normal weights when the model uses sigmoid/tanh, Kaiming-normal (fan-in, ReLU) otherwise; zero biases. In place."""
    import torch
    from torch import nn

    saturating = any(isinstance(m, (nn.Sigmoid, nn.Tanh)) for m in model.modules())
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                if saturating:
                    nn.init.xavier_normal_(m.weight)
                else:
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    m.bias.zero_()
    return model


def treat_gradients(ctx: TreatContext, params: GradientsParams) -> TreatOutcome:
    """Re-initialise (and lower the LR after an explosion); verified by the same monitored run."""
    from dlclinic.core.results import Treatment

    factory = _factory(ctx, "model.gradients")
    case = ctx.case
    before = ctx.measure(case)
    res = before[ctx.challenge_id]

    def new_factory() -> Any:
        return reinitialise(factory())

    lr = float(ctx.fit_config.lr)
    if res.details.get("verdict") in ("exploding", "nonfinite", "dead"):
        # the step size is part of the problem: never go above the recipe's LR, take the range test's if lower
        lr = min(lr, _suggest_lr(ctx, new_factory, params.lr_steps))
    treated = dataclasses.replace(case, model_factory=new_factory, metadata={**case.metadata, "fit.lr": lr})
    after = ctx.measure(treated)
    after_res = after[ctx.challenge_id]
    notes = [
        "verified by the same monitored training run with the new initialisation and LR; gradient clipping (torch.nn.utils.clip_grad_norm_) is advised in your loop when norms spike"
    ]
    if after_res.details.get("verdict") == "vanishing":
        notes.append(
            "gradients still vanish after re-initialisation: the architecture needs normalisation (BatchNorm/LayerNorm) or residual connections, or ReLU-family activations instead of sigmoid/tanh"
        )
    treatment = Treatment(
        challenge_id=ctx.challenge_id,
        action=f"re-initialise ({'Xavier' if 'sigmoid' in repr(factory()).lower() or 'tanh' in repr(factory()).lower() else 'Kaiming'}) and train with LR {lr:.3g}",
        before={
            "min_depth_ratio": res.metrics.get("min_depth_ratio"),
            "grad_norm_growth": res.metrics.get("grad_norm_growth"),
            "nonfinite_steps": res.metrics.get("nonfinite_steps"),
        },
        after={
            "min_depth_ratio": after_res.metrics.get("min_depth_ratio"),
            "grad_norm_growth": after_res.metrics.get("grad_norm_growth"),
            "nonfinite_steps": after_res.metrics.get("nonfinite_steps"),
            "lr": lr,
        },
        before_status=res.status,
        after_status=after_res.status,
        notes=tuple(notes),
    )
    return TreatOutcome(treatment, before, after)


GRADIENTS = RemedySpec(
    id="model.gradients",
    params=GradientsParams,
    run=treat_gradients,
    description="re-initialise (Xavier/Kaiming) with the LR from a range test, verified by the gradient monitor",
)


# ---------------------------------------------------------------------------------------
# optimization.nonconvex


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
    import torch
    from torch import nn

    from dlclinic.core.recipe import _prepare_inputs, seed_everything

    if not rho >= 0:
        raise ConfigError(f"`rho >= 0` must hold, but got rho={rho}")
    seed_everything(seed)
    _prepare_inputs(model, x)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    total = max(1, math.ceil(len(xt) / batch_size)) * epochs
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
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
    from dlclinic.core.inference import predict_logits
    from dlclinic.core.recipe import seed_everything
    from dlclinic.core.results import Treatment

    factory = _factory(ctx, "optimization.nonconvex")
    case, cfg = ctx.case, ctx.fit_config
    epochs = params.epochs or cfg.epochs
    x, y = np.nan_to_num(case.train.x), case.train.y
    with ctx.progress.step("training the reference and the SAM model", total=2) as advance:
        runs = []
        for rho in (0.0, params.rho):  # the same loop, seed and data: only SAM differs
            seed_everything(cfg.seed)
            runs.append(
                train_sam(
                    factory(),
                    x,
                    y,
                    lr=cfg.lr,
                    epochs=epochs,
                    batch_size=cfg.batch_size,
                    weight_decay=cfg.weight_decay,
                    rho=rho,
                    seed=cfg.seed,
                )
            )  # type: ignore[arg-type]
            advance(1)
    reference, model = runs
    ref_case = dataclasses.replace(case, model=reference)
    before = ctx.measure(ref_case)
    treated = dataclasses.replace(
        case, model=model, model_source=f"{case.model_source}, retrained with SAM (rho={params.rho:g})"
    )
    after = ctx.measure(treated)
    res, after_res = before[ctx.challenge_id], after[ctx.challenge_id]
    test = case.get("test")
    acc: dict[str, float | None] = {"before": None, "after": None}
    if test is not None and test.y is not None:
        acc = {
            k: float((predict_logits(m, np.nan_to_num(test.x)).argmax(1) == test.y).mean())
            for k, m in (("before", reference), ("after", model))
        }
    treatment = Treatment(
        challenge_id=ctx.challenge_id,
        action=f"retrain with SAM (rho={params.rho:g}) around AdamW, {epochs} epochs, same recipe otherwise",
        before={"hessian_top_eigenvalue": res.metrics.get("hessian_top_eigenvalue"), "test_accuracy": acc["before"]},
        after={
            "hessian_top_eigenvalue": after_res.metrics.get("hessian_top_eigenvalue"),
            "test_accuracy": acc["after"],
        },
        before_status=res.status,
        after_status=after_res.status,
        artifacts=_save_model(ctx.out_dir, model),
        notes=(
            "before = the training loop without SAM, after = the same loop, seed and data with SAM; sharpness is the top Hessian eigenvalue on the same training rows",
        ),
    )
    return TreatOutcome(treatment, before, after)


NONCONVEX = RemedySpec(
    id="optimization.nonconvex",
    params=NonconvexParams,
    run=treat_nonconvex,
    description="retrain with SAM (sharpness-aware minimisation); verify lower sharpness and report accuracy",
)
