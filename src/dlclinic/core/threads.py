"""Torch thread counts: set for a block, restored after, and recorded in the report."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from threadpoolctl import threadpool_limits

__all__ = ["native_threads", "on_threads", "thread_settings", "torch_threads"]

_O = TypeVar("_O")
_R = TypeVar("_R")


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Set torch's intra-op thread count for the block and restore it after (``None``: unchanged).

    Small models gain little from intra-op parallelism, and on a CPU shared with other
    processes OpenMP threads that wait for each other can be ten times slower than one
    thread; the checks therefore run their short training and scoring on one thread.
    """
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def native_threads(n: int | None) -> Iterator[None]:
    """Limit the native thread pools (BLAS, OpenMP: threadpoolctl) to ``n`` threads for the block (``None``: unchanged)."""
    if n is None:
        yield
        return
    with threadpool_limits(max(1, int(n))):
        yield


def on_threads(run: Callable[[Any, Any, _O], _R], case: Any, evidence: Any, options: _O) -> _R:
    """``run(case, evidence, options)`` with torch on ``options.threads`` threads, restored afterwards."""
    with torch_threads(getattr(options, "threads", None)):
        return run(case, evidence, options)


def thread_settings() -> dict[str, int]:
    """The thread counts in force: torch intra/inter-op threads and the CPU count."""
    return {
        "cpu_count": int(os.cpu_count() or 1),
        "torch_intra_op_threads": int(torch.get_num_threads()),
        "torch_interop_threads": int(torch.get_num_interop_threads()),
    }
