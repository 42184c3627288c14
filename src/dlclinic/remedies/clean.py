"""The data.quality remedy, as pure pieces: findings → cleaning plan, the paired CI, artifacts.

The orchestration (retrain with the same recipe and seed, measure again) lives in
:func:`dlclinic.api.treat`; nothing here trains or runs checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dlclinic.core.atomic import atomic_path, write_weights
from dlclinic.core.errors import ConfigError
from dlclinic.core.results import CheckResult

__all__ = ["CleaningPlan", "plan_cleaning", "write_cleaning_artifacts"]


@dataclass(frozen=True)
class CleaningPlan:
    """Which train rows to keep, which to relabel, and which test rows leaked from train."""

    keep: np.ndarray
    relabel: Mapping[int, int]
    dropped_label_issues: int
    dropped_duplicates: int
    dropped_nonfinite: int
    test_leaks: np.ndarray


def plan_cleaning(n_train: int, result: CheckResult, *, mode: str = "drop", n_test: int = 0) -> CleaningPlan:
    """Turn data.quality findings into a cleaning plan.

    Args:
        n_train: rows in the train split.
        result: the data.quality result (its ``label_issue``, ``duplicate``, ``nonfinite``
            and ``leak`` findings; a ``duplicate`` finding lists every redundant copy).
        mode: ``"drop"`` removes flagged label issues, ``"relabel"`` gives them the suggested label.
        n_test: rows in test (leaked test rows are excluded from evaluation).

    Example:
        >>> from dlclinic.core.results import CheckResult, Finding
        >>> r = CheckResult("data.quality", "warn", "", findings=(Finding("label_issue", "", "train", (3,), extra={"suggested": [0]}),))
        >>> plan_cleaning(5, r).keep.tolist(), plan_cleaning(5, r, mode="relabel").relabel
        ([0, 1, 2, 4], {3: 0})
    """
    if mode not in ("drop", "relabel"):
        raise ConfigError(f"mode must be 'drop' or 'relabel', but got {mode!r}")
    drop: set[int] = set()
    relabel: dict[int, int] = {}
    n_issue = n_dup = n_nonfinite = 0
    leaks = np.zeros(0, dtype=np.int64)
    for f in result.findings:
        if f.split == "train" and f.code == "nonfinite":
            before = len(drop)
            drop.update(int(i) for i in f.indices)
            n_nonfinite = len(drop) - before
    for f in result.findings:
        if f.code == "label_issue" and f.split == "train":
            n_issue = len(f.indices)
            if mode == "drop":
                drop.update(int(i) for i in f.indices)
            else:
                relabel.update({int(i): int(s) for i, s in zip(f.indices, f.extra.get("suggested", []), strict=False)})
        elif f.code == "duplicate" and f.split == "train":
            before = len(drop)
            drop.update(int(j) for j in f.indices)  # every redundant copy; one member of each group stays
            n_dup = len(drop) - before
        elif f.code == "leak" and f.split == "test":
            leaks = np.array(sorted(int(i) for i in f.indices if i < n_test), dtype=np.int64)
    keep = np.setdiff1d(np.arange(n_train), np.fromiter(drop, dtype=np.int64, count=len(drop)))
    relabel = {i: s for i, s in relabel.items() if i not in drop}
    return CleaningPlan(
        keep=keep,
        relabel=relabel,
        dropped_label_issues=n_issue if mode == "drop" else 0,
        dropped_duplicates=n_dup,
        dropped_nonfinite=n_nonfinite,
        test_leaks=leaks,
    )


def _atomic_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_cleaning_artifacts(
    out_dir: Path, plan: CleaningPlan, cleaned_labels: np.ndarray, eval_rows: np.ndarray, model: Any
) -> dict[str, str]:
    """Write the kept train rows (with labels), the kept test rows and the retrained weights."""
    rows = out_dir / "cleaned_train_rows.csv"
    _atomic_text(rows, "row,label\n" + "".join(f"{int(o)},{int(cleaned_labels[n])}\n" for n, o in enumerate(plan.keep)))
    test_rows = out_dir / "cleaned_test_rows.csv"
    _atomic_text(test_rows, "row\n" + "".join(f"{int(i)}\n" for i in eval_rows))
    weights = write_weights(model, out_dir / "model_treated.safetensors")
    return {"cleaned_train_rows": str(rows), "cleaned_test_rows": str(test_rows), "model": str(weights)}
