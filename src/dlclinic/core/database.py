"""Database URLs as dlclinic's users write them, for SQLAlchemy (the prediction log, Optuna studies)."""

from __future__ import annotations

__all__ = ["with_driver"]


def with_driver(url: str) -> str:
    """``postgresql://…`` with the driver dlclinic installs (psycopg 3, ``dlclinic[postgres]``), not
    SQLAlchemy's default psycopg2; any other URL as given.

    Example:
        >>> with_driver("postgresql://u@h/db"), with_driver("sqlite:///log.db")
        ('postgresql+psycopg://u@h/db', 'sqlite:///log.db')
    """
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    return url
