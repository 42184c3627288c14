"""Distributed tuning: two Optuna workers share one study in one storage (SQLite, and PostgreSQL when
``$DLCLINIC_TEST_POSTGRES`` is set, as in CI): no trial lost, none run twice, both workers ran trials."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pytest

from conftest import blobs
from dlclinic.core.baselines import MLP
from dlclinic.core.workers import can_fork
from dlclinic.functional.search import hyperparameter_study

pytest.importorskip("optuna")


def _storage(kind: str, tmp_path: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'optuna.db'}"
    url = os.environ.get("DLCLINIC_TEST_POSTGRES")
    if not url:
        pytest.skip("set DLCLINIC_TEST_POSTGRES=postgresql://user@host/db (scripts/postgres.sh) to run on PostgreSQL")
    pytest.importorskip("psycopg")
    return url  # postgresql://… as a user writes it (dlclinic picks the psycopg 3 driver)


@pytest.mark.skipif(not can_fork(), reason="worker processes are forked (Linux)")
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_two_workers_share_one_study(kind: str, tmp_path: Path) -> None:
    import optuna

    x, y = blobs(300, k=3, d=8, sep=3.0)
    xv, yv = blobs(150, k=3, d=8, sep=3.0, seed=1)
    storage, name = _storage(kind, tmp_path), f"dist-{uuid.uuid4().hex[:8]}"
    result = hyperparameter_study(
        lambda: MLP(8, 3, hidden=(16,)), x, y, xv, yv, n_trials=6, epochs=1, storage=storage, study_name=name, workers=2
    )
    study = optuna.load_study(study_name=name, storage=storage.replace("postgresql://", "postgresql+psycopg://", 1))
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == list(range(6)), numbers  # none lost, none run twice
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in study.trials)
    pids = {t.user_attrs.get("worker_pid") for t in study.trials}
    assert len(pids) == 2 and os.getpid() in pids, pids  # this process and one forked worker
    params = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(params)) == len(params), params  # differently seeded samplers: no recipe proposed twice
    assert result.n_trials == 6 and result.baseline_params == study.trials[0].params
    assert np.isfinite(result.best_accuracy)


def test_workers_without_a_shared_storage_is_an_error() -> None:
    x, y = blobs(60, k=2, d=4)
    with pytest.raises(ValueError, match="shared storage"):
        hyperparameter_study(lambda: MLP(4, 2), x, y, x, y, n_trials=2, workers=2)
