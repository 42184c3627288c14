"""A short summary of a :class:`~dlclinic.core.results.Report` for the terminal, with rich.

One row per examined challenge (``not_examined`` ones are only counted), a line of
counts, then the remedy command of each ``warn``/``fail`` challenge. It stays under
about 40 lines for all 31 challenges.

Example:
    >>> import io
    >>> from rich.console import Console
    >>> from dlclinic.core.results import Report, sequence_of_results
    >>> console = Console(record=True, width=100, file=io.StringIO())
    >>> render_terminal(Report("0.1.0", "2024-01-01T00:00:00Z", {}, sequence_of_results([])), console)
    >>> "not examined" in console.export_text()
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from dlclinic.core.results import Report

__all__ = ["render_terminal"]

STYLES = {"ok": "green", "warn": "yellow", "fail": "bold red", "error": "magenta", "not_examined": "dim"}
SUMMARY_WIDTH = 72
MAX_REMEDIES = 5


def _shorten(text: str, width: int = SUMMARY_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def render_terminal(report: Report, console: Console | None = None) -> None:
    """Print the summary table of the report.

    Args:
        report: The checkup result.
        console: Where to print; a new ``rich.console.Console()`` (stdout) when omitted.
    """
    console = console if console is not None else Console()
    name = str(report.case.get("name", "case")) if hasattr(report.case, "get") else "case"
    table = Table(
        title=Text(f"dlclinic checkup: {name}", style="bold"),
        title_justify="left",
        show_edge=False,
        box=None,
        pad_edge=False,
        header_style="bold",
    )
    examined = [r for r in report.challenges if r.status != "not_examined"]
    id_width = max((len(r.id) for r in examined), default=9)
    table.add_column("challenge", no_wrap=True, min_width=id_width)
    table.add_column("status", no_wrap=True, min_width=6)
    summary_width = max(console.width - id_width - 6 - 4, 16)  # 4: padding between columns
    table.add_column("summary", overflow="ellipsis", no_wrap=True, max_width=summary_width)
    for r in examined:
        table.add_row(
            Text(r.id),
            Text(r.status, style=STYLES.get(r.status, "")),
            Text(_shorten(r.summary), overflow="ellipsis", no_wrap=True),
        )
    if examined:
        console.print(table)
    counts = report.counts()
    parts = [f"[{STYLES[s]}]{counts[s]} {s}[/]" for s in ("ok", "warn", "fail", "error")]
    console.print(", ".join(parts) + f", [dim]{counts['not_examined']} not examined[/]")
    todo = [r for r in report.challenges if r.status in ("warn", "fail") and r.remedy is not None and r.remedy.command]
    for r in todo[:MAX_REMEDIES]:
        command = (r.remedy.command if r.remedy is not None else None) or ""
        console.print(f"  [{STYLES[r.status]}]{escape(r.id)}[/]: {escape(command)}", soft_wrap=True, highlight=False)
    if len(todo) > MAX_REMEDIES:
        console.print(f"  … {len(todo) - MAX_REMEDIES} more remedies in report.html", style="dim")
