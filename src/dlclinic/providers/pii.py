"""The PII scan shared by data.privacy, ethics.compliance and the governance remedies.

Reads the user's tabular/text sources (counts only: values are never kept or shown) and
grades what :mod:`dlclinic.functional.pii` finds in them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from dlclinic.core.case import Case
from dlclinic.core.results import Finding, Status, worst
from dlclinic.functional.pii import KINDS, scan_table

__all__ = ["pii_sources", "scan_pii_files"]

_TEXT_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq", ".jsonl", ".json", ".txt")
_SENSITIVE = ("payment_card", "iban", "national_id")


def pii_sources(case: Case, pii_files: Sequence[str | Path] = ()) -> list[str]:
    """Files to scan: ``pii_files`` and the case's tabular/text sources."""
    paths = [str(p) for p in pii_files]
    io_meta = case.metadata.get("io")
    if isinstance(io_meta, dict):
        for split in (io_meta.get("splits") or {}).values():
            src = split.get("source") if isinstance(split, dict) else None
            if isinstance(src, str) and src.lower().endswith(_TEXT_SUFFIXES) and src not in paths:
                paths.append(src)
    return paths


def _read_table(path: str, max_rows: int) -> Any:
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(p).head(max_rows)
    if suffix == ".jsonl":
        return pd.read_json(p, lines=True, nrows=max_rows, dtype=False)
    if suffix == ".json":
        return pd.read_json(p, dtype=False).head(max_rows)
    if suffix == ".txt":
        with open(p, encoding="utf-8", errors="replace") as fh:
            lines = [line.rstrip("\n") for _, line in zip(range(max_rows), fh)]
        return pd.DataFrame({"text": lines})
    return pd.read_csv(p, sep="\t" if suffix == ".tsv" else ",", dtype=str, nrows=max_rows, keep_default_na=False)


def scan_pii_files(paths: list[str], max_rows: int) -> tuple[Status, list[Finding], list[list[Any]], dict[str, int]]:
    """Scan files for PII; ``fail`` for card numbers, IBANs or national ids, ``warn`` for others."""
    statuses: list[Status] = []
    findings: list[Finding] = []
    rows: list[list[Any]] = []
    totals = dict.fromkeys(KINDS, 0)
    for path in paths:
        try:
            table = _read_table(path, max_rows)
        except Exception as exc:
            statuses.append("warn")
            findings.append(
                Finding(
                    "pii_unreadable",
                    f"{path}: could not be read for the PII scan ({type(exc).__name__})",
                    extra={"path": path},
                )
            )
            continue
        rep = scan_table(table)
        for col in rep.flagged_columns():
            counts = {k: v for k, v in rep.columns[col].items() if v}
            for k, v in counts.items():
                totals[k] += v
            sensitive = any(k in _SENSITIVE for k in counts)
            statuses.append("fail" if sensitive else "warn")
            what = ", ".join(f"{v} {k.replace('_', ' ')}{'s' if v > 1 else ''}" for k, v in counts.items())
            findings.append(
                Finding(
                    "pii",
                    f"{Path(path).name} column {col!r}: {what} in {rep.rows_with_pii[col]} of {rep.n_rows} rows (values not shown)",
                    extra={"path": path, "column": col, "counts": counts, "rows": rep.rows_with_pii[col]},
                )
            )
            rows.append([Path(path).name, col, rep.rows_with_pii[col], *[rep.columns[col][k] for k in KINDS]])
        for col, hint in rep.name_hints.items():
            if col not in rep.flagged_columns():
                findings.append(
                    Finding(
                        "pii_column_name",
                        f"{Path(path).name} column {col!r}: the name suggests {hint.replace('_', ' ')} data; no pattern matched its values",
                        extra={"path": path, "column": col, "hint": hint},
                    )
                )
        statuses.append("ok")
    return worst(statuses), findings, rows, totals
