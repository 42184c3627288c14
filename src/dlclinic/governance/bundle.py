"""Bundles: a manifest of SHA-256 hashes over a set of files, optionally HMAC-signed.

:func:`write_manifest` / :func:`verify_manifest`: any changed byte fails verification.
Also what the ethics.misuse and ethics.compliance remedies share: the signing key, the
output folder, atomic text and weight files, and the evaluation report their documents
are written from (:func:`evaluation_report`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dlclinic.core.atomic import atomic_path, write_weights
from dlclinic.core.case import Case
from dlclinic.core.errors import ConfigError, InputError
from dlclinic.core.registry import TreatContext
from dlclinic.core.results import Report

__all__ = [
    "evaluation_report",
    "need_out",
    "read_key",
    "save_model",
    "sha256_file",
    "verify_manifest",
    "write_manifest",
    "write_text",
]


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_key(path: str | None) -> bytes | None:
    """The HMAC signing key held in the file at ``path`` (``None`` without a path)."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"key_file {p}: expected a file holding the signing key, found nothing there")
    return p.read_bytes().strip()


def need_out(ctx: TreatContext, what: str) -> Path:
    """The remedy's output folder (created); a ConfigError naming ``what`` when there is none."""
    if ctx.out_dir is None:
        raise ConfigError(f"treat {ctx.challenge_id} writes {what}: pass --out DIR")
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    return ctx.out_dir


def write_text(path: Path, text: str) -> str:
    """Write ``text`` atomically; return the path as a string."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return str(path)


def save_model(model: Any, path: Path) -> str | None:
    """The model's weights as safetensors (``None`` for a model without a ``state_dict``)."""
    if not hasattr(model, "state_dict"):
        return None
    return str(write_weights(model, path))


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def write_manifest(
    files: Mapping[str, str | os.PathLike[str]],
    manifest: str | os.PathLike[str],
    *,
    key: bytes | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a manifest of SHA-256 hashes of ``files`` (name → path, paths stored relative to the manifest).

    With ``key`` the manifest also carries an HMAC-SHA256 signature over its entries.
    """
    mpath = Path(manifest)
    entries = []
    for name, path in sorted(files.items()):
        p = Path(path)
        if not p.is_file():
            raise InputError(f"bundle: expected a file for {name!r}, found nothing at {p}")
        try:
            rel = os.path.relpath(p.resolve(), mpath.resolve().parent)
        except ValueError:  # another drive on Windows
            rel = str(p.resolve())
        entries.append({"name": name, "path": rel, "sha256": sha256_file(p), "bytes": p.stat().st_size})
    body: dict[str, Any] = {
        "schema": "dlclinic.bundle/1",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "files": entries,
    }
    if extra:
        body["extra"] = dict(extra)
    body["digest"] = hashlib.sha256(_canonical({"files": entries, "extra": body.get("extra")})).hexdigest()
    if key is not None:
        body["signature"] = {
            "alg": "HMAC-SHA256",
            "value": hmac.new(
                key, _canonical({"files": entries, "extra": body.get("extra")}), hashlib.sha256
            ).hexdigest(),
        }
    with atomic_path(mpath) as tmp:
        tmp.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    return body


def verify_manifest(manifest: str | os.PathLike[str], *, key: bytes | None = None) -> list[str]:
    """Problems found (empty list = the bundle is intact): changed, missing or unsigned files."""
    mpath = Path(manifest)
    try:
        body = json.loads(mpath.read_text(encoding="utf-8"))
        entries = body["files"]
    except Exception as exc:
        return [f"manifest {mpath}: unreadable ({type(exc).__name__})"]
    problems = []
    payload = _canonical({"files": entries, "extra": body.get("extra")})
    if body.get("digest") != hashlib.sha256(payload).hexdigest():
        problems.append("manifest entries were edited (digest mismatch)")
    if key is not None:
        sig = (body.get("signature") or {}).get("value")
        if not sig:
            problems.append("manifest is not signed, but a key was given")
        elif not hmac.compare_digest(sig, hmac.new(key, payload, hashlib.sha256).hexdigest()):
            problems.append("signature does not match (wrong key, or the manifest was changed)")
    for e in entries:
        p = Path(e["path"])
        p = p if p.is_absolute() else mpath.resolve().parent / p
        if not p.is_file():
            problems.append(f"{e['name']}: missing ({p})")
        elif sha256_file(p) != e["sha256"]:
            problems.append(f"{e['name']}: changed (SHA-256 differs from the manifest)")
    return problems


def evaluation_report(ctx: TreatContext, case: Case, evaluate: tuple[str, ...], after: Report) -> Report:
    """The report the documents are written from: the checks in ``evaluate`` measured on ``case``
    (through ``ctx.measure``), with the treated challenge's own result taken from ``after``."""
    if not evaluate:  # nothing else to evaluate: the treated challenge's report alone
        return after
    own = after[ctx.challenge_id]
    report = ctx.measure(case, only=list(evaluate))
    return dataclasses.replace(report, challenges=tuple(own if r.id == own.id else r for r in report.challenges))
