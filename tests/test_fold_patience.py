"""The K fold models of the out-of-fold probabilities: the first FOLD_PROBES stop early, waiting
at most FOLD_PATIENCE epochs after their best; the others train as many epochs as the longest
of them, on all their fit rows, with the LR annealed to zero.

Every fold model trains only on its fit rows (out-of-fold stays out-of-fold), and every other
training keeps the recipe's own patience and length.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from dlclinic.challenges.data.quantity import _fold_point
from dlclinic.core.baselines import MLP
from dlclinic.core.case import Case
from dlclinic.core.errors import ConfigError
from dlclinic.core.evidence import (
    FOLD_PATIENCE,
    FOLD_PROBES,
    Evidence,
    EvidenceConfig,
    fit_head,
    fold_result,
    kfold_rows,
    train_folds,
)
from dlclinic.core.recipe import (
    FitConfig,
    annealed_within,
    epochs_recorded,
    fit,
    patience_at_most,
    seed_everything,
)


def _noisy(n: int = 240, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two overlapping classes with 30 % flipped labels: validation loss stops improving within a few epochs."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = (rng.normal(size=(n, 4)) + 0.5 * y[:, None]).astype(np.float32)
    flip = rng.random(n) < 0.3
    return x, np.where(flip, 1 - y, y).astype(np.int64)


def _epochs_after_best(patience: int | None, cfg: FitConfig) -> tuple[int, bool]:
    x, y = _noisy()
    seed_everything(0)
    if patience is None:
        res = fit(MLP(4, 2), x, y, cfg)
    else:
        with patience_at_most(patience):
            res = fit(MLP(4, 2), x, y, cfg)
    return len(res.history["val_loss"]) - 1 - res.best_epoch, res.stopped_early


def test_patience_at_most_caps_the_wait_after_the_best_epoch() -> None:
    cfg = FitConfig(epochs=60, patience=8, lr=1e-2)
    wait, stopped = _epochs_after_best(None, cfg)
    assert stopped and wait == 8  # the recipe's own patience outside the context
    wait, stopped = _epochs_after_best(2, cfg)
    assert stopped and wait == 2
    wait, stopped = _epochs_after_best(20, cfg)  # a cap above the recipe's patience changes nothing
    assert stopped and wait == 8


def test_patience_at_most_is_undone_on_exit_and_checked() -> None:
    cfg = FitConfig(epochs=60, patience=8, lr=1e-2)
    with pytest.raises(RuntimeError), patience_at_most(2):
        raise RuntimeError("a failing training")
    assert _epochs_after_best(None, cfg) == (8, True)
    with pytest.raises(ConfigError), patience_at_most(0):
        pass


def test_fold_models_train_with_the_capped_patience_on_their_fit_rows_only() -> None:
    x, y = _noisy(320, seed=1)
    case = Case.from_arrays((x, y), (x[:40], y[:40]), class_names=["a", "b"], modality="vector")
    rows = kfold_rows(case, EvidenceConfig(folds=4))
    seen: list[tuple[int, int]] = []

    def retrain(xf: np.ndarray, yf: np.ndarray, seed: int):  # type: ignore[no-untyped-def]
        res = fit(MLP(4, 2), xf, yf, FitConfig(epochs=60, patience=8, lr=1e-2, seed=seed))
        seen.append((len(res.history["val_loss"]) - 1 - res.best_epoch, len(xf)))
        assert not any((xf == r).all(axis=1).any() for r in x[held])  # no held-out row among the fit rows
        return res.model

    for fold, (fit_idx, held) in enumerate(rows):
        probs, labels, epochs, annealed = fold_result(case, retrain, 0, (fold, (fit_idx, held)))
        assert probs.shape == (len(held), 2) and labels["test"].shape == (40,)
        assert epochs is not None and epochs < 60 and not annealed
    assert [n for _, n in seen] == [len(f) for f, _ in rows]
    assert all(wait <= FOLD_PATIENCE for wait, _ in seen)


def test_annealed_within_trains_every_row_for_the_horizon_and_ends_at_lr_zero() -> None:
    x, y = _noisy()
    cfg = FitConfig(epochs=60, patience=8, lr=1e-2, schedule="constant")
    with annealed_within(5), epochs_recorded() as ran:
        res = fit(MLP(4, 2), x, y, cfg)
    assert ran == [5] and len(res.history["train_loss"]) == 5 and not res.history["val_loss"]
    assert res.history["lr"][-1] < 1e-6 < res.history["lr"][0]  # cosine to zero within the 5 epochs
    assert res.best_epoch == 4 and not res.stopped_early  # the last weights
    with annealed_within(99):  # never longer than the recipe
        assert len(fit(MLP(4, 2), x, y, FitConfig(epochs=3)).history["train_loss"]) == 3
    with epochs_recorded() as ran:  # undone on exit: the recipe again (held-out rows, patience)
        res = fit(MLP(4, 2), x, y, cfg)
    assert res.history["val_loss"] and ran == [len(res.history["val_loss"])] and ran[0] < 60
    with pytest.raises(ConfigError), annealed_within(0):
        pass


def test_the_folds_after_the_probes_train_as_long_as_the_longest_on_all_their_fit_rows() -> None:
    x, y = _noisy(320, seed=1)
    case = Case.from_arrays((x, y), (x[:40], y[:40]), class_names=["a", "b"], modality="vector")
    rows = kfold_rows(case, EvidenceConfig(folds=4))
    seen: list[dict[str, object]] = []

    def retrain(xf: np.ndarray, yf: np.ndarray, seed: int):  # type: ignore[no-untyped-def]
        res = fit(MLP(4, 2), xf, yf, FitConfig(epochs=60, patience=8, lr=1e-2, seed=seed))
        seen.append({"rows": len(xf), "epochs": len(res.history["train_loss"]), "val": bool(res.history["val_loss"])})
        seen[-1]["lr_end"] = res.history["lr"][-1]
        return res.model

    phases: list[tuple[list[int], bool]] = []

    def run(tasks, one, first):  # type: ignore[no-untyped-def]
        phases.append(([k for k, _ in tasks], first))
        return [one(t) for t in tasks]

    results = train_folds(case, retrain, 0, rows, run)
    assert phases == [([0, 1], True), ([2, 3], False)]  # FOLD_PROBES first, then the others
    probes, others = seen[:2], seen[2:]
    assert all(p["val"] and int(p["epochs"]) < 60 for p in probes)  # stopped early on a held-out tenth
    longest = max(int(p["epochs"]) for p in probes)  # type: ignore[call-overload]
    assert all(not o["val"] and o["epochs"] == longest and float(o["lr_end"]) < 1e-6 for o in others)
    assert [r.epochs for r in results] == [p["epochs"] for p in probes] + [longest] * 2
    assert [r.annealed for r in results] == [False, False, True, True]
    assert [probs.shape[0] for probs, *_ in results] == [len(held) for _, held in rows]


def test_every_fold_stops_early_when_retrain_does_not_say_how_long_it_trained() -> None:
    x, y = _noisy(320, seed=1)
    case = Case.from_arrays((x, y), (x[:40], y[:40]), class_names=["a", "b"], modality="vector")
    rows = kfold_rows(case, EvidenceConfig(folds=4))

    def retrain(xf: np.ndarray, yf: np.ndarray, seed: int):  # type: ignore[no-untyped-def]
        return MLP(4, 2).eval()  # a recipe of the user's own, not dlclinic's fit

    results = train_folds(case, retrain, 0, rows, lambda tasks, one, first: [one(t) for t in tasks])
    assert [r.epochs for r in results] == [None] * 4 and not any(r.annealed for r in results)


def test_the_learning_curve_takes_only_the_fold_models_trained_as_the_recipe_trains(tmp_path: Path) -> None:
    x, y = _noisy(320, seed=1)
    case = Case.from_arrays((x, y), (x[:40], y[:40]), model=MLP(4, 2).eval(), class_names=["a", "b"])

    def retrain(xf: np.ndarray, yf: np.ndarray, seed: int):  # type: ignore[no-untyped-def]
        return fit(MLP(4, 2), xf, yf, FitConfig(epochs=30, patience=8, lr=1e-2, seed=seed)).model

    ev = Evidence(case, EvidenceConfig(oof="kfold", folds=4), retrain=retrain, cache_dir=tmp_path)
    fit_rows, labels = ev.fold_predictions("test")  # type: ignore[misc]
    assert len(fit_rows) == 4 and labels.shape == (4, 40)
    recipe_rows, recipe_labels = ev.fold_predictions("test", as_the_recipe_trains=True)  # type: ignore[misc]
    assert len(recipe_rows) == FOLD_PROBES and (recipe_labels == labels[:FOLD_PROBES]).all()
    point = _fold_point(ev, "model", 0.75)  # data.quantity's (K-1)/K point: the curve's other points retrain the recipe
    assert point is not None and len(point[0]) == FOLD_PROBES
    assert _fold_point(ev, "model", 0.5) is None


def test_out_of_fold_heads_start_from_the_previous_fold_and_reach_the_same_optimum() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 4000)
    x = (rng.normal(size=(4000, 16)) + y[:, None] * rng.normal(size=16)).astype(np.float32)
    rows = kfold_rows(Case.from_arrays((x, y), class_names=list("abcd")), EvidenceConfig(folds=4))
    head = LogisticRegression(max_iter=500, warm_start=True)
    for fit_idx, held in rows:
        warm = fit_head(head, x[fit_idx], y[fit_idx])
        cold = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x[fit_idx], y[fit_idx])
        diff = np.abs(warm.predict_proba(x[held]) - cold.predict_proba(x[held]))
        assert diff.mean() < 1e-3 and diff.max() < 0.02  # the same optimum, to the solver's tolerance
    assert head.n_iter_[0] < cold[-1].n_iter_[0]  # started near the optimum
    three = y < 3  # a fold without class 3: the previous head does not fit, the fit starts cold
    clf = fit_head(head, x[three], y[three])
    cold = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x[three], y[three])
    assert list(clf.classes_) == [0, 1, 2] and head.coef_.shape == (3, 16)
    assert np.abs(clf.predict_proba(x[three]) - cold.predict_proba(x[three])).max() < 0.02
