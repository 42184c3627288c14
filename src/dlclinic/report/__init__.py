"""Renderers of a checkup :class:`~dlclinic.core.results.Report`: JSON, HTML and terminal.

Results never render themselves; this package does. Importing it loads nothing heavy:
the renderers (:mod:`~dlclinic.report.html` with jinja2, PIL and numpy,
:mod:`~dlclinic.report.terminal` with rich, :mod:`~dlclinic.report.files`) are loaded on
first use of their name, and matplotlib only when a plot is drawn.

Example:
    >>> from dlclinic.report import write_report
    >>> paths = write_report(report, "out/")  # doctest: +SKIP
    >>> sorted(paths)  # doctest: +SKIP
    ['html', 'json', 'manifest']
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from dlclinic.report.files import write_report
    from dlclinic.report.html import render_html
    from dlclinic.report.json import render_json
    from dlclinic.report.terminal import render_terminal

__all__ = ["render_html", "render_json", "render_terminal", "write_report"]

_LAZY = {
    "render_html": "dlclinic.report.html",
    "render_json": "dlclinic.report.json",
    "render_terminal": "dlclinic.report.terminal",
    "write_report": "dlclinic.report.files",
}


def __getattr__(name: str) -> Any:
    """Load a renderer on first use (``import dlclinic.report`` stays light)."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
