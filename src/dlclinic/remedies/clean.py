"""The data.quality remedy: drop or relabel flagged samples, dedupe, retrain, re-measure.

``plan_cleaning`` is pure (findings in, row selections out); ``treat_quality`` is the
adapter that retrains with the case's recipe and runs the same check again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dlclinic.core.case import Case
from dlclinic.core.errors import ConfigError
from dlclinic.core.results import CheckResult, Treatment

__all__ = ["CleaningPlan", "plan_cleaning", "treat_quality"]


@dataclass(frozen=True)
class CleaningPlan:
    """Which train rows to keep, which to relabel, and which test rows leaked from train."""

    keep: np.ndarray
    relabel: Mapping[int, int]
    dropped_label_issues: int
    dropped_duplicates: int
    test_leaks: np.ndarray


def plan_cleaning(n_train: int, result: CheckResult, *, mode: str = "drop", n_test: int = 0) -> CleaningPlan:
    """Turn data.quality findings into a cleaning plan.

    Args:
        n_train: rows in the train split.
        result: the data.quality result (its ``label_issue``, ``duplicate`` and ``leak`` findings).
        mode: ``"drop"`` removes flagged label issues, ``"relabel"`` gives them the suggested label.
        n_test: rows in test (leaked test rows are excluded from evaluation).
    """
    if mode not in ("drop", "relabel"):
        raise ConfigError(f"mode must be 'drop' or 'relabel', but got {mode!r}")
    drop: set[int] = set()
    relabel: dict[int, int] = {}
    n_issue = n_dup = 0
    leaks = np.zeros(0, dtype=np.int64)
    for f in result.findings:
        if f.code == "label_issue" and f.split == "train":
            n_issue = len(f.indices)
            if mode == "drop":
                drop.update(f.indices)
            else:
                relabel.update({int(i): int(s) for i, s in zip(f.indices, f.extra.get("suggested", []), strict=False)})
        elif f.code == "duplicate" and f.split == "train":
            before = len(drop)
            drop.update(int(j) for j in f.indices)  # the second row of each pair is the copy
            n_dup = len(drop) - before
        elif f.code == "leak" and f.split == "test":
            leaks = np.array(sorted(int(i) for i in f.indices if i < n_test), dtype=np.int64)
    keep = np.array([i for i in range(n_train) if i not in drop], dtype=np.int64)
    return CleaningPlan(keep=keep, relabel=relabel, dropped_label_issues=n_issue if mode == "drop" else 0, dropped_duplicates=n_dup, test_leaks=leaks)


def _accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    model.eval()
    with torch.inference_mode():
        pred = np.concatenate([model(torch.from_numpy(x[i : i + 512])).argmax(1).numpy() for i in range(0, len(x), 512)])
    return float((pred == y).mean())


def treat_quality(
    case: Case,
    *,
    mode: str = "drop",
    out_dir: Path | None = None,
    fit_config: Any = None,
    cache_dir: Path | None = None,
    evidence_config: Any = None,
    progress: Any = None,
) -> tuple[Treatment, Any, Any]:
    """Clean the train split, retrain with the same recipe, and measure again.

    Returns ``(treatment, report_before, report_after)``. The user's case is not modified;
    with ``out_dir`` the cleaned row list (``cleaned_train_rows.csv``) and the retrained
    weights (``model_treated.safetensors``) are written there.
    """
    from dlclinic.api import checkup, prepare_model, retrainer

    if case.get("test") is None or not case.splits["test"].labelled:
        raise ConfigError("treat data.quality needs a labelled test split to verify the treatment (pass --test)")
    case = prepare_model(case, fit_config=fit_config, cache_dir=cache_dir, progress=progress)
    retrain = retrainer(case, fit_config)
    if retrain is None:
        raise ConfigError("treat data.quality retrains the model, so it needs the architecture: pass --model file.py:factory (a .pt2/.onnx file or a bare module cannot be retrained)")
    before = checkup(case, only=["data.quality"], evidence_config=evidence_config, fit_config=fit_config, cache_dir=cache_dir, progress=progress)
    res = before["data.quality"]
    test = case.splits["test"]
    plan = plan_cleaning(len(case.train), res, mode=mode, n_test=len(test))
    eval_rows = np.setdiff1d(np.arange(len(test)), plan.test_leaks)
    x_eval, y_eval = test.x[eval_rows], test.y[eval_rows]  # type: ignore[index]
    acc_before = _accuracy(case.model, x_eval, y_eval)
    cleaned = case.with_train(plan.keep, plan.relabel)
    if len(plan.test_leaks):
        cleaned = cleaned.with_split_rows("test", eval_rows)
    if progress is not None:
        with progress.step("retraining on the cleaned data", total=1) as advance:
            model = retrain(cleaned.train.x, cleaned.train.y, int(getattr(fit_config, "seed", 0) or 0))  # type: ignore[arg-type]
            advance(1)
    else:
        model = retrain(cleaned.train.x, cleaned.train.y, int(getattr(fit_config, "seed", 0) or 0))  # type: ignore[arg-type]
    treated = dataclasses.replace(cleaned, model=model, model_source=f"{case.model_source.replace(', from cache', '')}, retrained on cleaned data")
    acc_after = _accuracy(model, x_eval, y_eval)
    after = checkup(treated, only=["data.quality"], evidence_config=evidence_config, fit_config=fit_config, cache_dir=cache_dir, progress=progress)
    artifacts: dict[str, str] = {}
    if out_dir is not None:
        import os
        import tempfile

        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        rows_path = out_dir / "cleaned_train_rows.csv"
        fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            fh.write("row,label\n")
            y_clean = cleaned.train.y
            for new_i, old_i in enumerate(plan.keep):
                fh.write(f"{int(old_i)},{int(y_clean[new_i])}\n")  # type: ignore[index]
        os.replace(tmp, rows_path)
        test_rows_path = out_dir / "cleaned_test_rows.csv"
        fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            fh.write("row\n" + "".join(f"{int(i)}\n" for i in eval_rows))
        os.replace(tmp, test_rows_path)
        weights = out_dir / "model_treated.safetensors"
        fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".tmp")
        os.close(fd)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp)
        os.replace(tmp, weights)
        artifacts = {"cleaned_train_rows": str(rows_path), "cleaned_test_rows": str(test_rows_path), "model": str(weights)}
    after_res = after["data.quality"]
    treatment = Treatment(
        challenge_id="data.quality",
        action=f"{mode} {len(plan.relabel) or plan.dropped_label_issues} flagged label issue(s), drop {plan.dropped_duplicates} duplicate(s), retrain with the same recipe",
        before={
            "test_accuracy": acc_before,
            "train_rows": len(case.train),
            "label_issue_fraction": res.metrics.get("label_issue_fraction"),
            "duplicate_fraction": res.metrics.get("duplicate_fraction"),
        },
        after={
            "test_accuracy": acc_after,
            "train_rows": len(cleaned.train),
            "label_issue_fraction": after_res.metrics.get("label_issue_fraction"),
            "duplicate_fraction": after_res.metrics.get("duplicate_fraction"),
        },
        before_status=res.status,
        after_status=after_res.status,
        artifacts=artifacts,
        notes=(
            f"test accuracy measured on the {len(eval_rows)} test rows that did not leak from train ({len(plan.test_leaks)} leaked rows excluded from both numbers)",
            "leaked test rows are removed from the test split of the treated case (listed in cleaned_test_rows.csv); remove them from your test data too",
        ),
    )
    return treatment, before, after
