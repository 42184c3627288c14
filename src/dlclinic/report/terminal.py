"""A short summary of a :class:`~dlclinic.core.results.Report` for the terminal, with rich.

One entry per examined challenge (``not_examined`` ones are only counted) with the first
sentence of its summary — the one that carries the key number — wrapped rather than cut
(at most three lines; on consoles narrower than 110 columns the summary goes under the
challenge at the full width), a line of counts, then the remedy command of each
``warn``/``fail`` challenge.

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

import re
import textwrap
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from dlclinic.core.results import Report

__all__ = ["render_terminal"]

STYLES = {"ok": "green", "warn": "yellow", "fail": "bold red", "error": "magenta", "not_examined": "dim"}
MAX_REMEDIES = 5
MAX_SUMMARY_LINES = 3
STACKED_BELOW = 110  # narrower consoles print each summary under its challenge, at the full width

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(])")


def _headline(text: str) -> str:
    """The first sentence of a summary: the one that carries its key number."""
    text = " ".join(text.split())
    return _SENTENCE_END.split(text, maxsplit=1)[0]


def _wrapped(text: str, width: int, max_lines: int = MAX_SUMMARY_LINES) -> list[str]:
    """``text`` wrapped at ``width``, at most ``max_lines`` lines (an ellipsis marks a cut)."""
    lines = textwrap.wrap(text, width=max(width, 16), break_long_words=True, break_on_hyphens=False) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: max(width, 16) - 1].rstrip() + "…"
    return lines


def _table(examined: list[Any], width: int, name: str) -> Table:
    """Wide consoles: one row per challenge, the summary's first sentence wrapped in its column."""
    table = Table(
        title=Text(f"dlclinic checkup: {name}", style="bold"),
        title_justify="left",
        show_edge=False,
        box=None,
        pad_edge=False,
        header_style="bold",
    )
    id_width = max((len(r.id) for r in examined), default=9)
    table.add_column("challenge", no_wrap=True, min_width=id_width)
    table.add_column("status", no_wrap=True, min_width=6)
    summary_width = max(width - id_width - 6 - 4, 16)  # 4: padding between columns
    table.add_column("summary", no_wrap=True, max_width=summary_width)
    for r in examined:
        table.add_row(
            Text(r.id),
            Text(r.status, style=STYLES.get(r.status, "")),
            Text("\n".join(_wrapped(_headline(r.summary), summary_width))),
        )
    return table


def _stacked(console: Console, examined: list[Any], name: str) -> None:
    """Narrow consoles (80 columns): the challenge and its status, then the summary indented under it."""
    console.print(Text(f"dlclinic checkup: {name}", style="bold"))
    id_width = max((len(r.id) for r in examined), default=9)
    for r in examined:
        line = Text(f"{r.id:<{id_width}}  ")
        line.append(r.status, style=STYLES.get(r.status, ""))
        console.print(line, no_wrap=True, overflow="ellipsis")
        for part in _wrapped(_headline(r.summary), console.width - 4):
            console.print(Text("    " + part), no_wrap=True, overflow="ellipsis", highlight=False)


def render_terminal(report: Report, console: Console | None = None) -> None:
    """Print the summary of the report: each examined challenge, its status and the key sentence of its summary.

    Args:
        report: The checkup result.
        console: Where to print; a new ``rich.console.Console()`` (stdout) when omitted.
    """
    console = console if console is not None else Console()
    name = str(report.case.get("name", "case")) if hasattr(report.case, "get") else "case"
    examined = [r for r in report.challenges if r.status != "not_examined"]
    if examined and console.width < STACKED_BELOW:
        _stacked(console, examined, name)
    elif examined:
        console.print(_table(examined, console.width, name))
    counts = report.counts()
    parts = [f"[{STYLES[s]}]{counts[s]} {s}[/]" for s in ("ok", "warn", "fail", "error")]
    console.print(", ".join(parts) + f", [dim]{counts['not_examined']} not examined[/]")
    categorical = report.case.get("categorical_columns") if hasattr(report.case, "get") else None
    if isinstance(categorical, dict) and categorical:
        names = ", ".join(str(c) for c in categorical)
        console.print(
            f"[dim]categorical columns ({len(categorical)}): {escape(names)}; their encodings and rules are in report.html[/]",
            soft_wrap=True,
            highlight=False,
        )
    todo = [r for r in report.challenges if r.status in ("warn", "fail") and r.remedy is not None and r.remedy.command]
    for r in todo[:MAX_REMEDIES]:
        command = (r.remedy.command if r.remedy is not None else None) or ""
        console.print(f"  [{STYLES[r.status]}]{escape(r.id)}[/]: {escape(command)}", soft_wrap=True, highlight=False)
    if len(todo) > MAX_REMEDIES:
        console.print(f"  … {len(todo) - MAX_REMEDIES} more remedies in report.html", style="dim")
