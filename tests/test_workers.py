"""dlclinic.core.workers: tasks on forked workers give the results of running them here, in order."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dlclinic.core import workers
from dlclinic.core.workers import can_fork, default_workers, release_mapped_pages, run_tasks

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


@needs_fork
def test_a_single_task_runs_in_a_worker_while_this_process_does_its_other_work() -> None:
    started = multiprocessing.get_context("fork").Event()
    here: list[bool] = []

    def task(x: int) -> tuple[int, int]:
        started.set()
        return _square_and_pid(x)

    out = run_tasks([5], task, workers=2, before=lambda: here.append(started.wait(30)))
    assert here == [True] and out[0][0] == 25  # `before` ran here while the task ran
    assert out[0][1] != os.getpid()  # the task overlapped `before` in a worker
    alone = run_tasks([5], _square_and_pid, workers=2)  # nothing else to do: no process to fork for one task
    assert alone == [(25, os.getpid())]


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


def _rss_file_mb() -> float:
    for line in open("/proc/self/status").read().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no RssFile in /proc/self/status")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_released_mapped_pages_leave_the_resident_set_and_keep_their_contents(tmp_path: Path) -> None:
    data = np.random.default_rng(0).random((4096, 2048), dtype=np.float32)  # 32 MB
    np.save(tmp_path / "x.npy", data)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="c")
    mapped[0, 0] = -1.0  # a copy-on-write change: must survive the release
    view = mapped[1:]
    before = float(view.sum(dtype=np.float64))  # every page read
    resident = _rss_file_mb()
    assert release_mapped_pages(view, mapped, np.zeros(3)) >= data.nbytes  # the one mapping, once
    assert _rss_file_mb() < resident - 16  # MADV_PAGEOUT: Linux >= 5.4
    assert float(mapped[0, 0]) == -1.0
    assert float(view.sum(dtype=np.float64)) == before


_LEFT: list[int] = []  # what a task leaves behind in its process


def _leave_state(x: int) -> tuple[int, int, int]:
    _LEFT.append(x)
    return x, os.getpid(), len(_LEFT)


@needs_fork
def test_fresh_tasks_each_run_in_a_process_that_ends_with_them() -> None:
    out = run_tasks([1, 2, 3], _leave_state, workers=1, fresh=True)
    assert [x for x, _, _ in out] == [1, 2, 3]
    pids = {pid for _, pid, _ in out}
    assert len(pids) == 3 and os.getpid() not in pids
    assert [left for _, _, left in out] == [1, 1, 1]  # no task saw what the one before it left
    assert _LEFT == [] and not workers._busy


@needs_fork
def test_a_fresh_task_whose_process_dies_is_run_here() -> None:
    out = run_tasks([(os.getpid(), 5), (os.getpid(), 6)], _die_in_a_child, workers=2, fresh=True)
    assert out == [6, 7]


_PROBE = """
import sys, torch
from dlclinic.core.workers import threads_survive_fork
torch.set_num_threads(2)
print(threads_survive_fork(2, timeout_s=5.0))
x = torch.randn(512, 512)
for _ in range(4):
    (x @ x).relu_().sum()  # this process's OpenMP pool, on two threads
print(threads_survive_fork(2, timeout_s=5.0), threads_survive_fork(1))
"""


@needs_fork
def test_threads_survive_fork_until_the_parent_starts_an_openmp_pool() -> None:
    """GNU OpenMP is not fork-safe: a child forked after its parent ran a parallel region on two
    threads hangs in its own first one. The probe sees it (and its stuck child is killed)."""
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False", "True"]


class _Odd(Exception):
    def __init__(self, a: int, b: int) -> None:  # pickled with args=("12",): does not rebuild
        super().__init__(f"{a}{b}")


def _odd_in_a_child(parent: int) -> object:
    return _Odd(1, 2) if os.getpid() != parent else "run here"


@needs_fork
def test_a_result_that_does_not_unpickle_is_computed_again_here() -> None:
    assert run_tasks([os.getpid()], _odd_in_a_child, workers=1, fresh=True) == ["run here"]
