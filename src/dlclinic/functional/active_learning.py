"""Active learning: acquisition scores, core-set selection and a pool-based simulation.

Acquisition functions rank unlabelled samples by how much labelling them is expected to
help (higher = more informative):

* ``score_entropy`` — predictive entropy (Shannon, 1948; uncertainty sampling, Lewis &
  Gale, 1994, "A Sequential Algorithm for Training Text Classifiers");
* ``score_margin`` — ``1 − (p₁ − p₂)``, one minus the gap between the two most probable
  classes (Scheffer et al., 2001, "Active Hidden Markov Models for Information Extraction");
* ``score_bald`` — the mutual information between the prediction and the model
  parameters, from Monte-Carlo dropout samples (Houlsby et al., 2011, "Bayesian Active
  Learning for Classification and Preference Learning"; Gal, Islam & Ghahramani, 2017,
  "Deep Bayesian Active Learning with Image Data");
* ``select_kcenter`` — the greedy k-center core-set: each pick is the point farthest from
  everything already labelled or picked (Sener & Savarese, 2018, "Active Learning for
  Convolutional Neural Networks: A Core-Set Approach").

``simulate`` replays pool-based active learning on data whose labels are all known
(Settles, 2009, "Active Learning Literature Survey"): start from a small stratified random
set, fit a logistic-regression head, acquire ``step`` more labels with a strategy, refit,
and record the accuracy on an evaluation set after every round. ``labels_saved`` compares
a strategy's curve with random sampling's at equal accuracy.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

__all__ = [
    "STRATEGIES",
    "common_target",
    "labels_saved",
    "labels_to_reach",
    "mc_dropout_probs",
    "score_bald",
    "score_entropy",
    "score_margin",
    "select_kcenter",
    "simulate",
]

STRATEGIES = ("random", "entropy", "margin", "kcenter", "bald")

McProbsFn = Callable[[Any, np.ndarray], np.ndarray]
"""``mc_probs_fn(head, x) -> T×N×K``: stochastic class probabilities for the rows ``x``
(standardised embeddings) from the fitted head (a scikit-learn ``LogisticRegression``)."""

_EPS = 1e-12


def _entropy(probs: np.ndarray, axis: int = -1) -> np.ndarray:
    p = np.clip(probs, _EPS, 1.0)
    return (probs * np.log(1.0 / p)).sum(axis=axis)


def _as_probs(probs: np.ndarray, what: str, ndim: int) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != ndim:
        shape = "N×K" if ndim == 2 else "T×N×K"
        raise ValueError(f"{what}: expected {shape} probabilities, but got shape {p.shape}")
    return p


def score_entropy(probs: np.ndarray) -> np.ndarray:
    """Predictive entropy ``−Σₖ pₖ log pₖ`` per row (nats; higher = more uncertain).

    Args:
        probs: N×K predicted class probabilities.

    Returns:
        N scores in ``[0, log K]``.

    Example:
        >>> score_entropy(np.array([[1.0, 0.0], [0.5, 0.5]])).round(4)
        array([0.    , 0.6931])
    """
    return _entropy(_as_probs(probs, "score_entropy", 2))


def score_margin(probs: np.ndarray) -> np.ndarray:
    """Margin uncertainty ``1 − (p₁ − p₂)`` per row, p₁ ≥ p₂ the two largest probabilities.

    Args:
        probs: N×K predicted class probabilities (K ≥ 2).

    Returns:
        N scores in ``[0, 1]``: 1 for a tie between the top two classes, 0 for certainty.

    Example:
        >>> score_margin(np.array([[0.9, 0.1, 0.0], [0.4, 0.4, 0.2]])).round(2)
        array([0.2, 1. ])
    """
    p = _as_probs(probs, "score_margin", 2)
    if p.shape[1] < 2:
        raise ValueError(f"score_margin: expected at least 2 classes, but got shape {p.shape}")
    top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
    return 1.0 - (top2[:, 1] - top2[:, 0])


def score_bald(mc_probs: np.ndarray) -> np.ndarray:
    """BALD: mutual information between the label and the weights, from MC-dropout samples.

    ``I(y; w | x) = H(E_t[p_t]) − E_t[H(p_t)]`` (Houlsby et al., 2011; Gal et al., 2017):
    high where the stochastic forward passes are each confident but disagree.

    Args:
        mc_probs: T×N×K class probabilities from T stochastic passes (dropout on).

    Returns:
        N non-negative scores (nats): 0 when all samples agree.

    Example:
        >>> agree = np.tile([[0.7, 0.3]], (4, 1, 1))           # 4 samples, 1 row, 2 classes
        >>> float(score_bald(agree)[0])
        0.0
        >>> disagree = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])
        >>> round(float(score_bald(disagree)[0]), 4)           # log 2
        0.6931
    """
    p = _as_probs(mc_probs, "score_bald", 3)
    return np.maximum(_entropy(p.mean(axis=0)) - _entropy(p).mean(axis=0), 0.0)


def _min_sq_dist(x: np.ndarray, sq: np.ndarray, centres: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Squared distance from every row of ``x`` to its nearest row among ``x[centres]``."""
    out = np.full(len(x), np.inf)
    for i in range(0, len(centres), chunk):
        c = centres[i : i + chunk]
        d = sq[:, None] + sq[c][None, :] - 2.0 * (x @ x[c].T)
        np.minimum(out, d.min(axis=1), out=out)
    return np.maximum(out, 0.0)


def select_kcenter(embeddings: np.ndarray, labelled_idx: np.ndarray, k: int) -> np.ndarray:
    """Greedy k-center core-set selection (Sener & Savarese, 2018).

    Each pick is the unlabelled row farthest (Euclidean) from its nearest labelled or
    already-picked row; the nearest-centre distances are updated in one vectorised pass
    per pick, O(N·D) per pick. With nothing labelled, the first pick is the row farthest
    from the mean.

    Args:
        embeddings: N×D feature vectors.
        labelled_idx: rows already labelled (may be empty).
        k: how many rows to pick (capped at the number of unlabelled rows).

    Returns:
        The picked row indices, in picking order.

    Example:
        >>> x = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0], [2.0, 0.0]])
        >>> select_kcenter(x, np.array([0]), 2).tolist()
        [2, 3]
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"select_kcenter: expected N×D embeddings, but got shape {x.shape}")
    n = len(x)
    labelled = np.unique(np.asarray(labelled_idx, dtype=np.int64).reshape(-1))
    if labelled.size and (labelled.min() < 0 or labelled.max() >= n):
        raise ValueError(
            f"select_kcenter: labelled_idx must lie in [0, {n}), but got values in [{labelled.min()}, {labelled.max()}]"
        )
    if k < 0:
        raise ValueError(f"select_kcenter: `k >= 0` must hold, but got k={k}")
    k = min(int(k), n - labelled.size)
    sq = np.einsum("ij,ij->i", x, x)
    if labelled.size:
        min_d = _min_sq_dist(x, sq, labelled)
    else:
        min_d = ((x - x.mean(axis=0)) ** 2).sum(axis=1)
    min_d[labelled] = -1.0  # never picked again, whatever the distances say (duplicates)
    picks = np.empty(k, dtype=np.int64)
    for i in range(k):
        j = int(np.argmax(min_d))
        picks[i] = j
        d = sq + sq[j] - 2.0 * (x @ x[j])
        np.minimum(min_d, np.maximum(d, 0.0), out=min_d)
        min_d[j] = -1.0
    return picks


def mc_dropout_probs(head: Any, x: np.ndarray, *, samples: int = 20, rate: float = 0.5, seed: int = 0) -> np.ndarray:
    """MC-dropout class probabilities of a linear softmax head (Gal & Ghahramani, 2016).

    Drops each input feature of ``x`` with probability ``rate`` (inverted dropout, kept
    features scaled by ``1/(1 − rate)``) before the fitted head's linear layer, ``samples``
    times. This mirrors dropout applied to the penultimate layer of a network (as in the
    baseline MLP) when the head is refitted on its embeddings.

    Args:
        head: a fitted multinomial linear classifier with ``coef_`` (K×D) and
            ``intercept_`` (K), e.g. ``sklearn.linear_model.LogisticRegression``.
        x: N×D inputs of the head.
        samples: T, the number of stochastic passes.
        rate: dropout probability in ``[0, 1)``.
        seed: seed of the dropout masks.

    Returns:
        T×N×K probabilities (K = number of classes the head was fitted on).

    Example:
        >>> class Head: coef_ = np.array([[1.0, -1.0], [-1.0, 1.0]]); intercept_ = np.zeros(2)
        >>> mc_dropout_probs(Head(), np.ones((3, 2)), samples=5).shape
        (5, 3, 2)
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"mc_dropout_probs: `0 <= rate < 1` must hold, but got rate={rate}")
    if samples < 1:
        raise ValueError(f"mc_dropout_probs: `samples >= 1` must hold, but got samples={samples}")
    x = np.asarray(x, dtype=np.float64)
    coef = np.asarray(head.coef_, dtype=np.float64)
    intercept = np.asarray(head.intercept_, dtype=np.float64)
    if coef.shape[0] == 1:  # binary heads store one row: logit of class 1 vs class 0
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([np.zeros(1), intercept])
    rng = np.random.default_rng(seed)
    mask = (rng.random((samples, *x.shape)) >= rate) / (1.0 - rate)
    logits = np.einsum("tnd,kd->tnk", x[None] * mask, coef) + intercept
    logits -= logits.max(axis=2, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=2, keepdims=True)


def _stratified_initial(labels: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """``m`` rows drawn at random per class in proportion, at least 2 per class (all if fewer)."""
    n = len(labels)
    chosen = []
    for cls in np.unique(labels):
        rows = np.flatnonzero(labels == cls)
        take = min(len(rows), max(2, int(math.floor(m * len(rows) / n))))
        chosen.append(rng.choice(rows, size=take, replace=False))
    out = np.concatenate(chosen)
    if len(out) < m:
        rest = np.setdiff1d(np.arange(n), out)
        out = np.concatenate([out, rng.choice(rest, size=min(m - len(out), len(rest)), replace=False)])
    return out


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` largest scores (batch top-k acquisition)."""
    if k >= len(scores):
        return np.arange(len(scores))
    return np.argpartition(-scores, k - 1)[:k]


def _checked_arrays(
    embeddings_pool: np.ndarray,
    labels_pool: np.ndarray,
    embeddings_eval: np.ndarray,
    labels_eval: np.ndarray,
    strategy: str,
    mc_probs_fn: McProbsFn | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate the strategy and the shapes; the pool and evaluation arrays as float64 / int64."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(map(repr, STRATEGIES))}, but got {strategy!r}")
    if strategy == "bald" and mc_probs_fn is None:
        raise ValueError(
            "strategy 'bald' needs mc_probs_fn(head, x) -> T×N×K probabilities, e.g. dlclinic.functional.active_learning.mc_dropout_probs"
        )
    xp = np.asarray(embeddings_pool, dtype=np.float64)
    yp = np.asarray(labels_pool).astype(np.int64)
    xe = np.asarray(embeddings_eval, dtype=np.float64)
    ye = np.asarray(labels_eval).astype(np.int64)
    if xp.ndim != 2 or xe.ndim != 2 or xp.shape[1] != xe.shape[1]:
        raise ValueError(f"expected N×D pool and M×D evaluation embeddings, but got shapes {xp.shape} and {xe.shape}")
    if len(xp) != len(yp) or len(xe) != len(ye):
        raise ValueError(
            f"embeddings and labels must have equal lengths, but got pool {len(xp)} vs {len(yp)} and eval {len(xe)} vs {len(ye)}"
        )
    return xp, yp, xe, ye


def simulate(
    embeddings_pool: np.ndarray,
    labels_pool: np.ndarray,
    embeddings_eval: np.ndarray,
    labels_eval: np.ndarray,
    strategy: str,
    *,
    initial: int,
    step: int,
    budget: int,
    seed: int,
    mc_probs_fn: McProbsFn | None = None,
    max_iter: int = 200,
    C: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Pool-based active-learning simulation with a logistic-regression head (Settles, 2009).

    The pool's labels are all known but revealed only when "bought". ``initial`` labels are
    drawn stratified at random (at least 2 per class), a multinomial logistic regression on
    the standardised embeddings (mean and scale of the whole pool, which is unlabelled data
    an annotator has too) is fitted, and each round buys ``step`` more labels chosen by
    ``strategy`` — ``"random"``, ``"entropy"``, ``"margin"``, ``"kcenter"`` or ``"bald"``
    (needs ``mc_probs_fn``) — refitting the head after each round, until ``budget`` labels.

    Args:
        embeddings_pool: N×D pool features (e.g. a network's penultimate layer).
        labels_pool: N pool labels, revealed as they are bought.
        embeddings_eval: M×D evaluation features.
        labels_eval: M evaluation labels.
        strategy: one of :data:`STRATEGIES`.
        initial: labels drawn at random before the first fit.
        step: labels bought per round.
        budget: total labels at the end (capped at N).
        seed: seed of the initial draw, random picks and MC-dropout masks; the same seed
            gives every strategy the same initial set.
        mc_probs_fn: ``mc_probs_fn(head, x) -> T×N×K`` for ``"bald"``, e.g.
            :func:`mc_dropout_probs`.
        max_iter: L-BFGS iterations of each head fit.
        C: inverse L2 regularisation of the head.

    Returns:
        ``(n_labels, accuracy)``: labels used after each round and the head's accuracy on
        the evaluation set at that point.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x = np.concatenate([rng.normal(-3, 1, (100, 2)), rng.normal(3, 1, (100, 2))])
        >>> y = np.repeat([0, 1], 100)
        >>> n, acc = simulate(x, y, x, y, "margin", initial=10, step=10, budget=30, seed=0)
        >>> n.tolist(), bool(acc[-1] > 0.95)
        ([10, 20, 30], True)
    """
    xp, yp, xe, ye = _checked_arrays(embeddings_pool, labels_pool, embeddings_eval, labels_eval, strategy, mc_probs_fn)
    budget = min(int(budget), len(xp))
    if not 1 <= initial <= budget:
        raise ValueError(f"`1 <= initial <= budget` must hold, but got initial={initial}, budget={budget}")
    if step < 1:
        raise ValueError(f"`step >= 1` must hold, but got step={step}")
    # the fits are tiny: BLAS threads cost more in synchronisation than they save
    with threadpool_limits(limits=1, user_api="blas"):
        return _simulate(
            xp,
            yp,
            xe,
            ye,
            strategy,
            initial=initial,
            step=step,
            budget=budget,
            seed=seed,
            mc_probs_fn=mc_probs_fn,
            max_iter=max_iter,
            C=C,
        )


def _simulate(
    xp: np.ndarray,
    yp: np.ndarray,
    xe: np.ndarray,
    ye: np.ndarray,
    strategy: str,
    *,
    initial: int,
    step: int,
    budget: int,
    seed: int,
    mc_probs_fn: McProbsFn | None,
    max_iter: int,
    C: float,
) -> tuple[np.ndarray, np.ndarray]:

    n = len(xp)
    mean, scale = xp.mean(axis=0), xp.std(axis=0)
    scale[scale < 1e-12] = 1.0
    xp = (xp - mean) / scale
    xe = (xe - mean) / scale

    rng = np.random.default_rng(seed)
    labelled = np.zeros(n, dtype=bool)
    labelled[_stratified_initial(yp, initial, rng)] = True
    head = LogisticRegression(C=C, max_iter=max_iter, warm_start=True)
    n_labels: list[int] = []
    accuracy: list[float] = []
    classes_seen: tuple[int, ...] = ()
    while True:
        rows = np.flatnonzero(labelled)
        classes = tuple(np.unique(yp[rows]).tolist())
        if classes != classes_seen:  # a new class makes the warm start's shapes wrong
            head = LogisticRegression(C=C, max_iter=max_iter, warm_start=True)
            classes_seen = classes
        if len(classes) < 2:  # a single class: the head predicts it everywhere
            n_labels.append(len(rows))
            accuracy.append(float(np.mean(ye == classes[0])))
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                head.fit(xp[rows], yp[rows])
            n_labels.append(len(rows))
            accuracy.append(float(np.mean(head.predict(xe) == ye)))
        if len(rows) >= budget:
            break
        k = min(step, budget - len(rows))
        pool = np.flatnonzero(~labelled)
        if strategy == "random" or len(classes) < 2:
            picks = rng.choice(pool, size=k, replace=False)
        elif strategy == "kcenter":
            picks = select_kcenter(xp, rows, k)
        else:
            if strategy == "entropy":
                scores = score_entropy(head.predict_proba(xp[pool]))
            elif strategy == "margin":
                scores = score_margin(head.predict_proba(xp[pool]))
            else:
                assert mc_probs_fn is not None
                scores = score_bald(mc_probs_fn(head, xp[pool]))
            picks = pool[_top(scores, k)]
        labelled[picks] = True
    return np.asarray(n_labels, dtype=np.int64), np.asarray(accuracy, dtype=np.float64)


def _isotonic(values: np.ndarray) -> np.ndarray:
    """Least-squares non-decreasing fit (pool-adjacent-violators, Ayer et al., 1955)."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in np.asarray(values, dtype=np.float64):
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, c2 = blocks.pop()
            m1, c1 = blocks.pop()
            blocks.append([(m1 * c1 + m2 * c2) / (c1 + c2), c1 + c2])
    return np.concatenate([np.full(int(c), m) for m, c in blocks])


def labels_to_reach(
    n_labels: np.ndarray,
    accuracy: np.ndarray,
    target: float | None = None,
    *,
    monotone: bool = False,
    tolerance: float = 0.0,
) -> float:
    """Labels at which a curve first reaches ``target`` accuracy, linearly interpolated.

    Args:
        n_labels: labels after each round.
        accuracy: accuracy after each round.
        target: the accuracy to reach; ``None`` takes the curve's final accuracy (after
            the monotone fit when ``monotone``) minus ``tolerance``.
        monotone: first replace the curve by its least-squares non-decreasing fit
            (isotonic regression), which removes round-to-round evaluation noise.
        tolerance: subtracted from the final accuracy when ``target`` is ``None``.

    Returns:
        ``n_labels[0]`` if the curve starts at or above ``target``, NaN if it never
        reaches it.

    Example:
        >>> labels_to_reach(np.array([10, 20, 30]), np.array([0.5, 0.7, 0.9]), 0.8)
        25.0
        >>> labels_to_reach(np.array([10, 20, 30]), np.array([0.8, 0.7, 0.9]), monotone=True)
        30.0
    """
    n = np.asarray(n_labels, dtype=np.float64)
    a = np.asarray(accuracy, dtype=np.float64)
    if n.shape != a.shape or n.ndim != 1 or n.size == 0:
        raise ValueError(f"expected two 1-D curves of equal non-zero length, but got shapes {n.shape} and {a.shape}")
    if monotone:
        a = _isotonic(a)
    if target is None:
        target = float(a[-1]) - tolerance
    hit = np.flatnonzero(a >= target)
    if hit.size == 0:
        return math.nan
    i = int(hit[0])
    if i == 0:
        return float(n[0])
    a0, a1 = a[i - 1], a[i]
    return float(n[i - 1] + (target - a0) / (a1 - a0) * (n[i] - n[i - 1]))


def common_target(
    acc_random: np.ndarray, acc_strategy: np.ndarray, *, monotone: bool = False, tolerance: float = 0.0
) -> float:
    """The accuracy both curves reach: the lower of the two final accuracies (each after the
    monotone fit when ``monotone``), minus ``tolerance`` — the target of ``labels_saved(common=True)``.

    Example:
        >>> round(common_target(np.array([0.5, 0.9, 0.8]), np.array([0.5, 0.85, 0.95]), monotone=True), 3)
        0.85
    """
    fit = _isotonic if monotone else (lambda a: np.asarray(a, dtype=np.float64))
    return min(float(fit(acc_random)[-1]), float(fit(acc_strategy)[-1])) - tolerance


def labels_saved(
    n_random: np.ndarray,
    acc_random: np.ndarray,
    n_strategy: np.ndarray,
    acc_strategy: np.ndarray,
    *,
    monotone: bool = False,
    tolerance: float = 0.0,
    common: bool = False,
) -> float:
    """Labels saved by a strategy versus random sampling, at equal accuracy.

    The target is the final accuracy of the random curve (minus ``tolerance``); both
    curves are read at the first point where they reach it (linear interpolation between
    rounds, see :func:`labels_to_reach`), and the result is random's count minus the
    strategy's. Negative when the strategy needs more labels; NaN when it never reaches
    the target.

    Args:
        n_random: labels after each round of the random curve.
        acc_random: accuracy after each round of the random curve.
        n_strategy: labels after each round of the strategy's curve.
        acc_strategy: accuracy after each round of the strategy's curve.
        monotone: first replace each accuracy curve by its least-squares non-decreasing
            fit (isotonic regression), which removes the round-to-round noise of small
            evaluation sets that otherwise makes "first reaches" jump between rounds.
        tolerance: how far below random's final accuracy still counts as reaching it,
            e.g. one evaluation sample (``1 / M``), so that a strategy whose plateau is a
            single test sample short is not counted as never getting there.
        common: take as target the lower of the two final accuracies (minus
            ``tolerance``), the accuracy both curves reach. On a plateau, "random's final
            accuracy" is set by evaluation noise: a strategy that plateaus at 99.3 % after
            two rounds would otherwise "never reach" random's lucky 99.5 % of the last
            round. Whether the strategy ends reliably lower is a separate question (its
            accuracy at the budget), which the caller must ask.

    Example:
        >>> n = np.array([100, 200, 300, 400])
        >>> round(labels_saved(n, np.array([.6, .7, .8, .9]), n, np.array([.6, .8, .95, .96])), 2)
        133.33
    """
    if not tolerance >= 0:
        raise ValueError(f"`tolerance >= 0` must hold, but got tolerance={tolerance}")
    acc_random = np.asarray(acc_random, dtype=np.float64)
    if common:
        target = common_target(acc_random, acc_strategy, monotone=monotone, tolerance=tolerance)
    else:
        target = float((_isotonic(acc_random) if monotone else acc_random)[-1]) - tolerance
    need_random = labels_to_reach(n_random, acc_random, target, monotone=monotone)
    need_strategy = labels_to_reach(n_strategy, acc_strategy, target, monotone=monotone)
    return need_random - need_strategy
