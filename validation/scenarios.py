"""What the suite runs: per check, a clean-case generator and defects planted at several strengths.

A :class:`Plan` names a check, the false-alarm level the check states (5 % unless its
docstring says otherwise), the modalities it is validated on, a ``clean(modality, seed)``
builder and its :class:`Defect` s. A builder returns a :class:`Trial`: the case, the
check's options (defaults unless a scenario must set a budget) and, for defects with
per-sample findings, the planted rows per split (the ground truth for precision/recall).

Strength 0 is never built by a defect: clean cases come from ``clean`` only, once per
(check, modality, seed), and are shared by every defect of the check.

Adding a check: write ``clean`` and one ``Defect`` per failure mode it claims to catch,
with strengths that span "barely there" to "obvious", and append a :class:`Plan` to
``PLANS``. Use real data from :mod:`validation.data` where the ground truth allows.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np

from validation.data import Splits, blobs, redundant_pool, split, token_sequences
from validation.plan import (
    FLOAT_MODALITIES,
    NEW_MODALITIES,
    Defect,
    Plan,
    Trial,
    baseline,
    case_from,
    default_fit,
    fast_fit,
    flip_labels,
    mean_shift,
    memorise_fit,
    rng_for,
    token_lstm,
    token_shift,
)

__all__ = ["NOT_VALIDATED", "PLANS", "Defect", "Plan", "Trial", "fast_fit", "plan_for"]


# ----------------------------------------------------------------------------- data.quality


def _quality_splits(modality: str, seed: int) -> Splits:
    return split(modality, seed, (0.6, 0.4, 0.0))


def quality_clean(modality: str, seed: int) -> Trial:
    return Trial(case_from(_quality_splits(modality, seed), modality))


def quality_label_noise(modality: str, p: float, seed: int) -> Trial:
    s = _quality_splits(modality, seed)
    k = int(max(s.y_train.max(), s.y_test.max())) + 1
    y, rows = flip_labels(s.y_train, p, k, rng_for(seed, p, 1))
    return Trial(
        case_from(Splits(s.x_train, y, s.x_test, s.y_test, s.x_deploy, s.y_deploy), modality),
        truth={"train": rows.tolist()},
    )


def quality_test_leak(modality: str, p: float, seed: int) -> Trial:
    s = _quality_splits(modality, seed)
    rng = rng_for(seed, p, 2)
    rows = np.sort(rng.choice(len(s.x_test), size=max(1, int(round(p * len(s.x_test)))), replace=False))
    src = rng.choice(len(s.x_train), size=len(rows), replace=False)
    xt, yt = s.x_test.copy(), s.y_test.copy()
    xt[rows], yt[rows] = s.x_train[src], s.y_train[src]
    return Trial(
        case_from(Splits(s.x_train, s.y_train, xt, yt, s.x_deploy, s.y_deploy), modality), truth={"test": rows.tolist()}
    )


def quality_duplicates(modality: str, p: float, seed: int) -> Trial:
    s = _quality_splits(modality, seed)
    rng = rng_for(seed, p, 3)
    n = len(s.x_train)
    rows = np.sort(rng.choice(n, size=int(round(p * n)), replace=False))
    pool = np.setdiff1d(np.arange(n), rows)
    src = rng.choice(pool, size=len(rows), replace=True)
    x, y = s.x_train.copy(), s.y_train.copy()
    x[rows], y[rows] = x[src], y[src]
    # the check lists every copy but the first (lowest index) of each group of identical rows
    parent = {int(i): int(i) for i in np.concatenate([rows, src])}

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for a, b in zip(rows.tolist(), src.tolist(), strict=True):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    redundant = sorted(i for i in parent if find(i) != i)
    return Trial(
        case_from(Splits(x, y, s.x_test, s.y_test, s.x_deploy, s.y_deploy), modality), truth={"train": redundant}
    )


# ----------------------------------------------------------------------------- data.generalization


# The corruption-robustness part of data.generalization measures a property of the model
# (a small CNN on 8×8 digits really does lose accuracy under occlusion), not a shift between
# splits, so it has no "clean" case here: the shift and OOD scenarios run with it off.
_SHIFT_ONLY = {"corruptions": False}


def generalization_clean(modality: str, seed: int) -> Trial:
    return Trial(case_from(split(modality, seed), modality), options=_SHIFT_ONLY)


def generalization_shift(modality: str, sigma: float, seed: int) -> Trial:
    s = split(modality, seed)
    xd = mean_shift(s.x_deploy, s.x_train, sigma, modality)
    return Trial(
        case_from(Splits(s.x_train, s.y_train, s.x_test, s.y_test, xd, s.y_deploy), modality), options=_SHIFT_ONLY
    )


def generalization_token_shift(modality: str, share: float, seed: int) -> Trial:
    """Deploy rows whose filler tokens are redrawn (``share`` of them) from a reversed Zipf order."""
    s = split(modality, seed)
    xd = token_shift(s.x_deploy, share, rng_for(seed, share, 41))
    return Trial(
        case_from(Splits(s.x_train, s.y_train, s.x_test, s.y_test, xd, s.y_deploy), modality), options=_SHIFT_ONLY
    )


def generalization_ood_rows(modality: str, p: float, seed: int) -> Trial:
    """A fraction of deploy rows replaced by rows of another data set (OOD), scored per row."""
    s = split(modality, seed)
    rng = rng_for(seed, p, 4)
    rows = np.sort(rng.choice(len(s.x_deploy), size=int(round(p * len(s.x_deploy))), replace=False))
    xd = s.x_deploy.copy()
    if modality == "image":  # inverted, transposed digits: same pixels statistics range, other shapes
        xd[rows] = 1.0 - np.swapaxes(xd[rows], 2, 3)
    elif modality == "sequence":  # negated, time-reversed series: same value range, other shapes
        xd[rows] = -xd[rows][..., ::-1]
    elif modality == "tokens":  # every filler token from the reversed Zipf order: another source's vocabulary
        xd[rows] = token_shift(xd[rows], 1.0, rng)
    else:  # rows whose features are permuted: every marginal in range, the joint broken
        for r in rows:
            xd[r] = xd[r][rng.permutation(xd.shape[1])]
    return Trial(
        case_from(Splits(s.x_train, s.y_train, s.x_test, s.y_test, xd, s.y_deploy), modality),
        options=_SHIFT_ONLY,
        truth={"deploy": rows.tolist()},
    )


# ----------------------------------------------------------------------------- deployment.drift


def _drift_splits(modality: str, seed: int) -> Splits:
    return split(modality, seed, (0.4, 0.2, 0.4))


def drift_clean(modality: str, seed: int) -> Trial:
    return Trial(case_from(_drift_splits(modality, seed), modality))


def drift_shift(modality: str, sigma: float, seed: int) -> Trial:
    s = _drift_splits(modality, seed)
    h = len(s.x_deploy) // 2
    xd = s.x_deploy.copy()
    xd[h:] = mean_shift(xd[h:], s.x_train, sigma, modality)
    return Trial(case_from(Splits(s.x_train, s.y_train, s.x_test, s.y_test, xd, s.y_deploy), modality))


def drift_token_shift(modality: str, share: float, seed: int) -> Trial:
    """From the middle of the stream, a ``share`` of the filler tokens redrawn from a reversed Zipf order."""
    s = _drift_splits(modality, seed)
    h = len(s.x_deploy) // 2
    xd = s.x_deploy.copy()
    xd[h:] = token_shift(xd[h:], share, rng_for(seed, share, 42))
    return Trial(case_from(Splits(s.x_train, s.y_train, s.x_test, s.y_test, xd, s.y_deploy), modality))


def drift_concept(modality: str, p: float, seed: int) -> Trial:
    """Concept drift: from the middle of the stream, a fraction ``p`` of the labels change meaning."""
    s = _drift_splits(modality, seed)
    h = len(s.x_deploy) // 2
    k = int(s.y_train.max()) + 1
    yd = s.y_deploy.copy()
    yd[h:], _ = flip_labels(yd[h:], p, k, rng_for(seed, p, 5))
    return Trial(case_from(Splits(s.x_train, s.y_train, s.x_test, s.y_test, s.x_deploy, yd), modality))


# ----------------------------------------------------------------------------- data.quantity


def quantity_clean(modality: str, seed: int) -> Trial:
    """A saturated task: more data cannot help (digits 0 vs 1; well-separated blobs; MNIST-1D classes 0 vs 1;
    two token classes, 1,500 generated train rows)."""
    if modality == "tokens":
        x, y = token_sequences(2100, seed=3 + 100 * seed, k=2)
        s = Splits(x[:1500], y[:1500], x[1500:], y[1500:], x[:0], y[:0])
    elif modality in ("image", "sequence"):
        s = split(modality, seed, (0.6, 0.4, 0.0))
        keep_tr, keep_te = s.y_train < 2, s.y_test < 2
        s = Splits(s.x_train[keep_tr], s.y_train[keep_tr], s.x_test[keep_te], s.y_test[keep_te], s.x_deploy, s.y_deploy)
    else:
        x, y = blobs(1500, d=4, sep=6.0, seed=3 + 100 * seed)
        xt, yt = blobs(600, d=4, sep=6.0, seed=4 + 100 * seed)
        s = Splits(x, y, xt, yt, x[:0], y[:0])
    return Trial(case_from(s, modality, deploy=False), fit=default_fit(modality))


def quantity_scarce(modality: str, rows: float, seed: int) -> Trial:
    """A task far from saturation with only ``rows`` train rows: doubling them helps."""
    if modality in ("image", *NEW_MODALITIES):
        s = split(modality, seed, (0.6, 0.4, 0.0))
        s = Splits(s.x_train[: int(rows)], s.y_train[: int(rows)], s.x_test, s.y_test, s.x_deploy, s.y_deploy)
    else:
        x, y = blobs(int(rows), d=40, sep=0.25, seed=1 + 100 * seed)
        xt, yt = blobs(600, d=40, sep=0.25, seed=2 + 100 * seed)
        s = Splits(x, y, xt, yt, x[:0], y[:0])
    return Trial(case_from(s, modality, deploy=False), fit=default_fit(modality))


# ----------------------------------------------------------------------------- data.labeling_cost


def _labeling_pools(modality: str, seed: int) -> Splits:
    """A 1,500-row pool and a 600-row test set where active learning pays off (80 % redundant easy
    class 0, an informative boundary between classes 1 and 2): Gaussian rows for tables, token ids
    and float series for the new modalities (:mod:`validation.data`)."""
    from validation.data import redundant_series_pool, redundant_token_pool

    make = {"tokens": redundant_token_pool, "sequence": redundant_series_pool}.get(modality, redundant_pool)
    x, y = make(1500, seed=2 * seed)
    xt, yt = make(600, seed=2 * seed + 1)
    return Splits(x, y, xt, yt, x[:0], y[:0])


def _labeling_trial(s: Splits, modality: str) -> Trial:
    """Tables as before; token ids and series with the table's 8-epoch recipe (``fast_fit()``: lr 2e-3,
    not their lr 1e-2). The check's head reads the baseline's embedding, and at lr 1e-2 the embedding
    already sorts classes 1 and 2 so well that the 30 initial labels (about 6 of them in classes 1/2)
    nearly place the boundary (random starts at 98-99 % on tokens), random labelling catches up within a
    round or two, and the clean case warned on 3 of 6 token seeds and 1 of 6 series seeds; at lr 2e-3
    on 0 of 12 of each."""
    if modality not in NEW_MODALITIES:
        return Trial(case_from(s, "table", deploy=False))
    return Trial(case_from(s, modality, deploy=False), fit=fast_fit())


def labeling_clean(modality: str, seed: int) -> Trial:
    """A pool where active learning pays off (redundant easy cluster, informative boundary)."""
    return _labeling_trial(_labeling_pools(modality, seed), modality)


def labeling_uninformative(modality: str, p: float, seed: int) -> Trial:
    """The same pool with a fraction ``p`` of pool and test labels replaced by coin flips: nothing left to choose well."""
    s = _labeling_pools(modality, seed)
    rng = rng_for(seed, p, 6)
    for arr in (s.y_train, s.y_test):
        rows = rng.random(len(arr)) < p
        arr[rows] = rng.integers(0, 3, size=int(rows.sum()))
    return _labeling_trial(s, modality)


# ----------------------------------------------------------------------------- deployment.monitoring


def _monitoring_splits(modality: str, seed: int, hard: bool) -> Splits:
    """600 train rows and a 1,000-row reference of an easy or a hard task. Tables: Gaussian classes 3σ or 1σ
    apart; tokens: two cues per row, or one (then a third of the rows carry as many wrong cues as right
    ones); sequences: MNIST-1D (10 classes, ≈ 60 % accuracy: the 10-point drop is visible, small windows blind)."""
    if modality == "tokens":
        x, y = token_sequences(600, seed=10 + 100 * seed, cues=1 if hard else 2)
        xt, yt = token_sequences(1000, seed=11 + 100 * seed, cues=1 if hard else 2)
        return Splits(x, y, xt, yt, x[:0], y[:0])
    if modality == "sequence":
        return split("sequence", seed, (0.35, 0.65, 0.0))
    x, y = blobs(600, d=8, sep=1.0 if hard else 3.0, seed=10 + 100 * seed)
    xt, yt = blobs(1000, d=8, sep=1.0 if hard else 3.0, seed=11 + 100 * seed)
    return Splits(x, y, xt, yt, x[:0], y[:0])


def monitoring_clean(modality: str, seed: int) -> Trial:
    """Windows of 400 predictions on a 1,000-row reference: a 10-point drop is visible."""
    return Trial(case_from(_monitoring_splits(modality, seed, False), modality, deploy=False), options={"window": 400})


def monitoring_blind(modality: str, window: float, seed: int) -> Trial:
    """A hard task (accuracy far from 1) watched through windows of ``window`` predictions."""
    return Trial(
        case_from(_monitoring_splits(modality, seed, True), modality, deploy=False),
        options={"window": int(window), "rows": max(40, int(window))},
    )


# ----------------------------------------------------------------------------- model.overfitting


def overfitting_clean(modality: str, seed: int) -> Trial:
    return Trial(case_from(split(modality, seed, (0.5, 0.5, 0.0)), modality, deploy=False), fit=default_fit(modality))


def overfitting_memorised_noise(modality: str, p: float, seed: int) -> Trial:
    """Train labels flipped at rate ``p`` and a recipe that fits every one: a train/test gap of about ``p``."""
    s = split(modality, seed, (0.5, 0.5, 0.0))
    k = int(s.y_train.max()) + 1
    y, _ = flip_labels(s.y_train, p, k, rng_for(seed, p, 7))
    return Trial(
        case_from(Splits(s.x_train, y, s.x_test, s.y_test, s.x_deploy, s.y_deploy), modality, deploy=False),
        fit=memorise_fit(),
    )


# ----------------------------------------------------------------------------- ethics.fairness


def _groups(n: int, seed: int) -> np.ndarray:
    return np.where(np.random.default_rng(seed).random(n) < 0.5, "A", "B")


def fairness_clean(modality: str, seed: int) -> Trial:
    """Groups drawn at random: no group can be treated worse. The same construction on every
    modality, the real ``fair`` table included: a coin flip per row, drawn from the seed alone,
    so the groups are independent of inputs, labels and predictions by construction; what the
    real table adds is its natural duplicates and ambiguous labels."""
    s = split(modality, seed, (0.5, 0.5, 0.0))
    return Trial(
        case_from(
            s,
            modality,
            deploy=False,
            groups={"train": _groups(len(s.y_train), seed), "test": _groups(len(s.y_test), seed + 7919)},
        )
    )


def fairness_group_error(modality: str, p: float, seed: int) -> Trial:
    """Group B's test labels flipped at rate ``p``: its error rises by about ``p`` (× accuracy) points."""
    s = split(modality, seed, (0.5, 0.5, 0.0))
    g_test = _groups(len(s.y_test), seed + 7919)
    k = int(s.y_train.max()) + 1
    yt = s.y_test.copy()
    b = np.flatnonzero(g_test == "B")
    yb, _ = flip_labels(yt[b], p, k, rng_for(seed, p, 8))
    yt[b] = yb
    return Trial(
        case_from(
            Splits(s.x_train, s.y_train, s.x_test, yt, s.x_deploy, s.y_deploy),
            modality,
            deploy=False,
            groups={"train": _groups(len(s.y_train), seed), "test": g_test},
        )
    )


# ----------------------------------------------------------------------------- data.privacy


def privacy_clean(modality: str, seed: int) -> Trial:
    """The model never saw the train split (trained on disjoint rows): members and non-members are exchangeable."""
    from dlclinic.core.recipe import fit, seed_everything

    s = split(modality, seed, (0.35, 0.3, 0.35))
    seed_everything(seed)
    model = fit(baseline(s, modality), s.x_deploy, s.y_deploy, memorise_fit()).model
    return Trial(
        case_from(
            Splits(s.x_train, s.y_train, s.x_test, s.y_test, s.x_train[:0], s.y_train[:0]),
            modality,
            deploy=False,
            model=model,
        )
    )


def privacy_membership(modality: str, rows: float, seed: int) -> Trial:
    """A model that memorises ``rows`` train rows (fewer rows, more leakage)."""
    s = split(modality, seed, (0.35, 0.3, 0.35))
    n = int(rows)
    return Trial(
        case_from(
            Splits(s.x_train[:n], s.y_train[:n], s.x_test, s.y_test, s.x_train[:0], s.y_train[:0]),
            modality,
            deploy=False,
        ),
        fit=memorise_fit(),
    )


# ----------------------------------------------------------------------------- model.gradients


def _deep_sigmoid(in_shape: tuple[int, ...], k: int, depth: int, modality: str = "table") -> Any:
    """A plain deep sigmoid MLP (no normalisation, no skips): the textbook vanishing-gradient net.
    Token ids enter through an 8-wide embedding, series through one 4-channel 1-D convolution."""
    import torch
    from torch import nn

    from validation.data import TOKEN_VOCAB

    d = int(np.prod(in_shape))
    layers: list[nn.Module] = [nn.Flatten()]
    if modality == "tokens":
        layers = [nn.Embedding(TOKEN_VOCAB, 8, padding_idx=0), nn.Flatten()]
        d *= 8
    elif modality == "sequence":
        layers = [nn.Conv1d(int(in_shape[0]), 4, 3, padding=1), nn.Flatten()]
        d = 4 * int(in_shape[-1])
    width = d
    for _ in range(depth):
        layers += [nn.Linear(width, 64), nn.Sigmoid()]
        width = 64
    layers.append(nn.Linear(width, k))
    torch.manual_seed(0)
    return nn.Sequential(*layers)


def gradients_clean(modality: str, seed: int) -> Trial:
    """dlclinic's baselines; token ids: a user's bidirectional LSTM (TokenBag's hidden ReLUs are mostly dead)."""
    s = split(modality, seed, (0.5, 0.5, 0.0))
    if modality == "tokens":
        factory = functools.partial(token_lstm, int(s.y_train.max()) + 1)
        return Trial(case_from(s, modality, deploy=False, model=factory(), model_factory=factory))
    return Trial(case_from(s, modality, deploy=False))


def gradients_vanishing(modality: str, depth: float, seed: int) -> Trial:
    s = split(modality, seed, (0.5, 0.5, 0.0))
    factory = functools.partial(
        _deep_sigmoid, tuple(s.x_train.shape[1:]), int(s.y_train.max()) + 1, int(depth), modality
    )
    return Trial(case_from(s, modality, deploy=False, model=factory(), model_factory=factory))


# ----------------------------------------------------------------------------- optimization.batchnorm


def _bn_mlp(d: int, k: int) -> Any:
    from torch import nn

    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(d, 64),
        nn.BatchNorm1d(64),
        nn.ReLU(),
        nn.Linear(64, 32),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.Linear(32, k),
    )


def _bag_bn(k: int) -> Any:
    """Token ids: a masked mean of 32-wide embeddings, then the BN-MLP."""
    from torch import nn

    from validation.data import TOKEN_VOCAB

    class BagBN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tokens = nn.Embedding(TOKEN_VOCAB, 32, padding_idx=0)
            self.mlp = _bn_mlp(32, k)

        def forward(self, x: Any) -> Any:
            mask = (x != 0).unsqueeze(-1).float()
            return self.mlp((self.tokens(x) * mask).sum(1) / mask.sum(1).clamp(min=1))

    return BagBN()


def _bn_model(s: Splits, modality: str, seed: int) -> Any:
    """A batch-norm network trained on the train split: the baseline CNN for images, the baseline 1-D CNN
    (conv-BN-ReLU) for sequences, a BN-MLP for tables and behind a mean of token embeddings."""
    from dlclinic.core.recipe import fit, seed_everything

    k = int(s.y_train.max()) + 1
    seed_everything(seed)
    if modality in ("image", "mnist", "sequence"):
        net = baseline(s, modality)
    elif modality == "tokens":
        net = _bag_bn(k)
    else:  # standardise outside the model: BN-MLP inputs
        net = _bn_mlp(s.x_train.shape[1], k)
    return fit(net, s.x_train, s.y_train, fast_fit(modality)).model


def _standardised(s: Splits, modality: str) -> Splits:
    if modality in ("image", "mnist", *NEW_MODALITIES):
        return s
    mu, sd = s.x_train.mean(0), s.x_train.std(0) + 1e-6
    f = lambda a: ((a - mu) / sd).astype(np.float32)  # noqa: E731
    return Splits(f(s.x_train), s.y_train, f(s.x_test), s.y_test, f(s.x_deploy), s.y_deploy)


def batchnorm_clean(modality: str, seed: int) -> Trial:
    s = _standardised(split(modality, seed, (0.5, 0.5, 0.0)), modality)
    return Trial(case_from(s, modality, deploy=False, model=_bn_model(s, modality, seed)))


def batchnorm_stale(modality: str, sigma: float, seed: int) -> Trial:
    """Running means moved by ``sigma`` running standard deviations: statistics of other data (stale)."""
    import torch

    s = _standardised(split(modality, seed, (0.5, 0.5, 0.0)), modality)
    model = _bn_model(s, modality, seed)
    with torch.no_grad():
        for m in model.modules():
            if (
                isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                and m.running_mean is not None
                and m.running_var is not None
            ):
                m.running_mean += sigma * m.running_var.sqrt()
    return Trial(case_from(s, modality, deploy=False, model=model))


# ----------------------------------------------------------------------------- model.interpretability


def _with_marker(s: Splits, modality: str, share: float, seed: int) -> tuple[Splits, dict[str, Any]]:
    """A binary task whose real signal is degraded by noise, plus a marker (images: the 2×2 top-left
    corner; tables: an extra column) that equals the label on a ``share`` of the rows of every split and
    is a coin flip elsewhere (``share = 0``: pure noise, the clean case). A model takes the marker when
    it is the easiest cue, which is what a shortcut is; the check must see that it leans on it.
    Sequences: digit ≥ 5 of MNIST-1D with noise, the marker the first 4 steps (3 × the value).
    Token ids: the split as it is (the check names no suspect token, so there is no shortcut to plant)."""
    rng = rng_for(seed, share, 9)
    if modality == "tokens":
        return s, {}

    def mark(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if modality == "sequence":
            y = (y >= 5).astype(np.int64)
            x = (x + rng.normal(0, 0.5, x.shape)).astype(np.float32)
            informative = rng.random(len(y)) < share
            value = np.where(informative, y, rng.integers(0, 2, len(y))).astype(np.float32)
            x[:, :, :4] = 3.0 * value[:, None, None]
            return x, y
        if modality in ("image", "mnist"):
            y = (y >= 5).astype(np.int64)
            x = np.clip(x + rng.normal(0, 0.35, x.shape), 0, 1).astype(np.float32)
        else:
            x = (x + rng.normal(0, 4.0, x.shape) * s.x_train.std(0, keepdims=True)).astype(np.float32)
        informative = rng.random(len(y)) < share
        value = np.where(informative, y, rng.integers(0, 2, len(y))).astype(np.float32)
        if modality in ("image", "mnist"):
            x = x.copy()
            x[:, :, :2, :2] = value[:, None, None, None]
            return x, y
        scale = float(np.median(s.x_train.std(0)))
        return np.concatenate([x, (value * scale * 4)[:, None]], axis=1).astype(np.float32), y

    xtr, ytr = mark(s.x_train, s.y_train)
    xte, yte = mark(s.x_test, s.y_test)
    out = Splits(xtr, ytr, xte, yte, s.x_deploy, s.y_deploy)
    opts = (
        {"suspect_region": "0:2,0:2"}
        if modality in ("image", "mnist")
        else {"suspect_region": "0:1,0:4"}
        if modality == "sequence"
        else {"suspect_feature": str(s.x_train.shape[1])}
    )
    return out, opts


def interpretability_clean(modality: str, seed: int) -> Trial:
    s, opts = _with_marker(split(modality, seed, (0.5, 0.5, 0.0)), modality, 0.0, seed)
    return Trial(case_from(s, modality, deploy=False), options=opts)


def interpretability_shortcut(modality: str, share: float, seed: int) -> Trial:
    s, opts = _with_marker(split(modality, seed, (0.5, 0.5, 0.0)), modality, share, seed)
    return Trial(case_from(s, modality, deploy=False), options=opts)


# ----------------------------------------------------------------------------- optimization.convergence


def convergence_clean(modality: str, seed: int) -> Trial:
    return Trial(case_from(split(modality, seed, (0.5, 0.5, 0.0)), modality, deploy=False))


def convergence_lr_high(modality: str, lr: float, seed: int) -> Trial:
    """The monitored run uses a learning rate ``lr`` (the recipe's is 2e-3)."""
    return Trial(case_from(split(modality, seed, (0.5, 0.5, 0.0)), modality, deploy=False), options={"lr": float(lr)})


_ALL = ("image", "table", *NEW_MODALITIES)

_OWN_PLANS: tuple[Plan, ...] = (
    Plan(
        "data.quality",
        0.05,
        "default (the check states no level)",
        _ALL,
        quality_clean,
        (
            Defect(
                "label_noise",
                "fraction of train labels flipped",
                (0.02, 0.05, 0.10, 0.20),
                quality_label_noise,
                ("label_issue",),
                quick_strengths=(0.05, 0.20),
                expect=("label_issue",),
            ),
            Defect(
                "test_leak",
                "fraction of test rows copied from train",
                (0.01, 0.03, 0.10),
                quality_test_leak,
                ("leak",),
                quick_strengths=(0.03,),
                expect=("leak",),
            ),
            Defect(
                "duplicates",
                "fraction of train rows that are copies",
                (0.02, 0.05, 0.10),
                quality_duplicates,
                ("duplicate",),
                quick_strengths=(0.05,),
                expect=("duplicate",),
            ),
        ),
        "random train/test split (60/40) of the unmodified data",
        cost=4.0,
    ),
    Plan(
        "data.generalization",
        0.05,
        "default; each test runs at α = 0.01",
        _ALL,
        generalization_clean,
        (
            Defect(
                "mean_shift",
                "deploy mean shift (σ of each train feature)",
                (0.1, 0.25, 0.5, 1.0),
                generalization_shift,
                quick_strengths=(0.25, 1.0),
                modalities=FLOAT_MODALITIES,  # token ids have no mean to move: token_shift is their shift
                expect=("shift", "feature_shift", "ood"),
            ),
            Defect(
                "token_shift",
                "share of deploy filler tokens redrawn from the reversed Zipf order",
                (0.05, 0.1, 0.25, 0.5),
                generalization_token_shift,
                quick_strengths=(0.1, 0.5),
                modalities=("tokens",),
                expect=("shift", "feature_shift", "ood"),
            ),
            Defect(
                "ood_rows",
                "fraction of deploy rows out of distribution",
                (0.05, 0.10, 0.25),
                generalization_ood_rows,
                ("ood",),
                quick_strengths=(0.10,),
                expect=("ood", "shift"),
            ),
        ),
        "random train/test/deploy split (50/25/25)",
        cost=2.0,
    ),
    Plan(
        "deployment.drift",
        0.01,
        "DriftOptions.alpha = 0.01, family-wise over windows × tests",
        _ALL,
        drift_clean,
        (
            Defect(
                "mean_shift",
                "mean shift of the second half of the stream (σ)",
                (0.1, 0.25, 0.5, 1.0),
                drift_shift,
                quick_strengths=(0.25, 1.0),
                modalities=FLOAT_MODALITIES,  # token ids have no mean to move: token_shift is their shift
                expect=("drift_window",),
            ),
            Defect(
                "token_shift",
                "share of filler tokens redrawn from the reversed Zipf order in the second half",
                (0.05, 0.1, 0.25, 0.5),
                drift_token_shift,
                quick_strengths=(0.1, 0.5),
                modalities=("tokens",),
                expect=("drift_window",),
            ),
            Defect(
                "concept_drift",
                "fraction of labels changed in the second half",
                (0.05, 0.10, 0.20),
                drift_concept,
                quick_strengths=(0.20,),
                expect=("drift_window",),
            ),
        ),
        "random train/test/deploy split (40/20/40), deploy in random order",
    ),
    Plan(
        "data.quantity",
        0.05,
        "default (warns when doubling the data is projected to gain > 1 point)",
        _ALL,
        quantity_clean,
        (
            Defect(
                "scarce_data",
                "train rows on a task far from saturation",
                (400.0, 200.0, 100.0),
                quantity_scarce,
                quick_strengths=(200.0,),
                expect=("steep_learning_curve", "more_data_needed"),
            ),
        ),
        "saturated tasks: digits 0 vs 1; three Gaussian classes 6σ apart (1,500 rows); MNIST-1D 0 vs 1; two token classes (1,500 generated rows); dlclinic's default 15-epoch recipe",
        cost=2.0,
    ),
    Plan(
        "data.labeling_cost",
        0.05,
        "default (warns when active learning saves no labels, mean − std over seeds)",
        ("table", *NEW_MODALITIES),
        labeling_clean,
        (
            Defect(
                "uninformative_labels",
                "fraction of labels replaced by coin flips",
                (0.5, 0.8, 1.0),
                labeling_uninformative,
                quick_strengths=(1.0,),
                expect=("active_learning_no_gain",),
            ),
        ),
        "a redundant pool where uncertainty sampling provably saves labels: 80 % an easy class 0, 20 % split"
        " into classes 1/2 by a boundary that only well-chosen labels place (1,500 pool rows, 600 test rows);"
        " tables: Gaussian rows cut by an oblique hyperplane (validation.data.redundant_pool, as in"
        " tests/test_labeling_cost.py); token ids: which of two cue sets dominates (redundant_token_pool);"
        " series: which of two sinusoids is larger, amplitudes near a tie (redundant_series_pool);"
        " tokens and series trained with the table's 8-epoch recipe (lr 2e-3)",
        cost=2.0,
    ),
    Plan(
        "deployment.monitoring",
        0.05,
        "default (warns when a window cannot see a 10-point accuracy drop)",
        ("table", *NEW_MODALITIES),
        monitoring_clean,
        (
            Defect(
                "blind_windows",
                "window size (predictions) on a hard task",
                (50.0, 20.0, 10.0),
                monitoring_blind,
                quick_strengths=(10.0,),
                expect=("blind_windows",),
            ),
        ),
        "easy task, windows of 400 predictions, 1,000-row reference (tables: Gaussian classes 3σ apart; token ids: two cues per row; MNIST-1D: its 780 test rows, hard task for the defect too)",
    ),
    Plan(
        "model.overfitting",
        0.05,
        "OverfittingOptions.alpha = 0.05 (gap must be significant and above 5 points)",
        _ALL,
        overfitting_clean,
        (
            Defect(
                "memorised_noise",
                "train labels flipped, then memorised (40 epochs, no early stopping)",
                (0.05, 0.10, 0.20, 0.40),
                overfitting_memorised_noise,
                quick_strengths=(0.20,),
                expect=("generalization_gap", "gap_opens"),
            ),
        ),
        "random 50/50 train/test split, dlclinic's baseline with early stopping",
        cost=3.0,
    ),
    Plan(
        "ethics.fairness",
        0.05,
        "FairnessOptions.alpha = 0.05, Holm over the graded disparities",
        _ALL,
        fairness_clean,
        (
            Defect(
                "group_error",
                "share of group B's test labels flipped (≈ error points added)",
                (0.02, 0.05, 0.10, 0.20),
                fairness_group_error,
                quick_strengths=(0.10, 0.20),
                expect=("accuracy_gap", "equalized_odds_difference"),
            ),
        ),
        "two groups assigned at random, a coin flip per row from the seed alone (independent of inputs, labels and"
        " predictions by construction; on fair too, over its real rows with their natural duplicates and ambiguity)",
    ),
    Plan(
        "data.privacy",
        0.05,
        "PrivacyOptions.alpha = 0.05, Bonferroni over the two attacks",
        _ALL,
        privacy_clean,
        (
            Defect(
                "membership_leak",
                "train rows memorised by the model (fewer = more leakage)",
                (400.0, 200.0, 100.0),
                privacy_membership,
                quick_strengths=(100.0,),
                expect=("membership",),
            ),
        ),
        "a model trained on rows disjoint from train and test: members and non-members are exchangeable",
        cost=2.0,
    ),
    Plan(
        "model.gradients",
        0.05,
        "default (vanishing when a layer's gradient is ≤ 1e-3 of the output layer's)",
        _ALL,
        gradients_clean,
        (
            Defect(
                "vanishing_depth",
                "depth of a plain sigmoid MLP",
                (8.0, 16.0, 32.0),
                gradients_vanishing,
                quick_strengths=(8.0, 32.0),
                expect=("vanishing",),
            ),
        ),
        "dlclinic's baselines (ReLU MLP; conv-BN-ReLU CNN; 1-D CNN on MNIST-1D); on token ids a user's bidirectional LSTM (dlclinic's TokenBag keeps most of its hidden ReLUs dead after training, which the check rightly reports)",
        cost=2.0,
    ),
    Plan(
        "optimization.batchnorm",
        0.01,
        "BatchNormOptions.alpha = 0.01 (McNemar test of the recalibration gain)",
        _ALL,
        batchnorm_clean,
        (
            Defect(
                "stale_statistics",
                "running means moved by this many running σ",
                (0.25, 0.5, 1.0),
                batchnorm_stale,
                quick_strengths=(0.5, 1.0),
                expect=("stale_statistics",),
            ),
        ),
        "batch-norm networks trained normally (baseline CNN; BN-MLP on standardised tables; baseline 1-D CNN on MNIST-1D; BN-MLP behind a masked mean of token embeddings)",
        cost=2.0,
    ),
    Plan(
        "model.interpretability",
        0.05,
        "default (shortcut: attribution enrichment ≥ 3× or flip-rate lower bound ≥ 10 %)",
        _ALL,
        interpretability_clean,
        (
            Defect(
                "shortcut",
                "share of rows whose marker equals the label",
                (0.25, 0.5, 0.9),
                interpretability_shortcut,
                quick_strengths=(0.9,),
                # token ids: the check names no suspect token (suspect_region/feature are image/table options)
                modalities=FLOAT_MODALITIES,
                expect=("shortcut",),
            ),
        ),
        "binary tasks (digit ≥ 5; malignant; MNIST-1D digit ≥ 5) with noise-degraded inputs; the named region/feature (2×2 image corner; an extra column; the first 4 steps of the series) holds a coin flip. Token ids: the unmodified 4-class split, clean cases only (the check takes no named region or feature on ids, so a shortcut cannot be scored there)",
        cost=2.0,
    ),
    Plan(
        "optimization.convergence",
        0.05,
        "default (plateau < 5 % progress, blow-up > 10× the start, LR beyond the range test's divergence)",
        _ALL,
        convergence_clean,
        (
            Defect(
                "lr_too_high",
                "learning rate of the monitored run (recipe: 0.002)",
                (0.1, 1.0, 10.0),
                convergence_lr_high,
                quick_strengths=(1.0,),
                expect=("diverging", "unstable", "lr_too_high"),
            ),
            Defect(
                "lr_too_low",
                "learning rate of the monitored run (recipe: 0.002)",
                (1e-4, 1e-5, 1e-6),
                convergence_lr_high,
                quick_strengths=(1e-6,),
                expect=("plateau", "lr_too_low"),
            ),
        ),
        "dlclinic's baselines with their default recipe",
    ),
)


# ----------------------------------------------------------------------------- real table

REAL_TABLE = "fair"
REAL_TABLE_CHECKS = ("data.quality", "ethics.fairness", "deployment.drift")


def _with_real_table(plan: Plan) -> Plan:
    """``plan`` with clean cases on the real categorical table too (its defects keep their modalities)."""
    if plan.check not in REAL_TABLE_CHECKS:
        return plan
    defects = tuple(dataclasses.replace(d, modalities=d.modalities or plan.modalities) for d in plan.defects)
    return dataclasses.replace(plan, modalities=(*plan.modalities, REAL_TABLE), defects=defects)


def _gather() -> tuple[Plan, ...]:
    """This module's plans, then those of every ``validation/plans_*.py`` module (its ``PLANS``)."""
    import importlib
    import pkgutil

    import validation

    plans = [_with_real_table(p) for p in _OWN_PLANS]
    for info in sorted(pkgutil.iter_modules(validation.__path__), key=lambda m: m.name):
        if info.name.startswith("plans_"):
            plans.extend(importlib.import_module(f"validation.{info.name}").PLANS)
    return tuple(plans)


PLANS: tuple[Plan, ...] = _gather()


def plan_for(check: str) -> Plan:
    """The plan of ``check``."""
    for p in PLANS:
        if p.check == check:
            return p
    raise KeyError(f"no validation plan for {check!r}; expected one of {', '.join(p.check for p in PLANS)}")


NOT_VALIDATED: dict[str, str] = {}
"""Registered checks without a plan, and why (every check has one; a new check must add either)."""
