"""9. Energy-tracking overhead: dlclinic's ``EnergyMeter`` vs CodeCarbon's ``OfflineEmissionsTracker``.

The same workload in every process: 40 training steps of the demo CNN (batch 64). Each
repeat times the workload inside the tracker (start → work → stop) and, in the same
process, without it; the overhead is the difference of the medians. A second case times an
empty block (start → stop), i.e. the tracker's fixed cost. CodeCarbon runs offline
(``country_iso_code="USA"``, no file written, default 15 s power sampling); the "none"
sides run in each environment so each tracker is compared with its own interpreter.
"""

from __future__ import annotations

import time
from typing import Any

from bench.peers.common import case_entry, case_of, load_demo, load_demo_model, row, timed, version_of

NUMBER = 9
TITLE = "Energy-tracking overhead vs CodeCarbon's offline tracker"
SIDES = {"ours": "project", "codecarbon": "codecarbon"}
STEPS = 40


def _workload(cfg: dict[str, Any]) -> Any:
    import numpy as np
    import torch

    arrays, _ = load_demo(cfg)
    x = torch.from_numpy(np.ascontiguousarray(arrays["train_x"][: 64 * STEPS], dtype=np.float32))
    y = torch.from_numpy(arrays["train_y"][: 64 * STEPS].astype(np.int64))
    model = load_demo_model(cfg).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def work() -> None:
        for i in range(0, len(x), 64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[i : i + 64]), y[i : i + 64]).backward()
            opt.step()

    return work


def run(side: str, cfg: dict[str, Any]) -> dict[str, Any]:
    work = _workload(cfg)
    reps = cfg["repeats"]
    base_med, base_times, _ = timed(work, reps, warmup=1)
    cases: dict[str, Any] = {"none": case_entry(base_med, base_times)}
    if side == "ours":
        from dlclinic.functional.cost import EnergyMeter

        def tracked() -> Any:
            with EnergyMeter() as m:
                work()
            return m.reading

        def empty() -> Any:
            with EnergyMeter() as m:
                pass
            return m.reading

        med, times, r = timed(tracked, reps, warmup=1)
        cases["tracked"] = case_entry(med, times, kwh=f"{r.kwh:.2e}", method=r.method, overhead_ms=round((med - base_med) * 1e3, 1))
        med, times, _ = timed(empty, reps, warmup=1)
        cases["empty"] = case_entry(med, times)
        return {"cases": cases}
    import logging
    import warnings

    from codecarbon import OfflineEmissionsTracker

    logging.getLogger("codecarbon").setLevel(logging.ERROR)

    def make() -> Any:
        return OfflineEmissionsTracker(country_iso_code="USA", save_to_file=False, log_level="error")

    def tracked() -> Any:
        t = make()
        t.start()
        work()
        t.stop()
        return t.final_emissions_data

    def empty() -> Any:
        t = make()
        t.start()
        t.stop()
        return None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        med, times, data = timed(tracked, reps, warmup=1)
        cases["tracked"] = case_entry(med, times, kwh=f"{float(data.energy_consumed):.2e}", method=f"cpu {getattr(data, 'cpu_model', '?')}", overhead_ms=round((med - base_med) * 1e3, 1))
        med, times, _ = timed(empty, reps, warmup=1)
        cases["empty"] = case_entry(med, times)
    del time
    return {"cases": cases, "versions": version_of("codecarbon", "torch")}


def rows(results: dict[str, Any], cfg: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    def overhead(side: str) -> dict[str, Any] | None:
        t, n = case_of(results, side, "tracked"), case_of(results, side, "none")
        if not t or not n:
            return None
        return {"seconds": max(t["seconds"] - n["seconds"], 1e-6), "quality": {**t["quality"], "untracked_s": round(n["seconds"], 3)}}

    out = [
        row(f"overhead on {STEPS} training steps (tracked − untracked median)", "EnergyMeter", overhead("ours"), "OfflineEmissionsTracker", overhead("codecarbon")),
        row("fixed cost: start + stop around an empty block", "EnergyMeter", case_of(results, "ours", "empty"), "OfflineEmissionsTracker", case_of(results, "codecarbon", "empty")),
    ]
    notes = ["Without RAPL counters (as in most VMs and containers) both fall back to an estimate from CPU time × TDP share; the kWh figures then differ by the TDP each assumes, not by what was measured.",
             "An overhead at the level of timing noise (a few ms) is reported as measured and can come out negative; it is clipped to 1 µs for the ratio."]
    return out, notes
