"""Remedies of the research challenges.

* ``research.benchmark_saturation`` — export the weakest test slice as ``hard_slice.npz``
  (a harder test file) and measure the model on it;
* ``research.reproducibility`` — retrain twice in deterministic mode with one seed,
  verify bit-identical weights, save them and a run manifest;
* ``research.open_ended`` — learn the discovered (held-out) classes incrementally with
  experience replay, and show what naive fine-tuning would have forgotten.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlclinic.core.errors import ConfigError
from dlclinic.core.registry import RemedySpec, TreatContext, TreatOutcome

__all__ = [
    "BENCHMARK_REMEDY",
    "OPEN_ENDED_REMEDY",
    "REPRODUCIBILITY_REMEDY",
    "BenchmarkParams",
    "OpenEndedParams",
    "ReproducibilityParams",
]


# -- benchmark saturation --------------------------------------------------------------------
@dataclass(frozen=True)
class BenchmarkParams:
    """``slices``: how many of the weakest slices to merge into the exported test file."""

    slices: int = 1


def treat_benchmark(ctx: TreatContext, params: BenchmarkParams) -> TreatOutcome:
    """Export the weak slice(s) found by the check as a new test file and measure the model on it."""
    from dlclinic.core.atomic import atomic_path
    from dlclinic.core.results import Treatment

    case = ctx.case
    before = ctx.measure(case)
    res = before[ctx.challenge_id]
    weak = [f for f in res.findings if f.code == "weak_slice"][: max(params.slices, 1)]
    if not weak:
        raise ConfigError(
            "treat research.benchmark_saturation: the check found no significantly weak slice to export (nothing to treat)"
        )
    rows = np.unique(np.concatenate([np.asarray(f.indices, dtype=np.int64) for f in weak]))
    test = case.splits["test"]
    artifacts: dict[str, str] = {}
    if ctx.out_dir is not None:
        path = ctx.out_dir / "hard_slice.npz"
        arrays = {"x": test.x[rows], "y": test.y[rows], "rows": rows, "class_names": np.array(case.class_names)}  # type: ignore[index]
        if test.groups is not None:
            arrays["group"] = test.groups[rows].astype(str)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]
        artifacts["hard_test_set"] = str(path)
    after = ctx.measure(case.with_split_rows("test", rows))
    a, b = res.metrics, after[ctx.challenge_id].metrics
    treatment = Treatment(
        challenge_id=ctx.challenge_id,
        action=f"export {len(weak)} weak slice(s) ({len(rows)} test rows) as a harder test file",
        before={
            "test_rows": int(a.get("n_test") or 0),
            "accuracy": a.get("accuracy"),
            "accuracy_low": a.get("accuracy_low"),
            "accuracy_high": a.get("accuracy_high"),
        },  # type: ignore[dict-item]
        after={
            "test_rows": int(b.get("n_test") or 0),
            "accuracy": b.get("accuracy"),
            "accuracy_low": b.get("accuracy_low"),
            "accuracy_high": b.get("accuracy_high"),
        },  # type: ignore[dict-item]
        before_status=res.status,
        after_status=after[ctx.challenge_id].status,
        artifacts=artifacts,
        notes=(
            "the 'after' numbers are the same model on the hard slice: use it as an extra test set (dlclinic checkup --test hard_slice.npz) to compare models where they differ",
            "slices were chosen on this test set: estimates on the slice itself are optimistic about its hardness; confirm on fresh data",
        ),
    )
    return TreatOutcome(treatment, before, after)


BENCHMARK_REMEDY = RemedySpec(
    id="research.benchmark_saturation",
    params=BenchmarkParams,
    run=treat_benchmark,
    description="Export the weakest test slice as hard_slice.npz and measure the model on it.",
)


# -- reproducibility -------------------------------------------------------------------------
@dataclass(frozen=True)
class ReproducibilityParams:
    """``seed`` of the deterministic retraining (default: the recipe's)."""

    seed: int | None = None


def treat_reproducibility(ctx: TreatContext, params: ReproducibilityParams) -> TreatOutcome:
    """Retrain twice in deterministic mode with one seed; check bit-identity; save weights and manifest."""
    from dlclinic.core.atomic import write_weights
    from dlclinic.core.determinism import compare_state_dicts, deterministic_mode
    from dlclinic.core.manifest import build_manifest, write_manifest
    from dlclinic.core.results import Treatment

    if ctx.retrain is None:
        raise ConfigError(
            "treat research.reproducibility retrains the model, so it needs the architecture: pass --model file.py:factory"
        )
    case = ctx.case
    before = ctx.measure(case)
    seed = int(params.seed if params.seed is not None else getattr(ctx.fit_config, "seed", 0))
    x, y = np.nan_to_num(case.train.x), case.train.y
    with ctx.progress.step("deterministic retraining (twice, same seed)", total=2) as advance:
        with deterministic_mode(seed):
            a = ctx.retrain(x, y, seed)
        advance(1)
        with deterministic_mode(seed):
            b = ctx.retrain(x, y, seed)
        advance(1)
    diff = compare_state_dicts(a.state_dict(), b.state_dict())
    artifacts: dict[str, str] = {}
    config = ctx.fit_config.to_dict() if hasattr(ctx.fit_config, "to_dict") else {}
    if ctx.out_dir is not None:
        artifacts["weights"] = str(write_weights(a, ctx.out_dir / "model.safetensors"))
        manifest = build_manifest(
            case=case,
            model=a,
            seeds={"fit": seed},
            config={"fit": config, "recipe": ctx.recipe, "deterministic_mode": True},
            extra={"bit_identical_rerun": diff.identical},
        )
        artifacts["manifest"] = str(write_manifest(ctx.out_dir / "manifest.json", manifest))
    after = ctx.measure(
        case.with_model(
            a, f"{case.model_source.replace(', from cache', '')}, retrained in deterministic mode (seed {seed})"
        )
    )
    r = before[ctx.challenge_id]
    treatment = Treatment(
        challenge_id=ctx.challenge_id,
        action=f"retrain twice in deterministic mode (torch.use_deterministic_algorithms, cuDNN deterministic, CUBLAS_WORKSPACE_CONFIG, all RNGs seeded with {seed}) and record a manifest",
        before={
            "bit_identical": r.metrics.get("bit_identical"),
            "tensors_differing": r.metrics.get("tensors_differing"),
        },  # type: ignore[dict-item]
        after={"bit_identical": diff.identical, "tensors_differing": diff.n_differing},
        before_status=r.status,
        after_status="ok" if diff.identical else "fail",
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
    return TreatOutcome(treatment, before, after)


REPRODUCIBILITY_REMEDY = RemedySpec(
    id="research.reproducibility",
    params=ReproducibilityParams,
    run=treat_reproducibility,
    description="Retrain twice in deterministic mode with one seed, verify bit-identical weights, save them with a run manifest.",
)


# -- open-ended learning ---------------------------------------------------------------------
@dataclass(frozen=True)
class OpenEndedParams:
    """Held-out classes (default: the check's: the last ``n_unknown``), replay memory and training budget."""

    unknown_classes: tuple[int, ...] = ()
    n_unknown: int = 2
    memory: int = 300
    epochs: int = 5
    max_rows_per_task: int = 600


def treat_open_ended(ctx: TreatContext, params: OpenEndedParams) -> TreatOutcome:
    """Train known classes, then add the discovered classes incrementally: replay vs naive, same accuracy matrix."""
    from dlclinic.core.results import Treatment
    from dlclinic.functional.continual import ContinualConfig, TaskSequence, run_task_sequence, tasks_from_classes
    from dlclinic.functional.sampling import stratified_rows

    case = ctx.case
    if case.model_factory is None:
        raise ConfigError("treat research.open_ended retrains the architecture: pass --model file.py:factory")
    test = case.get("test")
    if test is None or test.y is None:
        raise ConfigError("treat research.open_ended needs a labelled test split (pass --test)")
    before = ctx.measure(case)
    k = case.n_classes
    unknown = np.array(sorted(set(params.unknown_classes)) or list(range(k - params.n_unknown, k)), dtype=np.int64)
    known = np.setdiff1d(np.arange(k), unknown)
    assert case.train.y is not None
    seq = tasks_from_classes(case.train.y, test.y, [known, unknown])
    capped = tuple(
        r[stratified_rows(case.train.y[r], params.max_rows_per_task * (len(known) if i == 0 else len(unknown)) // 2)]
        for i, r in enumerate(seq.train_rows)
    )
    tasks = TaskSequence(capped, seq.test_rows, seq.classes, ("known classes", "discovered classes"))
    results = {}
    with ctx.progress.step("open-ended: incremental learning of the discovered classes", total=4) as advance:
        for strategy in ("naive", "replay"):
            results[strategy] = run_task_sequence(
                case.model_factory,
                case.train.x,
                case.train.y,
                test.x,
                test.y,
                tasks,
                ContinualConfig(strategy=strategy, epochs=params.epochs, memory=params.memory),
                progress=advance,
            )
    n, r = results["naive"].matrix, results["replay"].matrix
    treatment = Treatment(
        challenge_id=ctx.challenge_id,
        action=f"learn the discovered classes {', '.join(case.class_names[c] for c in unknown)} incrementally with experience replay ({params.memory} stored samples)",
        before={
            "known_accuracy_after_adding": float(n[1, 0]),
            "new_class_accuracy": float(n[1, 1]),
            "bwt": results["naive"].bwt,
        },
        after={
            "known_accuracy_after_adding": float(r[1, 0]),
            "new_class_accuracy": float(r[1, 1]),
            "bwt": results["replay"].bwt,
        },
        before_status=before[ctx.challenge_id].status,
        after_status=before[ctx.challenge_id].status,
        notes=(
            f"'before' is naive fine-tuning on the new classes, 'after' replay; known-class accuracy before adding them: {float(n[0, 0]):.1%}",
            "the new classes' training rows stand in for the labels a person gives the discovered clusters",
        ),
    )
    return TreatOutcome(treatment, before, before)


OPEN_ENDED_REMEDY = RemedySpec(
    id="research.open_ended",
    params=OpenEndedParams,
    run=treat_open_ended,
    description="Add the discovered classes and learn them incrementally with replay (forgetting of the old classes measured).",
)
