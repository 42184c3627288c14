"""``dlclinic bundle create|verify``, ``dlclinic audit verify`` and ``dlclinic scan-model``.

* ``bundle create MANIFEST FILE...`` — a SHA-256 manifest of any files (optionally
  HMAC-signed with ``--key-file``); ``treat ethics.misuse`` / ``ethics.compliance`` write
  one for their outputs.
* ``bundle verify MANIFEST`` — exit 0 when every file matches, 1 when anything changed
  (one line per problem).
* ``audit verify LOG`` — check the hash chain of an audit trail.
* ``scan-model FILE...`` — static pickle-opcode scan of model files (never loads them);
  exit 1 when a file would run code on loading.
"""

from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(app: Any) -> None:
    """Add the ``bundle`` and ``audit`` groups and ``scan-model`` to the ``dlclinic`` Typer app."""
    from typing import Annotated

    import typer

    from dlclinic.core.errors import ConfigError

    bundle_app = typer.Typer(
        help="Hash-manifest bundles of model, data, config and report (detect any change).", no_args_is_help=True
    )
    audit_app = typer.Typer(help="The append-only, hash-chained audit trail.", no_args_is_help=True)
    app.add_typer(bundle_app, name="bundle")
    app.add_typer(audit_app, name="audit")

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
        from dlclinic.report.model_card import write_manifest

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
        from dlclinic.report.model_card import verify_manifest

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

    @audit_app.command("verify")
    def audit_verify(log: Annotated[Path, typer.Argument(help="Audit trail (JSON lines).")]) -> None:
        """Exit 0 when the hash chain of the audit trail is intact, 1 otherwise."""
        from dlclinic.report.model_card import verify_audit

        if not log.is_file():
            raise ConfigError(f"audit verify: expected an audit trail file, found nothing at {log}")
        n, problems = verify_audit(log)
        if problems:
            for p in problems:
                typer.echo(f"FAILED: {p}", err=True)
            raise typer.Exit(1)
        typer.echo(f"OK: {n} records, hash chain intact")

    @app.command("scan-model")
    def scan_model(
        files: Annotated[list[Path], typer.Argument(help="Model files (.pt, .pth, .ckpt, .pkl, .bin ...).")],
    ) -> None:
        """Scan pickle-based model files for code they would run when loaded (nothing is loaded)."""
        from dlclinic.io.pickle_scan import scan_file

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
