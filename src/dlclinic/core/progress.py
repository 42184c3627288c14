"""A one-method extension point for progress reporting.

The library never prints: long steps call ``progress.step(description, total)`` and get
back a callable ``advance(n=1)``; a finished unit of work worth a line in a log (a check,
with its status and time) goes to ``progress.note(message)`` when the object has that
optional method (:func:`note`). The CLI passes a rich-based implementation on a terminal
and plain lines otherwise; the default does nothing.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

__all__ = ["NullProgress", "Progress", "note", "relayed"]


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


class _Relay:
    """Progress in a forked child: each call goes through a pipe to the parent's object (:func:`relayed`)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._steps = 0

    @contextmanager
    def step(self, description: str, total: int | None = None) -> Iterator[Callable[..., None]]:
        self._steps += 1
        sid = (os.getpid(), self._steps)  # children relaying side by side number their steps alike
        self._send(("step", sid, description, total))

        def advance(n: int = 1) -> None:
            self._send(("advance", sid, n))

        try:
            yield advance
        finally:
            self._send(("end", sid))

    def note(self, message: str) -> None:
        self._send(("note", message))

    def _send(self, message: tuple[Any, ...]) -> None:
        try:
            self._conn.send(message)
        except (OSError, ValueError):  # the parent is gone: nothing to show it on
            pass


@contextmanager
def relayed(progress: Progress) -> Iterator[Progress]:
    """A :class:`Progress` for processes forked inside this block whose steps show on ``progress`` here.

    A rich progress bar is drawn by a thread of the process that made it, and a forked child
    has no such thread: its calls go through a pipe, and a thread here replays them on
    ``progress``. With :class:`NullProgress` it is that object, and nothing is relayed.
    """
    if isinstance(progress, NullProgress):
        yield progress
        return
    reader, writer = multiprocessing.get_context("fork").Pipe(duplex=False)
    pump = threading.Thread(target=_replay, args=(reader, progress), name="dlclinic-progress", daemon=True)
    pump.start()
    try:
        yield _Relay(writer)
    finally:
        writer.close()  # the replay ends when the children's copies are closed too (they have ended)
        pump.join(timeout=5.0)


def _replay(reader: Any, progress: Progress) -> None:
    open_steps: dict[Any, tuple[contextlib.ExitStack, Callable[..., None]]] = {}
    try:
        while True:
            try:
                message = reader.recv()
            except (EOFError, OSError):
                return
            kind, key = message[0], message[1]
            if kind == "note":
                note(progress, key)
            elif kind == "step":
                stack = contextlib.ExitStack()
                open_steps[key] = (stack, stack.enter_context(progress.step(message[2], message[3])))
            elif kind == "advance" and key in open_steps:
                open_steps[key][1](message[2])
            elif kind == "end" and key in open_steps:
                open_steps.pop(key)[0].close()
    finally:
        for stack, _ in open_steps.values():
            stack.close()
        reader.close()
