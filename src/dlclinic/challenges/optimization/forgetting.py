"""optimization.forgetting — catastrophic forgetting of the model's architecture on a task sequence.

The case's architecture (its factory) is trained on a split-class task sequence (or
on user-given task ids: the train/test ``groups``), one task after the other, with the
chosen strategy (``naive`` fine-tuning by default); the accuracy matrix gives average
accuracy, backward transfer (BWT, with a bootstrap interval over test rows) and
forgetting. The checkup uses ``max_rows_per_task`` rows per task so it stays within a
few seconds; ``dlclinic treat optimization.forgetting`` compares replay, EWC and LwF.
A warning needs forgetting above ``warn_forgetting`` *and* a BWT interval entirely
below zero, so sampling noise of the test rows cannot raise it.

What is graded and what is information: forgetting is a problem of a model that *learns
tasks one after another*. A model trained once on all its data has no task sequence, so
by default (``tasks="auto"``) the split-class sequence is a what-if simulation: it is
measured and reported (status ``ok``, ``graded: false``, the remedy offered) but never
warns. The check grades only a sequence the user declared: ``--tasks classes`` (the
classes split into tasks) or ``--tasks groups`` (the train/test groups are the task ids).
A split-class sequence needs at least two classes per task and two tasks (four classes);
with fewer classes, a binary task for instance, the check is ``not_examined`` unless task
ids are declared.

The remedy trains every strategy through the *same* task sequence as the check, over
``seeds`` seeds; the winner is the strategy with the highest mean final average
accuracy among those within the memory budget (replay stores ``memory`` samples; EWC
and LwF store no samples). BWT alone would reward a model that never learns the new
tasks, so it is reported but does not decide. The after-report is the check's own
result for the winning strategy, so before/after are read off the same accuracy matrix.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlclinic.core.atomic import write_json
from dlclinic.core.case import Case
from dlclinic.core.device import on_device
from dlclinic.core.errors import ConfigError, InputError
from dlclinic.core.evidence import Evidence
from dlclinic.core.registry import CheckSpec, RemedySpec, TreatContext, TreatOutcome, conclude
from dlclinic.core.results import CheckResult, Finding, Remedy
from dlclinic.core.sampling import stratified_rows
from dlclinic.functional.continual import (
    STRATEGIES,
    ContinualConfig,
    TaskSequence,
    run_task_sequence,
    split_classes,
    tasks_from_classes,
    tasks_from_ids,
)

__all__ = [
    "CHECK",
    "REMEDY",
    "ForgettingOptions",
    "ForgettingParams",
    "build_tasks",
    "result_from_arrays",
    "run",
    "run_sequence",
    "treat_forgetting",
]

CID = "optimization.forgetting"


@dataclass(frozen=True)
class ForgettingOptions:
    """Task sequence, strategy and budget of the forgetting harness.

    ``max_test_rows_per_task`` (0: all) caps the rows each task is evaluated on after every
    task (a seeded stratified sample): the accuracy matrix is evaluated T² times, so on a
    large test split the evaluation, not the training, would grow with N; the BWT interval
    is computed on the rows used. 500 rows put a task's accuracy within ±4.4 points (95 %,
    at 50 %) and the mean over tasks within about half that, a tenth of the 20-point
    ``warn_forgetting``; 1,000 rows doubled the evaluation (half of the check's time on
    the issue-21 CNN) for a margin the verdict does not need.
    """

    tasks: str = (
        "auto"  # "auto" (what-if split classes, not graded) | "classes" | "groups" (train/test groups as task ids)
    )
    n_tasks: int = 5
    strategy: str = "naive"
    scenario: str = "class"
    epochs: int = 5
    lr: float = 0.01
    memory: int = 200
    max_rows_per_task: int = 300
    max_test_rows_per_task: int = 500
    warn_forgetting: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.tasks not in ("auto", "classes", "groups"):
            raise ValueError(f"tasks must be 'auto', 'classes' or 'groups', but got {self.tasks!r}")
        if self.n_tasks < 2:
            raise ValueError(f"`n_tasks >= 2` must hold, but got {self.n_tasks}")
        if self.max_rows_per_task < 10:
            raise ValueError(f"`max_rows_per_task >= 10` must hold, but got {self.max_rows_per_task}")


_MIN_CLASSES_PER_TASK = 2  # one class per task is not a task: the head only has to say the newest class


def _too_few_classes(n: int) -> str:
    return (
        f"A split-class task sequence needs at least 2 tasks of {_MIN_CLASSES_PER_TASK} classes each "
        f"({2 * _MIN_CLASSES_PER_TASK} classes); this task has {n}. Declare task ids with --tasks groups --group-col COL "
        "to measure forgetting on your own task sequence."
    )


def build_tasks(case: Case, options: ForgettingOptions) -> TaskSequence:
    """The :class:`~dlclinic.functional.continual.TaskSequence`, train rows capped per task."""
    train, test = case.train, case.splits["test"]
    assert train.y is not None and test.y is not None
    if options.tasks == "groups":
        if train.groups is None or test.groups is None:
            raise InputError("tasks='groups' needs groups (task ids) on train and test (pass --group-col)")
        seq = tasks_from_ids(train.groups, test.groups, train.y)
    else:
        present = np.unique(train.y)
        n_tasks = min(options.n_tasks, len(present) // _MIN_CLASSES_PER_TASK)
        if n_tasks < 2:
            raise InputError(_too_few_classes(len(present)))
        seq = tasks_from_classes(train.y, test.y, split_classes(present.tolist(), n_tasks))
    capped = tuple(r[stratified_rows(train.y[r], options.max_rows_per_task, options.seed)] for r in seq.train_rows)
    cap_test = options.max_test_rows_per_task or max(len(r) for r in seq.test_rows)
    tested = tuple(r[stratified_rows(test.y[r], cap_test, options.seed)] for r in seq.test_rows)
    return TaskSequence(capped, tested, seq.classes, seq.names)


def run_sequence(
    case: Case,
    options: ForgettingOptions,
    *,
    strategy: str | None = None,
    seed: int | None = None,
    progress: object = None,
    device: str | None = None,
) -> dict[str, np.ndarray]:
    """Train the case's architecture through the task sequence; the matrix and per-row correctness as arrays."""
    tasks = build_tasks(case, options)
    cfg = ContinualConfig(
        strategy=strategy or options.strategy,
        scenario=options.scenario,
        epochs=options.epochs,
        lr=options.lr,
        memory=options.memory,
        seed=options.seed if seed is None else seed,
    )
    test = case.splits["test"]
    assert case.model_factory is not None
    res = run_task_sequence(
        on_device(case.model_factory, device),  # FitConfig.device: where the recipe trains
        case.train.x,
        case.train.y,  # type: ignore[arg-type]
        test.x,
        test.y,  # type: ignore[arg-type]
        tasks,
        cfg,
        progress=progress,  # type: ignore[arg-type]
    )
    low, high = res.bwt_interval(seed=cfg.seed)
    return {
        "matrix": res.matrix,
        "summary": np.array([res.average_accuracy, res.bwt, res.forgetting, low, high]),
        "names": np.array(list(tasks.names)),
    }


# -- the check -----------------------------------------------------------------------------------
def _matrix_details(matrix: np.ndarray, names: list[str], strategy: str) -> dict[str, Any]:
    t = matrix.shape[0]
    return {
        "plots": [
            {
                "kind": "heatmap",
                "title": f"Accuracy matrix ({strategy}): row = after training task i, column = task j",
                "xlabel": "evaluated on",
                "ylabel": "trained through",
                "series": [
                    {
                        "label": strategy,
                        "x": names,
                        "y": [f"after {n}" for n in names],
                        "z": matrix.tolist(),
                        "annotate": True,
                    }
                ],
            }
        ],
        "tables": [
            {
                "title": f"Accuracy matrix ({strategy})",
                "columns": ["after \\ on", *names],
                "rows": [[f"after {names[i]}", *[f"{v:.3f}" for v in matrix[i]]] for i in range(t)],
            }
        ],
    }


def result_from_arrays(
    r: dict[str, np.ndarray], options: ForgettingOptions, strategy: str, *, graded: bool = True
) -> CheckResult:
    """The check result of one run (shared by the check and the remedy's re-measurement).

    ``graded=False`` (a what-if sequence the user did not declare): the same figures, status ``ok``.
    """
    matrix = r["matrix"]
    avg, bwt, forgetting, low, high = (float(v) for v in r["summary"])
    names = [str(n) for n in r["names"]]
    significant = math.isfinite(high) and high < 0
    forgets = forgetting > options.warn_forgetting and significant
    status = "warn" if forgets and graded else "ok"
    t = matrix.shape[0]
    tasks = options.tasks if graded else "split classes"
    summary = f"Trained through {t} tasks ({tasks}, {options.scenario}-incremental, {strategy}), the model keeps average accuracy {avg:.1%}; backward transfer {bwt:+.1%} (95 % CI {low:+.1%} to {high:+.1%}), forgetting {forgetting:.1%}."
    if not graded:
        summary = (
            "What-if, not graded (no task sequence declared): "
            + summary[0].lower()
            + summary[1:]
            + " Declare --tasks classes or --tasks groups if this model will learn tasks one after another."
        )
    findings = []
    if status == "warn":
        worst = int(np.argmax([matrix[: t - 1, j].max() - matrix[-1, j] for j in range(t - 1)]))
        findings.append(
            Finding(
                "catastrophic_forgetting",
                f"{names[worst]}: accuracy {matrix[worst, worst]:.1%} right after learning it, {matrix[-1, worst]:.1%} after the last task",
            )
        )
    remedy = (
        Remedy(
            command="dlclinic treat optimization.forgetting",
            description="compare experience replay, EWC and LwF on the same sequence and keep the best within the memory budget (accuracy matrix before/after)",
        )
        if forgets
        else None
    )
    return CheckResult(
        id=CID,
        status=status,  # type: ignore[arg-type]
        summary=summary,
        metrics={
            "tasks": t,
            "average_accuracy": avg,
            "bwt": bwt,
            "bwt_low": low,
            "bwt_high": high,
            "forgetting": forgetting,
            "graded": graded,
            "strategy_" + strategy: True,
        },
        thresholds={"forgetting.warn": options.warn_forgetting, "bwt_high.max": 0.0},
        findings=tuple(findings),
        remedy=remedy,
        details=_matrix_details(matrix, names, strategy),
    )


def run(case: Case, evidence: Evidence, options: ForgettingOptions) -> CheckResult:
    """Train through the task sequence with the chosen strategy and grade the forgetting."""
    test = case.get("test")
    if test is None or not test.labelled:
        return CheckResult(
            id=CID,
            status="not_examined",
            summary="Needs a labelled test split to measure accuracy per task (pass --test).",
        )
    if case.model_factory is None:
        return CheckResult(
            id=CID,
            status="not_examined",
            summary="Needs the model's architecture to train it through a task sequence (pass --model file.py:factory); nothing was measured.",
        )
    if options.tasks != "groups" and case.train.y is not None:
        present = len(np.unique(case.train.y))
        if present // _MIN_CLASSES_PER_TASK < 2:
            return CheckResult(id=CID, status="not_examined", summary=_too_few_classes(present))
    params = {
        k: getattr(options, k)
        for k in (
            *("tasks", "n_tasks", "strategy", "scenario", "epochs", "lr", "memory"),
            *("max_rows_per_task", "max_test_rows_per_task", "seed"),
        )
    }

    def compute() -> dict[str, np.ndarray]:
        with evidence.progress.step(
            f"forgetting: training through the task sequence ({options.strategy})", total=options.n_tasks
        ) as advance:
            return run_sequence(case, options, progress=advance, device=getattr(evidence.fit_config, "device", None))

    r = evidence.cached("forgetting", params, compute)
    return result_from_arrays(r, options, options.strategy, graded=options.tasks != "auto")


CHECK = CheckSpec(
    id=CID,
    requires=(),
    options=ForgettingOptions,
    run=run,
    description="continual-learning harness on a declared task sequence (--tasks classes|groups; by default a what-if split-class sequence, not graded): accuracy matrix, average accuracy, BWT with CI, forgetting",
)


# -- the remedy ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ForgettingParams:
    """Strategies to compare, memory budget (replay samples), seeds and the per-task training budget."""

    strategies: tuple[str, ...] = ("replay", "ewc", "lwf")
    tasks: str = "auto"  # the task sequence, as the check's option (auto = split classes)
    memory: int = 200
    seeds: int = 2
    epochs: int = 5
    max_rows_per_task: int = 300

    def __post_init__(self) -> None:
        bad = [s for s in self.strategies if s not in STRATEGIES]
        if bad or not self.strategies:
            raise ValueError(
                f"strategies must be among {', '.join(STRATEGIES)}, but got {', '.join(self.strategies) or '(none)'}"
            )
        if self.seeds < 1 or self.memory < 0:
            raise ValueError(f"expected seeds >= 1 and memory >= 0, but got seeds={self.seeds}, memory={self.memory}")


def _save_comparison(
    ctx: TreatContext, runs: dict[str, list[dict[str, np.ndarray]]], best: str, memory: int
) -> dict[str, str]:
    """Every strategy's accuracy matrices as ``continual_comparison.json`` (when there is an output folder)."""
    if ctx.out_dir is None:
        return {}
    payload = {
        s: {
            "seeds": [
                {
                    "matrix": r["matrix"].tolist(),
                    "average_accuracy": float(r["summary"][0]),
                    "bwt": float(r["summary"][1]),
                    "forgetting": float(r["summary"][2]),
                }
                for r in rs
            ]
        }
        for s, rs in runs.items()
    }
    path = write_json(
        ctx.out_dir / "continual_comparison.json", {"best": best, "memory": memory, "strategies": payload}
    )
    return {"comparison": str(path)}


def _means(summary: np.ndarray) -> dict[str, float]:
    return {"average_accuracy": float(summary[0]), "bwt": float(summary[1]), "forgetting": float(summary[2])}


def treat_forgetting(ctx: TreatContext, params: ForgettingParams) -> TreatOutcome:
    """Run naive and each strategy over seeds; report the best one's accuracy matrix as the after-state."""
    case = ctx.case
    if case.model_factory is None:
        raise ConfigError(
            "treat optimization.forgetting trains the architecture through a task sequence: pass --model file.py:factory"
        )
    before = ctx.measure(case)
    options = ForgettingOptions(
        tasks=params.tasks,
        memory=params.memory,
        epochs=params.epochs,
        max_rows_per_task=params.max_rows_per_task,
        max_test_rows_per_task=0,  # the treatment compares strategies on every test row
    )
    runs: dict[str, list[dict[str, np.ndarray]]] = {}
    strategies = ("naive", *[s for s in params.strategies if s != "naive"])
    with ctx.progress.step("forgetting: comparing strategies", total=len(strategies) * params.seeds) as advance:
        for strategy in strategies:
            for seed in range(params.seeds):
                runs.setdefault(strategy, []).append(
                    run_sequence(case, options, strategy=strategy, seed=seed, device=ctx.fit_config.device)
                )
                advance(1)
    summary = {s: np.mean([r["summary"][:3] for r in rs], axis=0) for s, rs in runs.items()}  # avg acc, bwt, forgetting
    candidates = [s for s in strategies if s != "naive"]
    best = max(candidates, key=lambda s: (summary[s][0], summary[s][1]))
    before_res = result_from_arrays(runs["naive"][0], options, "naive")
    after_res = result_from_arrays(runs[best][0], options, best)
    after = dataclasses.replace(
        before, challenges=tuple(after_res if r.id == ctx.challenge_id else r for r in before.challenges)
    )
    before_report = dataclasses.replace(
        before, challenges=tuple(before_res if r.id == ctx.challenge_id else r for r in before.challenges)
    )
    artifacts = _save_comparison(ctx, runs, best, params.memory)
    table = "; ".join(f"{s}: avg acc {summary[s][0]:.1%}, BWT {summary[s][1]:+.1%}" for s in strategies)
    return conclude(
        ctx,
        before=before_report,
        after=after,
        action=f"train the task sequence with {best} (best of {', '.join(candidates)} within a memory of {params.memory} samples) instead of naive fine-tuning",
        before_values=_means(summary["naive"]),
        after_values=_means(summary[best]),
        artifacts=artifacts,
        notes=(
            f"means over {params.seeds} seed(s) on the same split-class sequence as the check: {table}",
            "the winner is chosen by final average accuracy; BWT is reported (a model that never learns new tasks has BWT near 0 too)",
        ),
    )


REMEDY = RemedySpec(
    id=CID,
    params=ForgettingParams,
    run=treat_forgetting,
    description="Compare experience replay, EWC and LwF with naive fine-tuning on the task sequence; keep the best within the memory budget.",
)
