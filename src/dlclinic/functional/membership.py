"""Membership-inference audit: how well can an attacker tell training rows from unseen rows?

Two attacks, both scored so that *higher = more likely a member*:

* **loss threshold** (Yeom et al. 2018, "Privacy Risk in Machine Learning"): ``-loss``;
  ranking by the true-class confidence gives the same ROC;
* **difficulty-calibrated** (Watson et al. 2022, "On the Importance of Difficulty
  Calibration in Membership Inference Attacks"; the offline, one-reference form of LiRA,
  Carlini et al. 2022): ``loss_reference - loss_target``, where the reference model never
  saw the audited rows. Rows that are simply easy (low loss everywhere) no longer look
  like members, which is what makes the low-FPR regime meaningful.

:func:`audit_scores` turns member / non-member scores into the AUC (Hanley–McNeil
interval, and a one-sided test against 0.5) and the TPR at a low FPR (Clopper–Pearson
interval). Small samples are handled honestly: with ``n`` non-members the smallest FPR
that can be observed is ``1/n``, and a threshold above every non-member only shows that
the true FPR is below ``3/n`` (the 95 % upper bound of 0 of ``n``); both facts are
returned (``fpr_resolvable``, ``fpr_upper_bound``) rather than a TPR "at 0.1 % FPR" that
the sample cannot support.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import beta, norm
from sklearn.metrics import roc_auc_score, roc_curve

__all__ = ["MembershipAudit", "audit_scores", "calibrated_scores", "clopper_pearson", "loss_scores"]


def loss_scores(losses: np.ndarray) -> np.ndarray:
    """Loss-threshold attack score: ``-loss`` (members have lower loss)."""
    return -np.asarray(losses, dtype=np.float64)


def calibrated_scores(target_losses: np.ndarray, reference_losses: np.ndarray) -> np.ndarray:
    """Difficulty-calibrated score ``loss_ref - loss_target`` (higher = member)."""
    return np.asarray(reference_losses, dtype=np.float64) - np.asarray(target_losses, dtype=np.float64)


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval for ``k`` successes out of ``n``."""
    if n == 0:
        return (float("nan"), float("nan"))
    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


@dataclass(frozen=True)
class MembershipAudit:
    """Outcome of one attack.

    Attributes:
        auc: ROC AUC of member vs non-member scores (0.5 = no leakage).
        auc_ci: 95 % Hanley–McNeil interval.
        auc_p: one-sided p-value of AUC > 0.5 (Mann–Whitney normal approximation).
        target_fpr: the FPR asked for (e.g. 0.001).
        fpr_resolvable: whether ``target_fpr >= 1/n_nonmembers``.
        fpr_used: the empirical FPR at the chosen threshold (≤ target).
        fpr_upper_bound: 95 % Clopper–Pearson upper bound of the true FPR at that threshold.
        tpr: the empirical TPR at that threshold; ``tpr_ci`` its Clopper–Pearson interval.
        roc_fpr, roc_tpr: a down-sampled ROC curve.
    """

    attack: str
    n_members: int
    n_nonmembers: int
    auc: float
    auc_ci: tuple[float, float]
    auc_p: float
    target_fpr: float
    fpr_resolvable: bool
    fpr_used: float
    fpr_upper_bound: float
    tpr: float
    tpr_ci: tuple[float, float]
    roc_fpr: np.ndarray
    roc_tpr: np.ndarray

    @property
    def advantage(self) -> float:
        """Membership advantage ``max(TPR - FPR)`` over the ROC (Yeom et al.)."""
        return float(np.max(self.roc_tpr - self.roc_fpr)) if len(self.roc_fpr) else float("nan")


def audit_scores(
    member_scores: np.ndarray,
    nonmember_scores: np.ndarray,
    *,
    attack: str = "loss",
    target_fpr: float = 1e-3,
    level: float = 0.95,
) -> MembershipAudit:
    """AUC and TPR at low FPR of an attack's scores (higher = member).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> a = audit_scores(rng.normal(1, 1, 500), rng.normal(0, 1, 500))
        >>> 0.7 < a.auc < 0.8, a.fpr_resolvable
        (True, False)
    """
    m = np.asarray(member_scores, dtype=np.float64)
    u = np.asarray(nonmember_scores, dtype=np.float64)
    m, u = m[np.isfinite(m)], u[np.isfinite(u)]
    n1, n0 = len(m), len(u)
    if n1 < 2 or n0 < 2:
        raise ValueError(f"membership audit needs >= 2 members and non-members, found {n1} and {n0}")
    y = np.r_[np.ones(n1), np.zeros(n0)]
    s = np.r_[m, u]
    auc = float(roc_auc_score(y, s))
    # Hanley & McNeil (1982) standard error
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    se = math.sqrt(max(auc * (1 - auc) + (n1 - 1) * (q1 - auc * auc) + (n0 - 1) * (q2 - auc * auc), 0.0) / (n1 * n0))
    z = norm.ppf(1 - (1 - level) / 2)
    ci = (max(0.0, auc - z * se), min(1.0, auc + z * se))
    se0 = math.sqrt((n1 + n0 + 1) / (12.0 * n1 * n0))
    p = float(norm.sf((auc - 0.5) / se0))
    # threshold: allow at most floor(target * n0) non-members above it
    k = int(math.floor(target_fpr * n0 + 1e-9))
    u_sorted = np.sort(u)[::-1]
    thr = u_sorted[k] if k < n0 else -np.inf  # strictly above the (k+1)-th largest non-member
    fp = int((u > thr).sum())
    tp = int((m > thr).sum())
    fpr_used = fp / n0
    fpr_hi = clopper_pearson(fp, n0, level)[1]
    tpr = tp / n1
    fpr_c, tpr_c, _ = roc_curve(y, s)
    if len(fpr_c) > 400:
        keep = np.unique(np.r_[np.linspace(0, len(fpr_c) - 1, 400).astype(int), len(fpr_c) - 1])
        fpr_c, tpr_c = fpr_c[keep], tpr_c[keep]
    return MembershipAudit(
        attack=attack,
        n_members=n1,
        n_nonmembers=n0,
        auc=auc,
        auc_ci=ci,
        auc_p=p,
        target_fpr=target_fpr,
        fpr_resolvable=target_fpr * n0 >= 1,
        fpr_used=fpr_used,
        fpr_upper_bound=fpr_hi,
        tpr=tpr,
        tpr_ci=clopper_pearson(tp, n1, level),
        roc_fpr=fpr_c,
        roc_tpr=tpr_c,
    )
