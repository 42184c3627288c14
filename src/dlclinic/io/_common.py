"""Helpers shared by the loaders in ``dlclinic.io``."""

from __future__ import annotations

__all__ = ["brief"]


def brief(exc: BaseException, limit: int = 200) -> str:
    """One line describing ``exc``: its type and its message with whitespace collapsed.

    Example:
        >>> brief(ValueError("bad\\n  value"))
        'ValueError: bad value'
    """
    text = " ".join(str(exc).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
