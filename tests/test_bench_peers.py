"""The peer-benchmark runner lists every benchmark without running one (no timing here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_dry_run_lists_all_benchmarks() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "peers" / "run.py"), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    assert len(lines) == 11
    for name in (
        "labels",
        "audit",
        "drift_mmd",
        "drift_tabular",
        "attacks",
        "attribution",
        "dpsgd",
        "compression",
        "fairness_calibration",
        "energy",
        "checkup",
    ):
        assert any(f" {name}: " in line for line in lines), name
    assert "sides:" in lines[0]


def test_unknown_benchmark_is_an_error() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "peers" / "run.py"), "--dry-run", "--only", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert out.returncode == 2
    assert "unknown benchmark" in out.stderr
