"""optimization.batchnorm — are the BatchNorm statistics stale or unreliable at the batch size?

Check: the accuracy gained by recalibrating the running statistics (exact McNemar test), the
train/eval-mode gap at the training batch size, accuracy vs batch size, values per statistic.
Remedy: BN recalibration on clean training data (no retraining).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import binomtest

from dlclinic.core.case import Case, usable_inputs
from dlclinic.core.errors import ConfigError
from dlclinic.core.evidence import Evidence
from dlclinic.core.inference import predict_logits
from dlclinic.core.registry import CheckSpec, RemedySpec, TreatContext, TreatOutcome, conclude
from dlclinic.core.results import CheckResult, Finding, Remedy, Status, worst
from dlclinic.functional.batchnorm import (
    accuracy_in_train_mode,
    bn_layers,
    recalibrate_bn,
    running_stat_shift,
    samples_per_statistic,
)
from dlclinic.providers.retraining import save_weights
from dlclinic.providers.training_run import recipe, subsample


def _is_module(model: Any) -> bool:
    return hasattr(model, "named_modules") and hasattr(model, "parameters")


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
    n01 = int(np.sum(~a & b))
    n10 = int(np.sum(a & ~b))
    if n01 + n10 == 0:
        return 1.0
    return float(binomtest(n01, n01 + n10, 0.5).pvalue)


@dataclass(frozen=True)
class _Measured:
    """What run_batchnorm measures on the held-out rows (``held_name``) and the train rows."""

    held_name: str
    layers: list[tuple[str, Any]]
    acc_eval: float
    acc_recal: float
    p: float
    shifts: dict[str, tuple[float, float]]
    b_train: int
    sizes: list[int]
    by_size: dict[int, float]
    per_stat: dict[str, int]

    @property
    def gain(self) -> float:
        return self.acc_recal - self.acc_eval

    @property
    def train_gap(self) -> float:
        return self.acc_eval - self.by_size[self.b_train]


def _measure(case: Case, evidence: Evidence, options: BatchNormOptions, layers: list[tuple[str, Any]]) -> _Measured:
    """Eval vs recalibrated accuracy (McNemar), running-stat shifts and train-mode accuracy per batch size."""
    model = case.model
    held_name = "test" if case.get("test") is not None and case.splits["test"].labelled else "train"
    held = case.splits[held_name]
    rows = subsample(len(held), options.rows, 2)
    xh, yh = usable_inputs(held.x[rows]), held.y[rows]  # type: ignore[index]
    cal_rows = subsample(len(case.train), max(options.rows, 512), 3)
    xc = usable_inputs(case.train.x[cal_rows])
    pred = (
        evidence.get("probs", held_name)[rows].argmax(1) if held_name == "test" else predict_logits(model, xh).argmax(1)
    )
    ok_eval = pred == yh
    recal = recalibrate_bn(model, xc)
    ok_recal = predict_logits(recal, xh).argmax(1) == yh
    p = _mcnemar_p(ok_eval, ok_recal)
    shifts = running_stat_shift(model, xc)
    cfg = recipe(evidence)
    b_train = options.train_batch_size or cfg.batch_size
    sizes = sorted(set(options.batch_sizes) | {b_train})
    by_size = {b: accuracy_in_train_mode(model, xh, yh, b) for b in sizes}
    per_stat = samples_per_statistic(model, xh, b_train)
    return _Measured(
        held_name=held_name,
        layers=layers,
        acc_eval=float(ok_eval.mean()),
        acc_recal=float(ok_recal.mean()),
        p=p,
        shifts=shifts,
        b_train=b_train,
        sizes=sizes,
        by_size=by_size,
        per_stat=per_stat,
    )


def _cached_measure(
    case: Case, evidence: Evidence, options: BatchNormOptions, layers: list[tuple[str, Any]]
) -> _Measured:
    """:func:`_measure`, cached (a few hundred small-batch forward passes)."""

    def compute() -> dict[str, Any]:
        m = _measure(case, evidence, options, layers)
        return {**dataclasses.asdict(dataclasses.replace(m, layers=[])), "by_size": list(m.by_size.items())}

    params = {**dataclasses.asdict(options), "b_train": options.train_batch_size or recipe(evidence).batch_size}
    got = evidence.cached_json("optimization.batchnorm.measured", params, compute)
    return _Measured(
        **{
            **got,
            "layers": layers,
            "shifts": {k: tuple(v) for k, v in got["shifts"].items()},
            "by_size": {int(b): float(a) for b, a in got["by_size"]},
        }
    )


def _findings(m: _Measured, options: BatchNormOptions) -> tuple[list[Status], list[Finding]]:
    findings: list[Finding] = []
    statuses: list[Status] = ["ok"]
    gain, p, acc_eval, b_train = m.gain, m.p, m.acc_eval, m.b_train
    if gain > options.warn_recalibration_gain and p < options.alpha:
        statuses.append("fail" if gain > options.fail_recalibration_gain else "warn")
        worst_layer = max(m.shifts.items(), key=lambda kv: kv[1][0] + kv[1][1])[0] if m.shifts else None
        findings.append(
            Finding(
                "stale_statistics",
                f"running statistics are stale: re-estimating them on train data raises {m.held_name} accuracy from {acc_eval:.1%} to {m.acc_recal:.1%} (McNemar p={p:.1g})"
                + (f"; most shifted layer `{worst_layer}`" if worst_layer else ""),
                extra={"layer": worst_layer},
            )
        )
    if m.train_gap > options.warn_train_mode_gap:
        statuses.append("warn")
        findings.append(
            Finding(
                "small_batch",
                f"with batch statistics at the training batch size {b_train}, accuracy is {m.by_size[b_train]:.1%} vs {acc_eval:.1%} in eval mode: BN is noisy at this batch size (consider GroupNorm/LayerNorm or a larger batch)",
            )
        )
    elif b_train < options.small_batch:
        findings.append(
            Finding(
                "small_batch_note",
                f"the training batch size {b_train} is below {options.small_batch}, where BatchNorm statistics are known to be unreliable (Wu & He, 2018)",
            )
        )
    return statuses, findings


def _details(m: _Measured) -> dict[str, Any]:
    sizes, acc_eval, acc_recal, shifts = m.sizes, m.acc_eval, m.acc_recal, m.shifts
    return {
        "plots": [
            {
                "kind": "line",
                "title": f"Accuracy vs batch size with batch statistics ({m.held_name})",
                "xlabel": "batch size",
                "ylabel": "accuracy",
                "xscale": "log",
                "series": [
                    {"label": "train-mode BN", "x": sizes, "y": [m.by_size[b] for b in sizes]},
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
                    [n, m.per_stat.get(n), shifts.get(n, (None, None))[0], shifts.get(n, (None, None))[1]]
                    for n, _ in m.layers
                ],
            }
        ],
    }


def run_batchnorm(case: Case, evidence: Evidence, options: BatchNormOptions) -> CheckResult:
    """Stale running statistics (recalibration gain), train/eval gap, accuracy vs batch size."""
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
    m = _cached_measure(case, evidence, options, layers)
    statuses, findings = _findings(m, options)
    status = worst(statuses)
    if status == "ok":
        summary = f"{len(layers)} BatchNorm layer(s): running statistics match the data (recalibration changes accuracy by {m.gain:+.1%}) and train-mode accuracy at batch size {m.b_train} is within {options.warn_train_mode_gap:.0%} of eval mode."
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
            "eval_accuracy": m.acc_eval,
            "recalibrated_accuracy": m.acc_recal,
            "recalibration_gain": m.gain,
            "recalibration_p_value": m.p,
            "train_batch_size": m.b_train,
            "train_mode_accuracy": m.by_size[m.b_train],
            "train_mode_gap": m.train_gap,
            "max_mean_shift": max((s[0] for s in m.shifts.values()), default=None),
            "max_log_variance_ratio": max((s[1] for s in m.shifts.values()), default=None),
        },
        thresholds={
            "recalibration_gain.warn": options.warn_recalibration_gain,
            "recalibration_gain.fail": options.fail_recalibration_gain,
            "recalibration_p_value.max": options.alpha,
            "train_mode_gap.warn": options.warn_train_mode_gap,
        },
        findings=tuple(findings),
        remedy=remedy,
        details=_details(m),
    )


CHECK = CheckSpec(
    id="optimization.batchnorm",
    requires=(("probs", "test"),),
    options=BatchNormOptions,
    run=run_batchnorm,
    description="stale running statistics (recalibration gain with McNemar test), train/eval-mode gap, accuracy vs batch size, values per BN statistic",
)


# ---------------------------------------------------------------------------------------
# remedy


@dataclass(frozen=True)
class BatchNormParams:
    """``rows``: training rows used to re-estimate the statistics (0 = all)."""

    rows: int = 0


def treat_batchnorm(ctx: TreatContext, params: BatchNormParams) -> TreatOutcome:
    """Re-estimate BN running statistics on clean training data and measure again."""
    case = ctx.case
    if not hasattr(case.model, "named_modules") or not bn_layers(case.model):
        raise ConfigError("treat optimization.batchnorm needs an nn.Module with BatchNorm layers; this model has none")
    before = ctx.measure(case)
    rows = subsample(len(case.train), params.rows or len(case.train), 0)
    model = recalibrate_bn(case.model, usable_inputs(case.train.x[rows]))
    treated = dataclasses.replace(case, model=model, model_source=f"{case.model_source}, BN statistics recalibrated")
    after = ctx.measure(treated)
    return conclude(
        ctx,
        before=before,
        after=after,
        action=f"re-estimate the running statistics of {len(bn_layers(model))} BatchNorm layer(s) on {len(rows)} training rows (cumulative average), no retraining",
        check_metrics=("eval_accuracy", "max_mean_shift"),
        artifacts=save_weights(ctx.out_dir, model),
        notes=(
            "a train-mode/eval-mode gap at tiny batch sizes is not fixed by recalibration: swap BatchNorm for GroupNorm/LayerNorm or train with larger batches",
        ),
    )


REMEDY = RemedySpec(
    id="optimization.batchnorm",
    params=BatchNormParams,
    run=treat_batchnorm,
    description="recalibrate BatchNorm running statistics on clean training data",
)
