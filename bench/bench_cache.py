"""Cold vs warm demo checkup: the wall time of the whole ``dlclinic checkup --demo`` command.

Runs the command a newcomer runs (``dlclinic checkup --demo --out DIR``, HTML report
included) as a subprocess, twice against one fresh cache folder (``$DLCLINIC_CACHE``): the
first run is cold (it trains the baseline, computes the evidence, runs every check, draws
every plot), the second warm (a fresh process again, so no in-memory state helps; the
cached baseline, evidence, derived results and plots do). Prints the wall times, the
report's own phase timings, the statuses, and the machine's load (on a shared machine the
load says how much of it the run got).

    python bench/bench_cache.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _command(out: Path) -> list[str]:
    """``dlclinic checkup --demo`` with the interpreter running this script (its console script when installed)."""
    script = Path(sys.executable).with_name("dlclinic")
    base = [str(script)] if script.exists() else [sys.executable, "-m", "dlclinic.cli"]
    return [*base, "checkup", "--demo", "--out", str(out)]


def _run(cache: Path, out: Path) -> tuple[float, dict]:  # type: ignore[type-arg]
    env = {**os.environ, "DLCLINIC_CACHE": str(cache)}
    start = time.perf_counter()
    subprocess.run(_command(out), check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    return wall, json.loads((out / "report.json").read_text())


def _phases(report: dict) -> str:  # type: ignore[type-arg]
    t = report["timings"]
    return f"model {t['model']:.1f} s, evidence {t['evidence']:.1f} s, checks {t['checks']:.1f} s"


def _load() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover - not Unix
        return "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    colds, warms = [], []
    print(f"{' '.join(_command(Path('OUT')))}  ({os.cpu_count()} CPUs, load {_load()})")
    for _ in range(args.repeats):
        tmp = Path(tempfile.mkdtemp(prefix="dlclinic-bench-"))
        try:
            cold, rep_cold = _run(tmp / "cache", tmp / "cold")
            warm, rep_warm = _run(tmp / "cache", tmp / "warm")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        colds.append(cold)
        warms.append(warm)
        same = [c["status"] for c in rep_cold["challenges"]] == [c["status"] for c in rep_warm["challenges"]]
        print(f"cold {cold:6.1f} s  ({_phases(rep_cold)})")
        print(f"warm {warm:6.1f} s  ({_phases(rep_warm)}; statuses {'the same' if same else 'DIFFERENT'})")
        counts: dict[str, int] = {}
        for c in rep_cold["challenges"]:
            counts[c["status"]] = counts.get(c["status"], 0) + 1
        print(f"     statuses {counts}, load now {_load()}")
    cold, warm = statistics.median(colds), statistics.median(warms)
    print(
        f"demo checkup (whole command, median of {args.repeats}): cold {cold:.1f} s, warm {warm:.1f} s, ratio {cold / warm:.1f}x"
    )


if __name__ == "__main__":
    main()
