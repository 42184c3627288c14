"""Training and optimisation checks: model.gradients, optimization.convergence,
optimization.batchnorm, optimization.nonconvex, compute.training_cost, compute.energy.

Thin adapters over :mod:`dlclinic.functional.gradients`, ``lr_range``, ``batchnorm``,
``landscape`` and ``cost``. The checks that need training read the one shared, cached,
monitored run of :mod:`dlclinic.checks.training_run` (a few hundred steps of a fresh copy
of the architecture); without an architecture (ONNX / ``.pt2``) they say ``not_examined``
for that part and still measure what the given model allows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlclinic.checks.training_run import RunSettings, fresh_model, monitored_run, recipe, record_of, subsample
from dlclinic.core.case import Case
from dlclinic.core.evidence import Evidence
from dlclinic.core.registry import CheckSpec
from dlclinic.core.results import CheckResult, Finding, Remedy, Status, worst

__all__ = ["BATCHNORM", "CONVERGENCE", "ENERGY", "GRADIENTS", "NONCONVEX", "TRAINING_COST"]


def _settings(opts: Any) -> RunSettings:
    return RunSettings(steps=opts.steps, rows=opts.rows, every=opts.every, lr=opts.lr, batch_size=opts.batch_size)


def _is_module(model: Any) -> bool:
    return hasattr(model, "named_modules") and hasattr(model, "parameters")


def _fmt(v: float) -> str:
    return f"{v:.2e}" if v and (abs(v) < 1e-2 or abs(v) >= 1e4) else f"{v:.3g}"


# ---------------------------------------------------------------------------------------
# model.gradients


@dataclass(frozen=True)
class GradientsOptions:
    """Thresholds for gradient flow (see :mod:`dlclinic.functional.gradients`).

    A depth ratio below ``warn_ratio`` warns and below ``fail_ratio`` fails (healthy nets
    stay above 10⁻²); ``explode_growth`` is the tolerated growth of the global gradient
    norm; dead-ReLU / saturation shares above ``warn_dead`` / ``warn_saturated`` warn.
    Dead units are judged on the user's trained model (zero on every one of 1,024 train
    rows) when it is an nn.Module, else on the short run's last sampled batches.
    ``steps``, ``rows``, ``every``, ``lr``, ``batch_size``: the shared training run.
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


def _recent(share: np.ndarray, last: int = 5) -> np.ndarray:
    """Per module, the smallest share over the last sampled steps (a unit must stay dead/saturated)."""
    import warnings

    if not share.size or not len(share):
        return np.zeros(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.asarray(np.nanmin(share[-last:], axis=0))


def run_gradients(case: Case, evidence: Evidence, options: GradientsOptions) -> CheckResult:
    """Vanishing/exploding gradients, dead or saturated units and loss spikes in a short monitored run."""
    from dlclinic.functional.gradients import diagnose_gradients

    arrays, how = monitored_run(case, evidence, _settings(options))
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
    dead, sat = _recent(rec.dead_share), _recent(rec.saturated_share)
    trained_dead: dict[str, float] = {}
    if _is_module(case.model):
        from dlclinic.functional.gradients import dead_relu_share

        try:
            trained_dead = dead_relu_share(case.model, np.nan_to_num(case.train.x[subsample(len(case.train), 1024, 6)]))
        except Exception:  # a model that only runs in its own way: the re-run's numbers still stand
            trained_dead = {}
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
    with np.errstate(all="ignore"):
        upd = (
            np.nanmedian(rec.update_ratio, axis=0)
            if rec.update_ratio.size and np.isfinite(rec.update_ratio).any()
            else np.full(len(rec.layers), np.nan)
        )
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
    status = worst(statuses)
    steps = rec.n_steps
    if status == "ok":
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
        summary = f"Gradients flow through all {len(rec.layers)} layers in a {steps}-step run (smallest input/output ratio {_fmt(diag.min_ratio)}, norm growth {_fmt(diag.growth)}×){dead_txt}."
    else:
        summary = f"In a {steps}-step training run of {how}: " + "; ".join(f.message for f in findings[:2]) + "."
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
    remedy = None
    if status in ("warn", "fail"):
        remedy = Remedy(
            "dlclinic treat model.gradients",
            "retrain with re-initialisation (Xavier for sigmoid/tanh, Kaiming for ReLU), gradient clipping and the LR from a range test, verified by the same monitor; if gradients still vanish, add normalisation (BatchNorm/LayerNorm) or residual connections",
        )
    return CheckResult(
        id="model.gradients",
        status=status,
        summary=summary,
        metrics={
            "min_depth_ratio": diag.min_ratio,
            "max_depth_ratio": diag.max_ratio,
            "grad_norm_growth": diag.growth,
            "nonfinite_steps": diag.nonfinite_steps,
            "zero_gradient_share": diag.zero_grad_share,
            "loss_spikes": len(spikes),
            "max_dead_relu_share": float(np.nanmax(dead)) if len(dead) and np.isfinite(dead).any() else None,
            "max_dead_relu_share_trained_model": max(trained_dead.values()) if trained_dead else None,
            "max_saturated_share": float(np.nanmax(sat)) if len(sat) and np.isfinite(sat).any() else None,
            "steps": steps,
        },
        thresholds={
            "min_depth_ratio.warn": options.warn_ratio,
            "min_depth_ratio.fail": options.fail_ratio,
            "grad_norm_growth.fail": options.explode_growth,
            "dead_relu_share.warn": options.warn_dead,
            "saturated_share.warn": options.warn_saturated,
        },
        findings=tuple(findings),
        remedy=remedy,
        details={
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
        },
    )


GRADIENTS = CheckSpec(
    id="model.gradients",
    requires=(),
    options=GradientsOptions,
    run=run_gradients,
    description="per-layer gradient norms across depth, growth over steps, update ratios, dead/saturated units, NaN/Inf, loss spikes (monitored short run)",
)


# ---------------------------------------------------------------------------------------
# optimization.convergence


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


def run_convergence(case: Case, evidence: Evidence, options: ConvergenceOptions) -> CheckResult:
    """Loss-curve divergence/plateau in the shared run, LR range test, activation scale at init."""
    from dlclinic.functional.lr_range import activation_scales, analyse_loss_curve, lr_range_test

    arrays, how = monitored_run(case, evidence, _settings(options))
    if arrays is None:
        return CheckResult(
            id="optimization.convergence",
            status="not_examined",
            summary=f"Convergence is measured by training, and {how}.",
        )
    rec = record_of(arrays)
    lr = float(arrays["lr"])
    curve = analyse_loss_curve(rec.loss, min_progress=options.min_progress, blowup=options.blowup)
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
    cfg = recipe(evidence)
    rows = subsample(len(case.train), options.rows, 1)
    x, y = np.nan_to_num(case.train.x[rows]), case.train.y[rows]  # type: ignore[index]
    lr_res = None
    if options.lr_steps > 0:
        params = {
            "steps": options.lr_steps,
            "lo": options.lr_min,
            "hi": options.lr_max,
            "bs": int(arrays["batch_size"]),
            "wd": cfg.weight_decay,
            "rows": options.rows,
        }

        def compute() -> dict[str, np.ndarray]:
            from dlclinic.core.recipe import seed_everything

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

        lr_res = evidence.cached("training.lr_range", params, compute)
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
    status = worst(statuses)
    if status == "ok":
        summary = f"The loss converges with LR {_fmt(lr)} ({curve.progress:.0%} lower after {rec.n_steps} steps)" + (
            f"; the range test suggests LR {_fmt(float(lr_res['suggested']))}." if lr_res is not None else "."
        )
    else:
        summary = f"In a {rec.n_steps}-step run of {how}: " + "; ".join(f.message for f in findings[:2]) + "."
    from dlclinic.functional.lr_range import smooth

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


CONVERGENCE = CheckSpec(
    id="optimization.convergence",
    requires=(),
    options=ConvergenceOptions,
    run=run_convergence,
    description="LR range test, loss plateau/divergence in a monitored short run, activation variance per layer at init",
)


# ---------------------------------------------------------------------------------------
# optimization.batchnorm


@dataclass(frozen=True)
class BatchNormOptions:
    """Limits for batch-norm problems.

    Recalibrating BN statistics on the train split must not gain more than
    ``warn_recalibration_gain`` (``fail_recalibration_gain``) accuracy, significant at
    ``alpha`` (exact McNemar test on the paired predictions): otherwise the running
    statistics are stale. Train-mode accuracy at the training batch size may trail eval
    mode by at most ``warn_train_mode_gap``. ``train_batch_size``: the batch size the model
    was trained with (default: the recipe's). ``rows``: rows used for each measurement.
    """

    warn_recalibration_gain: float = 0.02
    fail_recalibration_gain: float = 0.10
    warn_train_mode_gap: float = 0.05
    alpha: float = 0.01
    small_batch: int = 8
    train_batch_size: int | None = None
    batch_sizes: tuple[int, ...] = (2, 4, 8, 32, 128)
    rows: int = 1000


def _mcnemar_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value for paired correctness vectors ``a`` and ``b``."""
    from scipy.stats import binomtest

    n01 = int(np.sum(~a & b))
    n10 = int(np.sum(a & ~b))
    if n01 + n10 == 0:
        return 1.0
    return float(binomtest(n01, n01 + n10, 0.5).pvalue)


def run_batchnorm(case: Case, evidence: Evidence, options: BatchNormOptions) -> CheckResult:
    """Stale running statistics (recalibration gain), train/eval gap, accuracy vs batch size."""
    from dlclinic.core.inference import predict_logits
    from dlclinic.functional.batchnorm import (
        accuracy_in_train_mode,
        bn_layers,
        recalibrate_bn,
        running_stat_shift,
        samples_per_statistic,
    )

    model = case.model
    if not _is_module(model):
        return CheckResult(
            id="optimization.batchnorm",
            status="not_examined",
            summary="Batch norm is examined on nn.Module models; this model exposes no layers (ONNX). Give --model file.py:factory with --weights.",
        )
    layers = bn_layers(model)
    if not layers:
        return CheckResult(
            id="optimization.batchnorm",
            status="ok",
            summary="The model has no BatchNorm layers, so batch-norm statistics cannot be stale or batch-size dependent.",
            metrics={"bn_layers": 0},
        )
    held_name = "test" if case.get("test") is not None and case.splits["test"].labelled else "train"
    held = case.splits[held_name]
    rows = subsample(len(held), options.rows, 2)
    xh, yh = np.nan_to_num(held.x[rows]), held.y[rows]  # type: ignore[index]
    cal_rows = subsample(len(case.train), max(options.rows, 512), 3)
    xc = np.nan_to_num(case.train.x[cal_rows])
    pred = (
        evidence.get("probs", held_name)[rows].argmax(1) if held_name == "test" else predict_logits(model, xh).argmax(1)
    )
    ok_eval = pred == yh
    recal = recalibrate_bn(model, xc)
    ok_recal = predict_logits(recal, xh).argmax(1) == yh
    acc_eval, acc_recal = float(ok_eval.mean()), float(ok_recal.mean())
    gain = acc_recal - acc_eval
    p = _mcnemar_p(ok_eval, ok_recal)
    shifts = running_stat_shift(model, xc)
    cfg = recipe(evidence)
    b_train = options.train_batch_size or cfg.batch_size
    sizes = sorted(set(options.batch_sizes) | {b_train})
    by_size = {b: accuracy_in_train_mode(model, xh, yh, b) for b in sizes}
    train_gap = acc_eval - by_size[b_train]
    per_stat = samples_per_statistic(model, xh, b_train)
    findings: list[Finding] = []
    statuses: list[Status] = ["ok"]
    if gain > options.warn_recalibration_gain and p < options.alpha:
        statuses.append("fail" if gain > options.fail_recalibration_gain else "warn")
        worst_layer = max(shifts.items(), key=lambda kv: kv[1][0] + kv[1][1])[0] if shifts else None
        findings.append(
            Finding(
                "stale_statistics",
                f"running statistics are stale: re-estimating them on train data raises {held_name} accuracy from {acc_eval:.1%} to {acc_recal:.1%} (McNemar p={p:.1g})"
                + (f"; most shifted layer `{worst_layer}`" if worst_layer else ""),
                extra={"layer": worst_layer},
            )
        )
    if train_gap > options.warn_train_mode_gap:
        statuses.append("warn")
        findings.append(
            Finding(
                "small_batch",
                f"with batch statistics at the training batch size {b_train}, accuracy is {by_size[b_train]:.1%} vs {acc_eval:.1%} in eval mode: BN is noisy at this batch size (consider GroupNorm/LayerNorm or a larger batch)",
            )
        )
    elif b_train < options.small_batch:
        findings.append(
            Finding(
                "small_batch_note",
                f"the training batch size {b_train} is below {options.small_batch}, where BatchNorm statistics are known to be unreliable (Wu & He, 2018)",
            )
        )
    status = worst(statuses)
    if status == "ok":
        summary = f"{len(layers)} BatchNorm layer(s): running statistics match the data (recalibration changes accuracy by {gain:+.1%}) and train-mode accuracy at batch size {b_train} is within {options.warn_train_mode_gap:.0%} of eval mode."
    else:
        summary = "; ".join(f.message for f in findings[:2]).capitalize() + "."
    remedy = None
    if status in ("warn", "fail"):
        remedy = Remedy(
            "dlclinic treat optimization.batchnorm",
            "re-estimate the BN running statistics on clean training data (no retraining); for tiny batches swap BatchNorm for GroupNorm/LayerNorm",
        )
    return CheckResult(
        id="optimization.batchnorm",
        status=status,
        summary=summary,
        metrics={
            "bn_layers": len(layers),
            "eval_accuracy": acc_eval,
            "recalibrated_accuracy": acc_recal,
            "recalibration_gain": gain,
            "recalibration_p_value": p,
            "train_batch_size": b_train,
            "train_mode_accuracy": by_size[b_train],
            "train_mode_gap": train_gap,
            "max_mean_shift": max((s[0] for s in shifts.values()), default=None),
            "max_log_variance_ratio": max((s[1] for s in shifts.values()), default=None),
        },
        thresholds={
            "recalibration_gain.warn": options.warn_recalibration_gain,
            "recalibration_gain.fail": options.fail_recalibration_gain,
            "recalibration_p_value.max": options.alpha,
            "train_mode_gap.warn": options.warn_train_mode_gap,
        },
        findings=tuple(findings),
        remedy=remedy,
        details={
            "plots": [
                {
                    "kind": "line",
                    "title": f"Accuracy vs batch size with batch statistics ({held_name})",
                    "xlabel": "batch size",
                    "ylabel": "accuracy",
                    "xscale": "log",
                    "series": [
                        {"label": "train-mode BN", "x": sizes, "y": [by_size[b] for b in sizes]},
                        {"label": "eval mode (running stats)", "x": [sizes[0], sizes[-1]], "y": [acc_eval, acc_eval]},
                        {"label": "recalibrated", "x": [sizes[0], sizes[-1]], "y": [acc_recal, acc_recal]},
                    ],
                }
            ],
            "tables": [
                {
                    "title": "BatchNorm layers",
                    "columns": [
                        "layer",
                        "values per statistic at training batch size",
                        "mean shift (running σ)",
                        "|log variance ratio|",
                    ],
                    "rows": [
                        [n, per_stat.get(n), shifts.get(n, (None, None))[0], shifts.get(n, (None, None))[1]]
                        for n, _ in layers
                    ],
                }
            ],
        },
    )


BATCHNORM = CheckSpec(
    id="optimization.batchnorm",
    requires=(("probs", "test"),),
    options=BatchNormOptions,
    run=run_batchnorm,
    description="stale running statistics (recalibration gain with McNemar test), train/eval-mode gap, accuracy vs batch size, values per BN statistic",
)


# ---------------------------------------------------------------------------------------
# optimization.nonconvex


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


def run_nonconvex(case: Case, evidence: Evidence, options: NonconvexOptions) -> CheckResult:
    """Loss slices, top Hessian eigenvalue and the loss barrier between two seeds."""
    from dlclinic.functional.landscape import (
        hessian_top_eigenvalue,
        interpolation_barrier,
        loss_slice_1d,
        loss_slice_2d,
        make_loss,
    )

    model = case.model
    if not _is_module(model) or not any(p.requires_grad for p in model.parameters()):
        return CheckResult(
            id="optimization.nonconvex",
            status="not_examined",
            summary="The loss landscape needs a differentiable nn.Module; this model exposes no parameters (ONNX). Give --model file.py:factory with --weights.",
        )
    rows = subsample(len(case.train), options.rows, 4)
    x, y = np.nan_to_num(case.train.x[rows]), case.train.y[rows]  # type: ignore[index]
    loss = make_loss(x, y)
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

    land = evidence.cached("training.landscape", params, compute)
    eig = float(land["eig"])
    cfg = recipe(evidence)
    product = eig * cfg.lr
    barrier_note = ""
    bar = None
    if options.barrier:
        fresh, how = fresh_model(case)
        if fresh is not None:
            bparams = {
                "rows": options.rows,
                "steps": options.barrier_steps,
                "lr": cfg.lr,
                "bs": cfg.batch_size,
                "wd": cfg.weight_decay,
            }

            def compute_barrier() -> dict[str, np.ndarray]:
                from dlclinic.core.recipe import FitConfig, fit, seed_everything

                trows = subsample(len(case.train), 1024, 5)
                xt, yt = np.nan_to_num(case.train.x[trows]), case.train.y[trows]  # type: ignore[index]
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

            bar = evidence.cached("training.barrier", bparams, compute_barrier)
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


NONCONVEX = CheckSpec(
    id="optimization.nonconvex",
    requires=(),
    options=NonconvexOptions,
    run=run_nonconvex,
    description="1-D/2-D filter-normalised loss slices, top Hessian eigenvalue (power iteration on HVPs), loss barrier between two seeds",
)


# ---------------------------------------------------------------------------------------
# compute.training_cost


@dataclass(frozen=True)
class TrainingCostOptions:
    """``warn_stall``: share of step time waiting for data above which training is input-bound;
    ``budget_hours``: warn when the projected full run exceeds it (``None``: no budget)."""

    warn_stall: float = 0.2
    budget_hours: float | None = None
    steps: int = 300
    rows: int = 1024
    every: int = 10
    lr: float | None = None
    batch_size: int | None = None


def _suggestions(case: Case, model: Any) -> list[str]:
    import torch

    out = []
    cap = ""
    try:
        cap = torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover - older torch
        pass
    cuda = torch.cuda.is_available()
    if (cuda and torch.cuda.is_bf16_supported()) or "AVX512" in cap.upper() or "AMX" in cap.upper():
        out.append(
            "bf16 autocast (torch.autocast) is supported on this hardware: roughly halves memory traffic for matmuls/convs"
        )
    else:
        out.append(
            f"bf16 autocast would mostly emulate on this CPU (capability {cap or 'unknown'}); keep float32 here, use it on a GPU/AMX machine"
        )
    if _is_module(model) and any(isinstance(m, torch.nn.Conv2d) for m in model.modules()):
        out.append(
            "channels-last memory format (model.to(memory_format=torch.channels_last)) speeds up convolutions on modern CPUs/GPUs"
        )
    return out


def run_training_cost(case: Case, evidence: Evidence, options: TrainingCostOptions) -> CheckResult:
    """FLOPs per sample, parameters, throughput, data-stall share and the projected full run."""
    from dlclinic.functional.cost import count_flops

    model = case.model
    flops = None
    if _is_module(model):
        try:
            flops = count_flops(model, np.nan_to_num(case.train.x[:8]))
        except Exception:
            flops = None
    arrays, how = monitored_run(case, evidence, _settings(options))
    if arrays is None:
        if flops is None:
            return CheckResult(
                id="compute.training_cost",
                status="not_examined",
                summary=f"Training cost needs a trainable model, and {how}.",
            )
        return CheckResult(
            id="compute.training_cost",
            status="not_examined",
            summary=f"{_fmt(flops.forward)} forward FLOPs per sample, {flops.parameters:,} parameters; throughput was not measured because {how}.",
            metrics={
                "forward_flops_per_sample": flops.forward,
                "train_flops_per_sample": flops.train,
                "parameters": flops.parameters,
            },
        )
    rec = record_of(arrays)
    bs = int(arrays["batch_size"])
    step_s = rec.step_seconds[np.isfinite(rec.step_seconds)]
    med = float(np.median(step_s)) if len(step_s) else math.nan
    throughput = bs / med if med > 0 else math.nan
    stall = rec.stall_share
    cfg = recipe(evidence)
    n = len(case.train)
    full_s = cfg.epochs * n / throughput if throughput > 0 else math.nan
    findings: list[Finding] = []
    statuses: list[Status] = ["ok"]
    bound = "input-bound" if math.isfinite(stall) and stall > options.warn_stall else "compute-bound"
    if bound == "input-bound":
        statuses.append("warn")
        findings.append(
            Finding(
                "input_bound",
                f"{stall:.0%} of each step is spent waiting for data: use DataLoader(num_workers>0, pin_memory=True, persistent_workers=True) or cache decoded inputs",
            )
        )
    if options.budget_hours is not None and math.isfinite(full_s) and full_s / 3600 > options.budget_hours:
        statuses.append("warn")
        findings.append(
            Finding(
                "over_budget",
                f"a full run ({cfg.epochs} epochs × {n:,} rows) is projected at {full_s / 3600:.1f} h, above the budget of {options.budget_hours:g} h",
            )
        )
    for s in _suggestions(case, model):
        findings.append(Finding("suggestion", s))
    achieved = flops.train * throughput if flops is not None and math.isfinite(throughput) else None
    status = worst(statuses)
    summary = (
        f"{throughput:,.0f} training samples/s at batch size {bs} ({bound}, {stall:.0%} of step time waiting for data)"
        + (f", {_fmt(flops.train)} FLOPs per training sample" if flops is not None else "")
        + f"; a full run of {cfg.epochs} epochs on {n:,} rows is projected at {full_s / 60:.1f} min on this machine."
    )
    return CheckResult(
        id="compute.training_cost",
        status=status,
        summary=summary,
        metrics={
            "forward_flops_per_sample": flops.forward if flops else None,
            "train_flops_per_sample": flops.train if flops else None,
            "parameters": flops.parameters if flops else None,
            "samples_per_second": throughput,
            "median_step_seconds": med,
            "data_stall_share": stall,
            "achieved_gflops": achieved / 1e9 if achieved is not None else None,
            "projected_full_run_seconds": full_s,
        },
        thresholds={"data_stall_share.warn": options.warn_stall, "projected_hours.max": options.budget_hours},
        findings=tuple(findings),
        details={
            "plots": [
                {
                    "kind": "line",
                    "title": "Step time (dlclinic's short run)",
                    "xlabel": "step",
                    "ylabel": "seconds",
                    "series": [
                        {
                            "label": "step",
                            "x": list(range(len(rec.step_seconds))),
                            "y": [float(v) if math.isfinite(v) else None for v in rec.step_seconds],
                        },
                        {
                            "label": "waiting for data",
                            "x": list(range(len(rec.wait_seconds))),
                            "y": [float(v) if math.isfinite(v) else None for v in rec.wait_seconds],
                        },
                    ],
                }
            ],
            "note": "measured on dlclinic's in-memory training loop; wrap your own loop in dlclinic.training.TrainingMonitor to measure your data loader",
        },
    )


TRAINING_COST = CheckSpec(
    id="compute.training_cost",
    requires=(),
    options=TrainingCostOptions,
    run=run_training_cost,
    description="FLOPs per sample (torch.utils.flop_counter), parameters, throughput, data-stall share, projected full run",
)


# ---------------------------------------------------------------------------------------
# compute.energy


@dataclass(frozen=True)
class EnergyOptions:
    """``tdp_watts``: package TDP when no counter exists; ``carbon_intensity``: gCO₂e/kWh;
    ``warn_kwh``: warn when the projected full training run exceeds it (``None``: never)."""

    tdp_watts: float = 85.0
    carbon_intensity: float = 475.0
    warn_kwh: float | None = None
    steps: int = 300
    rows: int = 1024
    every: int = 10
    lr: float | None = None
    batch_size: int | None = None


def run_energy(case: Case, evidence: Evidence, options: EnergyOptions) -> CheckResult:
    """Energy and CO2e of the shared training window and of one inference pass over test."""
    from dlclinic.core.inference import predict_logits
    from dlclinic.functional.cost import EnergyMeter, co2e_grams

    held = case.get("test") or case.train
    xi = np.nan_to_num(held.x[: min(len(held), 1000)])
    with EnergyMeter(tdp_watts=options.tdp_watts) as meter:
        predict_logits(case.model, xi)
    inf = meter.reading
    if inf is None:  # pragma: no cover - set by __exit__
        raise RuntimeError("energy meter gave no reading")
    arrays, how = monitored_run(case, evidence, _settings(options))
    metrics: dict[str, float | int | bool | None] = {
        "inference_joules_per_sample": inf.joules / len(xi),
        "estimated": inf.estimated,
    }
    method = inf.method
    cfg = recipe(evidence)
    label = "estimated from TDP" if inf.estimated else f"measured ({method})"
    if arrays is None:
        summary = f"Inference: {inf.joules / len(xi) * 1e3:.3g} mJ per sample ({label}); training energy not measured because {how}."
        return CheckResult(id="compute.energy", status="not_examined", summary=summary, metrics=metrics)
    method = str(arrays["energy_method"])
    estimated = method == "tdp-estimate"
    joules = float(arrays["energy_joules"])
    # the cached run's energy was measured with the default TDP; rescale to this option's TDP
    tdp0 = float(arrays["energy_tdp"])
    if estimated and math.isfinite(tdp0) and tdp0 > 0:
        joules *= options.tdp_watts / tdp0
    samples = int(arrays["samples_trained"])
    per_sample = joules / max(samples, 1)
    full_kwh = per_sample * len(case.train) * cfg.epochs / 3.6e6
    label = (
        f"estimated from TDP ({options.tdp_watts:g} W package × CPU time / {__import__('os').cpu_count()} cores)"
        if estimated
        else f"measured with {method}"
    )
    status: Status = "ok"
    findings: list[Finding] = []
    if options.warn_kwh is not None and full_kwh > options.warn_kwh:
        status = "warn"
        findings.append(
            Finding("energy_budget", f"a full run is projected at {full_kwh:.3g} kWh, above {options.warn_kwh:g} kWh")
        )
    co2 = co2e_grams(full_kwh, options.carbon_intensity)
    summary = f"Training: {per_sample * 1e3:.3g} mJ per sample, {full_kwh * 1e3:.3g} Wh ({co2:.2g} g CO2e at {options.carbon_intensity:g} g/kWh) projected for a full run of {cfg.epochs} epochs; inference {inf.joules / len(xi) * 1e3:.3g} mJ per sample — {label}."
    metrics.update(
        {
            "training_joules_window": joules,
            "training_joules_per_sample": per_sample,
            "window_seconds": float(arrays["energy_seconds"]),
            "full_run_kwh": full_kwh,
            "full_run_co2e_grams": co2,
            "estimated": estimated,
        }
    )
    return CheckResult(
        id="compute.energy",
        status=status,
        summary=summary,
        metrics=metrics,
        thresholds={"full_run_kwh.warn": options.warn_kwh},
        findings=tuple(findings),
        details={
            "tables": [
                {
                    "title": "Energy measurement",
                    "columns": ["window", "method", "joules", "seconds", "per sample (mJ)"],
                    "rows": [
                        ["training (short run)", label, joules, float(arrays["energy_seconds"]), per_sample * 1e3],
                        [
                            "inference (test pass)",
                            "estimated from TDP" if inf.estimated else inf.method,
                            inf.joules,
                            inf.seconds,
                            inf.joules / len(xi) * 1e3,
                        ],
                    ],
                }
            ],
            "method": method,
        },
    )


ENERGY = CheckSpec(
    id="compute.energy",
    requires=(),
    options=EnergyOptions,
    run=run_energy,
    description="energy and CO2e of a measured training and inference window: RAPL/powercap, NVML, or an estimate from TDP (labelled)",
)
