"""A time budget for a whole checkup (``--budget 10m``; API ``checkup(..., budget="10m")``).

The evidence pass runs first, whole: every check reads it. The time that is left is then
shared among the checks in proportion to their cost weight (:data:`COST`, the relative
seconds each took in ``bench/bench_scale.py``), re-divided as each check starts so that time a
fast check leaves unused goes to the checks after it. Inside a check the work that grows with
the budget watches the clock of its *window*: training (:func:`dlclinic.core.recipe.fit`) stops
at the end of the window and keeps the best weights so far, a study runs fewer trials, a sweep
measures fewer variants. Whatever a check cut is recorded with :func:`cut` and reported per
check (``budget`` in the check's ``details``), with what it costs in power.

Without a budget nothing here changes anything: :func:`time_left` is ``None`` and :func:`expired`
is ``False``. Written here rather than taken from a library because the shares must be read by
code deep in the checks (training loops, studies), in this process or in the forked workers
that run checks in parallel; the shared remaining weight lives in a ``multiprocessing`` shared
value created before the workers fork.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dlclinic.core.errors import ConfigError

__all__ = [
    "COST",
    "CheckWindow",
    "Scheduler",
    "cut",
    "cuts_so_far",
    "expired",
    "parse_budget",
    "same_steps",
    "stop_training",
    "time_left",
    "training_ended",
    "window",
]

# relative cost of each check at its defaults (the user CNN of bench/bench_scale.py, 10k rows):
# the checks that train (short runs, folds, studies, compression sweeps) weigh most; the others 1
COST: Mapping[str, float] = {
    "model.compression": 6.0,
    "optimization.nonconvex": 6.0,
    "optimization.forgetting": 5.0,
    "research.reproducibility": 5.0,
    "model.overfitting": 4.0,
    "model.hyperparameters": 4.0,
    "model.architecture": 4.0,
    "optimization.convergence": 3.0,
    "model.gradients": 3.0,
    "compute.training_cost": 3.0,
    "compute.energy": 3.0,
    "data.quantity": 3.0,
    "research.open_ended": 3.0,
    "ethics.security": 3.0,
    "data.privacy": 2.0,
    "optimization.batchnorm": 2.0,
    "data.labeling_cost": 2.0,
    "model.interpretability": 2.0,
    "data.generalization": 2.0,
    "data.quality": 2.0,
}

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smh])")


def parse_budget(text: str | float | int) -> float:
    """Seconds of a duration: ``90``, ``90s``, ``2m``, ``1.5m``, ``1h30m``.

    Example:
        >>> parse_budget("1h30m"), parse_budget("2m"), parse_budget(45)
        (5400.0, 120.0, 45.0)
    """
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        s = text.strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(?:\.\d+)?", s):
            seconds = float(s)
        elif s and _PART.sub("", s) == "" and len(set(_PART.findall(s))) == len(_PART.findall(s)):
            seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(s))
        else:
            raise ConfigError(f"--budget expects a duration such as 90s, 2m or 1h30m, but got {text!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"--budget must be a positive duration, but got {text!r}")
    return seconds


@dataclass
class CheckWindow:
    """The window of one check: its share of the budget and what it cut to stay inside it."""

    seconds: float
    end: float
    cuts: list[str] = field(default_factory=list)
    pairing: str | None = None  # inside same_steps(): "first" run, then "rest"
    first_steps: int | None = None  # batches the first run trained when the clock cut it

    def report(self, used: float) -> dict[str, Any]:
        return {"share_s": round(self.seconds, 2), "used_s": round(used, 2), "cut": list(self.cuts)}


_current: CheckWindow | None = None


def time_left() -> float | None:
    """Seconds left in the running check's window; ``None`` without a budget."""
    return None if _current is None else _current.end - time.monotonic()


def expired() -> bool:
    """Whether the running check's window is over (never without a budget)."""
    return _current is not None and time.monotonic() >= _current.end


def cut(what: str) -> None:
    """Record what the running check sampled or skipped to stay in its window (no-op without a budget)."""
    if _current is not None and what not in _current.cuts:
        _current.cuts.append(what)


def stop_training(steps: int) -> bool:
    """Whether a training that has run ``steps`` batches must stop now: at the end of the window,
    or inside :func:`same_steps` after as many batches as the first run trained."""
    if _current is None:
        return False
    if _current.pairing == "rest":
        return _current.first_steps is not None and steps >= _current.first_steps
    return time.monotonic() >= _current.end


def training_ended(steps: int, cut_short: bool) -> None:
    """Called by :func:`dlclinic.core.recipe.fit` after each training (the first one of a pair sets the cap)."""
    if _current is not None and _current.pairing == "first":
        _current.first_steps = steps if cut_short else None
        _current.pairing = "rest"


@contextlib.contextmanager
def same_steps() -> Iterator[None]:
    """Trainings compared with each other (e.g. two runs with one seed, bit for bit): the first
    runs under the window's clock, the others train exactly as many batches as it did — never
    cut by the clock, so they stop at the same point and stay comparable."""
    if _current is None:
        yield
        return
    _current.pairing, _current.first_steps = "first", None
    try:
        yield
    finally:
        _current.pairing, _current.first_steps = None, None


def cuts_so_far() -> int:
    """How many cuts the running check has recorded (0 without a budget): a result computed while
    this number grew was cut, and is not cached (:meth:`dlclinic.core.evidence.Evidence.cached`)."""
    return 0 if _current is None else len(_current.cuts)


@contextlib.contextmanager
def window(seconds: float) -> Iterator[CheckWindow]:
    """Run the body as one check with ``seconds`` of the budget."""
    global _current
    outer = _current
    _current = CheckWindow(seconds, time.monotonic() + max(0.0, seconds))
    try:
        yield _current
    finally:
        _current = outer


class Scheduler:
    """Shares what is left of a budget among checks, in proportion to their :data:`COST`.

    A check starting now gets ``(deadline − now) × workers × w / W``, where ``W`` is the weight
    of the checks not yet started (itself included) and ``workers`` the processes running
    checks side by side; never more than ``deadline − now``. ``W`` is a shared value, so forked
    workers see what the others took.
    """

    def __init__(self, seconds: float, ids: Sequence[str], workers: int, *, reserve: float = 0.03) -> None:
        self.deadline = time.monotonic() + seconds * (1.0 - reserve)
        self.workers = max(1, workers)
        self._remaining = multiprocessing.get_context("fork").Value("d", sum(COST.get(c, 1.0) for c in ids))

    def share(self, cid: str) -> float:
        w = COST.get(cid, 1.0)
        with self._remaining.get_lock():
            total = max(self._remaining.value, w)
            self._remaining.value = max(0.0, self._remaining.value - w)
        left = max(0.0, self.deadline - time.monotonic())
        return min(left, left * self.workers * w / total)
