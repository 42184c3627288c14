"""data.quality — label issues, duplicates, train/test leakage, class imbalance, NaN/Inf,
column profile (tables) or image profile (images), unreadable files, embedding outliers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dlclinic.core.case import Case
from dlclinic.core.evidence import Evidence
from dlclinic.core.registry import CheckSpec
from dlclinic.core.results import CheckResult, Finding, Remedy, Status, grade, worst
from dlclinic.functional.duplicates import (
    find_cross_duplicates,
    find_exact_duplicates,
    find_near_duplicates,
    nn_distance_scale,
)
from dlclinic.functional.labels import class_counts, find_label_issues, imbalance_ratio
from dlclinic.functional.profile import find_column_issues, find_image_issues, find_knn_outliers

__all__ = ["CHECK", "QualityOptions", "run"]


@dataclass(frozen=True)
class QualityOptions:
    """Thresholds of data.quality (fractions are of the train split)."""

    warn_label_issue_fraction: float = 0.03
    fail_label_issue_fraction: float = 0.10
    warn_duplicate_fraction: float = 0.01
    fail_duplicate_fraction: float = 0.10
    warn_leak_fraction: float = 0.0
    fail_leak_fraction: float = 0.01
    warn_imbalance_ratio: float = 5.0
    fail_imbalance_ratio: float = 50.0
    near_duplicate_rel_distance: float = 0.1
    embedding_duplicate_rel_distance: float = 0.05
    memorisation_agreement: float = 0.995
    max_examples: int = 24

    def __post_init__(self) -> None:
        for name in (
            "warn_label_issue_fraction",
            "fail_label_issue_fraction",
            "warn_duplicate_fraction",
            "fail_duplicate_fraction",
            "warn_leak_fraction",
            "fail_leak_fraction",
        ):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"`0 <= {name} <= 1` must hold, but got {name}={v}")
        if self.near_duplicate_rel_distance < 0:
            raise ValueError(
                f"`near_duplicate_rel_distance >= 0` must hold, but got {self.near_duplicate_rel_distance}"
            )


def redundant_copies(n: int, pairs: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    """Every row of a duplicate group except its first: groups are the connected components of the pairs."""
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    edges = [tuple(map(int, p)) for p in pairs] + [(int(g[0]), int(j)) for g in groups for j in g[1:]]
    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members = sorted({i for edge in edges for i in edge})
    return np.array([i for i in members if find(i) != i], dtype=np.int64)


def _nonfinite(case: Case) -> tuple[dict[str, int], list[Finding]]:
    counts: dict[str, int] = {}
    findings: list[Finding] = []
    for name, s in case.splits.items():
        bad = ~np.isfinite(s.x.reshape(len(s), -1)).all(axis=1)
        counts[name] = int(bad.sum())
        if bad.any():
            rows = np.flatnonzero(bad)
            findings.append(
                Finding(
                    "nonfinite",
                    f"{len(rows)} row(s) of {name} contain NaN or Inf values",
                    split=name,
                    indices=tuple(int(i) for i in rows[:1000]),
                )
            )
    return counts, findings


def _profile(
    case: Case,
    metrics: dict[str, float | int | bool | None],
    findings: list[Finding],
    details: dict[str, list[dict[str, Any]]],
) -> Status:
    """Image or column profile of train, plus files the loader skipped; returns the status it implies."""
    status: Status = "ok"
    io_meta = case.metadata.get("io", {}) if isinstance(case.metadata.get("io"), dict) else {}
    train_meta = io_meta.get("splits", {}).get("train", {}) if isinstance(io_meta, dict) else {}
    skipped = list(train_meta.get("skipped", ()) or ())
    if skipped:
        status = "warn"
        metrics["unreadable_files"] = len(skipped)
        findings.append(
            Finding(
                "unreadable_file",
                f"{len(skipped)} train file(s) could not be read and were skipped, e.g. {skipped[0]}",
                split="train",
                extra={"paths": skipped[:100]},
            )
        )
    if train_meta.get("n_resized"):
        metrics["resized_images"] = int(train_meta["n_resized"])
        findings.append(
            Finding(
                "odd_size",
                f"{int(train_meta['n_resized'])} train image(s) had an unusual size and were resized to the most common one",
                split="train",
            )
        )
    x = case.train.x
    if case.modality == "image":
        img = find_image_issues(x)
        metrics["blank_images"] = len(img.blank)
        metrics["dark_images"] = len(img.dark)
        metrics["bright_images"] = len(img.bright)
        for code, rows, what in (
            ("blank_image", img.blank, "blank or near-constant"),
            ("dark_image", img.dark, "much darker than the rest"),
            ("bright_image", img.bright, "much brighter than the rest"),
        ):
            if len(rows):
                findings.append(
                    Finding(
                        code,
                        f"{len(rows)} train image(s) are {what}",
                        split="train",
                        indices=tuple(int(i) for i in rows),
                        scores=tuple(float(img.brightness[i]) for i in rows),
                    )
                )
        if len(img.blank):
            status = "warn"
            details["images"].append(
                {
                    "title": "Blank or near-constant images",
                    "split": "train",
                    "indices": [int(i) for i in img.blank[:12]],
                    "captions": [f"#{i}" for i in img.blank[:12]],
                }
            )
    else:
        cols = find_column_issues(x.reshape(len(x), -1))
        names = list(case.feature_names or [f"x{j}" for j in range(cols.missing_fraction.size)])
        missing_cols = np.flatnonzero(cols.missing_fraction > 0)
        metrics["columns_with_missing"] = len(missing_cols)
        metrics["max_missing_fraction"] = float(cols.missing_fraction.max()) if cols.missing_fraction.size else 0.0
        metrics["constant_columns"] = len(cols.constant)
        metrics["near_constant_columns"] = len(cols.near_constant)
        metrics["extreme_value_rows"] = len(cols.extreme_rows)
        if len(missing_cols):
            findings.append(
                Finding(
                    "missing_values",
                    "missing values in "
                    + ", ".join(f"{names[j]} ({cols.missing_fraction[j]:.1%})" for j in missing_cols[:10])
                    + (" …" if len(missing_cols) > 10 else ""),
                    split="train",
                )
            )
        if cols.constant:
            findings.append(
                Finding(
                    "constant_column",
                    "constant column(s) carry no information: " + ", ".join(names[j] for j in cols.constant[:10]),
                    split="train",
                )
            )
        if cols.near_constant:
            findings.append(
                Finding(
                    "near_constant_column",
                    "near-constant column(s) (one value in ≥ 99 % of rows): "
                    + ", ".join(names[j] for j in cols.near_constant[:10]),
                    split="train",
                )
            )
        if len(cols.extreme_rows):
            worst_cols = np.argsort(-cols.extreme_counts)[:5]
            findings.append(
                Finding(
                    "extreme_value",
                    f"{len(cols.extreme_rows)} train row(s) have values more than 10 robust standard deviations from the median (on a log scale for skewed non-negative columns; mostly in "
                    + ", ".join(names[j] for j in worst_cols if cols.extreme_counts[j])
                    + ")",
                    split="train",
                    indices=tuple(int(i) for i in cols.extreme_rows),
                )
            )
            status = "warn" if len(cols.extreme_rows) / len(x) > 0.01 else status
        profile_rows = [
            [
                names[j],
                f"{cols.missing_fraction[j]:.1%}",
                int(cols.extreme_counts[j]),
                "constant" if j in cols.constant else "near-constant" if j in cols.near_constant else "",
            ]
            for j in range(len(names))
            if cols.missing_fraction[j] > 0 or cols.extreme_counts[j] or j in cols.constant or j in cols.near_constant
        ]
        if profile_rows:
            details["tables"].append(
                {
                    "title": "Column profile (problem columns only)",
                    "columns": ["column", "missing", "extreme values", "note"],
                    "rows": profile_rows[:50],
                }
            )
    return status


def run(case: Case, evidence: Evidence, options: QualityOptions) -> CheckResult:
    """Measure label issues, duplicates, leakage, imbalance and non-finite values."""
    train = case.train
    y = train.y
    assert y is not None
    statuses: list[Status] = []
    findings: list[Finding] = []
    metrics: dict[str, float | int | bool | None] = {}
    details: dict[str, list[dict[str, Any]]] = {"plots": [], "images": [], "tables": []}

    # non-finite values
    nonfinite, nf_findings = _nonfinite(case)
    metrics["nonfinite_rows"] = sum(nonfinite.values())
    findings += nf_findings
    statuses.append("fail" if metrics["nonfinite_rows"] else "ok")

    # label issues on out-of-fold probabilities
    issues = find_label_issues(y, evidence.get("oof_probs", "train"))
    metrics["label_issues"] = len(issues.indices)
    metrics["label_issue_fraction"] = issues.fraction
    metrics["estimated_noise_rate"] = issues.noise_rate
    label_status = grade(issues.fraction, options.warn_label_issue_fraction, options.fail_label_issue_fraction)
    train_fit = float((evidence.get("probs", "train").argmax(1) == y).mean())
    metrics["train_label_agreement"] = train_fit
    if evidence.oof_method == "embeddings" and train_fit >= options.memorisation_agreement and label_status == "ok":
        # the embeddings come from a network that fits every given label: wrong labels look right to them
        label_status = "warn"
        findings.append(
            Finding(
                "label_check_inconclusive",
                f"the model agrees with {train_fit:.1%} of the train labels, so its embeddings encode the labels themselves and out-of-fold heads on them cannot expose wrong labels; rerun with --oof kfold (retrains with your factory) to measure label quality",
            )
        )
    statuses.append(label_status)
    if len(issues.indices):
        names = case.class_names
        findings.append(
            Finding(
                "label_issue",
                f"{len(issues.indices)} train label(s) ({issues.fraction:.1%}) disagree with out-of-fold predictions ({evidence.oof_method})",
                split="train",
                indices=tuple(int(i) for i in issues.indices),
                scores=tuple(float(s) for s in issues.scores),
                extra={"given": [int(y[i]) for i in issues.indices], "suggested": [int(s) for s in issues.suggested]},
            )
        )
        top = issues.indices[: options.max_examples]
        details["images"].append(
            {
                "title": "Likely label errors (worst first)",
                "split": "train",
                "indices": [int(i) for i in top],
                "captions": [
                    f"#{i}: {names[y[i]]} → {names[s]}" for i, s in zip(top, issues.suggested[: len(top)], strict=True)
                ],
            }
        )
        details["tables"].append(
            {
                "title": "Label issues by class pair (given → likely)",
                "columns": ["given", "likely", "count"],
                "rows": [[names[g], names[s], c] for g, s, c in issues.confusion(y)[:15]],
            }
        )

    # duplicates within train, leakage into test/deploy
    scale = nn_distance_scale(train.x)
    exact_groups = find_exact_duplicates(train.x)
    near = find_near_duplicates(train.x, rel_threshold=options.near_duplicate_rel_distance, scale=scale)
    redundant = redundant_copies(len(train), near.pairs, exact_groups)
    distinct_fraction = 1.0 - sum(len(g) - 1 for g in exact_groups) / len(train)
    discrete = distinct_fraction < 0.5  # few distinct rows (e.g. all-categorical tables): repeats are by design
    metrics["exact_duplicate_groups"] = len(exact_groups)
    metrics["near_duplicate_pairs"] = len(near)
    metrics["duplicate_fraction"] = len(redundant) / len(train)
    metrics["distinct_row_fraction"] = distinct_fraction
    if discrete:
        findings.append(
            Finding(
                "discrete_inputs",
                f"only {distinct_fraction:.0%} of train rows are distinct: identical rows are expected for inputs like these, so duplicates and train/test overlap are reported but not graded",
                split="train",
            )
        )
    else:
        statuses.append(
            grade(metrics["duplicate_fraction"], options.warn_duplicate_fraction, options.fail_duplicate_fraction)
        )
    if len(redundant):
        findings.append(
            Finding(
                "duplicate",
                f"{len(redundant)} train row(s) are (near-)copies of another train row ({len(exact_groups)} exact group(s), {len(near)} near pair(s))",
                split="train",
                indices=tuple(int(j) for j in redundant),
                extra={"pairs": near.pairs[:1000].tolist(), "distance_unit": scale},
            )
        )
    # near-duplicates the inputs hide (shifted, re-encoded, resized copies) but the model's view shows;
    # reported for review, not graded: a strong model legitimately maps some distinct inputs close together
    emb = evidence.get("embeddings", "train").astype(np.float32)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    sem = find_near_duplicates(emb, rel_threshold=options.embedding_duplicate_rel_distance)
    known = {tuple(p) for p in near.pairs.tolist()} | {
        (int(g[a]), int(g[b])) for g in exact_groups for a in range(len(g)) for b in range(a + 1, len(g))
    }
    sem_pairs = [(int(i), int(j)) for i, j in sem.pairs.tolist() if (int(i), int(j)) not in known]
    metrics["embedding_near_duplicate_pairs"] = len(sem_pairs)
    if sem_pairs and not discrete:
        findings.append(
            Finding(
                "embedding_near_duplicate",
                f"{len(sem_pairs)} pair(s) of train rows differ in the inputs but are nearly identical to the model (embedding distance ≤ {options.embedding_duplicate_rel_distance} × the median neighbour distance): review them as possible transformed copies",
                split="train",
                indices=tuple(sorted({j for _, j in sem_pairs})),
                extra={"pairs": sem_pairs[:1000]},
            )
        )
        if case.modality == "image":
            flat = [i for pair in sem_pairs[: options.max_examples // 2] for i in pair]
            details["images"].append(
                {
                    "title": "Near-duplicates in the model's view (pairs)",
                    "split": "train",
                    "indices": flat,
                    "captions": [f"#{i}" for i in flat],
                }
            )
    leak_statuses: list[Status] = []
    for split in ("test", "deploy"):
        other = case.get(split)
        if other is None:
            continue
        leaks = find_cross_duplicates(train.x, other.x, rel_threshold=options.near_duplicate_rel_distance, scale=scale)
        frac = len(leaks) / len(other)
        metrics[f"{split}_leaks"] = len(leaks)
        metrics[f"{split}_leak_fraction"] = frac
        if split == "test" and not discrete:
            leak_statuses.append(
                "fail" if frac > options.fail_leak_fraction else "warn" if frac > options.warn_leak_fraction else "ok"
            )
        if len(leaks):
            findings.append(
                Finding(
                    "leak",
                    f"{len(leaks)} {split} row(s) ({frac:.1%}) have a (near-)copy in train"
                    + (": test metrics are inflated" if split == "test" and not discrete else ""),
                    split=split,
                    indices=tuple(int(j) for j in leaks.pairs[:, 1]),
                    scores=tuple(float(d / scale) if scale else 0.0 for d in leaks.distances),
                    extra={"train_rows": [int(i) for i in leaks.pairs[:, 0]]},
                )
            )
    statuses.append(worst(leak_statuses))

    # class imbalance
    counts = class_counts(y, case.n_classes)
    ratio = imbalance_ratio(counts)
    metrics["imbalance_ratio"] = ratio
    metrics["smallest_class_count"] = int(counts.min())
    statuses.append(grade(ratio, options.warn_imbalance_ratio, options.fail_imbalance_ratio))
    if ratio > options.warn_imbalance_ratio:
        rare = int(np.argmin(counts))
        findings.append(
            Finding(
                "imbalance",
                f"class {case.class_names[rare]!r} has {int(counts[rare])} train samples vs {int(counts.max())} for the largest (ratio {ratio:.1f})",
                split="train",
                extra={"class_counts": counts.tolist()},
            )
        )
    details["plots"].append(
        {
            "kind": "bar",
            "title": "Train samples per class",
            "xlabel": "class",
            "ylabel": "samples",
            "series": [{"label": "train", "x": list(case.class_names), "y": counts.tolist()}],
        }
    )

    # profile: images or columns, files the loader could not read, embedding outliers
    statuses.append(_profile(case, metrics, findings, details))
    outliers, out_scores = find_knn_outliers(evidence.get("embeddings", "train"))
    metrics["outlier_fraction"] = len(outliers) / len(train)
    if len(outliers):
        findings.append(
            Finding(
                "outlier",
                f"{len(outliers)} train row(s) lie far from all others in embedding space (kNN distance beyond the far-out fence)",
                split="train",
                indices=tuple(int(i) for i in outliers),
                scores=tuple(float(v) for v in out_scores),
            )
        )
        if case.modality == "image":
            top = outliers[: min(12, options.max_examples)]
            details["images"].append(
                {
                    "title": "Embedding outliers (most isolated first)",
                    "split": "train",
                    "indices": [int(i) for i in top],
                    "captions": [f"#{i}: {case.class_names[y[i]]}" for i in top],
                }
            )

    status = worst(statuses)
    parts = []
    if metrics["label_issues"]:
        parts.append(f"{metrics['label_issues']} likely label errors ({issues.fraction:.1%})")
    if metrics.get("test_leaks") and not discrete:
        parts.append(f"{metrics['test_leaks']} test rows leaked from train")
    if len(redundant) and not discrete:
        parts.append(f"{len(redundant)} duplicate train rows")
    if ratio > options.warn_imbalance_ratio:
        parts.append(f"class imbalance {ratio:.1f}:1")
    if metrics["nonfinite_rows"]:
        parts.append(f"{metrics['nonfinite_rows']} rows with NaN/Inf")
    summary = (
        ("Found " + ", ".join(parts) + ".")
        if parts
        else "No label issues, duplicates, leaks, NaN/Inf or strong imbalance above the thresholds."
    )
    if status == "ok" and parts:
        summary = summary[:-1] + ", all below the warning thresholds."
    remedy = None
    if status in ("warn", "fail"):
        remedy = Remedy(
            command=f"dlclinic treat data.quality {case.metadata.get('cli_args', '<data options>')}".strip(),
            description="drop (or relabel) the flagged label errors, remove duplicates and test leaks, retrain with the same recipe and re-measure",
        )
    return CheckResult(
        id="data.quality",
        status=status,
        summary=summary,
        metrics=metrics,
        thresholds={
            "label_issue_fraction.warn": options.warn_label_issue_fraction,
            "label_issue_fraction.fail": options.fail_label_issue_fraction,
            "duplicate_fraction.warn": options.warn_duplicate_fraction,
            "duplicate_fraction.fail": options.fail_duplicate_fraction,
            "test_leak_fraction.warn": options.warn_leak_fraction,
            "test_leak_fraction.fail": options.fail_leak_fraction,
            "imbalance_ratio.warn": options.warn_imbalance_ratio,
            "imbalance_ratio.fail": options.fail_imbalance_ratio,
            "nonfinite_rows.fail": 0,
        },
        findings=tuple(findings),
        remedy=remedy,
        details=details,
    )


CHECK = CheckSpec(
    id="data.quality",
    requires=(("oof_probs", "train"), ("embeddings", "train"), ("probs", "train")),
    options=QualityOptions,
    run=run,
    description="label issues (confident learning on out-of-fold probabilities), duplicates, leakage, imbalance, NaN/Inf, column/image profile, embedding outliers",
)
