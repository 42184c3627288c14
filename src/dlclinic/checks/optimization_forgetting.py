"""optimization.forgetting — catastrophic forgetting of the model's architecture on a task sequence.

The case's architecture (its factory) is trained on a split-class task sequence (or
on user-given task ids: the train/test ``groups``), one task after the other, with the
chosen strategy (``naive`` fine-tuning by default); the accuracy matrix gives average
accuracy, backward transfer (BWT, with a bootstrap interval over test rows) and
forgetting. The checkup uses ``max_rows_per_task`` rows per task so it stays within a
few seconds; ``dlclinic treat optimization.forgetting`` compares replay, EWC and LwF.
A warning needs forgetting above ``warn_forgetting`` *and* a BWT interval entirely
below zero, so sampling noise of the test rows cannot raise it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dlclinic.core.case import Case
from dlclinic.core.evidence import Evidence
from dlclinic.core.registry import CheckSpec
from dlclinic.core.results import CheckResult, Finding, Remedy

__all__ = ["CHECK", "ForgettingOptions", "build_tasks", "run", "run_sequence"]


@dataclass(frozen=True)
class ForgettingOptions:
    """Task sequence, strategy and budget of the forgetting harness."""

    tasks: str = "classes"  # "classes" (split classes) | "groups" (train/test groups as task ids)
    n_tasks: int = 5
    strategy: str = "naive"
    scenario: str = "class"
    epochs: int = 5
    lr: float = 0.01
    memory: int = 200
    max_rows_per_task: int = 300
    warn_forgetting: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.tasks not in ("classes", "groups"):
            raise ValueError(f"tasks must be 'classes' or 'groups', but got {self.tasks!r}")
        if self.max_rows_per_task < 10:
            raise ValueError(f"`max_rows_per_task >= 10` must hold, but got {self.max_rows_per_task}")


def build_tasks(case: Case, options: ForgettingOptions) -> object:
    """The :class:`~dlclinic.functional.continual.TaskSequence`, train rows capped per task."""
    from dlclinic.core.errors import InputError
    from dlclinic.functional.continual import TaskSequence, split_classes, tasks_from_classes, tasks_from_ids
    from dlclinic.functional.sampling import stratified_rows

    train, test = case.train, case.splits["test"]
    assert train.y is not None and test.y is not None
    if options.tasks == "groups":
        if train.groups is None or test.groups is None:
            raise InputError("tasks='groups' needs groups (task ids) on train and test (pass --group-col)")
        seq = tasks_from_ids(train.groups, test.groups, train.y)
    else:
        present = np.unique(train.y)
        seq = tasks_from_classes(train.y, test.y, split_classes(present.tolist(), min(options.n_tasks, len(present))))
    capped = tuple(r[stratified_rows(train.y[r], options.max_rows_per_task, options.seed)] for r in seq.train_rows)
    return TaskSequence(capped, seq.test_rows, seq.classes, seq.names)


def run_sequence(
    case: Case,
    options: ForgettingOptions,
    *,
    strategy: str | None = None,
    seed: int | None = None,
    progress: object = None,
) -> dict[str, np.ndarray]:
    """Train the case's architecture through the task sequence; the matrix and per-row correctness as arrays."""
    from dlclinic.functional.continual import ContinualConfig, run_task_sequence

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
    res = run_task_sequence(
        case.model_factory, case.train.x, case.train.y, test.x, test.y, tasks, cfg, progress=progress
    )  # type: ignore[arg-type]
    low, high = res.bwt_interval(seed=cfg.seed)
    return {
        "matrix": res.matrix,
        "summary": np.array([res.average_accuracy, res.bwt, res.forgetting, low, high]),
        "names": np.array(list(tasks.names)),
    }  # type: ignore[attr-defined]


def result_from_arrays(r: dict[str, np.ndarray], options: ForgettingOptions, strategy: str) -> CheckResult:
    """The check result of one run (shared by the check and the remedy's re-measurement)."""
    matrix = r["matrix"]
    avg, bwt, forgetting, low, high = (float(v) for v in r["summary"])
    names = [str(n) for n in r["names"]]
    significant = math.isfinite(high) and high < 0
    status = "warn" if forgetting > options.warn_forgetting and significant else "ok"
    t = matrix.shape[0]
    summary = f"Trained through {t} tasks ({options.tasks}, {options.scenario}-incremental, {strategy}), the model keeps average accuracy {avg:.1%}; backward transfer {bwt:+.1%} (95 % CI {low:+.1%} to {high:+.1%}), forgetting {forgetting:.1%}."
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
        if status == "warn"
        else None
    )
    return CheckResult(
        id="optimization.forgetting",
        status=status,  # type: ignore[arg-type]
        summary=summary,
        metrics={
            "tasks": t,
            "average_accuracy": avg,
            "bwt": bwt,
            "bwt_low": low,
            "bwt_high": high,
            "forgetting": forgetting,
            "strategy_" + strategy: True,
        },
        thresholds={"forgetting.warn": options.warn_forgetting, "bwt_high.max": 0.0},
        findings=tuple(findings),
        remedy=remedy,
        details={
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
        },
    )


def run(case: Case, evidence: Evidence, options: ForgettingOptions) -> CheckResult:
    """Train through the task sequence with the chosen strategy and grade the forgetting."""
    cid = "optimization.forgetting"
    test = case.get("test")
    if test is None or not test.labelled:
        return CheckResult(
            id=cid,
            status="not_examined",
            summary="Needs a labelled test split to measure accuracy per task (pass --test).",
        )
    if case.model_factory is None:
        return CheckResult(
            id=cid,
            status="not_examined",
            summary="Needs the model's architecture to train it through a task sequence (pass --model file.py:factory); nothing was measured.",
        )
    params = {
        k: getattr(options, k)
        for k in ("tasks", "n_tasks", "strategy", "scenario", "epochs", "lr", "memory", "max_rows_per_task", "seed")
    }

    def compute() -> dict[str, np.ndarray]:
        with evidence.progress.step(
            f"forgetting: training through the task sequence ({options.strategy})", total=options.n_tasks
        ) as advance:
            return run_sequence(case, options, progress=advance)

    r = evidence.cached("forgetting", params, compute)
    return result_from_arrays(r, options, options.strategy)


CHECK = CheckSpec(
    id="optimization.forgetting",
    requires=(),
    options=ForgettingOptions,
    run=run,
    description="continual-learning harness on a split-class (or task-id) sequence: accuracy matrix, average accuracy, BWT with CI, forgetting",
)
