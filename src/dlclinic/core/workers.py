"""Independent tasks on forked worker processes that share one queue (or in this process).

A checkup has work that does not depend on other work: the K-fold retrainings, the checks
themselves. On a small model, torch's intra-op threads buy little (on two cores one
training step runs only ~1.4× faster on two threads than on one, and on a CPU shared with
other processes OpenMP threads waiting for each other can be ten times slower), so
:func:`run_tasks` uses the cores for *different* tasks instead: ``workers - 1`` processes
forked from this one (they inherit the case, the model and the evidence without copying)
and this process take the next task from one shared counter until none is left.

Results come back as pickles through a private temporary folder; a task whose worker died
is run again here, so a crash costs time, never a result. Where ``fork`` does not exist
(Windows, macOS defaults) or one worker is asked for, the tasks simply run here in order.
Each task must seed what it draws (the order in which tasks run is not fixed). A worker runs
every native thread pool (OpenMP, BLAS) on one thread: the cores are used by the workers.
Under ``torchrun`` the tasks run without collective calls (``distributed.local``): which
process takes which task depends on timing, so no task may wait for another rank.

With ``fresh=True`` every task runs in a process of its own, forked for it and gone when it
ends: what a task imports, caches or leaves in the C heap goes with its process, so a long
checkup's memory no longer grows task after task. Those children may run torch on several
threads only when this process never started an OpenMP pool (:func:`threads_survive_fork`
tries it in a disposable child); the checkup then keeps itself on one thread meanwhile.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import multiprocessing
import os
import pickle
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing import connection
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from sklearn.neighbors import NearestNeighbors
from threadpoolctl import threadpool_limits

from dlclinic.core import distributed
from dlclinic.core.case import memory_map_of

__all__ = [
    "can_fork",
    "default_workers",
    "release_freed_memory",
    "release_mapped_pages",
    "run_tasks",
    "threads_survive_fork",
]

_T = TypeVar("_T")
_R = TypeVar("_R")

_POLL_S = 0.05
_PROBE_S = 5.0  # a probe child that has not ended by then is stuck in an inherited OpenMP pool (it takes ~0.2 s)
_stuck_in: int | None = None  # the process whose probe child got stuck: its pools stay for good
_busy = False  # this process is a worker, or is already running tasks: nested calls run here, in order


def can_fork() -> bool:
    """Whether worker processes can be forked here (Linux: ``fork`` is safe for CPU-only torch; not once
    this process has used CUDA, which a forked child cannot use again: the tasks then run here)."""
    return (
        sys.platform.startswith("linux")
        and "fork" in multiprocessing.get_all_start_methods()
        and not torch.cuda.is_initialized()
    )


def threads_survive_fork(threads: int, *, timeout_s: float = _PROBE_S) -> bool:
    """Whether a child forked now can run torch's and scikit-learn's OpenMP pools on ``threads`` threads.

    GNU OpenMP (libgomp) is not fork-safe: a child that opens a parallel region of a pool its
    parent had started waits for ever for threads it does not have. A process that trained a
    model on several threads (a notebook) has such a pool; a fresh ``dlclinic`` command has
    none. Nothing in a process tells which, so a disposable child tries: one parallel region
    of each library's pool on ``threads`` threads, done in milliseconds, or stuck and killed
    after ``timeout_s``. ``False`` also where nothing can be forked.

    Example:
        >>> threads_survive_fork(1)
        True
    """
    global _stuck_in
    if threads <= 1:
        return True
    if not can_fork() or _stuck_in == os.getpid():
        return False
    child = multiprocessing.get_context("fork").Process(target=_open_pools, args=(threads,))
    child.start()
    child.join(timeout_s)
    if child.is_alive():
        child.kill()
        child.join()
        _stuck_in = os.getpid()
        return False
    return child.exitcode == 0


def _open_pools(threads: int) -> None:
    """In a probe child: one parallel region of torch's OpenMP pool and one of scikit-learn's."""
    torch.set_num_threads(threads)
    torch.ones(1 << 20).mul_(2.0).sum()  # ATen's parallel_for: 16x its grain size
    x = np.random.default_rng(0).random((4096, 8), dtype=np.float32)
    with threadpool_limits(threads, user_api="openmp"):
        NearestNeighbors(n_neighbors=2, algorithm="brute").fit(x).kneighbors(x)


def release_freed_memory() -> bool:
    """Return the C heap's free pages to the system (glibc ``malloc_trim(0)``); ``False`` where there is none.

    A check's tensors and arrays are freed when it ends, but glibc keeps the pages of its arenas,
    so a long checkup's resident memory climbed check after check (0.7 → 1.5 GB over the first
    sixteen checks at 60k rows) although nothing was held. Called between checks; a no-op off glibc.

    Example:
        >>> release_freed_memory() in (True, False)
        True
    """
    trim = _libc_function("malloc_trim")
    if trim is None:
        return False
    trim(0)
    return True


MADV_PAGEOUT = 21  # Linux >= 5.4 (not in Python's mmap module): reclaim these pages now, keep their contents


def release_mapped_pages(*arrays: Any) -> int:
    """Let the kernel take back the pages of memory-mapped inputs this process has read; the bytes advised.

    A split read through a memory map (``np.memmap``, ``.npy``/``.npz`` opened by
    :mod:`dlclinic.io.data`) stays resident once the evidence pass has read every row: 210 MB
    at 60k images, 2.1 GB at 600k, for the whole checkup, although most checks then read a
    sample of the rows. ``madvise(MADV_PAGEOUT)`` reclaims the clean pages (read again from the
    file, or the page cache, when a row is used again); pages a copy-on-write map has changed
    are kept, so no content changes (unlike ``MADV_DONTNEED``, which would drop such changes).
    Arrays that are not memory-mapped, and kernels without ``MADV_PAGEOUT``, are left alone.

    Example:
        >>> import numpy as np
        >>> release_mapped_pages(np.zeros(4))
        0
    """
    done: dict[int, int] = {}
    for array in arrays:
        mapping = memory_map_of(array)
        if mapping is None or id(mapping) in done or mapping.closed:
            continue
        try:
            mapping.madvise(MADV_PAGEOUT)
        except (OSError, ValueError):  # an older kernel (EINVAL), a mapping being closed
            continue
        done[id(mapping)] = len(mapping)
    return sum(done.values())


@functools.cache
def _libc_function(name: str) -> Any:
    """glibc's ``malloc_trim`` or ``mallopt``, looked up once (``find_library`` may run ``ldconfig``); ``None`` off glibc."""
    lib = ctypes.util.find_library("c")
    if lib is None:
        return None
    try:
        return getattr(ctypes.CDLL(lib), name)
    except (OSError, AttributeError):  # musl, macOS: no malloc_trim
        return None


def default_workers() -> int:
    """Workers for independent tasks: ``$DLCLINIC_WORKERS``, else the CPUs this process may use (at most 4)."""
    given = os.environ.get("DLCLINIC_WORKERS", "").strip()
    if given:
        try:
            return max(1, int(given))
        except ValueError:
            return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


def _fresh_stdio() -> None:
    """New ``sys.stdout``/``sys.stderr`` objects in a forked child: a lock another thread held at fork time stays held."""
    for name, fd in (("stdout", 1), ("stderr", 2)):
        try:
            setattr(sys, name, open(os.dup(fd), "w", buffering=1, encoding="utf-8", errors="replace"))
        except OSError:
            setattr(sys, name, open(os.devnull, "w"))


def _child(
    tasks: Sequence[Any],
    run: Callable[[Any], Any],
    counter: Any,
    folder: Path,
    setup: Callable[[], None] | None,
) -> None:
    # GNU OpenMP (libgomp, bundled by scikit-learn and torch) is not fork-safe: a child that opens a
    # parallel region of the thread pool its parent had started hangs for ever. With one thread per
    # library it never touches that pool (tests/test_workers.py plants the parent's pool).
    _enter_child(threads=1)
    if setup is not None:
        setup()
    while (i := _take(counter, len(tasks))) is not None:
        _write(folder, i, run(tasks[i]))


def _enter_child(*, threads: int) -> None:
    """The start of every forked child: it runs nested tasks in order, writes through new stdio
    objects, leaves Ctrl-C to the parent (which stops its children) and caps the native pools."""
    global _busy
    _busy = True
    _fresh_stdio()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threadpool_limits(threads)


def _one_shot(
    task: Any, i: int, run: Callable[[Any], Any], folder: Path, setup: Callable[[], None] | None, threads: int
) -> None:
    """A ``fresh`` child: ``run(task)`` on ``threads`` threads, its result written; the process then ends."""
    _enter_child(threads=threads)
    _settled_allocator()
    torch.set_num_threads(threads)
    if setup is not None:
        setup()
    _write(folder, i, run(task))


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def _settled_allocator() -> bool:
    """Give glibc's allocator, in a new process, the thresholds a long-running one reaches by itself.

    glibc serves blocks above ``M_MMAP_THRESHOLD`` (128 KB at start) with a fresh ``mmap``, and
    raises that threshold (up to 32 MB, the trim threshold with it to twice as much) as such
    blocks are freed. A process that lives for one check starts at the bottom: every training
    step's activations were mapped, zeroed page by page and unmapped again. Measured on the
    issue-21 CNN (optimization.nonconvex, 60k rows): 18.2 s in a new process, 16.0 s with these
    thresholds, 16.3 s in a process that had run the checks before it. ``False`` off glibc.
    """
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    mallopt(_M_TRIM_THRESHOLD, 64 << 20)
    return True


def _write(folder: Path, i: int, out: Any) -> None:
    tmp = folder / f"{i}.tmp"
    with open(tmp, "wb") as fh:
        pickle.dump(out, fh, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, folder / f"{i}.pkl")


def _take(counter: Any, n: int) -> int | None:
    with counter.get_lock():
        i = int(counter.value)
        if i >= n:
            return None
        counter.value = i + 1
    return i


def _collect(folder: Path, results: dict[int, Any], on_result: Callable[[int, Any], None] | None) -> None:
    """Read the children's finished results that are not read yet."""
    for path in sorted(folder.glob("*.pkl")):
        i = int(path.stem)
        if i in results:
            continue
        try:
            with open(path, "rb") as fh:
                results[i] = pickle.load(fh)
        except Exception:  # a torn file, or an object that does not rebuild here (an exception class
            continue  # whose __init__ wants other arguments): the task is run again here below
        if on_result is not None:
            on_result(i, results[i])


def run_tasks(
    tasks: Sequence[_T],
    run: Callable[[_T], _R],
    *,
    workers: int,
    on_result: Callable[[int, _R], None] | None = None,
    setup: Callable[[], None] | None = None,
    before: Callable[[], None] | None = None,
    fresh: bool = False,
    threads: int = 1,
) -> list[_R]:
    """``[run(t) for t in tasks]``, with ``workers`` processes (this one included) taking tasks in order.

    Args:
        tasks: the tasks; they are taken in this order (put the longest first).
        run: runs one task; its result must pickle. It should not raise (a worker that
            dies leaves its task to this process).
        workers: processes in all; 1 (or no ``fork``) runs everything here.
        on_result: called here as ``on_result(index, result)`` as each result arrives.
        setup: called first in each forked worker (e.g. to set torch's thread count).
        before: other work for this process, done here while the workers start on the tasks.
        fresh: every task in a process forked for it alone (``workers`` of them at a time, none
            here), which ends with the task: nothing a task leaves stays resident. Where nothing
            can be forked the tasks run here, in order.
        threads: with ``fresh``, the threads of each child's native pools (torch, BLAS, OpenMP);
            more than one only where :func:`threads_survive_fork` says so.
    """
    with distributed.local():
        if fresh and not _busy and can_fork():
            return _run_fresh(tasks, run, workers=workers, on_result=on_result, setup=setup, threads=threads)
        return _run_tasks(tasks, run, workers=workers, on_result=on_result, setup=setup, before=before)


def _run_fresh(
    tasks: Sequence[_T],
    run: Callable[[_T], _R],
    *,
    workers: int,
    on_result: Callable[[int, _R], None] | None,
    setup: Callable[[], None] | None,
    threads: int,
) -> list[_R]:
    """:func:`run_tasks` with ``fresh``: one forked child per task, at most ``workers`` at a time."""
    global _busy
    ctx = multiprocessing.get_context("fork")
    folder = Path(tempfile.mkdtemp(prefix="dlclinic-tasks-"))
    todo = deque(range(len(tasks)))
    running: dict[int, Any] = {}
    results: dict[int, Any] = {}
    _busy = True
    release_freed_memory()
    # this heap's objects go to gc's permanent generation while children are forked: a collection in a
    # child wrote to every object's header and so copied every page of it (measured with the checks'
    # modules loaded: 0.24 s and 109 MB of private pages per child; frozen, 8 ms and 1 MB)
    gc.freeze()
    try:
        while todo or running:
            while todo and len(running) < max(1, workers):
                i = todo.popleft()
                running[i] = ctx.Process(target=_one_shot, args=(tasks[i], i, run, folder, setup, threads))
                running[i].start()
            connection.wait([child.sentinel for child in running.values()])
            for i in [i for i, child in running.items() if not child.is_alive()]:
                running.pop(i).join()
                _collect(folder, results, on_result)
                if i not in results:  # the child died during its task: run it here
                    results[i] = run(tasks[i])
                    if on_result is not None:
                        on_result(i, results[i])
    finally:
        _busy = False
        gc.unfreeze()
        for child in running.values():
            child.kill()
            child.join()
        shutil.rmtree(folder, ignore_errors=True)
    return [results[i] for i in range(len(tasks))]


def _run_tasks(
    tasks: Sequence[_T],
    run: Callable[[_T], _R],
    *,
    workers: int,
    on_result: Callable[[int, _R], None] | None,
    setup: Callable[[], None] | None,
    before: Callable[[], None] | None,
) -> list[_R]:
    global _busy
    n = len(tasks)
    results: dict[int, Any] = {}
    # the children besides this process; with `before`, this process starts on that, so one task is enough for one
    forks = min(workers - 1, n if before is not None else n - 1)
    if forks < 1 or _busy or not can_fork():
        if before is not None:
            before()
        for i, task in enumerate(tasks):
            results[i] = run(task)
            if on_result is not None:
                on_result(i, results[i])
        return [results[i] for i in range(n)]
    ctx = multiprocessing.get_context("fork")
    counter = ctx.Value("i", 0)
    folder = Path(tempfile.mkdtemp(prefix="dlclinic-workers-"))
    children = [ctx.Process(target=_child, args=(tasks, run, counter, folder, setup)) for _ in range(forks)]
    _busy = True
    release_freed_memory()  # a forked child starts with a copy of every resident heap page's mapping: fewer, smaller
    gc.freeze()  # as in _run_fresh: the children's collections leave the inherited heap unwritten
    try:
        for child in children:
            child.start()
        gc.unfreeze()  # the children have theirs: this process collects as before while it runs tasks
        if before is not None:
            before()
        while (k := _take(counter, n)) is not None:
            results[k] = run(tasks[k])
            if on_result is not None:
                on_result(k, results[k])
            _collect(folder, results, on_result)
        while any(child.is_alive() for child in children):
            _collect(folder, results, on_result)
            time.sleep(_POLL_S)
        _collect(folder, results, on_result)
        for i in range(n):  # a worker died during a task: run it here
            if i not in results:
                results[i] = run(tasks[i])
                if on_result is not None:
                    on_result(i, results[i])
    finally:
        _busy = False
        for child in children:
            if child.is_alive():
                child.terminate()
            child.join()
        shutil.rmtree(folder, ignore_errors=True)
    return [results[i] for i in range(n)]
