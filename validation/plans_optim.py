"""Validation plans of the search and optimisation checks: model.hyperparameters,
model.architecture, optimization.nonconvex and optimization.forgetting.

* ``model.hyperparameters`` warns when the best trial of a short Optuna study beats the
  current recipe (the case's fit config) by ≥ 2 points and an exact McNemar test,
  Bonferroni over the trials compared, says so. Clean: a recipe that is near-optimal for
  its model at its own epochs (tuned once on the digits CNN: lr 8e-3, batch 32, 8 epochs;
  dlclinic's default recipe for the breast-cancer MLP; TokenBag: lr 9e-3, batch 32, the best
  of a grid on seeds the clean cases do not use). Defects: the same recipe with its
  learning rate divided (too low) or multiplied (too high, images only: the MLP on the
  nearly linear breast-cancer table stays at 96-99 % even at lr 2) by a ratio.
* ``model.architecture`` warns when a model with at most half the parameters stays
  within 1 point of full width with confidence (upper 95 % bound of the paired drop), or
  a ReLU layer is ≥ 50 % dead, or a weight matrix has effective rank < 10 % of full.
  Clean: right-sized networks for the recipe (halving the width costs ≈ 9 points on the
  digits CNN, ≈ 3.5 on the MLP). Defects: the same families made k times wider, and
  trained networks with a share of their first hidden layer's units made dead.
* ``optimization.nonconvex`` is budget-like: it warns when (top Hessian eigenvalue on 128
  train rows) × (recipe LR) > 2. Clean: a trained baseline whose recipe LR puts the
  *true* product (eigenvalue of the full train loss, converged power iteration) at 0.75
  of the edge. Defects: recipe LR at a ratio beyond the edge, and the same function
  re-parametrised to be sharper (first layer ÷ c, next layer's input side × c).
* ``optimization.forgetting`` warns when forgetting > 0.2 with a BWT interval below 0.
  Clean: two tasks that are random halves of the same data (domain-incremental, no
  interference). Defects: the second task contradicts the first on a share of the input
  space (labels moved to the next class), its inputs are a permutation of the first's
  (images), or the tasks are disjoint classes (class-incremental, the textbook case).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from validation.data import Splits, blobs, split
from validation.plan import (
    FLOAT_MODALITIES,
    NEW_MODALITIES,
    Defect,
    Plan,
    Trial,
    baseline,
    case_from,
    fast_fit,
    rng_for,
    token_lstm,
)

__all__ = ["PLANS"]


def _n_classes(s: Splits) -> int:
    return int(max(s.y_train.max(), s.y_test.max() if len(s.y_test) else 0)) + 1


def _fit(**kw: Any) -> Any:
    from dlclinic.core.recipe import FitConfig

    return FitConfig(**{"epochs": 8, "batch_size": 64, **kw})


# ----------------------------------------------------------------------------- model.hyperparameters

# Near-optimal recipes at 8 epochs (mean validation accuracy over 6 splits, lr 1e-3..3e-2 scanned):
# the digits CNN peaks at lr 4e-3..8e-3 (batch 32 adds steps), the breast-cancer MLP is flat
# from 2e-3 to 3e-2, so dlclinic's default recipe is near-optimal there.
_HP_RECIPE = {
    "image": {"lr": 8e-3, "batch_size": 32},
    "table": {"lr": 2e-3, "batch_size": 64},
    # series baseline at 8 epochs (3 splits, lr 2e-3..4e-2 × batch 32/64 scanned): the 1-D CNN on MNIST-1D
    # climbs up to lr 4e-2, batch 32 (91 %). TokenBag: the grid below
    "tokens": {"lr": 9e-3, "batch_size": 32},
    "sequence": {"lr": 3e-2, "batch_size": 32},
}
# TokenBag's clean recipe comes from a grid that does not use the check. Rows and length as the check's
# study: 800 train and 500 held-out validation rows drawn from the case's train split (validation_subset),
# 8 epochs, AdamW with the cosine schedule (train_eval); split, row and initial-weight seeds 100.. (the
# clean cases use 0..29, the defects 1000..). Mean validation accuracy:
# * lr {3e-3, 5e-3, 7e-3, 1e-2, 1.4e-2, 2e-2, 3e-2} × weight decay {1e-4, 1e-3, 1e-2, 3e-2, 1e-1} × batch
#   {32, 64, 128, 256}, seeds 100-105: batch 32 wins at every lr (lr 1e-2: 0.950 at batch 32, 0.711 at 64,
#   0.549 at 128, 0.483 at 256); weight decay moves the mean by ≤ 0.006 at batch 32 and lr ≤ 1e-2 (≤ 0.07
#   anywhere, where training diverges); at batch 32, lr 3e-3 0.793, 5e-3 0.872 (the former recipe, from a
#   coarser scan), 7e-3 0.915, 1e-2 0.950, 1.4e-2 0.910 (one seed at 0.714), 2e-2 0.734, 3e-2 0.589.
# * lr {7e-3, 8e-3, 9e-3, 1e-2, 1.1e-2}, weight decay 1e-4, batch 32, seeds 100-123: mean 0.900, 0.916,
#   0.919, 0.869, 0.884 (medians 0.916, 0.926, 0.938, 0.946, 0.943). From ≈ 1e-2 on single runs collapse
#   more often (lr 1e-2: 8 of 24 below 0.90, one at 0.268), so the mean peaks at 9e-3; 8e-3 is within noise
#   of it (paired difference -0.003 ± 0.008 s.e.).
# Chosen: the best mean, lr 9e-3, batch 32, weight decay 1e-4 (dlclinic's default; it makes no difference
# here). Single runs near the peak still differ by > 10 points between neighbouring learning rates on 9 of
# the 24 seeds (seed 107: 0.920 at 8e-3, 0.792 at 9e-3; seed 123: 0.942 at 9e-3, 0.672 at 1e-2), a variance
# the check's McNemar test (the validation rows its only randomness) does not model.

# a fixed trial budget: the default 8 s timeout would let CPU load decide how many trials run
_HP_OPTIONS = {"timeout_s": 120.0}


def _hp_case(modality: str, seed: int) -> Any:
    return case_from(split(modality, seed, (0.9, 0.1, 0.0)), modality, deploy=False, test=False)


def hyperparameters_clean(modality: str, seed: int) -> Trial:
    return Trial(_hp_case(modality, seed), options=_HP_OPTIONS, fit=_fit(**_HP_RECIPE[modality]))


def hyperparameters_lr_low(modality: str, ratio: float, seed: int) -> Trial:
    """The near-optimal recipe with its learning rate divided by ``ratio``."""
    r = _HP_RECIPE[modality]
    return Trial(_hp_case(modality, seed), options=_HP_OPTIONS, fit=_fit(**{**r, "lr": r["lr"] / ratio}))


def hyperparameters_lr_high(modality: str, ratio: float, seed: int) -> Trial:
    """The near-optimal recipe with its learning rate multiplied by ``ratio``."""
    r = _HP_RECIPE[modality]
    return Trial(_hp_case(modality, seed), options=_HP_OPTIONS, fit=_fit(**{**r, "lr": r["lr"] * ratio}))


# ----------------------------------------------------------------------------- model.architecture


def _cnn(k: int, m: float) -> Any:
    from dlclinic.core.baselines import SmallCNN

    return SmallCNN(1, k, 8, 8, channels=(max(1, round(16 * m)), max(1, round(32 * m))), hidden=max(1, round(64 * m)))


def _mlp(d: int, k: int, m: float) -> Any:
    from dlclinic.core.baselines import MLP

    return MLP(d, k, hidden=(max(1, round(256 * m)), max(1, round(128 * m))))


def _lstm(k: int, m: float) -> Any:
    """Token ids: a user's bidirectional LSTM (16 wide at m = 1); TokenBag's hidden ReLUs are mostly dead
    after training, which the check rightly reports, so it cannot be a clean case here."""
    return token_lstm(k, max(1, round(16 * m)))


def _conv1d(k: int, m: float) -> Any:
    from dlclinic.core.baselines import SmallConv1d

    return SmallConv1d(1, k, channels=(max(1, round(32 * m)), max(1, round(64 * m))), hidden=max(1, round(64 * m)))


def _arch_splits(modality: str, seed: int) -> Splits:
    """Digits, token ids, MNIST-1D (all but 10 % in train); a non-linear table: 16 Gaussian clusters in 6-D, class = cluster mod 4."""
    if modality in ("image", *NEW_MODALITIES):
        return split(modality, seed, (0.9, 0.1, 0.0))
    x, c = blobs(2000, k=16, d=6, sep=3.0, seed=20 + 100 * seed)
    y = (c % 4).astype(np.int64)
    return Splits(x, y, x[:0], y[:0], x[:0], y[:0])


def _arch_factory(s: Splits, modality: str, m: float) -> Any:
    k = _n_classes(s)
    if modality == "image":
        return functools.partial(_cnn, k, m)
    if modality == "tokens":
        return functools.partial(_lstm, k, m)
    if modality == "sequence":
        return functools.partial(_conv1d, k, m)
    return functools.partial(_mlp, int(s.x_train.shape[1]), k, m)


def architecture_clean(modality: str, seed: int) -> Trial:
    s = _arch_splits(modality, seed)
    return Trial(case_from(s, modality, deploy=False, test=False, model_factory=_arch_factory(s, modality, 1.0)))


def architecture_wider(modality: str, m: float, seed: int) -> Trial:
    """The right-sized family made ``m`` times wider (every hidden layer)."""
    s = _arch_splits(modality, seed)
    return Trial(case_from(s, modality, deploy=False, test=False, model_factory=_arch_factory(s, modality, m)))


def architecture_dead_units(modality: str, share: float, seed: int) -> Trial:
    """The right-sized network, trained, with ``share`` of its first hidden layer's units made dead
    (their pre-activation pushed to −1000: BN shift for the CNN, bias for the MLP)."""
    import torch

    from dlclinic.core.recipe import fit, seed_everything

    s = _arch_splits(modality, seed)
    factory = _arch_factory(s, modality, 1.0)
    seed_everything(seed)
    model: Any = fit(factory(), s.x_train, s.y_train, fast_fit(modality)).model
    # the layer before the first ReLU: BatchNorm2d/1d (CNNs), Linear (MLP body)
    layer: Any = model.features[1] if modality in ("image", "sequence") else model.body[0]
    n = int(layer.bias.shape[0])
    rows = rng_for(seed, share, 21).choice(n, size=int(round(share * n)), replace=False)
    with torch.no_grad():
        layer.bias[torch.as_tensor(rows)] = -1000.0
    return Trial(case_from(s, modality, deploy=False, test=False, model=model.eval(), model_factory=factory))


# ----------------------------------------------------------------------------- optimization.nonconvex

_NONCONVEX_OPTIONS = {"barrier": False}  # the seed barrier is reported, never graded: skip its two trainings


def _trained_baseline(modality: str, seed: int) -> tuple[Splits, Any]:
    from dlclinic.core.recipe import fit, seed_everything

    s = split(modality, seed, (0.5, 0.5, 0.0))
    seed_everything(seed)
    return s, fit(baseline(s, modality), s.x_train, s.y_train, fast_fit(modality)).model.eval()


def _true_sharpness(model: Any, s: Splits) -> float:
    """Top Hessian eigenvalue of the loss on the whole train split, power iteration run to convergence."""
    from dlclinic.functional.landscape import hessian_top_eigenvalue, make_loss

    return float(hessian_top_eigenvalue(model, make_loss(s.x_train, s.y_train), iters=100, tol=1e-5)[0])


def _sharpen(model: Any, modality: str, c: float) -> Any:
    """The same function, re-parametrised: the first layer's weights ÷ c and the next linear map of its
    output × c (CNN: conv1 ÷ c with BN running statistics rescaled to match). The Hessian block of the
    first layer grows by c² (Dinh et al., ICML 2017: sharpness is not invariant to re-parametrisation)."""
    import torch

    with torch.no_grad():
        if modality in ("image", "sequence"):  # SmallCNN / SmallConv1d: conv, BN first
            conv, bn = model.features[0], model.features[1]
            conv.weight /= c
            if conv.bias is not None:
                conv.bias /= c
            bn.running_mean /= c
            bn.running_var /= c * c
            bn.eps /= c * c
        else:  # MLP: body[0] → ReLU → embedding[0]; TokenBag: embedding[0] → ReLU → (dropout) → head
            first, second = (
                (model.embedding[0], model.head) if modality == "tokens" else (model.body[0], model.embedding[0])
            )
            first.weight /= c
            first.bias /= c
            second.weight *= c
    return model


def _nonconvex_case(s: Splits, modality: str, model: Any) -> Any:
    return case_from(s, modality, deploy=False, model=model)


def nonconvex_clean(modality: str, seed: int) -> Trial:
    """Recipe LR at 0.75 of the edge of stability of the trained solution (true λ·LR = 1.5)."""
    s, model = _trained_baseline(modality, seed)
    lam = _true_sharpness(model, s)
    return Trial(_nonconvex_case(s, modality, model), options=_NONCONVEX_OPTIONS, fit=_fit(lr=0.75 * 2.0 / lam))


def nonconvex_lr_beyond_edge(modality: str, ratio: float, seed: int) -> Trial:
    """Recipe LR at ``ratio`` × the edge 2/λ of the trained solution (true λ·LR = 2·ratio)."""
    s, model = _trained_baseline(modality, seed)
    lam = _true_sharpness(model, s)
    return Trial(_nonconvex_case(s, modality, model), options=_NONCONVEX_OPTIONS, fit=_fit(lr=ratio * 2.0 / lam))


def nonconvex_sharpened(modality: str, c: float, seed: int) -> Trial:
    """The clean case's solution and recipe LR, re-parametrised ``c`` times sharper (same function)."""
    s, model = _trained_baseline(modality, seed)
    lam = _true_sharpness(model, s)
    return Trial(
        _nonconvex_case(s, modality, _sharpen(model, modality, c)),
        options=_NONCONVEX_OPTIONS,
        fit=_fit(lr=0.75 * 2.0 / lam),
    )


# ----------------------------------------------------------------------------- optimization.forgetting

_TASKS = {"tasks": "groups"}


def _forgetting_base(
    modality: str, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train/test (60/40; tables standardised) and a random task id (0/1) per row: two i.i.d. tasks."""
    s = split(modality, seed, (0.6, 0.4, 0.0))
    xtr, xte = s.x_train.copy(), s.x_test.copy()
    if modality not in ("image", *NEW_MODALITIES):
        mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
        xtr, xte = ((xtr - mu) / sd).astype(np.float32), ((xte - mu) / sd).astype(np.float32)
    rng = rng_for(seed, 31)
    return xtr, s.y_train.copy(), xte, s.y_test.copy(), rng.integers(0, 2, len(xtr)), rng.integers(0, 2, len(xte))


def _forgetting_case(
    modality: str, xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray, gtr: np.ndarray, gte: np.ndarray
) -> Any:
    s = Splits(xtr, ytr, xte, yte, xte[:0], yte[:0])
    return case_from(
        s,
        modality,
        deploy=False,
        groups={"train": np.char.add("task", gtr.astype(str)), "test": np.char.add("task", gte.astype(str))},
    )


def forgetting_clean(modality: str, seed: int) -> Trial:
    return Trial(_forgetting_case(modality, *_forgetting_base(modality, seed)), options=_TASKS)


def forgetting_conflict(modality: str, p: float, seed: int) -> Trial:
    """Task 2 moves the label to the next class on a share ``p`` of the input space (the rows
    beyond the (1 − p) quantile of a random projection): learning it overwrites task 1 there."""
    xtr, ytr, xte, yte, gtr, gte = _forgetting_base(modality, seed)
    k = int(max(ytr.max(), yte.max())) + 1
    if (
        modality == "tokens"
    ):  # a random weight per vocabulary id, summed over the row's tokens (a bag model can learn it)
        from validation.data import TOKEN_VOCAB

        v = rng_for(seed, p, 32).normal(size=TOKEN_VOCAB)
        v[0] = 0.0
        ptr, pte = v[xtr].sum(1), v[xte].sum(1)
    else:
        w = rng_for(seed, p, 32).normal(size=int(np.prod(xtr.shape[1:])))
        ptr, pte = xtr.reshape(len(xtr), -1) @ w, xte.reshape(len(xte), -1) @ w
    cut = np.quantile(ptr, 1.0 - p) if p < 1 else -np.inf
    for y, g, proj in ((ytr, gtr, ptr), (yte, gte, pte)):
        rows = (g == 1) & (proj >= cut)
        y[rows] = (y[rows] + 1) % k
    return Trial(_forgetting_case(modality, xtr, ytr, xte, yte, gtr, gte), options=_TASKS)


def forgetting_permuted(modality: str, q: float, seed: int) -> Trial:
    """Task 2's inputs have a share ``q`` of their pixels (series: time steps) permuted (a fixed permutation:
    permuted-MNIST style); token ids: a share ``q`` of the vocabulary remapped by a fixed permutation."""
    xtr, ytr, xte, yte, gtr, gte = _forgetting_base(modality, seed)
    if modality == "tokens":
        from validation.data import TOKEN_VOCAB

        rng = rng_for(seed, q, 33)
        ids = np.sort(rng.choice(np.arange(1, TOKEN_VOCAB), size=int(round(q * (TOKEN_VOCAB - 1))), replace=False))
        table = np.arange(TOKEN_VOCAB)
        table[ids] = ids[rng.permutation(len(ids))]
        xtr[gtr == 1], xte[gte == 1] = table[xtr[gtr == 1]], table[xte[gte == 1]]
        return Trial(_forgetting_case(modality, xtr, ytr, xte, yte, gtr, gte), options=_TASKS)
    shape = xtr.shape[1:]
    d = int(np.prod(shape))
    rng = rng_for(seed, q, 33)
    idx = np.sort(rng.choice(d, size=int(round(q * d)), replace=False))
    perm = idx[rng.permutation(len(idx))]
    for x, g in ((xtr, gtr), (xte, gte)):
        flat = x[g == 1].reshape(-1, d)
        flat[:, idx] = flat[:, perm]
        x[g == 1] = flat.reshape(-1, *shape)
    return Trial(_forgetting_case(modality, xtr, ytr, xte, yte, gtr, gte), options=_TASKS)


def forgetting_class_incremental(modality: str, n_tasks: float, seed: int) -> Trial:
    """The classes split into ``n_tasks`` disjoint groups learnt one after the other (class-incremental, naive)."""
    xtr, ytr, xte, yte, gtr, gte = _forgetting_base(modality, seed)
    return Trial(
        _forgetting_case(modality, xtr, ytr, xte, yte, gtr, gte), options={"tasks": "classes", "n_tasks": int(n_tasks)}
    )


_ALL = ("image", "table", *NEW_MODALITIES)

PLANS: tuple[Plan, ...] = (
    Plan(
        "model.hyperparameters",
        0.05,
        "HyperparameterOptions.alpha = 0.05 (exact one-sided McNemar, Bonferroni over the trials the best was picked from; gain ≥ 2 points)",
        _ALL,
        hyperparameters_clean,
        (
            Defect(
                "lr_too_low",
                "recipe learning rate divided by this ratio",
                (3.0, 10.0, 30.0, 100.0),
                hyperparameters_lr_low,
                quick_strengths=(3.0, 30.0),
                expect=("better_recipe",),
            ),
            # images only: the breast-cancer MLP (Adam, nearly linear task) keeps 96-99 % validation accuracy even at lr 2 (×1000)
            Defect(
                "lr_too_high",
                "recipe learning rate multiplied by this ratio",
                (2.0, 4.0, 10.0, 30.0),
                hyperparameters_lr_high,
                quick_strengths=(4.0,),
                modalities=("image",),
                expect=("better_recipe",),
            ),
        ),
        "near-optimal recipes at their own 8 epochs (digits CNN: lr 8e-3, batch 32; breast-cancer MLP: dlclinic's default lr 2e-3, batch 64; TokenBag: lr 9e-3, batch 32, from an lr × weight decay × batch grid on seeds 100-123; MNIST-1D 1-D CNN: lr 3e-2, batch 32); 90 % of the rows in train; 5 trials",
        cost=3.0,
    ),
    Plan(
        "model.architecture",
        0.05,
        "default (oversized: upper 95 % bound of the paired drop ≤ 1 point at ≤ half the parameters, 2.5 % per width; ≥ 50 % dead ReLU channels; effective rank < 10 %)",
        _ALL,
        architecture_clean,
        (
            Defect(
                "oversized_cnn",
                "digits CNN width multiplier (1 = right-sized)",
                (3.0, 4.0, 6.0),
                architecture_wider,
                quick_strengths=(6.0,),
                modalities=("image",),
                expect=("oversized", "dead_channels", "low_rank"),
            ),
            Defect(
                "oversized_mlp",
                "MLP width multiplier (1 = right-sized)",
                (2.0, 4.0, 6.0),
                architecture_wider,
                quick_strengths=(4.0,),
                modalities=("table",),
                expect=("oversized", "dead_channels", "low_rank"),
            ),
            Defect(
                "oversized_lstm",
                "token LSTM width multiplier (1 = right-sized, 16 wide)",
                (2.0, 4.0, 6.0),
                architecture_wider,
                quick_strengths=(4.0,),
                modalities=("tokens",),
                expect=("oversized", "dead_channels", "low_rank"),
            ),
            Defect(
                "oversized_conv1d",
                "1-D CNN width multiplier (1 = right-sized)",
                (2.0, 4.0, 6.0),
                architecture_wider,
                quick_strengths=(4.0,),
                modalities=("sequence",),
                expect=("oversized", "dead_channels", "low_rank"),
            ),
            Defect(
                "dead_units",
                "share of the first hidden layer's units made dead",
                (0.25, 0.5, 0.75),
                architecture_dead_units,
                quick_strengths=(0.5,),
                modalities=FLOAT_MODALITIES,  # the token family is an LSTM: no ReLU unit to kill
                expect=("dead_channels",),
            ),
        ),
        "right-sized networks for the 8-epoch recipe: dlclinic's digits CNN (half width loses ≈ 9 points) and its MLP (256, 128) on a non-linear table (16 Gaussian clusters in 6-D, 4 classes; half width loses ≈ 3.5 points) — the breast-cancer table is nearly linear, so every MLP is oversized there; a user's bidirectional LSTM (16 wide) on token ids and dlclinic's 1-D CNN (32, 64) on MNIST-1D",
        cost=4.0,
    ),
    Plan(
        "optimization.nonconvex",
        0.05,
        "default (warns when sharpness × recipe LR > 2, the edge of stability)",
        _ALL,
        nonconvex_clean,
        (
            Defect(
                "lr_beyond_edge",
                "true sharpness × recipe LR, relative to the edge 2",
                (1.1, 1.5, 3.0),
                nonconvex_lr_beyond_edge,
                quick_strengths=(1.5,),
                expect=("sharp",),
            ),
            Defect(
                "sharpened",
                "first layer re-parametrised c× sharper (same function), clean recipe LR",
                (2.0, 4.0, 8.0),
                nonconvex_sharpened,
                quick_strengths=(4.0,),
                expect=("sharp",),
            ),
        ),
        "dlclinic's baselines trained 8 epochs; recipe LR set so that the true sharpness (full train loss, converged power iteration) × LR = 0.75 × 2",
        cost=1.5,
    ),
    Plan(
        "optimization.forgetting",
        0.05,
        "default (forgetting > 0.2 and the bootstrap 95 % BWT interval entirely below 0)",
        _ALL,
        forgetting_clean,
        (
            Defect(
                "conflicting_concept",
                "share of the input space where task 2 changes the label",
                (0.1, 0.25, 0.5, 1.0),
                forgetting_conflict,
                quick_strengths=(0.25, 1.0),
                expect=("catastrophic_forgetting",),
            ),
            Defect(
                "permuted_inputs",
                "share of task 2's pixels (series: time steps; token ids: vocabulary ids) permuted",
                (0.25, 0.5, 1.0),
                forgetting_permuted,
                quick_strengths=(1.0,),
                modalities=("image", *NEW_MODALITIES),  # the table is standardised features: no layout to permute
                expect=("catastrophic_forgetting",),
            ),
            Defect(
                "class_incremental",
                "disjoint class groups learnt in sequence",
                (2.0,),
                forgetting_class_incremental,
                # the binary table has no split-class sequence (2 classes per task); tokens have 4, MNIST-1D 10
                modalities=("image", *NEW_MODALITIES),
                expect=("catastrophic_forgetting",),
            ),
        ),
        "two tasks that are random halves of the same data (task ids as groups, naive fine-tuning): nothing to forget",
    ),
)
