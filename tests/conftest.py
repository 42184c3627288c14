"""Shared fixtures: small synthetic cases with planted defects, an isolated cache."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the validation suite's generators live at the repository root
    sys.path.insert(0, str(ROOT))

from validation.data import blobs, redundant_pool  # noqa: E402  (re-exported: tests import them from conftest)

__all__ = ["blobs", "redundant_pool"]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the user's ~/.cache from tests."""
    if "DLCLINIC_CACHE" not in os.environ or not os.environ["DLCLINIC_CACHE"].startswith(
        str(tmp_path_factory.getbasetemp())
    ):
        monkeypatch.setenv("DLCLINIC_CACHE", str(tmp_path_factory.getbasetemp() / "dlclinic-cache"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]
