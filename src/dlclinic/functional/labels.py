"""Label-quality maths on out-of-fold probabilities (confident learning, via cleanlab)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LabelIssues", "class_counts", "find_label_issues", "imbalance_ratio"]


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
    flagged = cl_find(labels, probs, filter_by=filter_by, return_indices_ranked_by="self_confidence")
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
