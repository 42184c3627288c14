"""Cold vs warm demo checkup: how much the evidence cache saves.

Runs the full demo checkup twice against one fresh cache folder, each in a fresh process
(so no in-memory state helps the second run), and prints the wall times and the ratio.
The lower bound of a cold run is one baseline training plus one forward pass per split;
the warm run should cost only the checks themselves.

    python bench/bench_cache.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _run(cache: Path, out: Path) -> tuple[float, dict]:  # type: ignore[type-arg]
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "dlclinic.cli",
            "checkup",
            "--demo",
            "--quiet",
            "--cache-dir",
            str(cache),
            "--out",
            str(out),
        ],
        check=True,
    )
    wall = time.perf_counter() - start
    return wall, json.loads((out / "report.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    colds, warms = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            cache, out = Path(tmp) / "cache", Path(tmp) / "out"
            cold, rep_cold = _run(cache, out)
            warm, rep_warm = _run(cache, out)
            colds.append(cold)
            warms.append(warm)
    cold, warm = statistics.median(colds), statistics.median(warms)
    print(
        f"demo checkup, cold cache : {cold:6.1f} s  (model {rep_cold['timings']['model']:.1f} s, evidence {rep_cold['timings']['evidence']:.1f} s, checks {rep_cold['timings']['checks']:.1f} s)"
    )
    print(
        f"demo checkup, warm cache : {warm:6.1f} s  (model {rep_warm['timings']['model']:.1f} s, evidence {rep_warm['timings']['evidence']:.1f} s, checks {rep_warm['timings']['checks']:.1f} s)"
    )
    print(
        f"speed-up cold/warm       : {cold / warm:6.2f}x  (median of {args.repeats} repeat(s); process start and imports included)"
    )


if __name__ == "__main__":
    main()
