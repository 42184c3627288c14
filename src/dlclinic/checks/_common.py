"""Small helpers shared by the check adapters."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from dlclinic.core.results import STATUS_ORDER, CheckResult, Status

__all__ = ["grade", "on_threads", "worst"]

_O = TypeVar("_O")


def on_threads(run: Callable[[Any, Any, _O], CheckResult], case: Any, evidence: Any, options: _O) -> CheckResult:
    """``run(case, evidence, options)`` with torch on ``options.threads`` threads, restored afterwards.

    See :func:`~dlclinic.functional.latency.torch_threads`: timing and short training
    runs are both steadier and faster on one thread when the CPU is shared.
    """
    from dlclinic.functional.latency import torch_threads

    with torch_threads(options.threads):
        return run(case, evidence, options)


def worst(statuses: Iterable[Status]) -> Status:
    """The most severe status (ok < not_examined < warn < error < fail)."""
    items = list(statuses)
    return max(items, key=lambda s: STATUS_ORDER[s]) if items else "ok"


def grade(value: float | None, warn: float | None, fail: float | None, *, higher_is_worse: bool = True) -> Status:
    """``fail`` past the fail limit, ``warn`` past the warn limit, else ``ok``; ``None`` values are ok."""
    if value is None:
        return "ok"
    v = value if higher_is_worse else -value
    if fail is not None and v > (fail if higher_is_worse else -fail):
        return "fail"
    if warn is not None and v > (warn if higher_is_worse else -warn):
        return "warn"
    return "ok"
