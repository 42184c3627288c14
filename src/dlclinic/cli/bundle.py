"""``dlclinic bundle create|verify``: SHA-256 manifests of any files, optionally HMAC-signed.

* ``bundle create MANIFEST FILE...`` — a SHA-256 manifest of the files (signed with ``--key-file``);
  ``treat ethics.misuse`` / ``ethics.compliance`` write one for their outputs.
* ``bundle verify MANIFEST`` — exit 0 when every file matches, 1 when anything changed
  (one line per problem).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dlclinic.core.errors import ConfigError
from dlclinic.governance.bundle import verify_manifest, write_manifest

__all__ = ["bundle_app"]

bundle_app = typer.Typer(
    help="Hash-manifest bundles of model, data, config and report (detect any change).", no_args_is_help=True
)

KeyOpt = Annotated[
    Path | None, typer.Option("--key-file", help="HMAC-SHA256 signing key (a file); verify needs the same key.")
]


def _key(path: Path | None) -> bytes | None:
    if path is None:
        return None
    if not path.is_file():
        raise ConfigError(f"--key-file {path}: expected a file holding the key, found nothing there")
    return path.read_bytes().strip()


@bundle_app.command("create")
def bundle_create(
    manifest: Annotated[Path, typer.Argument(help="Manifest to write (JSON).")],
    files: Annotated[list[Path], typer.Argument(help="Files to include.")],
    key_file: KeyOpt = None,
) -> None:
    """Write a SHA-256 manifest of FILES."""
    names: dict[str, str] = {}
    for f in files:
        if not f.is_file():
            raise ConfigError(f"bundle create: expected a file, found nothing at {f}")
        name = f.name if f.name not in names else str(f)
        names[name] = str(f)
    body = write_manifest(names, manifest, key=_key(key_file))
    typer.echo(f"wrote {manifest} ({len(body['files'])} files{', signed' if key_file else ''})")


@bundle_app.command("verify")
def bundle_verify(
    manifest: Annotated[Path, typer.Argument(help="manifest.json of a bundle.")], key_file: KeyOpt = None
) -> None:
    """Exit 0 when every file of the bundle is unchanged, 1 otherwise."""
    if not manifest.is_file():
        raise ConfigError(f"bundle verify: expected a manifest file, found nothing at {manifest}")
    problems = verify_manifest(manifest, key=_key(key_file))
    if problems:
        for p in problems:
            typer.echo(f"FAILED: {p}", err=True)
        raise typer.Exit(1)
    typer.echo(
        f"OK: every file in {manifest} matches its SHA-256" + (" and the signature is valid" if key_file else "")
    )
