"""``--fail-on`` turns the report's worst status into the exit code (for CI gating)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conftest import blobs
from dlclinic.cli import main


def test_fail_on_warn_exits_one_when_a_check_warns_and_zero_otherwise(tmp_path: Path) -> None:
    for name, (x, y) in {
        "train": blobs(400, d=6, seed=1),
        "test": blobs(200, d=6, seed=2),
        "deploy": blobs(200, d=6, seed=3, shift=1.5),
    }.items():
        np.savez(tmp_path / f"{name}.npz", x=x, y=y)
    base = [
        "checkup",
        "--train",
        str(tmp_path / "train.npz"),
        "--test",
        str(tmp_path / "test.npz"),
        "--deploy",
        str(tmp_path / "deploy.npz"),
        "--only",
        "data.generalization",
        "--epochs",
        "5",
        "--cache-dir",
        str(tmp_path / "cache"),
        "-q",
    ]
    assert main([*base, "--out", str(tmp_path / "a"), "--fail-on", "warn"]) == 1
    assert main([*base, "--out", str(tmp_path / "b"), "--fail-on", "never"]) == 0
    assert (tmp_path / "a" / "report.json").exists()  # the report is written before the exit code says "failed"
