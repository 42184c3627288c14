"""compute.training_cost — what does training cost on this machine?

FLOPs per sample, parameters, throughput, the share of step time spent waiting for data and
the projected full run, from the shared monitored run (:mod:`dlclinic.providers.training_run`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dlclinic.core.case import Case, usable_inputs
from dlclinic.core.evidence import Evidence
from dlclinic.core.registry import CheckSpec
from dlclinic.core.results import CheckResult, Finding, Status, worst
from dlclinic.functional.cost import FlopCount, count_flops
from dlclinic.providers.training_run import monitored_run, recipe, record_of, run_settings
from dlclinic.training.monitor import MonitorRecord


def _is_module(model: Any) -> bool:
    return hasattr(model, "named_modules") and hasattr(model, "parameters")


def _fmt(v: float) -> str:
    return f"{v:.2e}" if v and (abs(v) < 1e-2 or abs(v) >= 1e4) else f"{v:.3g}"


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


def _not_trained(flops: FlopCount | None, how: str) -> CheckResult:
    """The result when no fresh model could be trained: the FLOPs alone, if they were counted."""
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


def _details(rec: MonitorRecord) -> dict[str, Any]:
    """The step-time plot of the shared run."""
    return {
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
    }


def _flops(case: Case, evidence: Evidence) -> FlopCount | None:
    """FLOPs per sample of the model (cached: counting runs the model under torch's FLOP counter)."""

    def compute() -> dict[str, Any] | None:
        try:
            return dataclasses.asdict(count_flops(case.model, usable_inputs(case.train.x[:8])))
        except Exception:
            return None

    got = evidence.cached_json("compute.training_cost.flops", {"rows": 8}, compute)
    return FlopCount(**got) if got is not None else None


def run_training_cost(case: Case, evidence: Evidence, options: TrainingCostOptions) -> CheckResult:
    """FLOPs per sample, parameters, throughput, data-stall share and the projected full run."""
    model = case.model
    flops = _flops(case, evidence) if _is_module(model) else None
    arrays, how = monitored_run(case, evidence, run_settings(options))
    if arrays is None:
        return _not_trained(flops, how)
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
        details=_details(rec),
    )


CHECK = CheckSpec(
    id="compute.training_cost",
    requires=(),
    options=TrainingCostOptions,
    run=run_training_cost,
    description="FLOPs per sample (torch.utils.flop_counter), parameters, throughput, data-stall share, projected full run",
)


REMEDY = None
