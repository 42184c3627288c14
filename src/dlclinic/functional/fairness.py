"""Group fairness of a classifier's predictions: per-group rates, disparities, tests.

Everything is computed from one object, the per-group confusion matrix, so the point
estimates, the bootstrap intervals (resampling rows within each group) and the
permutation tests (re-assigning group labels) are all a single ``np.bincount`` over
``(replicate, group, label, prediction)`` codes. fairlearn's ``MetricFrame`` and its
``demographic_parity_difference`` / ``equalized_odds_difference`` compute the same point
estimates (the tests compare them), but one call per resample is ~1000× slower than
the vectorised form here, and fairlearn has no resampling of its own.

Definitions (fairlearn's, Hardt et al. 2016 "Equality of Opportunity in Supervised
Learning"; Agarwal et al. 2018):

* selection rate of class ``c`` in group ``g``: ``P(pred = c | group = g)``;
* TPR / FPR of class ``c``: ``P(pred = c | y = c, g)`` and ``P(pred = c | y != c, g)``;
* demographic-parity difference: max − min selection rate across groups;
* equalized-odds difference: ``max(TPR range, FPR range)`` across groups.

Binary tasks use class 1 as the positive class. **Multiclass**: with a user-named
``positive_class`` the task is binarised one-vs-rest for that class; without one, every
class is taken one-vs-rest and each difference is the **maximum over classes** (the
worst class decides; the deciding class is reported). This is the strictest reading and
reduces to fairlearn's definition when ``K = 2``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlclinic.core.errors import InputError

__all__ = [
    "FairnessReport",
    "GroupRates",
    "estimate_fairness",
    "group_confusions",
    "rates_from_confusion",
]


def group_confusions(
    labels: np.ndarray,
    preds: np.ndarray,
    group_idx: np.ndarray,
    n_groups: int,
    n_classes: int,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Confusion matrices per replicate and group: shape ``(B, G, K, K)`` (rows = true label).

    ``rows`` (``B × N`` row indices, or ``None`` for the data as given) picks the rows of
    each replicate; ``group_idx`` may also be ``B × N`` (permuted group labels).
    """
    k, g = n_classes, n_groups
    if rows is None:
        y, p, gi = labels[None, :], preds[None, :], group_idx if group_idx.ndim == 2 else group_idx[None, :]
    else:
        y, p = labels[rows], preds[rows]
        gi = group_idx[rows] if group_idx.ndim == 1 else group_idx
    b = max(y.shape[0], gi.shape[0])
    code = ((np.arange(b)[:, None] * g + gi) * k + y) * k + p
    counts = np.bincount(code.ravel(), minlength=b * g * k * k)
    return counts.reshape(b, g, k, k).astype(np.float64)


@dataclass(frozen=True)
class GroupRates:
    """Rates from confusion matrices ``(..., K, K)``; every array has shape ``(..., K)`` but ``accuracy``/``count``."""

    count: np.ndarray
    accuracy: np.ndarray
    selection: np.ndarray
    tpr: np.ndarray
    fpr: np.ndarray


def rates_from_confusion(conf: np.ndarray) -> GroupRates:
    """Accuracy, per-class selection rate, TPR and FPR (NaN where undefined) from ``(..., K, K)`` confusions."""
    n = conf.sum(axis=(-2, -1))
    diag = np.diagonal(conf, axis1=-2, axis2=-1)
    pos = conf.sum(axis=-1)  # true count per class
    sel = conf.sum(axis=-2)  # predicted count per class
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = diag.sum(-1) / n
        selection = sel / n[..., None]
        tpr = diag / pos
        fpr = (sel - diag) / (n[..., None] - pos)
    return GroupRates(count=n, accuracy=acc, selection=selection, tpr=tpr, fpr=fpr)


def _range(a: np.ndarray, axis: int) -> np.ndarray:
    """max − min over ``axis`` ignoring NaN (NaN when fewer than two finite values)."""
    finite = np.isfinite(a)
    hi = np.where(finite, a, -np.inf).max(axis=axis)
    lo = np.where(finite, a, np.inf).min(axis=axis)
    ok = finite.sum(axis=axis) >= 2
    return np.where(ok, hi - lo, np.nan)


def _disparities(
    conf: np.ndarray, classes: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """From ``(B, G, K, K)``: accuracy gap (rest − worst group), DP diff, EO diff per replicate, and the deciding classes."""
    r = rates_from_confusion(conf)
    cls = list(classes)
    dp_c = _range(r.selection[..., cls], axis=1)  # (B, C)
    eo_c = np.fmax(_range(r.tpr[..., cls], axis=1), _range(r.fpr[..., cls], axis=1))
    dp = np.nanmax(np.where(np.isfinite(dp_c), dp_c, -np.inf), axis=1)
    eo = np.nanmax(np.where(np.isfinite(eo_c), eo_c, -np.inf), axis=1)
    total = conf.sum(axis=1)  # (B, K, K)
    correct_all = np.trace(total, axis1=-2, axis2=-1)
    n_all = total.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        correct_g = np.trace(conf, axis1=-2, axis2=-1)
        n_g = conf.sum(axis=(-2, -1))
        acc_g = correct_g / n_g
        acc_rest = (correct_all[:, None] - correct_g) / (n_all[:, None] - n_g)
        gap = np.nanmax(np.where(np.isfinite(acc_rest - acc_g), acc_rest - acc_g, -np.inf), axis=1)
    dp[~np.isfinite(dp)] = np.nan
    eo[~np.isfinite(eo)] = np.nan
    gap[~np.isfinite(gap)] = np.nan
    return (
        gap,
        dp,
        eo,
        np.nanargmax(np.where(np.isfinite(dp_c), dp_c, -np.inf), axis=1),
        np.nanargmax(np.where(np.isfinite(eo_c), eo_c, -np.inf), axis=1),
    )


@dataclass(frozen=True)
class FairnessReport:
    """Per-group rates with bootstrap intervals, disparities with intervals and permutation p-values.

    Per-group arrays have shape ``(G,)`` (``_ci``: ``(G, 2)``) and are given for the
    *deciding* class of each disparity (``dp_class`` for selection rate, ``eo_class`` for
    TPR/FPR); ``tpr_by_class`` is ``(G, K)`` for a heatmap.
    """

    groups: tuple[str, ...]
    count: np.ndarray
    accuracy: np.ndarray
    accuracy_ci: np.ndarray
    selection: np.ndarray
    selection_ci: np.ndarray
    tpr: np.ndarray
    tpr_ci: np.ndarray
    fpr: np.ndarray
    fpr_ci: np.ndarray
    tpr_by_class: np.ndarray
    overall_accuracy: float
    worst_group: str
    worst_group_accuracy: float
    accuracy_gap: float  # accuracy of the other rows minus the worst group's
    accuracy_gap_ci: tuple[float, float]
    accuracy_gap_p: float
    dp_difference: float
    dp_ci: tuple[float, float]
    dp_p: float
    dp_class: int
    eo_difference: float
    eo_ci: tuple[float, float]
    eo_p: float
    eo_class: int
    positive: str
    small_groups: tuple[str, ...]
    n_boot: int
    n_perm: int


def _ci(samples: np.ndarray, level: float) -> np.ndarray:
    """Percentile interval over axis 0 (NaN-aware), shape ``(..., 2)``."""
    a = (1 - level) / 2
    with np.errstate(invalid="ignore"), _quiet():
        lo = np.nanquantile(samples, a, axis=0)
        hi = np.nanquantile(samples, 1 - a, axis=0)
    return np.stack([lo, hi], axis=-1)


class _quiet:
    """Silence numpy's all-NaN-slice RuntimeWarning inside nanquantile."""

    def __enter__(self) -> None:
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: Any) -> None:
        self._w.__exit__(*exc)


def _checked(
    labels: np.ndarray, preds: np.ndarray, groups: np.ndarray, n_classes: int | None, positive_class: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Flat int labels/preds, flat groups and ``K``, after checking lengths and ``positive_class``."""
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    preds = np.asarray(preds).astype(np.int64).reshape(-1)
    groups = np.asarray(groups).reshape(-1)
    if not len(labels) == len(preds) == len(groups):
        raise InputError(
            f"labels, preds and groups must have equal lengths, found {len(labels)}, {len(preds)}, {len(groups)}"
        )
    k = int(n_classes if n_classes is not None else max(labels.max(initial=0), preds.max(initial=0)) + 1)
    if positive_class is not None and not 0 <= positive_class < k:
        raise InputError(f"positive_class must be in 0..{k - 1}, found {positive_class}")
    return labels, preds, groups, k


def _point(
    y: np.ndarray, p: np.ndarray, gi: np.ndarray, g: int, k: int, classes: list[int]
) -> tuple[GroupRates, np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Point estimates: rates per group, the three disparities and the deciding classes of DP and EO."""
    point = group_confusions(y, p, gi, g, k)
    gap0, dp0, eo0, dpc0, eoc0 = _disparities(point, classes)
    r0 = rates_from_confusion(point[0])
    if not np.isfinite(dp0[0]) or not np.isfinite(eo0[0]):
        raise InputError(
            "fairness: no class has a defined selection rate/TPR/FPR in two or more groups (too few rows per group and class)"
        )
    return r0, gap0, dp0, eo0, classes[int(dpc0[0])], classes[int(eoc0[0])]


def _compared_groups(
    labels: np.ndarray, preds: np.ndarray, groups: np.ndarray, min_group_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...], tuple[str, ...]]:
    """Rows of the groups large enough to compare: labels, preds, group index, group names, and the small groups."""
    names_all, gidx_all = np.unique(groups.astype(str), return_inverse=True)
    sizes = np.bincount(gidx_all, minlength=len(names_all))
    keep_groups = np.flatnonzero(sizes >= min_group_size)
    small = tuple(str(names_all[i]) for i in np.flatnonzero(sizes < min_group_size))
    if len(keep_groups) < 2:
        raise InputError(
            f"fairness needs at least two groups with >= {min_group_size} rows, found sizes {dict(zip(names_all.tolist(), sizes.tolist()))}"
        )
    rows_kept = np.isin(gidx_all, keep_groups)
    remap = -np.ones(len(names_all), dtype=np.int64)
    remap[keep_groups] = np.arange(len(keep_groups))
    names = tuple(str(names_all[i]) for i in keep_groups)
    return labels[rows_kept], preds[rows_kept], remap[gidx_all[rows_kept]], names, small


def _positive(positive_class: int | None, k: int) -> tuple[list[int], str]:
    """The classes taken one-vs-rest, and how to say so."""
    if positive_class is not None:
        return [positive_class], f"class {positive_class} (one-vs-rest)"
    if k == 2:
        return [1], "class 1"
    return list(range(k)), "each class one-vs-rest; the worst class decides"


def _pair(values: np.ndarray) -> tuple[int, int]:
    """Indices of the largest and the smallest finite value."""
    v = np.where(np.isfinite(values), values, np.nan)
    return int(np.nanargmax(v)), int(np.nanargmin(v))


def _bootstrap(
    y: np.ndarray,
    p: np.ndarray,
    gi: np.ndarray,
    g: int,
    k: int,
    n_boot: int,
    rng: np.random.Generator,
    r0: GroupRates,
    worst: int,
    dp_class: int,
    eo_class: int,
) -> tuple[GroupRates, np.ndarray, np.ndarray, np.ndarray]:
    """Bootstrap rates and the signed differences (accuracy gap, DP, EO) per replicate.

    Rows are resampled within each group (group sizes fixed). The intervals are for the
    *signed* differences of the pair (and class) the point estimate picked, so an interval
    that excludes zero means that very pair differs, not only "some range > 0".
    """
    members = [np.flatnonzero(gi == j) for j in range(g)]
    boot_rows = np.concatenate([m[rng.integers(0, len(m), size=(n_boot, len(m)))] for m in members], axis=1)
    bconf = group_confusions(y, p, gi, g, k, rows=boot_rows)
    br = rates_from_confusion(bconf)
    b_n = bconf.sum(axis=(-2, -1))
    b_correct = np.trace(bconf, axis1=-2, axis2=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        bgap = (b_correct.sum(1) - b_correct[:, worst]) / (b_n.sum(1) - b_n[:, worst]) - b_correct[:, worst] / b_n[
            :, worst
        ]
    hi, lo = _pair(r0.selection[:, dp_class])
    bdp = br.selection[:, hi, dp_class] - br.selection[:, lo, dp_class]
    tpr_range = float(np.nanmax(r0.tpr[:, eo_class]) - np.nanmin(r0.tpr[:, eo_class]))
    fpr_range = float(np.nanmax(r0.fpr[:, eo_class]) - np.nanmin(r0.fpr[:, eo_class]))
    eo_rate = br.tpr if tpr_range >= fpr_range else br.fpr
    hi_e, lo_e = _pair((r0.tpr if tpr_range >= fpr_range else r0.fpr)[:, eo_class])
    beo = eo_rate[:, hi_e, eo_class] - eo_rate[:, lo_e, eo_class]
    return br, bgap, bdp, beo


def _permutations(
    y: np.ndarray,
    p: np.ndarray,
    gi: np.ndarray,
    g: int,
    k: int,
    classes: list[int],
    n_perm: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Null disparities: H0 groups exchangeable (all rows for accuracy/DP, within true class for EO)."""
    perm_all = np.argsort(rng.random((n_perm, len(gi))), axis=1)
    pconf = group_confusions(y, p, gi[perm_all], g, k)
    pgap, pdp, _, _, _ = _disparities(pconf, classes)
    gi_within = np.empty((n_perm, len(gi)), dtype=np.int64)
    for c in np.unique(y):
        rows_c = np.flatnonzero(y == c)
        order = np.argsort(rng.random((n_perm, len(rows_c))), axis=1)
        gi_within[:, rows_c] = gi[rows_c][order]
    pconf_eo = group_confusions(y, p, gi_within, g, k)
    _, _, peo, _, _ = _disparities(pconf_eo, classes)
    return pgap, pdp, peo


def _pval(null: np.ndarray, obs: float) -> float:
    """Permutation p-value ``(1 + #null >= obs) / (1 + #null)`` (NaN for an undefined observation)."""
    if not np.isfinite(obs):
        return float("nan")
    null = null[np.isfinite(null)]
    return float((1 + np.sum(null >= obs - 1e-12)) / (1 + len(null)))


def estimate_fairness(
    labels: np.ndarray,
    preds: np.ndarray,
    groups: np.ndarray,
    *,
    n_classes: int | None = None,
    positive_class: int | None = None,
    min_group_size: int = 30,
    n_boot: int = 500,
    n_perm: int = 500,
    level: float = 0.95,
    seed: int = 0,
) -> FairnessReport:
    """Per-group accuracy, selection rate, TPR and FPR, and three disparities with tests.

    Args:
        labels: true classes, shape ``(N,)``.
        preds: predicted classes, shape ``(N,)``.
        groups: group of each row (any hashable values), shape ``(N,)``.
        n_classes: ``K`` (default: ``max(labels, preds) + 1``).
        positive_class: binarise one-vs-rest for this class; default class 1 when ``K = 2``,
            every class (worst class decides) when ``K > 2``.
        min_group_size: groups smaller than this are reported but left out of the
            disparities (their rates are too noisy to compare).
        n_boot: bootstrap replicates (rows resampled within each group) for the intervals.
        n_perm: permutations for the p-values. The accuracy gap and demographic parity are
            tested against group labels permuted over all rows (H0: prediction/correctness
            independent of group); equalized odds against group labels permuted within each
            true class (H0: prediction independent of group given the label).
        level: confidence level of the intervals.
        seed: RNG seed.

    Returns:
        A :class:`FairnessReport`.

    Example:
        >>> y = np.array([0, 1] * 50); g = np.array(["a"] * 50 + ["b"] * 50)
        >>> rep = estimate_fairness(y, y, g, n_boot=50, n_perm=50)
        >>> rep.eo_difference
        0.0
    """
    labels, preds, groups, k = _checked(labels, preds, groups, n_classes, positive_class)
    y, p, gi, names, small = _compared_groups(labels, preds, groups, min_group_size)
    classes, positive = _positive(positive_class, k)
    rng = np.random.default_rng(seed)
    r0, gap0, dp0, eo0, dp_class, eo_class = _point(y, p, gi, len(names), k, classes)
    worst = int(np.nanargmin(r0.accuracy))
    br, bgap, bdp, beo = _bootstrap(y, p, gi, len(names), k, n_boot, rng, r0, worst, dp_class, eo_class)
    pgap, pdp, peo = _permutations(y, p, gi, len(names), k, classes, n_perm, rng)
    return FairnessReport(
        groups=names,
        count=r0.count.astype(np.int64),
        accuracy=r0.accuracy,
        accuracy_ci=_ci(br.accuracy, level),
        selection=r0.selection[:, dp_class],
        selection_ci=_ci(br.selection[..., dp_class], level),
        tpr=r0.tpr[:, eo_class],
        tpr_ci=_ci(br.tpr[..., eo_class], level),
        fpr=r0.fpr[:, eo_class],
        fpr_ci=_ci(br.fpr[..., eo_class], level),
        tpr_by_class=r0.tpr,
        overall_accuracy=float((y == p).mean()),
        worst_group=names[worst],
        worst_group_accuracy=float(r0.accuracy[worst]),
        accuracy_gap=float(gap0[0]),
        accuracy_gap_ci=tuple(float(v) for v in _ci(bgap, level)),  # type: ignore[arg-type]
        accuracy_gap_p=_pval(pgap, float(gap0[0])),
        dp_difference=float(dp0[0]),
        dp_ci=tuple(float(v) for v in _ci(bdp, level)),  # type: ignore[arg-type]
        dp_p=_pval(pdp, float(dp0[0])),
        dp_class=dp_class,
        eo_difference=float(eo0[0]),
        eo_ci=tuple(float(v) for v in _ci(beo, level)),  # type: ignore[arg-type]
        eo_p=_pval(peo, float(eo0[0])),
        eo_class=eo_class,
        positive=positive,
        small_groups=small,
        n_boot=n_boot,
        n_perm=n_perm,
    )
