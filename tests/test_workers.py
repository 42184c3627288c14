"""dlclinic.core.workers: tasks on forked workers give the results of running them here, in order."""

from __future__ import annotations

import os

import pytest

from dlclinic.core import workers
from dlclinic.core.workers import can_fork, default_workers, run_tasks

needs_fork = pytest.mark.skipif(not can_fork(), reason="no fork on this platform")


def _square_and_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


@needs_fork
def test_results_in_task_order_and_work_shared_between_processes() -> None:
    seen: list[int] = []
    out = run_tasks(list(range(12)), _square_and_pid, workers=2, on_result=lambda i, _r: seen.append(i))
    assert [r for r, _ in out] == [i * i for i in range(12)]
    assert sorted(seen) == list(range(12))  # every result reported once
    assert len({pid for _, pid in out}) >= 1
    assert not workers._busy


def test_one_worker_runs_here_in_order() -> None:
    order: list[int] = []
    out = run_tasks([3, 1, 2], _square_and_pid, workers=1, on_result=lambda i, _r: order.append(i))
    assert [r for r, _ in out] == [9, 1, 4]
    assert order == [0, 1, 2]
    assert {pid for _, pid in out} == {os.getpid()}


def _die_in_a_child(parent_and_x: tuple[int, int]) -> int:
    parent, x = parent_and_x
    if os.getpid() != parent:
        os._exit(3)  # a crashed worker: its task must be run again in the parent
    return x + 1


@needs_fork
def test_a_task_whose_worker_died_runs_again_here() -> None:
    parent = os.getpid()
    out = run_tasks([(parent, i) for i in range(6)], _die_in_a_child, workers=2)
    assert out == [i + 1 for i in range(6)]


def _nested(x: int) -> list[int]:
    return [r for r, _ in run_tasks([x, x + 1], _square_and_pid, workers=2)]


@needs_fork
def test_nested_calls_run_in_the_calling_process() -> None:
    assert run_tasks([1, 3], _nested, workers=2) == [[1, 4], [9, 16]]


def test_default_workers_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DLCLINIC_WORKERS", "1")
    assert default_workers() == 1
    monkeypatch.setenv("DLCLINIC_WORKERS", "3")
    assert default_workers() == 3
    monkeypatch.delenv("DLCLINIC_WORKERS")
    assert 1 <= default_workers() <= 4


@needs_fork
def test_a_worker_forked_after_the_parent_used_openmp_does_not_hang() -> None:
    """scikit-learn's kNN runs on an OpenMP pool: a child forked after the parent started one hung
    in its first parallel region (GNU libgomp is not fork-safe) until workers ran on one thread."""
    import numpy as np
    from sklearn.neighbors import NearestNeighbors

    x = np.random.default_rng(0).random((20000, 16)).astype(np.float32)
    NearestNeighbors(n_neighbors=3).fit(x).kneighbors(x[:5000])  # the parent's OpenMP pool

    def knn(_i: int) -> float:
        d, _ = NearestNeighbors(n_neighbors=3).fit(x).kneighbors(x[:3000])
        return float(d.sum())

    here = knn(0)
    assert run_tasks([0, 1, 2], knn, workers=2) == pytest.approx([here] * 3)
