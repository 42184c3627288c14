"""Progress a person can see anywhere: the command line's implementation of the library's Progress protocol.

On a terminal, rich progress bars on stderr (transient: they vanish when a step ends).
Without a terminal (output redirected to a file, CI, nohup, cron), one plain line per
finished check or long step on stdout, flushed at once, so a log shows where a long run is::

    [12/31] model.gradients ok 1.1 s

``--quiet`` silences both.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["PlainProgress", "RichProgress", "progress_for"]

# top-level steps that take at least this long get a line of their own in plain mode
_PLAIN_STEP_SECONDS = 2.0


def _no_advance(n: int = 1) -> None:
    """Progress sink that ignores its input."""


class RichProgress:
    """Rich progress bars on stderr for every long step (the library's Progress protocol)."""

    def __init__(self, enabled: bool = True) -> None:
        self.console = Console(stderr=True)
        self.enabled = enabled and self.console.is_terminal

    @contextmanager
    def step(self, description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
        if not self.enabled:
            yield _no_advance
            return
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        ) as bar:
            task = bar.add_task(description, total=total)

            def advance(n: int = 1) -> None:
                bar.advance(task, n)

            yield advance

    def note(self, message: str) -> None:
        """Finished checks need no line on a terminal: the bar shows them."""


class PlainProgress:
    """One plain line per finished check and per long top-level step, for logs (no terminal)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self._depth = 0

    @contextmanager
    def step(self, description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
        start = time.perf_counter()
        self._depth += 1
        try:
            yield _no_advance
        finally:
            self._depth -= 1
        seconds = time.perf_counter() - start
        if self._depth == 0 and seconds >= _PLAIN_STEP_SECONDS and description != "running checks":
            self.note(f"{description}: {seconds:.1f} s")

    def note(self, message: str) -> None:
        """Write one line and flush it, so a log file shows it while the run goes on."""
        print(message, file=self.stream, flush=True)


def progress_for(quiet: bool) -> RichProgress | PlainProgress:
    """Bars on a terminal, plain lines on stdout when it is not one, nothing with ``--quiet``."""
    if quiet:
        return RichProgress(enabled=False)
    if sys.stdout.isatty():
        return RichProgress()
    return PlainProgress()
