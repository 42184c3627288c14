"""A one-method extension point for progress reporting.

The library never prints: long steps call ``progress.step(description, total)`` and get
back a callable ``advance(n=1)``. The CLI passes a rich-based implementation; the
default does nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

__all__ = ["NullProgress", "Progress"]


class Progress(Protocol):
    """Reports the progress of long steps."""

    def step(self, description: str, total: int | None = None) -> contextmanager[Callable[[int], None]]:  # type: ignore[valid-type]
        """A context manager yielding ``advance(n)``; closes the bar on exit."""
        ...


class NullProgress:
    """Progress that reports nothing (the library default)."""

    @contextmanager
    def step(self, description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
        def advance(n: int = 1) -> None:
            return None

        yield advance
