"""Label-quality maths on out-of-fold probabilities (confident learning, via cleanlab).

The flagged rows (:func:`find_label_issues`) mix label errors with ambiguous rows: on a task
whose best models are 72 % accurate, a quarter of the rows disagree with any prediction. Two
references say how many flags the labels' errors explain:

- :func:`clean_label_null`: the flagged count when labels are drawn from the out-of-fold
  probabilities themselves (every label right if the probabilities are): ambiguity alone.
- :func:`heldout_gap`: the fold models' agreement with held-out train labels against their
  agreement with the test labels: extra noise of the train labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

__all__ = [
    "CleanLabelNull",
    "FlaggedGap",
    "HeldOutGap",
    "LabelIssues",
    "class_counts",
    "clean_label_null",
    "find_label_issues",
    "flagged_gap",
    "heldout_gap",
    "imbalance_ratio",
]


@dataclass(frozen=True)
class LabelIssues:
    """Samples whose given label disagrees with the out-of-fold evidence.

    Attributes:
        indices: flagged rows, worst (lowest label quality) first.
        scores: label-quality score of each flagged row, in [0, 1], lower = worse.
        suggested: the most likely label of each flagged row.
        quality: label-quality score of every row.
        noise_rate: cleanlab's estimate of the fraction of wrong labels (from the
            calibrated confident joint), independent of the flagging rule.
    """

    indices: np.ndarray
    scores: np.ndarray
    suggested: np.ndarray
    quality: np.ndarray
    noise_rate: float

    @property
    def fraction(self) -> float:
        return float(len(self.indices) / max(len(self.quality), 1))

    def confusion(self, labels: np.ndarray) -> list[tuple[int, int, int]]:
        """``(given, suggested, count)`` for every class pair among the flagged rows, most frequent first."""
        pairs: dict[tuple[int, int], int] = {}
        for i, s in zip(self.indices, self.suggested, strict=True):
            key = (int(labels[i]), int(s))
            pairs[key] = pairs.get(key, 0) + 1
        return sorted(((g, s, c) for (g, s), c in pairs.items()), key=lambda t: -t[2])


def find_label_issues(labels: np.ndarray, probs: np.ndarray, *, filter_by: str = "prune_by_noise_rate") -> LabelIssues:
    """Confident learning (Northcutt et al., JAIR 2021) on out-of-fold ``probs``.

    ``probs`` must be out-of-fold: probabilities from a model that never saw the row's
    label. cleanlab does the counting; this adds the suggested label and noise rate.

    Example:
        >>> y = np.array([0, 0, 1, 1, 1]); p = np.array([[.9,.1],[.8,.2],[.1,.9],[.2,.8],[.95,.05]])
        >>> find_label_issues(y, p).indices.tolist()
        [4]
    """
    from cleanlab.count import compute_confident_joint, estimate_joint
    from cleanlab.filter import find_label_issues as cl_find
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)
    k = probs.shape[1]
    present = np.unique(labels)
    if len(present) < 2:
        empty = np.zeros(0, dtype=np.int64)
        return LabelIssues(empty, np.zeros(0), empty, np.ones(len(labels)), 0.0)
    if len(present) < k:
        # cleanlab needs every class to occur; restrict to the classes present
        remap = -np.ones(k, dtype=np.int64)
        remap[present] = np.arange(len(present))
        sub = probs[:, present]
        sub = sub / sub.sum(axis=1, keepdims=True)
        inner = find_label_issues(remap[labels], sub, filter_by=filter_by)
        return LabelIssues(inner.indices, inner.scores, present[inner.suggested], inner.quality, inner.noise_rate)
    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    # n_jobs=1: cleanlab otherwise starts a process pool per call, which costs more than the work
    # here (data.quality calls this 36 times: 2.4-2.7 s → 0.3-0.4 s for its clean-label null, same result)
    flagged = cl_find(labels, probs, filter_by=filter_by, return_indices_ranked_by="self_confidence", n_jobs=1)
    flagged = np.asarray(flagged, dtype=np.int64)
    joint = estimate_joint(labels, probs, confident_joint=compute_confident_joint(labels, probs))
    noise_rate = float(1.0 - np.trace(joint))
    return LabelIssues(
        indices=flagged,
        scores=quality[flagged],
        suggested=probs[flagged].argmax(axis=1).astype(np.int64),
        quality=quality,
        noise_rate=noise_rate,
    )


def class_counts(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Samples per class, length ``n_classes``."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes)


def imbalance_ratio(counts: np.ndarray) -> float:
    """Largest over smallest class count (``inf`` when a class has no sample)."""
    counts = np.asarray(counts)
    return float(counts.max() / counts.min()) if counts.min() > 0 else float("inf")


@dataclass(frozen=True)
class CleanLabelNull:
    """The flagged count against a clean-label null (a parametric bootstrap).

    Each of the ``B`` draws replaces every label with one drawn from the row's own out-of-fold
    probabilities, i.e. labels that are right by construction if the probabilities are, and
    runs the same flagging on them. On an ambiguous task the draws are flagged about as often
    as the given labels: those flags measure ambiguity, not label errors.

    Limit: when the out-of-fold probabilities are calibrated to the *given* labels, they have
    absorbed any label noise that is spread over the data (a flip rate is a floor under every
    probability), and the draws reproduce it: the excess then stays near 0 even with planted
    flips. Only noise the model does not absorb (it is overconfident, or the noise is rare and
    concentrated) shows as an excess.

    Attributes:
        observed: rows flagged with the given labels.
        draws: rows flagged in each of the ``B`` draws.
    """

    observed: int
    draws: np.ndarray

    @property
    def mean(self) -> float:
        return float(np.mean(self.draws)) if len(self.draws) else 0.0

    @property
    def q95(self) -> float:
        return float(np.quantile(self.draws, 0.95)) if len(self.draws) else 0.0

    @property
    def excess(self) -> float:
        """``observed − q95``, at least 0: flags that ambiguity would exceed in only 5 % of draws."""
        return self.excess_at(0.05)

    def quantile(self, q: float) -> float:
        return float(np.quantile(self.draws, q)) if len(self.draws) else 0.0

    def excess_at(self, alpha: float) -> float:
        """``observed −`` the draws' ``1 − alpha`` quantile, at least 0 (a one-sided test at level ``alpha``)."""
        return max(0.0, self.observed - self.quantile(1.0 - alpha)) if len(self.draws) else 0.0


def clean_label_null(
    labels: np.ndarray, probs: np.ndarray, *, draws: int = 30, seed: int = 0, filter_by: str = "prune_by_noise_rate"
) -> CleanLabelNull:
    """Flagged count of :func:`find_label_issues` on ``labels`` and on ``draws`` label vectors drawn from ``probs``.

    Example:
        >>> p = np.tile([[.6, .4]], (200, 1)); y = (np.arange(200) % 5 < 2).astype(int)
        >>> null = clean_label_null(y, p, draws=5)
        >>> null.excess == max(0.0, null.observed - null.q95)
        True
    """
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)
    observed = len(find_label_issues(labels, probs, filter_by=filter_by).indices)
    rng = np.random.default_rng(seed)
    cum = np.cumsum(probs, axis=1)
    counts = []
    for _ in range(draws):
        drawn = np.minimum((rng.random(len(probs))[:, None] > cum).sum(axis=1), probs.shape[1] - 1)
        counts.append(len(find_label_issues(drawn, probs, filter_by=filter_by).indices))
    return CleanLabelNull(observed=observed, draws=np.asarray(counts, dtype=np.int64))


def _z_one_sided(alpha: float) -> float:
    """The standard normal's ``1 − alpha`` quantile."""
    return float(norm.isf(alpha))


@dataclass(frozen=True)
class HeldOutGap:
    """Train labels noisier than test labels, from the K fold models' agreement with each.

    Every fold model predicts its held-out train rows (out of fold) and the test rows; both are
    unseen rows from the same distribution, so a model agrees with both sets of labels equally
    often when they were labelled alike. A lower agreement on train estimates the extra noise
    of the train labels, ``excess_noise = gap / (a − (1 − a)/(K − 1))`` (a flip turns an agreement
    into a disagreement with probability ``a``, the test agreement, and the reverse with
    ``(1 − a)/(K − 1)``). The gap is graded only when it is significant (one-sided z > 1.645,
    binomial standard errors of the two agreements). It sees noise of any kind, absorbed by the
    probabilities or not, but only noise that the test labels do not share.
    """

    train_agreement: float
    test_agreement: float
    gap: float
    se: float
    excess_noise: float

    @property
    def significant(self) -> bool:
        return self.significant_at(0.05)

    def significant_at(self, alpha: float) -> bool:
        """One-sided z test of the gap at level ``alpha`` (z > 1.645 at 0.05)."""
        return self.se > 0 and self.gap / self.se > _z_one_sided(alpha)


def heldout_gap(train_agree: np.ndarray, test_agree: np.ndarray, n_classes: int) -> HeldOutGap:
    """``train_agree``: out-of-fold prediction == given label per train row; ``test_agree``: K × n_test, per fold model.

    Example:
        >>> g = heldout_gap(np.r_[np.ones(90), np.zeros(10)].astype(bool), np.ones((4, 50), bool), 2)
        >>> round(g.gap, 2), round(g.excess_noise, 2)
        (0.1, 0.1)
    """
    a_tr = float(np.mean(train_agree))
    a_te = float(np.mean(test_agree))
    n_tr, n_te = max(len(train_agree), 1), max(np.shape(test_agree)[-1], 1)
    se = float(np.sqrt(a_tr * (1 - a_tr) / n_tr + a_te * (1 - a_te) / n_te))
    denom = a_te - (1 - a_te) / max(n_classes - 1, 1)
    gap = a_te - a_tr
    excess = max(0.0, gap / denom) if denom > 0 else 0.0
    return HeldOutGap(train_agreement=a_tr, test_agreement=a_te, gap=gap, se=se, excess_noise=min(excess, 1.0))


@dataclass(frozen=True)
class FlaggedGap:
    """Train labels flagged more often than test labels by the same procedure.

    Confident learning runs on train (out-of-fold probabilities) and on test (the same fold
    models' probabilities, their flagged counts averaged: test rows are unseen by them too, and
    a model trained on more rows would flag fewer). Ambiguity lives in both splits, so it raises
    both fractions alike; noise added to the train labels only (the usual case: test sets are
    labelled with more care, or the noise came with the training data) raises the train
    fraction alone. Unlike the clean-label null, this reference is not fooled by calibrated
    probabilities that have absorbed systematic flips (a model trained on 4 → 9 flips gives
    9 some probability on every 4, so labels drawn from it flip too). ``excess`` = the train
    fraction minus the test fraction, graded only when significant (one-sided two-proportion
    z > 1.645, pooled standard error); noise the test labels share is invisible to it.
    """

    train_fraction: float
    test_fraction: float
    se: float

    @property
    def excess(self) -> float:
        return max(0.0, self.train_fraction - self.test_fraction)

    @property
    def significant(self) -> bool:
        return self.significant_at(0.05)

    def significant_at(self, alpha: float) -> bool:
        """One-sided two-proportion z test at level ``alpha`` (z > 1.645 at 0.05)."""
        return self.se > 0 and (self.train_fraction - self.test_fraction) / self.se > _z_one_sided(alpha)


def flagged_gap(train_flagged: float, n_train: int, test_flagged: float, n_test: int) -> FlaggedGap:
    """The flagged fractions of train and test and the pooled standard error of their difference.

    Example:
        >>> g = flagged_gap(240, 3000, 30, 1000)
        >>> round(g.excess, 3), g.significant
        (0.05, True)
    """
    n_tr, n_te = max(n_train, 1), max(n_test, 1)
    p = (train_flagged + test_flagged) / (n_tr + n_te)
    se = float(np.sqrt(p * (1 - p) * (1 / n_tr + 1 / n_te)))
    return FlaggedGap(train_fraction=train_flagged / n_tr, test_fraction=test_flagged / n_te, se=se)
