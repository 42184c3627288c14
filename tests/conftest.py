"""Shared fixtures: small synthetic cases with planted defects, an isolated cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the user's ~/.cache from tests."""
    if "DLCLINIC_CACHE" not in os.environ or not os.environ["DLCLINIC_CACHE"].startswith(str(tmp_path_factory.getbasetemp())):
        monkeypatch.setenv("DLCLINIC_CACHE", str(tmp_path_factory.getbasetemp() / "dlclinic-cache"))


def blobs(n: int, *, k: int = 3, d: int = 8, sep: float = 4.0, shift: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``k`` well-separated Gaussian classes in ``d`` dims; ``shift`` moves every feature by that many σ."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).normal(0, sep, size=(k, d))
    y = np.arange(n) % k
    rng.shuffle(y)
    x = centres[y] + rng.normal(size=(n, d)) + shift
    return x.astype(np.float32), y.astype(np.int64)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]
