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
