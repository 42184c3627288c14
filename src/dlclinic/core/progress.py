"""A one-method extension point for progress reporting.

The library never prints: long steps call ``progress.step(description, total)`` and get
back a callable ``advance(n=1)``; a finished unit of work worth a line in a log (a check,
with its status and time) goes to ``progress.note(message)`` when the object has that
optional method (:func:`note`). The CLI passes a rich-based implementation on a terminal
and plain lines otherwise; the default does nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

__all__ = ["NullProgress", "Progress", "note"]


class Progress(Protocol):
    """Reports the progress of long steps."""

    def step(self, description: str, total: int | None = None) -> AbstractContextManager[Callable[..., None]]:
        """A context manager yielding ``advance(n)``; closes the bar on exit."""
        ...


class NullProgress:
    """Progress that reports nothing (the library default)."""

    @contextmanager
    def step(self, description: str, total: int | None = None) -> Iterator[Callable[..., None]]:
        def advance(n: int = 1) -> None:
            return None

        yield advance

    def note(self, message: str) -> None:
        """Nothing to report."""


def note(progress: Progress, message: str) -> None:
    """``progress.note(message)`` when the progress object has that optional method."""
    method = getattr(progress, "note", None)
    if callable(method):
        method(message)
