"""``dlclinic audit verify LOG``: check the hash chain of an append-only audit trail."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dlclinic.core.errors import ConfigError
from dlclinic.governance.audit import verify_audit

__all__ = ["audit_app"]

audit_app = typer.Typer(help="The append-only, hash-chained audit trail.", no_args_is_help=True)


@audit_app.command("verify")
def audit_verify(log: Annotated[Path, typer.Argument(help="Audit trail (JSON lines).")]) -> None:
    """Exit 0 when the hash chain of the audit trail is intact, 1 otherwise."""
    if not log.is_file():
        raise ConfigError(f"audit verify: expected an audit trail file, found nothing at {log}")
    n, problems = verify_audit(log)
    if problems:
        for p in problems:
            typer.echo(f"FAILED: {p}", err=True)
        raise typer.Exit(1)
    typer.echo(f"OK: {n} records, hash chain intact")
