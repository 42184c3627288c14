"""The audit trail: an append-only JSON-lines file in which every record is hash-chained.

:func:`append_audit` / :func:`verify_audit`: every record carries the hash of the previous
one (a hash chain), so editing or deleting a past record is detected. A chain alone cannot
see a change to its *newest* record (nothing after it holds its hash; the next append would
even chain onto the edited line), so each append also writes a head anchor next to the log
(``<log>.head``: record count and hash of the newest line) and copies the anchor it found
into the new record: an edited, removed or hand-appended newest record no longer matches it.
:func:`audit_record` is what ethics.compliance appends for one checkup.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import getpass
import hashlib
import json
import os
import platform
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from dlclinic.core.atomic import atomic_path
from dlclinic.core.case import Case
from dlclinic.core.evidence import Evidence
from dlclinic.core.version import __version__

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["append_audit", "audit_record", "verify_audit"]


def audit_record(case: Case, evidence: Evidence) -> dict[str, Any]:
    """One checkup's audit record: when is added on append; who, where, which inputs (SHA-256), which versions."""
    try:
        user = getpass.getuser()
    except Exception:  # no login name in some containers
        user = "unknown"
    versions: dict[str, Any] = {
        "dlclinic": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    return {
        "event": "checkup",
        "who": user,
        "host": platform.node(),
        "case": case.name,
        "cli_args": case.metadata.get("cli_args"),
        "model_source": case.model_source,
        "inputs_sha256": evidence.fingerprints(),
        "versions": versions,
    }


def _head_path(log: Path) -> Path:
    return log.with_name(log.name + ".head")


def _read_head(log: Path) -> dict[str, Any] | None:
    """The head anchor ``{"records": n, "sha256": hash of line n}`` written by the last append, if any."""
    try:
        head = json.loads(_head_path(log).read_text(encoding="utf-8"))
        return {"records": int(head["records"]), "sha256": str(head["sha256"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextlib.contextmanager
def _locked(log: Path, *, exclusive: bool) -> Iterator[None]:
    """An advisory ``flock`` on ``<log>.lock`` (no-op where ``fcntl`` does not exist): two checkups
    sharing a cache directory must not chain onto the same record or race on the head file."""
    if fcntl is None:  # Windows: best effort
        yield
        return
    lock = log.with_name(log.name + ".lock")
    with open(lock, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _interrupted(lines: list[bytes], head: dict[str, Any] | None) -> bool:
    """The last append wrote its record but not the head file (a crash in between): the head lags by
    exactly one record, and that record carries the head it found — which is the head file's."""
    if head is None or head["records"] != len(lines) - 1 or not lines:
        return False
    try:
        embedded = json.loads(lines[-1]).get("head")
    except (ValueError, AttributeError):
        return False
    prev = hashlib.sha256(lines[-2]).hexdigest() if len(lines) > 1 else None
    return embedded == head and head["sha256"] == prev


def append_audit(path: str | os.PathLike[str], record: Mapping[str, Any]) -> dict[str, Any]:
    """Append ``record`` to the JSON-lines audit trail at ``path``, chained to the previous record's hash.

    The new record also carries the head anchor the previous append left (``head``), and the
    anchor is then moved to the new record, so a change to the newest record is detectable.
    Appends hold an exclusive lock on ``<path>.lock``; an append interrupted between the
    record and the head file is completed by the next one.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with _locked(p, exclusive=True):
        prev = "0" * 64
        lines: list[bytes] = []
        if p.exists():
            with open(p, "rb") as fh:
                lines = [line for line in fh.read().splitlines() if line.strip()]
            if lines:
                prev = hashlib.sha256(lines[-1]).hexdigest()
        head = _read_head(p)
        if _interrupted(lines, head):
            head = {"records": len(lines), "sha256": prev}
        entry = {
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
            **dict(record),
            "prev_sha256": prev,
        }
        if head is not None:
            entry["head"] = head
        line = json.dumps(entry, sort_keys=True, default=str)
        with open(p, "a", encoding="utf-8") as fh:  # append-only: never rewritten
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        with atomic_path(_head_path(p)) as tmp:
            tmp.write_text(
                json.dumps({"records": len(lines) + 1, "sha256": hashlib.sha256(line.encode("utf-8")).hexdigest()})
                + "\n",
                encoding="utf-8",
            )
    return entry


def verify_audit(path: str | os.PathLike[str]) -> tuple[int, list[str]]:
    """``(records, problems)``: a broken hash chain means a past record was edited or removed.

    Records that carry a ``head`` anchor must follow exactly the record it names, and the
    head file (when present) must name the newest record: otherwise the newest record of
    that time was edited, removed or appended by hand.
    """
    p = Path(path)
    if not p.exists():
        return 0, [f"no audit trail at {p}"]
    with _locked(p, exclusive=False), open(p, "rb") as fh:
        lines = [line for line in fh.read().splitlines() if line.strip()]
        head_file = _read_head(p)
    prev = "0" * 64
    anchored = False
    problems = []
    for i, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            problems.append(f"record {i}: not JSON")
            prev = hashlib.sha256(line).hexdigest()
            continue
        if entry.get("prev_sha256") != prev:
            problems.append(f"record {i}: hash chain broken (a record before it was edited, inserted or removed)")
        head = entry.get("head") if isinstance(entry, dict) else None
        anchored = anchored or isinstance(head, dict)
        if isinstance(head, dict) and (head.get("records") != i - 1 or head.get("sha256") != prev):
            problems.append(
                f"record {i}: the trail's head before it was record {head.get('records')} with another hash (the newest record was edited, removed or appended by hand before this run)"
            )
        prev = hashlib.sha256(line).hexdigest()
    if head_file is None and anchored:
        problems.append(
            f"head file {_head_path(p).name} is missing or unreadable although the trail's records are anchored to it (the newest record cannot be verified)"
        )
    elif (
        head_file is not None
        and not _interrupted(lines, head_file)
        and (head_file["records"] != len(lines) or (lines and head_file["sha256"] != prev))
    ):
        problems.append(
            f"head anchor names record {head_file['records']}, the trail has {len(lines)} (the newest record was edited, removed or appended by hand)"
        )
    return len(lines), problems
