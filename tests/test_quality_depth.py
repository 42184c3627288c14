"""data.quality in depth: near-duplicates that only the model's view reveals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

import dlclinic
from conftest import blobs
from dlclinic import Case, FitConfig
from dlclinic.core.baselines import MLP
from dlclinic.core.recipe import fit


class DropLast(nn.Module):
    """The model ignores the last input column (a nuisance the data carries)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :-1]


def _model(x: np.ndarray, y: np.ndarray) -> nn.Module:
    mlp = fit(MLP(x.shape[1] - 1, 3), x[:, :-1], y, FitConfig(epochs=8, batch_size=64, seed=0)).model
    return nn.Sequential(DropLast(), mlp).eval()


def _data(plant: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    x, y = blobs(500, d=7, seed=4)
    nuisance = np.random.default_rng(1).normal(0, 30, size=(len(x), 1)).astype(np.float32)
    x = np.hstack([x, nuisance])
    pairs = []
    for i in range(plant):
        src, dst = i, len(x) - 1 - i
        x[dst, :-1], y[dst] = x[src, :-1], y[src]  # same content, a different nuisance value
        pairs.append((src, dst))
    return x, y, pairs


def test_embedding_near_duplicates_found_where_inputs_differ(tmp_path: Path) -> None:
    x, y, pairs = _data(plant=8)
    case = Case.from_arrays((x, y), model=_model(x, y))
    res = dlclinic.checkup(case, only=["data.quality"], cache_dir=tmp_path)["data.quality"]
    assert res.metrics["near_duplicate_pairs"] == 0  # the nuisance column hides them from the input-space search
    found = next(f for f in res.findings if f.code == "embedding_near_duplicate")
    assert set(pairs) <= {tuple(p) for p in found.extra["pairs"]}
    assert res.metrics["embedding_near_duplicate_pairs"] <= len(pairs) + 2


def test_no_embedding_near_duplicates_on_clean_data(tmp_path: Path) -> None:
    x, y, _ = _data(plant=0)
    res = dlclinic.checkup(Case.from_arrays((x, y), model=_model(x, y)), only=["data.quality"], cache_dir=tmp_path)[
        "data.quality"
    ]
    assert res.metrics["embedding_near_duplicate_pairs"] <= 1
    assert not [f for f in res.findings if f.code == "embedding_near_duplicate" and len(f.extra["pairs"]) > 1]


def _planted_unusable() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train and test with Inf, -Inf rows, 1e38 (finite, but its square overflows float32) and a NaN."""
    x, y = blobs(240, d=6, seed=2)
    xt, yt = blobs(90, d=6, seed=3)
    x[3, 1] = np.inf
    x[10, :] = -np.inf  # a whole row: standardising or a distance on it used to turn everything into NaN
    x[20, 2] = 1e38
    x[30, 0] = np.nan
    xt[5, 4] = -3e38
    return x, y, xt, yt


def test_inf_and_huge_values_are_reported_like_nan_never_an_error(tmp_path: Path) -> None:
    x, y, xt, yt = _planted_unusable()
    res = dlclinic.checkup(Case.from_arrays((x, y), (xt, yt)), only=["data.quality"], cache_dir=tmp_path)[
        "data.quality"
    ]
    assert res.status != "error", res.summary
    assert res.metrics["nonfinite_rows"] == 5
    rows = {f.split: f.indices for f in res.findings if f.code == "nonfinite"}
    assert rows == {"train": (3, 10, 20, 30), "test": (5,)}
    assert "5 rows with NaN/Inf or overflowing values" in res.summary
    # the other rows still give usable evidence: the blobs are separable, few label issues
    assert res.metrics["label_issue_fraction"] < 0.1


def test_inf_and_huge_values_leave_no_check_of_the_data_category_in_error(tmp_path: Path) -> None:
    x, y, xt, yt = _planted_unusable()
    model = _model(np.hstack([np.where(np.abs(x) <= 1e18, x, 0.0), np.zeros((len(x), 1), np.float32)]), y)
    case = Case.from_arrays((np.hstack([x, np.ones((len(x), 1), np.float32)]), y), model=model)
    report = dlclinic.checkup(case, only=["data"], cache_dir=tmp_path)
    assert not [(r.id, r.summary) for r in report.challenges if r.status == "error"]
    assert report["data.quality"].metrics["nonfinite_rows"] == 4


def test_unusable_values_helpers() -> None:
    from dlclinic.core.case import MAX_ABS_INPUT, unusable_rows, usable_inputs
    from dlclinic.functional.duplicates import find_near_duplicates, nn_distance_scale
    from dlclinic.functional.profile import find_column_issues, find_image_issues

    x, _ = blobs(60, d=4, seed=0)
    x[7, 0], x[9, 1], x[11, 2] = np.inf, 2 * MAX_ABS_INPUT, np.nan
    assert np.flatnonzero(unusable_rows(x)).tolist() == [7, 9, 11]
    clean = usable_inputs(x)
    assert np.isfinite(clean).all() and clean[9, 1] == 0 and x[9, 1] == 2 * MAX_ABS_INPUT  # a copy
    assert np.isfinite(nn_distance_scale(x)) and nn_distance_scale(x) > 0
    assert len(find_near_duplicates(x)) == 0
    cols = find_column_issues(x)
    assert np.allclose(cols.missing_fraction, [1 / 60] * 3 + [0]) and 9 not in cols.extreme_rows
    img = np.random.default_rng(0).random((30, 1, 4, 4)).astype(np.float32)
    img[2, 0, 1, 1] = 1e38
    assert 2 not in find_image_issues(img).bright  # one overflowing pixel does not flatten the others' scale
