"""The K fold models of the out-of-fold probabilities wait at most FOLD_PATIENCE epochs after their best.

They still train only on their fit rows (out-of-fold stays out-of-fold), and every other
training keeps the recipe's own patience.
"""

from __future__ import annotations

import numpy as np
import pytest

from dlclinic.core.baselines import MLP
from dlclinic.core.case import Case
from dlclinic.core.errors import ConfigError
from dlclinic.core.evidence import FOLD_PATIENCE, EvidenceConfig, fold_result, kfold_rows
from dlclinic.core.recipe import FitConfig, fit, patience_at_most, seed_everything


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
        probs, labels = fold_result(case, retrain, 0, (fold, (fit_idx, held)))
        assert probs.shape == (len(held), 2) and labels["test"].shape == (40,)
    assert [n for _, n in seen] == [len(f) for f, _ in rows]
    assert all(wait <= FOLD_PATIENCE for wait, _ in seen)
