"""research.reproducibility — same-seed retraining must give bit-identical weights; the metric spread over seeds.

The check retrains the case's recipe twice with one seed on a stratified subsample of
``max_train_rows`` rows (so it stays within a few seconds on the demo), compares the
weights tensor by tensor and, when they differ, diagnoses the likely cause (unseeded
initialisation, a random forward pass, generators seeded from OS entropy, nondeterministic
kernels). A few more seeds give the spread of test accuracy and macro-F1.
The remedy retrains twice in deterministic mode with one seed on the full recipe,
verifies bit-identical weights, and saves them with a run manifest.
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dlclinic.core import budget
from dlclinic.core.atomic import write_weights
from dlclinic.core.case import Case, usable_inputs
from dlclinic.core.determinism import (
    compare_state_dicts,
    determinism_state,
    deterministic_mode,
    trace_unseeded_generators,
)
from dlclinic.core.errors import ConfigError
from dlclinic.core.evidence import Evidence
from dlclinic.core.inference import predict_logits
from dlclinic.core.manifest import build_manifest, write_manifest
from dlclinic.core.recipe import seed_everything
from dlclinic.core.registry import CheckSpec, RemedySpec, TreatContext, TreatOutcome, conclude
from dlclinic.core.results import CheckResult, Finding, Remedy
from dlclinic.core.sampling import stratified_rows
from dlclinic.functional.stats import bootstrap_metrics

__all__ = [
    "CHECK",
    "REMEDY",
    "ReproducibilityOptions",
    "ReproducibilityParams",
    "run_reproducibility",
    "treat_reproducibility",
]

CID = "research.reproducibility"


@dataclass(frozen=True)
class ReproducibilityOptions:
    """Budget of the reproducibility check.

    Two runs of the recipe with the same seed on a stratified subsample of
    ``max_train_rows`` train rows must give bit-identical weights (CPU). The global RNGs
    are set to *different* states before each run, so a recipe that relies on global
    random state it does not seed itself is caught. Then up to ``seeds`` seeds (the first
    is the same-seed run) give the spread of test accuracy and macro-F1, as long as the
    runs so far took less than ``budget_seconds``. Each seed's model is scored on the same
    stratified sample of at most ``max_test_rows`` test rows (0: all): scoring every test row
    cost 7 s at 10,000 rows and 110 s at 100,000 (the 600k bench), while the spread between
    seeds, measured on shared rows, needs only a few thousand.
    """

    max_train_rows: int = 600
    max_test_rows: int = 5000
    seeds: int = 3
    budget_seconds: float = 6.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_test_rows < 0:
            raise ValueError(f"expected max_test_rows >= 0 (0: all), but got {self.max_test_rows}")
        if self.max_train_rows < 20 or self.seeds < 1:
            raise ValueError(
                f"expected max_train_rows >= 20 and seeds >= 1, but got {self.max_train_rows}, {self.seeds}"
            )


def _labelled_test(case: Case) -> Any:
    test = case.get("test")
    return test if test is not None and test.labelled else None


def _scramble_global_rngs(value: int) -> None:
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


# -- diagnosis of a same-seed mismatch ---------------------------------------------------------
def _model_causes(case: Case, x: np.ndarray, seed: int) -> list[str]:
    """Causes found in the model itself: initial weights, or a random forward pass in training mode."""
    factory = case.model_factory
    if factory is None:
        return []
    seed_everything(seed)
    m1 = factory()
    _scramble_global_rngs(1)
    seed_everything(seed)
    m2 = factory()
    init = compare_state_dicts(m1.state_dict(), m2.state_dict())
    if not init.identical:
        return [
            f"the model's initial weights differ under the same seed (first: {init.first}): the factory draws from a generator that seed_everything does not control"
        ]
    xb = torch.from_numpy(np.ascontiguousarray(usable_inputs(x[: min(32, len(x))])))
    m1.train()
    seed_everything(seed)
    with torch.no_grad():
        o1 = m1(xb)
    seed_everything(seed)
    with torch.no_grad():
        o2 = m1(xb)
    if not torch.equal(o1, o2):
        return [
            "the forward pass in training mode is random beyond torch's seeded generator (an unseeded noise/augmentation inside the model)"
        ]
    return []


def _kernel_causes(evidence: Evidence, x: np.ndarray, y: np.ndarray, seed: int) -> list[str]:
    """Whether the runs agree under deterministic algorithms (then the kernels were the cause)."""
    causes: list[str] = []
    with deterministic_mode():
        try:
            a = evidence.retrain(x, y, seed)  # type: ignore[misc]
            _scramble_global_rngs(2)
            b = evidence.retrain(x, y, seed)  # type: ignore[misc]
            if compare_state_dicts(a.state_dict(), b.state_dict()).identical:
                causes.append(
                    "nondeterministic kernels: the runs agree under torch.use_deterministic_algorithms(True) — train in deterministic mode (dlclinic treat research.reproducibility)"
                )
        except RuntimeError as exc:
            causes.append(f"an operation without a deterministic implementation: {str(exc).splitlines()[0]}")
    return causes


def _diagnose(case: Case, evidence: Evidence, x: np.ndarray, y: np.ndarray, seed: int) -> tuple[str, list[str]]:
    """Likely cause of a same-seed mismatch, and the call sites of unseeded generators."""
    with trace_unseeded_generators() as calls:
        evidence.retrain(x, y, seed)  # type: ignore[misc]
    sites = sorted({f"{c.what} at {c.site}" for c in calls})
    causes = _model_causes(case, x, seed)
    if sites:
        causes.append("generators seeded from OS entropy during training: " + "; ".join(sites[:3]))
    if not causes:
        causes.extend(_kernel_causes(evidence, x, y, seed))
    if not causes:
        causes.append(
            "the training recipe draws from a random source outside Python/numpy/torch seeding (e.g. an unseeded shuffle or sampler, data order from a set/dict or the file system, or thread-count-dependent reductions)"
        )
    return " | ".join(causes), sites


# -- the measurement ---------------------------------------------------------------------------
def _seed_spread(
    case: Case,
    evidence: Evidence,
    options: ReproducibilityOptions,
    data: tuple[np.ndarray, np.ndarray],
    first: Any,
    timing: tuple[float, float],
) -> tuple[list[float], list[float], list[int], int]:
    """Test accuracy and macro-F1 of the same-seed model and of further seeds, within the time budget;
    the seeds run and how many test rows scored them."""
    test = _labelled_test(case)
    x, y = data
    t0, per_run = timing
    accs: list[float] = []
    f1s: list[float] = []
    seeds_run: list[int] = []
    if test is None:
        return accs, f1s, seeds_run, 0
    models = [first]
    with evidence.progress.step("reproducibility: seed spread", total=max(options.seeds - 1, 0)) as advance:
        for s in range(1, options.seeds):
            left = budget.time_left()
            if time.perf_counter() - t0 + per_run > options.budget_seconds or (left is not None and left < per_run):
                if left is not None and left < per_run:
                    budget.cut(f"seed spread: {len(models)} of {options.seeds} seeds within the time budget")
                break
            models.append(evidence.retrain(x, y, options.seed + s))  # type: ignore[misc]
            advance(1)
    rows = stratified_rows(test.y, options.max_test_rows or len(test), options.seed)
    x_test = usable_inputs(test.x[rows]) if len(rows) < len(test) else usable_inputs(test.x)
    for s, m in enumerate(models):
        pred = predict_logits(m, x_test).argmax(1)
        ci = bootstrap_metrics(test.y[rows], pred, n_classes=case.n_classes, n_boot=1)
        accs.append(ci["accuracy"].value)
        f1s.append(ci["macro_f1"].value)
        seeds_run.append(options.seed + s)
    return accs, f1s, seeds_run, len(rows)


def _reproducibility_compute(case: Case, evidence: Evidence, options: ReproducibilityOptions) -> dict[str, np.ndarray]:
    train = case.train
    assert train.y is not None
    rows = stratified_rows(train.y, options.max_train_rows, options.seed)
    x, y = usable_inputs(train.x[rows]), train.y[rows]
    saved = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    try:
        t0 = time.perf_counter()
        # the pair is compared bit for bit: under a time budget both train exactly as many batches
        with budget.same_steps(), evidence.progress.step("reproducibility: same-seed retraining", total=2) as advance:
            _scramble_global_rngs(11)
            a = evidence.retrain(x, y, options.seed)  # type: ignore[misc]
            advance(1)
            _scramble_global_rngs(977)
            b = evidence.retrain(x, y, options.seed)  # type: ignore[misc]
            advance(1)
        per_run = (time.perf_counter() - t0) / 2
        diff = compare_state_dicts(a.state_dict(), b.state_dict())
        cause, sites = "", []  # type: tuple[str, list[str]]
        if not diff.identical:
            cause, sites = _diagnose(case, evidence, x, y, options.seed)
        accs, f1s, seeds_run, test_rows = _seed_spread(case, evidence, options, (x, y), a, (t0, per_run))
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])
    return {
        "identical": np.array(diff.identical),
        "n_tensors": np.array(diff.n_tensors),
        "n_differing": np.array(diff.n_differing),
        "first": np.array(diff.first or ""),
        "differing": np.array(list(diff.differing[:20]) or [""]),
        "max_abs_diff": np.array(diff.max_abs_diff),
        "cause": np.array(cause),
        "sites": np.array(sites or [""]),
        "accuracy": np.array(accs, dtype=np.float64),
        "macro_f1": np.array(f1s, dtype=np.float64),
        "seeds": np.array(seeds_run, dtype=np.int64),
        "rows": np.array(len(rows)),
        "test_rows": np.array(test_rows),
        "seconds_per_run": np.array(per_run),
    }


# -- the check -----------------------------------------------------------------------------------
def _on_rows(r: dict[str, np.ndarray], case: Case) -> str:
    """`` (on 5,000 of 100,000 test rows)`` when the seed spread scored a sample, else nothing."""
    test = _labelled_test(case)
    used = int(r["test_rows"])
    return f" (on {used:,} of {len(test):,} test rows)" if test is not None and 0 < used < len(test) else ""


def _metrics(r: dict[str, np.ndarray], flags: dict[str, Any]) -> dict[str, float | int | bool | None]:
    accs, f1s = r["accuracy"], r["macro_f1"]
    metrics: dict[str, float | int | bool | None] = {
        "bit_identical": bool(r["identical"]),
        "tensors_compared": int(r["n_tensors"]),
        "tensors_differing": int(r["n_differing"]),
        "max_abs_weight_diff": float(r["max_abs_diff"]),
        "train_rows_used": int(r["rows"]),
        "test_rows_used": int(r["test_rows"]),
        "seconds_per_run": float(r["seconds_per_run"]),
        "seeds_run": int(len(accs)),
        "deterministic_algorithms": bool(flags["deterministic_algorithms"]),
    }
    if len(accs):
        metrics.update(
            accuracy_mean=float(accs.mean()),
            accuracy_std=float(accs.std(ddof=1)) if len(accs) > 1 else None,
            accuracy_min=float(accs.min()),
            accuracy_max=float(accs.max()),
        )
        metrics.update(
            macro_f1_mean=float(f1s.mean()),
            macro_f1_std=float(f1s.std(ddof=1)) if len(f1s) > 1 else None,
            macro_f1_min=float(f1s.min()),
            macro_f1_max=float(f1s.max()),
        )
    return metrics


def _mismatch(r: dict[str, np.ndarray], spread: str) -> tuple[str, Finding, Remedy]:
    """Summary, finding and remedy of two same-seed runs that differ."""
    first = str(r["first"])
    cause = str(r["cause"])
    summary = f"Two same-seed retrainings differ in {int(r['n_differing'])} of {int(r['n_tensors'])} tensors (first: {first}, max |Δ| {float(r['max_abs_diff']):.3g}); likely cause: {cause.split(' | ')[0]}.{spread}"
    finding = Finding(
        "nondeterministic_training",
        f"first differing tensor {first}; likely cause: {cause}",
        extra={
            "differing_tensors": [str(s) for s in r["differing"] if str(s)],
            "unseeded_generator_calls": [str(s) for s in r["sites"] if str(s)],
        },
    )
    remedy = Remedy(
        command="dlclinic treat research.reproducibility",
        description="seed every generator from the run seed (pass generator= / worker_init_fn= to DataLoaders), retrain in deterministic mode and record a manifest; then replay it with `dlclinic replay`",
    )
    return summary, finding, remedy


def _tables(r: dict[str, np.ndarray], flags: dict[str, Any]) -> list[dict[str, Any]]:
    accs, f1s = r["accuracy"], r["macro_f1"]
    tables = (
        [
            {
                "title": "Seed spread (recipe on a stratified subsample)",
                "columns": ["seed", "test accuracy", "macro-F1"],
                "rows": [[int(s), f"{a:.4f}", f"{f:.4f}"] for s, a, f in zip(r["seeds"], accs, f1s)],
            }
        ]
        if len(accs)
        else []
    )
    tables.append(
        {
            "title": "Determinism flags of this process",
            "columns": ["flag", "value"],
            "rows": [[k, str(v)] for k, v in flags.items()],
        }
    )
    return tables


def run_reproducibility(case: Case, evidence: Evidence, options: ReproducibilityOptions) -> CheckResult:
    """Retrain twice with one seed (bit-identical?) and with several seeds (metric spread)."""
    flags = determinism_state()
    if evidence.retrain is None:
        return CheckResult(
            id=CID,
            status="not_examined",
            summary="Needs the training recipe to retrain the model (pass --model file.py:factory; a .pt2/.onnx file cannot be retrained); nothing was measured.",
            details={"determinism_flags": flags},
        )
    params = {
        "rows": options.max_train_rows,
        "test_rows": options.max_test_rows,
        "seeds": options.seeds,
        "budget": options.budget_seconds,
        "seed": options.seed,
    }
    r = evidence.cached("reproducibility", params, lambda: _reproducibility_compute(case, evidence, options))
    accs = r["accuracy"]
    spread = ""
    if len(accs) > 1:
        spread = f" Over {len(accs)} seeds (recipe on {int(r['rows'])} rows) test accuracy{_on_rows(r, case)} is {accs.mean():.1%} ± {accs.std(ddof=1):.1%} (range {accs.min():.1%}–{accs.max():.1%}): single-run differences smaller than ~2× that spread are seed noise."
    findings: list[Finding] = []
    if bool(r["identical"]):
        status = "ok"
        summary = f"Two same-seed retrainings gave bit-identical weights ({int(r['n_tensors'])} tensors).{spread}"
        remedy = None
    else:
        status = "fail"
        summary, finding, remedy = _mismatch(r, spread)
        findings.append(finding)
    return CheckResult(
        id=CID,
        status=status,  # type: ignore[arg-type]
        summary=summary,
        metrics=_metrics(r, flags),
        thresholds={"tensors_differing.max": 0},
        findings=tuple(findings),
        remedy=remedy,
        details={"tables": _tables(r, flags)},
    )  # type: ignore[arg-type]


CHECK = CheckSpec(
    id=CID,
    requires=(),
    options=ReproducibilityOptions,
    run=run_reproducibility,
    description="same-seed retraining bit-identical? (first differing tensor, likely cause); metric spread over seeds",
)


# -- the remedy ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReproducibilityParams:
    """``seed`` of the deterministic retraining (default: the recipe's)."""

    seed: int | None = None


def _save_run(ctx: TreatContext, model: Any, seed: int, identical: bool) -> dict[str, str]:
    """The weights and the run manifest of the deterministic retraining (when there is an output folder)."""
    artifacts: dict[str, str] = {}
    config = ctx.fit_config.to_dict() if hasattr(ctx.fit_config, "to_dict") else {}
    if ctx.out_dir is not None:
        artifacts["weights"] = str(write_weights(model, ctx.out_dir / "model.safetensors"))
        manifest = build_manifest(
            case=ctx.case,
            model=model,
            seeds={"fit": seed},
            config={"fit": config, "recipe": ctx.recipe, "deterministic_mode": True},
            extra={"bit_identical_rerun": identical},
        )
        artifacts["manifest"] = str(write_manifest(ctx.out_dir / "manifest.json", manifest))
    return artifacts


def treat_reproducibility(ctx: TreatContext, params: ReproducibilityParams) -> TreatOutcome:
    """Retrain twice in deterministic mode with one seed; check bit-identity; save weights and manifest."""
    if ctx.retrain is None:
        raise ConfigError(
            "treat research.reproducibility retrains the model, so it needs the architecture: pass --model file.py:factory"
        )
    case = ctx.case
    before = ctx.measure(case)
    seed = int(params.seed if params.seed is not None else getattr(ctx.fit_config, "seed", 0))
    x, y = usable_inputs(case.train.x), case.train.y
    with ctx.progress.step("deterministic retraining (twice, same seed)", total=2) as advance:
        with deterministic_mode(seed):
            a = ctx.retrain(x, y, seed)
        advance(1)
        with deterministic_mode(seed):
            b = ctx.retrain(x, y, seed)
        advance(1)
    diff = compare_state_dicts(a.state_dict(), b.state_dict())
    artifacts = _save_run(ctx, a, seed, diff.identical)
    after = ctx.measure(
        case.with_model(
            a, f"{case.model_source.replace(', from cache', '')}, retrained in deterministic mode (seed {seed})"
        )
    )
    r = before[ctx.challenge_id]
    outcome = conclude(
        ctx,
        before=before,
        after=after,
        action=f"retrain twice in deterministic mode (torch.use_deterministic_algorithms, cuDNN deterministic, CUBLAS_WORKSPACE_CONFIG, all RNGs seeded with {seed}) and record a manifest",
        before_values={
            "bit_identical": r.metrics.get("bit_identical"),
            "tensors_differing": r.metrics.get("tensors_differing"),
        },  # type: ignore[dict-item]
        after_values={"bit_identical": diff.identical, "tensors_differing": diff.n_differing},
        artifacts=artifacts,
        notes=(
            "the full training set and recipe were used for both runs",
            "for your own loops: dlclinic.core.determinism.deterministic_mode(seed) and DataLoader(..., **loader_kwargs(seed))",
        )
        + (
            ()
            if diff.identical
            else (
                f"still not identical: first differing tensor {diff.first}; an unseeded generator in your code is the likely cause (see the check's findings)",
            )
        ),
    )
    # the verdict is the deterministic-mode rerun's, not the re-measured check's (that retrains outside deterministic mode)
    treatment = dataclasses.replace(outcome.treatment, after_status="ok" if diff.identical else "fail")
    return dataclasses.replace(outcome, treatment=treatment)


REMEDY = RemedySpec(
    id=CID,
    params=ReproducibilityParams,
    run=treat_reproducibility,
    description="Retrain twice in deterministic mode with one seed, verify bit-identical weights, save them with a run manifest.",
)
