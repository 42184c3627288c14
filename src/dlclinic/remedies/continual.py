"""optimization.forgetting remedy: compare replay, EWC and LwF with naive fine-tuning, keep the best.

Every strategy is trained through the *same* task sequence as the check, over
``seeds`` seeds; the winner is the strategy with the highest mean final average
accuracy among those within the memory budget (replay stores ``memory`` samples; EWC
and LwF store no samples). BWT alone would reward a model that never learns the new
tasks, so it is reported but does not decide. The after-report is the check's own
result for the winning strategy, so before/after are read off the same accuracy matrix.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from dlclinic.core.errors import ConfigError
from dlclinic.core.registry import RemedySpec, TreatContext, TreatOutcome

__all__ = ["REMEDY", "ForgettingParams", "treat_forgetting"]


@dataclass(frozen=True)
class ForgettingParams:
    """Strategies to compare, memory budget (replay samples), seeds and the per-task training budget."""

    strategies: tuple[str, ...] = ("replay", "ewc", "lwf")
    memory: int = 200
    seeds: int = 2
    epochs: int = 5
    max_rows_per_task: int = 300

    def __post_init__(self) -> None:
        from dlclinic.functional.continual import STRATEGIES

        bad = [s for s in self.strategies if s not in STRATEGIES]
        if bad or not self.strategies:
            raise ValueError(
                f"strategies must be among {', '.join(STRATEGIES)}, but got {', '.join(self.strategies) or '(none)'}"
            )
        if self.seeds < 1 or self.memory < 0:
            raise ValueError(f"expected seeds >= 1 and memory >= 0, but got seeds={self.seeds}, memory={self.memory}")


def treat_forgetting(ctx: TreatContext, params: ForgettingParams) -> TreatOutcome:
    """Run naive and each strategy over seeds; report the best one's accuracy matrix as the after-state."""
    from dlclinic.checks.optimization_forgetting import ForgettingOptions, result_from_arrays, run_sequence
    from dlclinic.core.atomic import write_json
    from dlclinic.core.results import Treatment

    case = ctx.case
    if case.model_factory is None:
        raise ConfigError(
            "treat optimization.forgetting trains the architecture through a task sequence: pass --model file.py:factory"
        )
    before = ctx.measure(case)
    options = ForgettingOptions(memory=params.memory, epochs=params.epochs, max_rows_per_task=params.max_rows_per_task)
    runs: dict[str, list[dict[str, np.ndarray]]] = {}
    strategies = ("naive", *[s for s in params.strategies if s != "naive"])
    with ctx.progress.step("forgetting: comparing strategies", total=len(strategies) * params.seeds) as advance:
        for strategy in strategies:
            for seed in range(params.seeds):
                runs.setdefault(strategy, []).append(run_sequence(case, options, strategy=strategy, seed=seed))
                advance(1)
    summary = {s: np.mean([r["summary"][:3] for r in rs], axis=0) for s, rs in runs.items()}  # avg acc, bwt, forgetting
    candidates = [s for s in strategies if s != "naive"]
    best = max(candidates, key=lambda s: (summary[s][0], summary[s][1]))
    before_res = result_from_arrays(runs["naive"][0], options, "naive")
    after_res = result_from_arrays(runs[best][0], options, best)
    after = dataclasses.replace(
        before, challenges=tuple(after_res if r.id == ctx.challenge_id else r for r in before.challenges)
    )
    artifacts: dict[str, str] = {}
    if ctx.out_dir is not None:
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
        artifacts["comparison"] = str(
            write_json(
                ctx.out_dir / "continual_comparison.json",
                {"best": best, "memory": params.memory, "strategies": payload},
            )
        )
    n = params.seeds
    table = "; ".join(f"{s}: avg acc {summary[s][0]:.1%}, BWT {summary[s][1]:+.1%}" for s in strategies)
    treatment = Treatment(
        challenge_id=ctx.challenge_id,
        action=f"train the task sequence with {best} (best of {', '.join(candidates)} within a memory of {params.memory} samples) instead of naive fine-tuning",
        before={
            "average_accuracy": float(summary["naive"][0]),
            "bwt": float(summary["naive"][1]),
            "forgetting": float(summary["naive"][2]),
        },
        after={
            "average_accuracy": float(summary[best][0]),
            "bwt": float(summary[best][1]),
            "forgetting": float(summary[best][2]),
        },
        before_status=before_res.status,
        after_status=after_res.status,
        artifacts=artifacts,
        notes=(
            f"means over {n} seed(s) on the same split-class sequence as the check: {table}",
            "the winner is chosen by final average accuracy; BWT is reported (a model that never learns new tasks has BWT near 0 too)",
        ),
    )
    before_report = dataclasses.replace(
        before, challenges=tuple(before_res if r.id == ctx.challenge_id else r for r in before.challenges)
    )
    return TreatOutcome(treatment, before_report, after)


REMEDY = RemedySpec(
    id="optimization.forgetting",
    params=ForgettingParams,
    run=treat_forgetting,
    description="Compare experience replay, EWC and LwF with naive fine-tuning on the task sequence; keep the best within the memory budget.",
)
