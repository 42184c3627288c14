"""``dlclinic replay MANIFEST``: re-run a recorded dlclinic run and say what changed.

The manifest (``manifest.json``, written next to every report) records the command
line. ``replay`` runs the same ``checkup``/``treat`` command again — without the
evidence cache by default, so every number is recomputed — into a new folder, then
compares data/model/config hashes, package versions, hardware, seeds and every
check's status and metrics. Exit 0 when the run reproduced (metrics within
``--tolerance``), 1 when something differs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from dlclinic.core.atomic import atomic_path
from dlclinic.core.errors import ConfigError
from dlclinic.core.manifest import compare_manifests, read_manifest

__all__ = ["replay", "replay_argv"]


def replay_argv(argv: list[str], out: Path, *, use_cache: bool) -> list[str]:
    """The recorded arguments (without the program name) with ``--out`` replaced and ``--no-cache`` added."""
    args = list(argv[1:])
    cleaned: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "--out":
            skip = True
            continue
        if a.startswith("--out="):
            continue
        cleaned.append(a)
    cleaned += ["--out", str(out), "--quiet"]
    if not use_cache and "--no-cache" not in cleaned:
        cleaned.append("--no-cache")
    return cleaned


def _results_from_report(path: Path) -> dict[str, Any]:
    """A manifest-like view (hashes and results) of a ``report.json``, for runs without a manifest."""
    data = json.loads(path.read_text(encoding="utf-8"))
    results = {c["id"]: {"status": c["status"], "metrics": c.get("metrics", {})} for c in data.get("challenges", [])}
    return {"hashes": (data.get("case") or {}).get("fingerprints", {}), "results": results, "packages": {}, "seeds": {}}


def _recorded_argv(recorded: dict[str, Any]) -> list[str]:
    """The recorded command line; only ``checkup``/``treat`` runs made from the command line (or the demo) replay."""
    command = recorded.get("command") or {}
    argv = [str(a) for a in command.get("argv", [])]
    if len(argv) < 2 or argv[1] not in ("checkup", "treat"):
        raise ConfigError(
            f"replay: expected a manifest of a `dlclinic checkup` or `dlclinic treat` run, found the command {' '.join(argv) or '(none)'}"
        )
    if "--demo" not in argv and "--clean-demo" not in argv and not command.get("via_cli", False):
        raise ConfigError(
            "replay: this run was made from Python, not the dlclinic command line; re-run your script and compare manifests with dlclinic.core.manifest.compare_manifests"
        )
    return argv


def _say(diff: dict[str, list[str]], target: Path, tolerance: float) -> None:
    """Print the differences; exit 1 when a hash or a result differs."""
    blocking = diff["hashes"] + diff["results"]
    for section, lines in diff.items():
        for line in lines[:20]:
            typer.echo(f"{section}: {line}")
    if blocking:
        typer.echo(
            f"not reproduced: {len(diff['results'])} result difference(s), {len(diff['hashes'])} hash difference(s); details in {target / 'replay_comparison.json'}",
            err=True,
        )
        raise typer.Exit(1)
    typer.echo(
        f"reproduced: every status and metric within {tolerance:g}, same data/model hashes"
        + (
            f" ({len(diff['packages']) + len(diff['hardware'])} environment difference(s))"
            if diff["packages"] or diff["hardware"]
            else ""
        ),
        err=True,
    )


def replay(
    ctx: typer.Context,
    manifest: Annotated[Path, typer.Argument(help="manifest.json of a dlclinic run (or the folder holding it).")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for the replayed run (default: <manifest folder>/replay).")
    ] = None,
    tolerance: Annotated[
        float,
        typer.Option("--tolerance", min=0.0, help="Largest absolute metric difference still counted as reproduced."),
    ] = 0.0,
    use_cache: Annotated[
        bool,
        typer.Option(
            "--use-cache",
            help="Reuse cached evidence and baseline weights (faster, but then the replay does not retrain).",
        ),
    ] = False,
) -> None:
    """Re-run a recorded checkup/treat command and compare hashes, environment and every metric."""
    recorded = read_manifest(manifest)
    argv = _recorded_argv(recorded)
    folder = manifest if manifest.is_dir() else manifest.parent
    target = out or folder / "replay"
    args = replay_argv(argv, target, use_cache=use_cache)
    cwd = (recorded.get("command") or {}).get("cwd")
    typer.echo(f"replaying: dlclinic {' '.join(args)}" + (f" (recorded in {cwd})" if cwd else ""), err=True)
    try:
        ctx.find_root().command.main(args=args, standalone_mode=False)  # the same `dlclinic` command group
    except SystemExit as exc:  # --fail-on in the recorded command: the run still completed
        if exc.code not in (0, 1, None):
            raise
    new_manifest = target / "manifest.json"
    replayed = read_manifest(new_manifest) if new_manifest.is_file() else _results_from_report(target / "report.json")
    diff = compare_manifests(recorded, replayed, tolerance=tolerance)
    with atomic_path(target / "replay_comparison.json") as tmp:
        tmp.write_text(json.dumps({"recorded": str(manifest), "tolerance": tolerance, "differences": diff}, indent=2))
    _say(diff, target, tolerance)
