"""data.quality — label issues, duplicates, train/test leakage, class imbalance, NaN/Inf,
column profile (tables) or image profile (images), unreadable files, embedding outliers.

Remedy: clean the train split and retrain. The findings become a :class:`CleaningPlan`
(:func:`plan_cleaning`: drop or relabel the flagged label issues, drop every redundant
duplicate copy and the NaN/Inf rows, set aside test rows that leaked from train); the model
is retrained with the same recipe and seed on the full and on the cleaned train split,
both are compared on the test rows that did not leak (paired interval), and the check is
measured again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dlclinic.core.atomic import atomic_path, write_weights
from dlclinic.core.case import MAX_ABS_INPUT, Case, unusable_rows, usable_inputs
from dlclinic.core.errors import ConfigError
from dlclinic.core.evidence import Evidence
from dlclinic.core.inference import predict_logits
from dlclinic.core.inputs import parts_from_metadata, primary_width
from dlclinic.core.registry import CheckSpec, RemedySpec, TreatContext, TreatOutcome, conclude
from dlclinic.core.results import CheckResult, Finding, Remedy, Report, Status, grade, worst
from dlclinic.functional.duplicates import (
    DuplicatePairs,
    chance_overlap,
    find_cross_duplicates,
    find_exact_duplicates,
    find_near_duplicates,
    nn_distance_scale,
    one_hot_blocks,
    pattern_ids,
    pooled_counts,
)
from dlclinic.functional.labels import (
    class_counts,
    clean_label_null,
    find_label_issues,
    flagged_gap,
    heldout_gap,
    imbalance_ratio,
)
from dlclinic.functional.profile import find_column_issues, find_image_issues, find_knn_outliers
from dlclinic.functional.stats import paired_accuracy_ci
from dlclinic.functional.text_duplicates import MinHashSettings, find_token_cross_duplicates, find_token_near_duplicates

__all__ = [
    "CHECK",
    "REMEDY",
    "CleaningPlan",
    "QualityOptions",
    "QualityParams",
    "plan_cleaning",
    "run",
    "treat_quality",
    "write_cleaning_artifacts",
]


@dataclass(frozen=True)
class QualityOptions:
    """Thresholds of data.quality (fractions are of the train split).

    The label-issue thresholds grade ``label_excess_fraction``, the flags that ambiguity does
    not explain (``_label_excess``), not the raw flagged fraction; ``label_null_draws`` label
    vectors are drawn for the clean-label null, on a seeded random sample of at most
    ``label_null_rows`` train rows (the observed flags and the draws on the same rows; each draw
    runs confident learning once, so on all of 600,000 rows the 31 runs took 34 s, on 50,000 a
    twelfth of it, and a rate from 50,000 rows is known to ±0.2 points). ``label_alpha`` is the family-wise false-alarm
    level of the label references together: each of the ``m`` references that apply is tested
    at ``label_alpha / m`` (Bonferroni), since the grade takes the largest of them.

    On token ids (modality ``tokens``, 0 = padding) rows are compared as texts
    (functional.text_duplicates): a near copy shares at least ``near_duplicate_jaccard`` of its
    ``near_duplicate_ngram``-gram multiset with the other row (MinHash-LSH candidates verified by
    the exact Jaccard); ``near_duplicate_rel_distance`` applies to the other modalities.
    """

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
    near_duplicate_jaccard: float = field(default=0.8, metadata={"max": 1.0})
    near_duplicate_ngram: int = field(default=1, metadata={"min": 1})
    memorisation_agreement: float = field(default=0.995, metadata={"max": 1.0})
    label_null_draws: int = 30
    label_null_rows: int = field(default=50_000, metadata={"min": 1000})
    label_alpha: float = field(default=0.05, metadata={"max": 0.5})
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
        if not 0.0 < self.near_duplicate_jaccard <= 1.0:
            raise ValueError(f"`0 < near_duplicate_jaccard <= 1` must hold, but got {self.near_duplicate_jaccard}")
        if self.near_duplicate_ngram < 1:
            raise ValueError(f"`near_duplicate_ngram >= 1` must hold, but got {self.near_duplicate_ngram}")


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
        bad = unusable_rows(s.x)
        counts[name] = int(bad.sum())
        if bad.any():
            rows = np.flatnonzero(bad)
            findings.append(
                Finding(
                    "nonfinite",
                    f"{len(rows)} row(s) of {name} contain NaN, Inf or values beyond ±{MAX_ABS_INPUT:.0e} (read as 0 by every other measurement)",
                    split=name,
                    indices=tuple(int(i) for i in rows[:1000]),
                )
            )
    return counts, findings


def _loader_issues(case: Case, metrics: dict[str, float | int | bool | None], findings: list[Finding]) -> Status:
    """Train files the loader skipped or resized."""
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
    return status


def _image_profile(
    x: np.ndarray,
    metrics: dict[str, float | int | bool | None],
    findings: list[Finding],
    details: dict[str, list[dict[str, Any]]],
) -> Status:
    """Blank, dark and bright train images (blank ones warn)."""
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
    if not len(img.blank):
        return "ok"
    details["images"].append(
        {
            "title": "Blank or near-constant images",
            "split": "train",
            "indices": [int(i) for i in img.blank[:12]],
            "captions": [f"#{i}" for i in img.blank[:12]],
        }
    )
    return "warn"


def _column_findings(cols: Any, names: list[str]) -> list[Finding]:
    """Findings for missing values, constant and near-constant columns, and extreme values."""
    findings: list[Finding] = []
    missing_cols = np.flatnonzero(cols.missing_fraction > 0)
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
    return findings


def _column_profile(
    case: Case,
    x: np.ndarray,
    metrics: dict[str, float | int | bool | None],
    findings: list[Finding],
    details: dict[str, list[dict[str, Any]]],
) -> Status:
    """Missing, constant and extreme values per column (extreme values in over 1 % of rows warn)."""
    cols = find_column_issues(x.reshape(len(x), -1))
    names = list(case.feature_names or [f"x{j}" for j in range(cols.missing_fraction.size)])
    metrics["columns_with_missing"] = len(np.flatnonzero(cols.missing_fraction > 0))
    metrics["max_missing_fraction"] = float(cols.missing_fraction.max()) if cols.missing_fraction.size else 0.0
    metrics["constant_columns"] = len(cols.constant)
    metrics["near_constant_columns"] = len(cols.near_constant)
    metrics["extreme_value_rows"] = len(cols.extreme_rows)
    findings += _column_findings(cols, names)
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
    return "warn" if len(cols.extreme_rows) and len(cols.extreme_rows) / len(x) > 0.01 else "ok"


def _profile(
    case: Case,
    metrics: dict[str, float | int | bool | None],
    findings: list[Finding],
    details: dict[str, list[dict[str, Any]]],
) -> Status:
    """Image or column profile of train, plus files the loader skipped; returns the status it implies."""
    loader = _loader_issues(case, metrics, findings)
    if case.modality == "image":
        return worst([loader, _image_profile(case.train.x, metrics, findings, details)])
    if case.modality == "tokens":
        width = primary_width(parts_from_metadata(case.metadata))  # packed inputs: the ids, not their mask
        return worst([loader, _token_profile(case.train.x[:, :width] if width else case.train.x, metrics, findings)])
    return worst([loader, _column_profile(case, case.train.x, metrics, findings, details)])


def _token_profile(x: np.ndarray, metrics: dict[str, float | int | bool | None], findings: list[Finding]) -> Status:
    """Lengths of token-id rows (id 0 = padding): empty rows warn; rows that fill every position
    are reported (they were probably truncated) but not graded. Per-position column statistics
    would call the padded tail "constant columns" on every padded corpus, so they are not used."""
    lengths = (x != 0).sum(axis=1)
    empty = np.flatnonzero(lengths == 0)
    full = float(np.mean(lengths == x.shape[1])) if len(x) else 0.0
    metrics["token_length_median"] = float(np.median(lengths)) if len(x) else 0.0
    metrics["token_rows_empty"] = len(empty)
    metrics["token_rows_full_length"] = full
    metrics["vocabulary_seen"] = len(np.unique(x[x != 0]))
    if full > 0.5:
        findings.append(
            Finding(
                "truncated_sequences",
                f"{full:.0%} of train rows use all {x.shape[1]} positions: if they were cut to fit, the model never sees their end",
                split="train",
            )
        )
    if not len(empty):
        return "ok"
    findings.append(
        Finding(
            "empty_rows",
            f"{len(empty)} train row(s) hold only padding (id 0): the model sees nothing but still gets a label",
            split="train",
            indices=tuple(int(i) for i in empty[:1000]),
        )
    )
    return "warn"


def _label_excess(
    case: Case, evidence: Evidence, issues: Any, options: QualityOptions, metrics: dict[str, float | int | bool | None]
) -> str:
    """Grade label issues by their excess over what ambiguity explains; the sentence that says so.

    Two references (functional.labels): the clean-label null (flagged count with labels drawn
    from the out-of-fold probabilities, ``label_null_draws`` draws; excess = flagged − the
    draws' 95 % quantile) and, with K-fold probabilities and a labelled test split, the held-out
    gap (fold models agree less with held-out train labels than with test labels; graded when
    significant) and the flagged gap of the same procedure on test labels. Each reference is
    tested at ``label_alpha / m`` for the ``m`` that apply (Bonferroni: the grade takes the
    largest, so without the correction three tests at 5 % would false-alarm up to 15 % of clean
    runs). ``label_excess_fraction`` = the largest significant excess as a fraction of train,
    graded against the label-issue thresholds; the raw flagged fraction is not graded.
    """
    y = np.asarray(case.train.y)
    oof = evidence.get("oof_probs", "train")
    folds = evidence.fold_predictions("test") if case.get("test") is not None else None
    alpha = options.label_alpha / (3 if folds is not None else 1)
    metrics["label_reference_alpha"] = alpha
    rows = _null_rows(len(y), options.label_null_rows)
    null = clean_label_null(y[rows], oof[rows], draws=options.label_null_draws, seed=0)
    per_row = len(y) / max(len(rows), 1)  # a sample's counts scaled to the train split
    null_excess = null.excess_at(alpha) * per_row
    metrics["label_null_rows"] = len(rows)
    metrics["label_null_mean"] = null.mean * per_row
    metrics["label_null_q95"] = null.q95 * per_row
    metrics["label_null_excess"] = null_excess
    excess = null_excess / max(len(y), 1)
    sample = f", on a random {len(rows):,} of {len(y):,} rows, scaled" if len(rows) < len(y) else ""
    sentence = (
        f"{null.observed * per_row:.0f} flagged; about {null.mean * per_row:.0f} expected if every label were right "
        f"(clean-label null, {len(null.draws)} draws{sample}, {1 - alpha:.1%} up to {null.quantile(1 - alpha) * per_row:.0f}):"
        f" excess {null_excess:.0f}"
    )
    if folds is not None:
        test_y = np.asarray(case.splits["test"].y)
        gap = heldout_gap(oof.argmax(1) == y, folds[1] == test_y[None, :], case.n_classes)
        metrics["heldout_agreement_train"] = gap.train_agreement
        metrics["heldout_agreement_test"] = gap.test_agreement
        significant = gap.significant_at(alpha)
        metrics["heldout_excess_noise"] = gap.excess_noise if significant else 0.0
        if significant:
            excess = max(excess, gap.excess_noise)
        sentence += (
            f"; fold models agree with {gap.train_agreement:.1%} of held-out train labels and {gap.test_agreement:.1%}"
            f" of test labels (± {1.96 * gap.se:.1%}): "
            + (f"train labels about {gap.excess_noise:.1%} noisier" if significant else "no significant gap")
        )
        excess, more = _test_flag_reference(case, evidence, issues, excess, alpha, metrics)
        sentence += more
    metrics["label_excess_fraction"] = excess
    return sentence


def _null_rows(n: int, most: int) -> np.ndarray:
    """The train rows the clean-label null runs on: all, or a seeded random sample of ``most``."""
    if n <= most:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, size=most, replace=False))


def _test_flag_reference(
    case: Case,
    evidence: Evidence,
    issues: Any,
    excess: float,
    alpha: float,
    metrics: dict[str, float | int | bool | None],
) -> tuple[float, str]:
    """The same confident learning on test labels with the fold models' test probabilities
    (:class:`~dlclinic.functional.labels.FlaggedGap`): the excess it supports and the clause that says so.

    The fold models score test as they scored their held-out train rows (both unseen, same
    models), so only the labels differ; the mean flagged count over the K models is compared.
    The final model's own test probabilities would not do: it is trained on all of train, so
    it is more accurate and flags fewer test rows, which read as noisier train labels on clean
    data (measured: a 3 % false excess on statsmodels' fair table).
    """
    test = case.splits["test"]
    fold_probs = evidence.fold_probabilities("test")
    if fold_probs is None:
        return excess, ""
    try:
        flagged = float(np.mean([len(find_label_issues(np.asarray(test.y), p).indices) for p in fold_probs]))
    except ValueError:  # e.g. a class missing from test: no reference
        return excess, ""
    gap = flagged_gap(len(issues.indices), len(case.train), flagged, len(test))
    metrics["label_issue_fraction_test"] = gap.test_fraction
    significant = gap.significant_at(alpha)
    metrics["flagged_excess"] = gap.excess if significant else 0.0
    if significant:
        excess = max(excess, gap.excess)
    return excess, (
        f"; the same procedure flags {gap.test_fraction:.1%} of test labels vs {gap.train_fraction:.1%} of train: "
        + (f"train labels about {gap.excess:.1%} noisier" if significant else "no significant difference")
    )


def _label_issues(
    case: Case,
    evidence: Evidence,
    options: QualityOptions,
    metrics: dict[str, float | int | bool | None],
    findings: list[Finding],
    details: dict[str, list[dict[str, Any]]],
) -> tuple[Status, Any]:
    """Label issues on out-of-fold probabilities (confident learning); the status and the issues.

    Every flagged row is listed for review; the status grades only the excess over ambiguity
    (:func:`_label_excess`).
    """
    y = case.train.y
    assert y is not None
    issues = find_label_issues(y, evidence.get("oof_probs", "train"))
    metrics["label_issues"] = len(issues.indices)
    metrics["label_issue_fraction"] = issues.fraction
    metrics["estimated_noise_rate"] = issues.noise_rate
    sentence = _label_excess(case, evidence, issues, options, metrics)
    excess = float(metrics["label_excess_fraction"] or 0.0)
    label_status = grade(excess, options.warn_label_issue_fraction, options.fail_label_issue_fraction)
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
    if not len(issues.indices):
        return label_status, issues
    names = case.class_names
    findings.append(
        Finding(
            "label_issue",
            f"{len(issues.indices)} train label(s) ({issues.fraction:.1%}) disagree with out-of-fold predictions ({evidence.oof_method}), listed for review; {sentence}",
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
    return label_status, issues


@dataclass(frozen=True)
class _Duplicates:
    """Duplicates within train: the distance unit, exact groups, near pairs, the redundant copies graded.

    ``natural`` is true when chance explains some repeats (the inputs repeat by nature, e.g.
    tables of coded columns): then the model's view is not searched for more near copies.
    """

    scale: float
    exact_groups: list[np.ndarray]
    near: Any
    redundant: np.ndarray
    natural: bool


_CHANCE_FIELDS = ("observed", "expected", "sd", "p_value", "excess")


def _chance_reference(case: Case) -> str | None:
    """The split whose own repeats say how often rows repeat by chance (test, else deploy)."""
    return next((s for s in ("test", "deploy") if case.get(s) is not None and len(case.splits[s]) >= 2), None)


def _chance_searches(case: Case) -> dict[str, np.ndarray]:
    """Exact repeats against a random re-split (functional.duplicates.chance_overlap), as arrays."""
    out: dict[str, np.ndarray] = {}
    reference = _chance_reference(case)
    for split in ("test", "deploy"):
        other = case.get(split)
        if other is None or not len(other):
            continue
        if case.modality == "tokens":  # token rows: the same text up to padding
            ref_ids, qry_ids = pattern_ids(_token_ids(case, case.train.x), _token_ids(case, other.x), pad_id=0)
        else:
            ref_ids, qry_ids = pattern_ids(usable_inputs(case.train.x), usable_inputs(other.x))
        cross, redundant = chance_overlap(ref_ids, qry_ids)
        out[f"{split}.chance"] = np.array([getattr(cross, f) for f in _CHANCE_FIELDS], dtype=np.float64)
        out[f"{split}.pooled"] = pooled_counts(ref_ids, qry_ids)
        if split == reference:
            out["dup.chance"] = np.array([getattr(redundant, f) for f in _CHANCE_FIELDS], dtype=np.float64)
            train_pooled = pooled_counts(qry_ids, ref_ids)
            out["dup.pooled"] = train_pooled
    return out


def _exact_arrays(groups: list[np.ndarray]) -> dict[str, np.ndarray]:
    return {
        "exact": np.concatenate(groups).astype(np.int64) if groups else np.zeros(0, dtype=np.int64),
        "exact_sizes": np.array([len(g) for g in groups], dtype=np.int64),
    }


def _minhash_available() -> bool:
    """Whether datasketch (extra ``text``) is installed: near duplicates of token rows need it."""
    return find_spec("datasketch") is not None


def _search_params(case: Case, options: QualityOptions) -> dict[str, Any]:
    """What the cached searches depend on besides the data (token rows: the MinHash settings too)."""
    params: dict[str, Any] = {"near": options.near_duplicate_rel_distance, "chance": 1, "gower": 1}
    if case.modality == "tokens":
        params["minhash"] = [options.near_duplicate_jaccard, options.near_duplicate_ngram, _minhash_available()]
    return params


def _token_ids(case: Case, x: np.ndarray) -> np.ndarray:
    """The token ids of packed rows (the primary input: not the attention mask or lengths beside it)."""
    width = primary_width(parts_from_metadata(case.metadata))
    return x.reshape(len(x), -1)[:, :width] if width else x


def _token_searches(case: Case, options: QualityOptions) -> dict[str, np.ndarray]:
    """Token rows compared as texts (functional.text_duplicates): exact copies up to padding, and
    near copies whose shingle Jaccard is ≥ ``near_duplicate_jaccard`` (MinHash-LSH candidates,
    verified exactly; exact copies only without datasketch). Distances are 1 − Jaccard (unit 1).
    """
    ids = _token_ids(case, case.train.x)
    settings = MinHashSettings(threshold=options.near_duplicate_jaccard, ngram=options.near_duplicate_ngram)
    minhash = _minhash_available()
    near = find_token_near_duplicates(ids, settings, near=minhash)
    out = {
        "scale": np.asarray(1.0),
        **_exact_arrays(find_exact_duplicates(ids, pad_id=0)),
        "near.pairs": near.pairs,
        "near.distances": near.distances,
        "minhash": np.asarray(minhash),
        "minhash.miss": np.asarray(settings.layout().miss_probability),
    }
    for split in ("test", "deploy"):
        other = case.get(split)
        if other is not None:
            leaks = find_token_cross_duplicates(ids, _token_ids(case, other.x), settings, near=minhash)
            out[f"{split}.pairs"], out[f"{split}.distances"] = leaks.pairs, leaks.distances
    return out


def _searches(case: Case, options: QualityOptions) -> dict[str, np.ndarray]:
    """The input-space searches (exact and near duplicates in train, copies of train in test/deploy), as arrays."""
    if case.modality == "tokens":
        return {**_token_searches(case, options), **_chance_searches(case)}
    train = case.train
    blocks = _categorical_blocks(case)  # one-hot blocks of a mixed table: near duplicates by Gower distance
    scale = nn_distance_scale(train.x, categorical_blocks=blocks)
    exact_groups = find_exact_duplicates(train.x)
    near = find_near_duplicates(
        train.x, rel_threshold=options.near_duplicate_rel_distance, scale=scale, categorical_blocks=blocks
    )
    out = {
        "scale": np.asarray(scale, dtype=np.float64),
        **_exact_arrays(exact_groups),
        "near.pairs": near.pairs,
        "near.distances": near.distances,
    }
    for split in ("test", "deploy"):
        other = case.get(split)
        if other is not None:
            leaks = find_cross_duplicates(
                train.x,
                other.x,
                rel_threshold=options.near_duplicate_rel_distance,
                scale=scale,
                categorical_blocks=blocks,
            )
            out[f"{split}.pairs"], out[f"{split}.distances"] = leaks.pairs, leaks.distances
    return {**out, **_chance_searches(case)}


def _categorical_blocks(case: Case) -> list[np.ndarray]:
    """The one-hot blocks of a table's categorical columns (``case.metadata["io"]["encoding"]``), else none."""
    io = case.metadata.get("io")
    encoding = io.get("encoding") if isinstance(io, dict) else None
    if case.modality != "table" or not encoding or case.feature_names is None:
        return []
    return one_hot_blocks(case.feature_names, encoding)


def _found(searches: dict[str, np.ndarray], key: str) -> DuplicatePairs:
    return DuplicatePairs(
        np.asarray(searches[f"{key}.pairs"], dtype=np.int64).reshape(-1, 2),
        np.asarray(searches[f"{key}.distances"]),
        float(searches["scale"]),
    )


def _chance(searches: dict[str, np.ndarray], key: str) -> dict[str, float] | None:
    if f"{key}.chance" not in searches:
        return None
    return dict(zip(_CHANCE_FIELDS, (float(v) for v in searches[f"{key}.chance"]), strict=True))


def _graded_groups(exact_groups: list[np.ndarray], pooled: np.ndarray, excess: int) -> list[np.ndarray]:
    """The exact groups beyond chance: rarest patterns first (fewest copies in train and test together)."""
    order = sorted(range(len(exact_groups)), key=lambda g: (int(pooled[exact_groups[g][0]]), g))
    chosen: list[np.ndarray] = []
    copies = 0
    for g in order:
        if copies >= excess:
            break
        chosen.append(exact_groups[g])
        copies += len(exact_groups[g]) - 1
    return chosen


def _chance_finding(code: str, split: str, what: str, chance: dict[str, float], n_distinct: int | None) -> Finding:
    distinct = f" with {n_distinct:,} distinct train rows" if n_distinct is not None else ""
    verdict = (
        f"excess {int(chance['excess'])} (p = {chance['p_value']:.3f})"
        if chance["excess"]
        else f"no significant excess (p = {chance['p_value']:.2f})"
    )
    return Finding(
        code,
        f"{int(chance['observed'])} {what}; about {chance['expected']:,.0f} ± {chance['sd']:.0f} expected by chance{distinct} (random re-splits of the pooled rows): {verdict}",
        split=split,
        extra={k: chance[k] for k in _CHANCE_FIELDS},
    )


def _near_method(
    searches: dict[str, np.ndarray],
    options: QualityOptions,
    metrics: dict[str, float | int | bool | None],
    findings: list[Finding],
) -> dict[str, Any]:
    """How near copies were searched, for the findings; on token rows also as metrics, and a note when datasketch is missing.

    ``near_duplicate_jaccard_threshold`` is present on token rows only (the MinHash Jaccard
    method); ``near_duplicate_lsh_miss_probability`` is the chance that the LSH bands never
    propose a pair exactly at the threshold (less above it), ``None`` when no MinHash ran.
    """
    if "minhash" not in searches:
        return {}
    minhash = bool(searches["minhash"])
    metrics["near_duplicate_jaccard_threshold"] = options.near_duplicate_jaccard
    metrics["near_duplicate_ngram"] = options.near_duplicate_ngram
    metrics["near_duplicate_lsh_miss_probability"] = float(searches["minhash.miss"]) if minhash else None
    if not minhash:
        findings.append(
            Finding(
                "near_duplicates_not_searched",
                "near copies of token rows were not searched (MinHash needs datasketch: pip install 'dlclinic[text]'); only exact copies (the same ids up to padding) were",
                split="train",
            )
        )
    return {
        "method": "minhash_jaccard" if minhash else "exact_text",
        "jaccard_threshold": options.near_duplicate_jaccard,
        "ngram": options.near_duplicate_ngram,
    }


def _duplicates(
    case: Case,
    options: QualityOptions,
    searches: dict[str, np.ndarray],
    metrics: dict[str, float | int | bool | None],
    findings: list[Finding],
) -> tuple[Status, _Duplicates]:
    """Exact and near duplicates within train; exact repeats are graded only beyond chance.

    Chance is a random re-split of train and the test (else deploy) split pooled
    (functional.duplicates.chance_overlap). Near (non-exact) copies are within
    ``near_duplicate_rel_distance`` × the median distance to the nearest distinct row, a
    distance chance rarely gives; on tables of coded columns no two distinct rows are that
    close, so only exact repeats count there. On token ids near copies are pairs of shingle
    Jaccard ≥ ``near_duplicate_jaccard`` (:func:`_near_method`). Without a second split the
    chance cannot be measured: repeats are then graded unless fewer than half of the train rows
    are distinct.
    """
    train = case.train
    scale = float(searches["scale"])
    exact_groups = (
        list(np.split(searches["exact"], np.cumsum(searches["exact_sizes"])[:-1]))
        if len(searches["exact_sizes"])
        else []
    )
    near = _found(searches, "near")
    method = _near_method(searches, options, metrics, findings)
    exact_copies = sum(len(g) - 1 for g in exact_groups)
    distinct_fraction = 1.0 - exact_copies / len(train)
    chance = _chance(searches, "dup")
    if chance is None:
        natural = distinct_fraction < 0.5
        graded_groups = [] if natural else exact_groups
    else:
        natural = chance["expected"] >= 0.5
        graded_groups = _graded_groups(exact_groups, searches["dup.pooled"], int(chance["excess"]))
        metrics["duplicates_expected_by_chance"] = chance["expected"]
        metrics["duplicates_chance_p_value"] = chance["p_value"]
        if natural:
            findings.append(
                _chance_finding(
                    "chance_repeats", "train", "redundant exact copies within train", chance, len(train) - exact_copies
                )
            )
    near_only = near.pairs[near.distances > 0] if len(near) else near.pairs
    redundant = redundant_copies(len(train), near_only if natural else near.pairs, graded_groups)
    metrics["exact_duplicate_groups"] = len(exact_groups)
    metrics["near_duplicate_pairs"] = len(near)
    metrics["duplicate_fraction"] = len(redundant) / len(train)
    metrics["distinct_row_fraction"] = distinct_fraction
    status: Status = "ok"
    if chance is None and natural:
        findings.append(
            Finding(
                "discrete_inputs",
                f"only {distinct_fraction:.0%} of train rows are distinct and there is no test or deploy split to measure how often rows repeat by chance, so duplicates are reported but not graded",
                split="train",
            )
        )
    else:
        status = grade(metrics["duplicate_fraction"], options.warn_duplicate_fraction, options.fail_duplicate_fraction)
    if len(redundant):
        findings.append(
            Finding(
                "duplicate",
                f"{len(redundant)} train row(s) are (near-)copies of another train row beyond chance ({len(graded_groups)} exact group(s), {len(near)} near pair(s))",
                split="train",
                indices=tuple(int(j) for j in redundant),
                extra={"pairs": near.pairs[:1000].tolist(), "distance_unit": scale, **method},
            )
        )
    return status, _Duplicates(scale, exact_groups, near, redundant, natural)


def _embedding_duplicates(
    case: Case,
    evidence: Evidence,
    options: QualityOptions,
    dup: _Duplicates,
    metrics: dict[str, float | int | bool | None],
    findings: list[Finding],
    details: dict[str, list[dict[str, Any]]],
) -> None:
    """Near-duplicates the inputs hide (shifted, re-encoded, resized copies) but the model's view shows.

    Reported for review, not graded: a strong model legitimately maps some distinct inputs close together.
    """
    emb = evidence.get("embeddings", "train").astype(np.float32)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    sem = find_near_duplicates(emb, rel_threshold=options.embedding_duplicate_rel_distance)
    known = {tuple(p) for p in dup.near.pairs.tolist()} | {
        (int(g[a]), int(g[b])) for g in dup.exact_groups for a in range(len(g)) for b in range(a + 1, len(g))
    }
    sem_pairs = [(int(i), int(j)) for i, j in sem.pairs.tolist() if (int(i), int(j)) not in known]
    metrics["embedding_near_duplicate_pairs"] = len(sem_pairs)
    if not sem_pairs or dup.natural:
        return
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


def _split_leaks(
    split: str, leaks: DuplicatePairs, searches: dict[str, np.ndarray]
) -> tuple[np.ndarray, dict[str, float] | None]:
    """The matches graded as leaks: near (non-exact) copies and the exact matches beyond chance, rarest first."""
    chance = _chance(searches, split)
    exact = leaks.distances <= 0
    if chance is None or not exact.any():
        return np.arange(len(leaks)), chance
    pooled = searches[f"{split}.pooled"]
    exact_rows = np.flatnonzero(exact)
    ranked = exact_rows[np.argsort(pooled[leaks.pairs[exact_rows, 1]], kind="stable")]
    chosen = np.concatenate([ranked[: int(chance["excess"])], np.flatnonzero(~exact)])
    return np.sort(chosen), chance


def _leaks(
    case: Case,
    options: QualityOptions,
    dup: _Duplicates,
    searches: dict[str, np.ndarray],
    metrics: dict[str, float | int | bool | None],
    findings: list[Finding],
) -> Status:
    """Test and deploy rows with a (near-)copy in train beyond chance; test leaks are graded.

    Exact matches count as leaks only as far as they exceed what random re-splits of the
    pooled rows give (functional.duplicates.chance_overlap, one-sided, α = 0.01); the rows
    listed are the most surprising matches (rarest patterns) up to that excess. Near
    (non-exact) copies all count.
    """
    leak_statuses: list[Status] = []
    for split in ("test", "deploy"):
        other = case.get(split)
        if other is None:
            continue
        found = _found(searches, split)
        chosen, chance = _split_leaks(split, found, searches)
        leaks = DuplicatePairs(found.pairs[chosen], found.distances[chosen], found.scale)
        frac = len(leaks) / len(other)
        metrics[f"{split}_leaks"] = len(leaks)
        metrics[f"{split}_leak_fraction"] = frac
        if chance is not None:
            metrics[f"{split}_train_matches"] = int(chance["observed"])
            metrics[f"{split}_train_matches_expected"] = chance["expected"]
            metrics[f"{split}_train_matches_p_value"] = chance["p_value"]
            if chance["expected"] >= 0.5:
                findings.append(
                    _chance_finding(
                        "chance_matches", split, f"{split} rows share a feature vector with train", chance, None
                    )
                )
        if split == "test":
            leak_statuses.append(
                "fail" if frac > options.fail_leak_fraction else "warn" if frac > options.warn_leak_fraction else "ok"
            )
        if len(leaks):
            findings.append(
                Finding(
                    "leak",
                    f"{len(leaks)} {split} row(s) ({frac:.1%}) have a (near-)copy in train beyond chance"
                    + (": test metrics are inflated" if split == "test" else ""),
                    split=split,
                    indices=tuple(int(j) for j in leaks.pairs[:, 1]),
                    scores=tuple(float(d / dup.scale) if dup.scale else 0.0 for d in leaks.distances),
                    extra={"train_rows": [int(i) for i in leaks.pairs[:, 0]]},
                )
            )
    return worst(leak_statuses)


def _imbalance(
    case: Case,
    options: QualityOptions,
    metrics: dict[str, float | int | bool | None],
    findings: list[Finding],
    details: dict[str, list[dict[str, Any]]],
) -> tuple[Status, float]:
    """Class imbalance of train: the status and the largest-to-smallest class ratio."""
    counts = class_counts(case.train.y, case.n_classes)  # type: ignore[arg-type]
    ratio = imbalance_ratio(counts)
    metrics["imbalance_ratio"] = ratio
    metrics["smallest_class_count"] = int(counts.min())
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
    return grade(ratio, options.warn_imbalance_ratio, options.fail_imbalance_ratio), ratio


def _outliers(
    case: Case,
    evidence: Evidence,
    options: QualityOptions,
    metrics: dict[str, float | int | bool | None],
    findings: list[Finding],
    details: dict[str, list[dict[str, Any]]],
) -> None:
    """Train rows far from all others in embedding space (reported, not graded)."""
    y = case.train.y
    assert y is not None
    outliers, out_scores = find_knn_outliers(evidence.get("embeddings", "train"))
    metrics["outlier_fraction"] = len(outliers) / len(case.train)
    if not len(outliers):
        return
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


def _summary(
    status: Status,
    metrics: dict[str, float | int | bool | None],
    label_fraction: float,
    dup: _Duplicates,
    ratio: float,
    options: QualityOptions,
) -> str:
    parts = []
    if metrics["label_issues"]:
        parts.append(
            f"{metrics['label_issues']} flagged labels ({label_fraction:.1%} of train; beyond what ambiguity explains:"
            f" {float(metrics['label_excess_fraction'] or 0):.1%})"
        )
    if metrics.get("test_leaks"):
        parts.append(f"{metrics['test_leaks']} test rows leaked from train")
    if len(dup.redundant):
        parts.append(f"{len(dup.redundant)} duplicate train rows")
    if ratio > options.warn_imbalance_ratio:
        parts.append(f"class imbalance {ratio:.1f}:1")
    if metrics["nonfinite_rows"]:
        parts.append(f"{metrics['nonfinite_rows']} rows with NaN/Inf or overflowing values")
    summary = (
        ("Found " + ", ".join(parts) + ".")
        if parts
        else "No label issues, duplicates, leaks, NaN/Inf or strong imbalance above the thresholds."
    )
    if status == "ok" and parts:
        summary = summary[:-1] + ", all below the warning thresholds."
    return summary


def run(case: Case, evidence: Evidence, options: QualityOptions) -> CheckResult:
    """Measure label issues, duplicates, leakage, imbalance and non-finite values."""
    assert case.train.y is not None
    statuses: list[Status] = []
    findings: list[Finding] = []
    metrics: dict[str, float | int | bool | None] = {}
    details: dict[str, list[dict[str, Any]]] = {"plots": [], "images": [], "tables": []}
    nonfinite, nf_findings = _nonfinite(case)
    metrics["nonfinite_rows"] = sum(nonfinite.values())
    findings += nf_findings
    statuses.append("fail" if metrics["nonfinite_rows"] else "ok")
    label_status, issues = _label_issues(case, evidence, options, metrics, findings, details)
    statuses.append(label_status)
    searches = evidence.cached(
        "data.quality.searches",
        _search_params(case, options),
        lambda: _searches(case, options),
    )
    dup_status, dup = _duplicates(case, options, searches, metrics, findings)
    statuses.append(dup_status)
    _embedding_duplicates(case, evidence, options, dup, metrics, findings, details)
    statuses.append(_leaks(case, options, dup, searches, metrics, findings))
    imbalance_status, ratio = _imbalance(case, options, metrics, findings, details)
    statuses.append(imbalance_status)
    # profile: images or columns, files the loader could not read, embedding outliers
    statuses.append(_profile(case, metrics, findings, details))
    _outliers(case, evidence, options, metrics, findings, details)
    status = worst(statuses)
    remedy = None
    if status in ("warn", "fail"):
        remedy = Remedy(
            command="dlclinic treat data.quality",
            description="drop (or relabel) the flagged label errors, remove duplicates and test leaks, retrain with the same recipe and re-measure",
        )
    return CheckResult(
        id="data.quality",
        status=status,
        summary=_summary(status, metrics, issues.fraction, dup, ratio, options),
        metrics=metrics,
        thresholds={
            "label_excess_fraction.warn": options.warn_label_issue_fraction,
            "label_excess_fraction.fail": options.fail_label_issue_fraction,
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


@dataclass(frozen=True)
class QualityParams:
    """``mode``: ``drop`` removes flagged label issues, ``relabel`` gives them the likely label."""

    mode: Literal["drop", "relabel"] = "drop"


def _plan(ctx: TreatContext, params: QualityParams, before: Report) -> tuple[CleaningPlan, np.ndarray]:
    """The cleaning plan from the check's findings, and the test rows that did not leak from train."""
    case = ctx.case
    test = case.splits["test"]
    plan = plan_cleaning(len(case.train), before[ctx.challenge_id], mode=params.mode, n_test=len(test))
    eval_rows = np.setdiff1d(np.arange(len(test)), plan.test_leaks)
    if len(eval_rows) < 30:
        raise ConfigError(
            f"treat data.quality: expected at least 30 test rows that did not leak from train to verify the treatment, found {len(eval_rows)} (of {len(test)}); use a test set collected separately from train"
        )
    if len(plan.keep) < max(2 * case.n_classes, 10):
        raise ConfigError(
            f"treat data.quality: cleaning would leave {len(plan.keep)} train rows, expected at least {max(2 * case.n_classes, 10)}; inspect the findings before treating"
        )
    return plan, eval_rows


def _retrain_pair(ctx: TreatContext, cleaned: Case) -> tuple[Any, Any]:
    """The same recipe and seed on the full and on the cleaned train split (a controlled comparison)."""
    case, cfg = ctx.case, ctx.fit_config
    assert ctx.retrain is not None
    with ctx.progress.step("retraining on the cleaned data", total=2) as advance:
        reference = (
            case.model
            if case.metadata.get("dlclinic_baseline")
            else ctx.retrain(usable_inputs(case.train.x), case.train.y, cfg.seed)
        )
        advance(1)
        model = ctx.retrain(usable_inputs(cleaned.train.x), cleaned.train.y, cfg.seed)
        advance(1)
    return reference, model


def treat_quality(ctx: TreatContext, params: QualityParams) -> TreatOutcome:
    """Drop/relabel label issues, drop duplicates and NaN rows, retrain with the same recipe and seed."""
    case = ctx.case
    test = case.get("test")
    if test is None or not test.labelled:
        raise ConfigError("treat data.quality needs a labelled test split to verify the treatment (pass --test)")
    if ctx.retrain is None:
        raise ConfigError(
            "treat data.quality retrains the model, so it needs the architecture: pass --model file.py:factory (a .pt2/.onnx file or a bare module cannot be retrained)"
        )
    before = ctx.measure(case)
    plan, eval_rows = _plan(ctx, params, before)
    x_eval, y_eval = test.x[eval_rows], test.y[eval_rows]  # type: ignore[index]
    cleaned = case.with_train(plan.keep, plan.relabel)
    if len(plan.test_leaks):
        cleaned = cleaned.with_split_rows("test", eval_rows)
    reference, model = _retrain_pair(ctx, cleaned)
    pred_before = predict_logits(reference, x_eval).argmax(1)
    pred_after = predict_logits(model, x_eval).argmax(1)
    acc_before, acc_after = float((pred_before == y_eval).mean()), float((pred_after == y_eval).mean())
    low, high = paired_accuracy_ci(pred_before == y_eval, pred_after == y_eval)
    treated = dataclasses.replace(
        cleaned, model=model, model_source=f"{case.model_source.replace(', from cache', '')}, retrained on cleaned data"
    )
    after = ctx.measure(treated)
    artifacts = (
        write_cleaning_artifacts(ctx.out_dir, plan, cleaned.train.y, eval_rows, model)  # type: ignore[arg-type]
        if ctx.out_dir is not None
        else {}
    )
    return conclude(
        ctx,
        before=before,
        after=after,
        action=f"{params.mode} {len(plan.relabel) or plan.dropped_label_issues} flagged label issue(s), drop {plan.dropped_duplicates} duplicate(s) and {plan.dropped_nonfinite} NaN/Inf row(s), retrain with the same recipe and seed",
        before_values={"test_accuracy": acc_before, "train_rows": len(case.train)},
        after_values={
            "test_accuracy": acc_after,
            "train_rows": len(cleaned.train),
            "accuracy_gain_ci_low": low,
            "accuracy_gain_ci_high": high,
        },
        check_metrics=("label_issue_fraction", "duplicate_fraction"),
        artifacts=artifacts,
        notes=(
            f"both accuracies are measured on the {len(eval_rows)} test rows that did not leak from train ({len(plan.test_leaks)} leaked rows excluded), with models trained by the same recipe and seed",
            f"95 % paired-bootstrap interval of the accuracy gain over test rows: [{low:+.3f}, {high:+.3f}] (test-set sampling only, one training seed)",
            "leaked test rows are removed from the test split of the treated case (cleaned_test_rows.csv); remove them from your test data too",
        ),
    )


REMEDY = RemedySpec(
    id="data.quality",
    params=QualityParams,
    run=treat_quality,
    description="Drop or relabel flagged label issues, drop duplicates and NaN rows, retrain, measure again.",
)
