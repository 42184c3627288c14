"""compute.edge and compute.realtime treat through the compression sweep, measuring their own check again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import dlclinic
from conftest import blobs
from dlclinic import Case, FitConfig

pytest.importorskip("onnxruntime")

FAST = FitConfig(epochs=6, batch_size=64)
SWEEP = {
    "max_accuracy_drop": 0.02,
    "sparsities": "0.5",
    "keep_ratios": "0.5",
    "finetune_epochs": 1,
    "distill_epochs": 2,
    "distill_seconds": 5.0,
}


def _case() -> Case:
    x, y = blobs(600, k=3, d=12, sep=3.0, seed=0)
    xt, yt = blobs(300, k=3, d=12, sep=3.0, seed=1)
    return Case.from_arrays((x, y), (xt, yt))


@pytest.mark.slow
@pytest.mark.parametrize(("challenge", "objective"), [("compute.edge", "size"), ("compute.realtime", "latency")])
def test_compute_remedies_choose_by_their_objective_and_re_measure_their_check(
    tmp_path: Path, challenge: str, objective: str
) -> None:
    treatment, before, after = dlclinic.treat(
        _case(), challenge, out_dir=tmp_path / "out", params=SWEEP, fit_config=FAST, cache_dir=tmp_path / "cache"
    )
    assert (
        treatment.challenge_id == challenge
        and before[challenge].status == treatment.before_status
        and after[challenge].status == treatment.after_status
    )
    assert f"by {objective}" in treatment.action
    assert treatment.after["accuracy_drop"] <= 0.02 and Path(treatment.artifacts["model"]).exists()
    table = json.loads((tmp_path / "out" / "compression.json").read_text())
    assert table["chosen"] and len(table["variants"]) >= 3
    if objective == "size":
        assert treatment.after["size_mb"] < 0.5 * treatment.before["size_mb"]
