"""Write a report's files (``report.json``, ``report.html``, ``manifest.json``) atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from dlclinic.core.errors import ConfigError
from dlclinic.core.manifest import build_manifest, manifest_json
from dlclinic.report.html import render_html
from dlclinic.report.json import render_json

if TYPE_CHECKING:
    from dlclinic.core.case import Case
    from dlclinic.core.results import Report

__all__ = ["write_report"]

_FILES = {"json": "report.json", "html": "report.html", "manifest": "manifest.json"}


def _stage(directory: Path, name: str, text: str) -> Path:
    """Write ``text`` to a temporary file next to ``directory / name``; return its path."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    path = Path(tmp)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        target = directory / name
        os.chmod(path, target.stat().st_mode & 0o777 if target.exists() else 0o644)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def write_report(report: Report, out_dir: str | os.PathLike[str], case: Case | None = None) -> dict[str, Path]:
    """Write ``report.json``, ``report.html`` and the run's ``manifest.json`` into ``out_dir``, atomically.

    The manifest (:mod:`dlclinic.core.manifest`: command, seeds, package versions,
    hardware, data/model/config hashes, every status) is what ``dlclinic replay`` re-runs.

    Both documents are rendered in memory first, then written to temporary files in
    ``out_dir`` and moved into place with :func:`os.replace`. If rendering or writing
    fails, no partial file is left behind and existing reports stay untouched.

    Args:
        report: The checkup result.
        out_dir: The directory to write into; created (with parents) when missing.
        case: The case the report was made from, for image thumbnails in the HTML.

    Returns:
        ``{"json": path, "html": path, "manifest": path}``.

    Raises:
        ConfigError: If ``out_dir`` cannot be created or written to.
    """
    texts = {
        "json": render_json(report),
        "html": render_html(report, case=case),
        "manifest": manifest_json(build_manifest(report=report, case=case)),
    }
    directory = Path(out_dir)
    staged: dict[str, Path] = {}
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for key, name in _FILES.items():
            staged[key] = _stage(directory, name, texts[key])
        out: dict[str, Path] = {}
        for key, name in _FILES.items():
            os.replace(staged[key], directory / name)
            del staged[key]
            out[key] = directory / name
        return out
    except OSError as exc:
        raise ConfigError(
            f"out_dir {str(directory)!r}: expected a writable directory, found {exc.strerror or exc}; choose another output directory"
        ) from exc
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
