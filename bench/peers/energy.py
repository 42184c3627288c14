"""9. Energy-tracking overhead: dlclinic's ``EnergyMeter`` vs CodeCarbon's ``OfflineEmissionsTracker``.

The same workload in every process: 40 training steps of the demo CNN (batch 64). Each
repeat times the workload inside the tracker (start → work → stop) and, in the same
process, without it; the overhead is the difference of the medians. A second case times an
empty block (start → stop), i.e. the tracker's fixed cost. CodeCarbon runs offline
(``country_iso_code="USA"``, no file written, default 15 s power sampling); the "none"
sides run in each environment so each tracker is compared with its own interpreter.
"""

from __future__ import annotations

import statistics
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
    reps = cfg["repeats"] + 2
    work()  # warm-up
    cases: dict[str, Any] = {}

    def interleaved(tracked: Any) -> tuple[float, list[float], Any]:
        """Untracked and tracked runs alternate, so load changes hit both alike."""
        plain, inside, out = [], [], None
        for _ in range(reps):
            plain.append(timed(work, 1)[0])
            m, _, out = timed(tracked, 1)
            inside.append(m)
        cases["none"] = case_entry(statistics.median(plain), plain)
        return statistics.median(inside), inside, out

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

        med, times, r = interleaved(tracked)
        cases["tracked"] = case_entry(med, times, kwh=f"{r.kwh:.2e}", method=r.method)
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
        med, times, data = interleaved(tracked)
        cases["tracked"] = case_entry(
            med,
            times,
            kwh=f"{float(data.energy_consumed):.2e}",
            method=f"codecarbon ({getattr(data, 'cpu_model', '?')})",
        )
        med, times, _ = timed(empty, reps, warmup=1)
        cases["empty"] = case_entry(med, times)
    return {"cases": cases, "versions": version_of("codecarbon", "torch")}


def rows(results: dict[str, Any], cfg: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    def tracked(side: str) -> dict[str, Any] | None:
        t, n = case_of(results, side, "tracked"), case_of(results, side, "none")
        if not t or not n:
            return None
        extra = t["seconds"] - n["seconds"]
        return {
            "seconds": t["seconds"],
            "quality": {
                **t["quality"],
                "untracked_s": round(n["seconds"], 3),
                "overhead": f"{extra * 1e3:+.0f} ms ({extra / n['seconds']:+.1%})",
            },
        }

    ours, peer = tracked("ours"), tracked("codecarbon")
    verdict = ""
    if ours and peer:
        verdict = f"overhead: dlclinic {ours['quality']['overhead']}, CodeCarbon {peer['quality']['overhead']}"
    out = [
        row(
            f"{STEPS} training steps inside the tracker (median, interleaved with untracked runs)",
            "EnergyMeter",
            ours,
            "OfflineEmissionsTracker",
            peer,
            verdict=verdict,
        ),
        row(
            "fixed cost: start + stop around an empty block",
            "EnergyMeter",
            case_of(results, "ours", "empty"),
            "OfflineEmissionsTracker",
            case_of(results, "codecarbon", "empty"),
        ),
    ]
    out[0]["ratio"] = None  # the sides run in different interpreters: compare each one's overhead, not the times
    notes = [
        "Each side's overhead is against the same workload untracked in the same process (its own interpreter and torch build); differences of a few per cent are within the noise of a 2-core machine. CodeCarbon's fixed cost is its hardware detection and the background scheduler it starts and stops.",
        "Without RAPL counters (as in most VMs and containers) both fall back to an estimate from CPU time and a TDP figure; the kWh then differ by the TDP and CPU share each assumes, not by anything measured.",
    ]
    return out, notes
