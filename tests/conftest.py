"""Shared fixtures: small synthetic cases with planted defects, an isolated cache."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
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


@pytest.fixture(params=["sqlite", "postgresql"])
def log_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A prediction log: SQLite in ``tmp_path``, or a fresh database on ``$DLCLINIC_TEST_POSTGRES`` (CI sets it)."""
    if request.param == "sqlite":
        yield str(tmp_path / "log.db")
        return
    base = os.environ.get("DLCLINIC_TEST_POSTGRES")
    if not base:
        pytest.skip("set DLCLINIC_TEST_POSTGRES=postgresql://user@host/db (scripts/postgres.sh) to run on PostgreSQL")
    psycopg = pytest.importorskip("psycopg")
    name = f"dlclinic_t{time.time_ns()}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield base.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
