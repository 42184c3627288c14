"""compute.energy — energy and CO2e of training and inference.

Measured over the shared monitored run and one inference pass over test: RAPL/powercap, NVML,
or an estimate from the TDP (labelled as such).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from dlclinic.core.case import Case, usable_inputs
from dlclinic.core.evidence import Evidence
from dlclinic.core.inference import predict_logits
from dlclinic.core.registry import CheckSpec
from dlclinic.core.results import CheckResult, Finding, Status
from dlclinic.functional.cost import EnergyMeter, EnergyReading, co2e_grams
from dlclinic.providers.training_run import monitored_run, recipe, run_settings


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


def _inference_reading(case: Case, options: EnergyOptions) -> tuple[EnergyReading, np.ndarray]:
    """The energy of one inference pass over (up to 1,000 rows of) test, and those rows."""
    held = case.get("test") or case.train
    xi = usable_inputs(held.x[: min(len(held), 1000)])
    with EnergyMeter(tdp_watts=options.tdp_watts) as meter:
        predict_logits(case.model, xi)
    inf = meter.reading
    if inf is None:  # pragma: no cover - set by __exit__
        raise RuntimeError("energy meter gave no reading")
    return inf, xi


def _training_joules(arrays: dict[str, np.ndarray], options: EnergyOptions) -> tuple[float, bool, str]:
    """``(joules, estimated, method)`` of the shared run's window, rescaled to ``options.tdp_watts`` when estimated."""
    method = str(arrays["energy_method"])
    estimated = method == "tdp-estimate"
    joules = float(arrays["energy_joules"])
    # the cached run's energy was measured with the default TDP; rescale to this option's TDP
    tdp0 = float(arrays["energy_tdp"])
    if estimated and math.isfinite(tdp0) and tdp0 > 0:
        joules *= options.tdp_watts / tdp0
    return joules, estimated, method


def run_energy(case: Case, evidence: Evidence, options: EnergyOptions) -> CheckResult:
    """Energy and CO2e of the shared training window and of one inference pass over test."""
    inf, xi = _inference_reading(case, options)
    arrays, how = monitored_run(case, evidence, run_settings(options))
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
    joules, estimated, method = _training_joules(arrays, options)
    samples = int(arrays["samples_trained"])
    per_sample = joules / max(samples, 1)
    full_kwh = per_sample * len(case.train) * cfg.epochs / 3.6e6
    label = (
        f"estimated from TDP ({options.tdp_watts:g} W package × CPU time / {os.cpu_count()} cores)"
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


CHECK = CheckSpec(
    id="compute.energy",
    requires=(),
    options=EnergyOptions,
    run=run_energy,
    description="energy and CO2e of a measured training and inference window: RAPL/powercap, NVML, or an estimate from TDP (labelled)",
)


REMEDY = None
