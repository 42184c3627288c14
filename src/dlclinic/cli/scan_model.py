"""``dlclinic scan-model FILE...``: static pickle-opcode scan of model files (never loads them).

Exit 1 when a file would run code on loading or cannot be read (verdict ``error``, e.g. an empty
``.safetensors``); exit 2 when a path does not exist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dlclinic.core.errors import InputError
from dlclinic.io.pickle_scan import scan_file

__all__ = ["scan_model"]


def scan_model(
    files: Annotated[list[Path], typer.Argument(help="Model files (.pt, .pth, .ckpt, .pkl, .bin ...).")],
) -> None:
    """Scan pickle-based model files for code they would run when loaded (nothing is loaded)."""
    for f in files:  # a mistyped path is bad input (exit 2), not a scan verdict
        if not f.exists():
            raise InputError(f"{f}: expected a model file to scan, found no such file")
        if f.is_dir():
            raise InputError(f"{f}: expected a model file to scan, found a folder")
    bad = 0
    for f in files:
        scan = scan_file(f)
        refs = scan.dangerous + scan.unknown
        typer.echo(
            f"{scan.verdict:16s} {f} ({scan.format}{'; ' + ', '.join(refs[:6]) if refs else ''}{'; ' + scan.error if scan.error else ''})"
        )
        bad += scan.verdict in ("dangerous", "unknown_imports", "error")
    if bad:
        raise typer.Exit(1)
