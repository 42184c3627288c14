"""``dlclinic challenges``: the 31 challenges, and the options of one check or remedy."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from dlclinic.challenges import CHECKS, REMEDIES, get_remedy
from dlclinic.core.errors import ConfigError
from dlclinic.taxonomy import CHALLENGES, get_challenge

__all__ = ["challenges"]


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return "(required)"


def _options_table(cid: str, kind: str) -> Table:
    """The fields of the check's options or the remedy's params of ``cid``."""
    get_challenge(cid)
    if kind == "check":
        if cid not in CHECKS:
            raise ConfigError(f"no check for {cid!r} in this version; expected one of: {', '.join(CHECKS)}")
        cls = CHECKS[cid].options
    else:
        cls = get_remedy(cid).params
    table = Table(
        title=f"{kind} options of {cid}"
        + (" (--option ID.NAME=VALUE)" if kind == "check" else " (treat --option NAME=VALUE)")
    )
    for col in ("name", "type", "default"):
        table.add_column(col)
    for f in dataclasses.fields(cls):
        table.add_row(f.name, str(f.type), repr(_default(f)))
    return table


def challenges(
    check: Annotated[
        str | None, typer.Option("--check", help="List the options of this challenge's check (for --option).")
    ] = None,
    remedy: Annotated[
        str | None,
        typer.Option("--remedy", help="List the parameters of this challenge's remedy (for treat --option)."),
    ] = None,
) -> None:
    """List the 31 challenges and which of them this version examines and treats."""
    console = Console()
    if check is not None or remedy is not None:
        for cid, kind in ((check, "check"), (remedy, "remedy")):
            if cid is not None:
                console.print(_options_table(cid, kind))
        return
    table = Table(title="dlclinic: the 31 challenges")
    for col in ("id", "title", "check", "remedy"):
        table.add_column(col)
    for c in CHALLENGES:
        table.add_row(c.id, c.title, "yes" if c.id in CHECKS else "—", "yes" if c.id in REMEDIES else "—")
    console.print(table)
