"""data.labeling_cost: active-learning maths on hand-made cases, and the check on a planted one."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import blobs, redundant_pool
from dlclinic import Case, FitConfig
from dlclinic.challenges.data.labeling_cost import CHECK, LabelingCostOptions, run, simulation_plan
from dlclinic.core.baselines import MLP
from dlclinic.core.errors import ConfigError
from dlclinic.core.evidence import Evidence
from dlclinic.core.recipe import fit, seed_everything
from dlclinic.core.registry import build_options
from dlclinic.functional.active_learning import (
    labels_saved,
    labels_to_reach,
    mc_dropout_probs,
    score_bald,
    score_entropy,
    score_margin,
    select_kcenter,
    simulate,
)


@pytest.fixture(scope="module")
def planted() -> tuple[Case, Case]:
    """The redundant pool with a small trained MLP; the same without a test split."""
    x, y = redundant_pool(1500, seed=0)
    xt, yt = redundant_pool(600, seed=1)
    seed_everything(0)  # the initial weights too
    model = fit(MLP(8, 3, hidden=(64, 32)), x, y, FitConfig(epochs=8, batch_size=64)).model
    return Case.from_arrays((x, y), (xt, yt), model=model), Case.from_arrays((x, y), model=model)


# -- functional ------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["entropy", "margin", "kcenter"])
def test_active_learning_saves_labels_on_aredundant_pool(strategy: str) -> None:
    x, y = redundant_pool(1500, seed=0)
    xt, yt = redundant_pool(600, seed=1)
    for seed in range(3):
        n_r, acc_r = simulate(x, y, xt, yt, "random", initial=30, step=50, budget=430, seed=seed)
        n_s, acc_s = simulate(x, y, xt, yt, strategy, initial=30, step=50, budget=430, seed=seed)
        assert n_r.tolist() == n_s.tolist() == list(range(30, 431, 50))
        assert acc_r[0] == acc_s[0]  # same seed, same initial set
        assert labels_saved(n_r, acc_r, n_s, acc_s) > 50, (strategy, seed, acc_r, acc_s)


def test_bald_runs_in_the_simulation_and_needs_mc_probs() -> None:
    x, y = blobs(300, k=3, d=4, sep=2.0, seed=0)
    n, acc = simulate(x, y, x, y, "bald", initial=12, step=20, budget=52, seed=0, mc_probs_fn=mc_dropout_probs)
    assert n.tolist() == [12, 32, 52] and acc[-1] > 0.8
    with pytest.raises(ValueError, match="mc_probs_fn"):
        simulate(x, y, x, y, "bald", initial=12, step=20, budget=52, seed=0)
    with pytest.raises(ValueError, match="'random'"):
        simulate(x, y, x, y, "uncertainty", initial=12, step=20, budget=52, seed=0)


def test_labels_saved_is_exact_on_hand_made_curves() -> None:
    n = np.array([100, 200, 300, 400])
    random = np.array([0.60, 0.70, 0.80, 0.90])
    # reaches 0.90 halfway between 200 (0.80) and 300 (1.00): needs 250, random needs 400
    assert labels_saved(n, random, n, np.array([0.60, 0.80, 1.00, 1.00])) == pytest.approx(150.0)
    # slower than random: reaches 0.90 only at 400 + (0.9-0.85)/(0.95-0.85)*100 on a longer curve
    n_long = np.array([100, 200, 300, 400, 500])
    assert labels_saved(n, random, n_long, np.array([0.6, 0.65, 0.7, 0.85, 0.95])) == pytest.approx(-50.0)
    # never reaches it
    assert math.isnan(labels_saved(n, random, n, np.array([0.6, 0.7, 0.8, 0.85])))
    # already there at the start
    assert labels_saved(n, random, n, np.array([0.95, 0.95, 0.95, 0.95])) == pytest.approx(300.0)
    # identical curves save nothing
    assert labels_saved(n, random, n, random) == 0.0
    # a noisy random curve: random first reaches its final 0.80 at 200 (raw) …
    noisy = np.array([0.6, 0.8, 0.7, 0.8])
    assert labels_to_reach(n, noisy, 0.8) == 200.0
    # … and on the monotone fit [0.6, 0.75, 0.75, 0.8], at 400
    assert labels_to_reach(n, noisy, monotone=True) == 400.0
    assert labels_saved(n, noisy, n, np.array([0.6, 0.8, 0.8, 0.8]), monotone=True) == pytest.approx(200.0)
    # a plateau one evaluation sample short of random's final accuracy counts with a tolerance
    short = np.array([0.6, 0.899, 0.899, 0.899])
    assert math.isnan(labels_saved(n, random, n, short))
    # target 0.898: random at 300 + 98/100·100 = 398, the strategy at 100 + 0.298/0.299·100
    assert labels_saved(n, random, n, short, tolerance=0.002) == pytest.approx(398 - (100 + 0.298 / 0.299 * 100))


def test_kcenter_picks_the_farthest_point_first() -> None:
    x = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 10.0], [3.0, 4.0], [0.0, 9.0]])
    picks = select_kcenter(x, np.array([0]), 3)
    assert picks[0] == 2  # farthest from the labelled origin
    assert picks[1] == 3  # then farthest from {origin, (0, 10)}: (3, 4) at distance 5
    assert picks.tolist() == [2, 3, 1]  # then a tie at distance 1 between rows 1 and 4: the first
    # duplicates of labelled rows and k larger than the pool
    dup = np.zeros((4, 3))
    assert sorted(select_kcenter(dup, np.array([0, 1]), 10).tolist()) == [2, 3]
    # nothing labelled: start from the point farthest from the mean
    assert select_kcenter(x, np.array([], dtype=int), 1).tolist() == [2]


def test_bald_is_zero_when_samples_agree_and_positive_when_they_disagree() -> None:
    agree = np.tile(np.array([[0.2, 0.5, 0.3], [0.9, 0.05, 0.05]]), (8, 1, 1))
    assert np.allclose(score_bald(agree), 0.0)
    disagree = np.stack([np.array([[0.9, 0.05, 0.05]]), np.array([[0.05, 0.9, 0.05]])])
    assert score_bald(disagree)[0] > 0.3
    # the uncertain-but-consistent row has entropy but no mutual information
    assert score_entropy(agree[0])[0] > 1.0


def test_uncertainty_scores() -> None:
    probs = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.6, 0.3, 0.1]])
    assert score_margin(probs) == pytest.approx([0.0, 1.0, 0.7])
    assert score_entropy(probs) == pytest.approx(
        [0.0, math.log(2), -(0.6 * math.log(0.6) + 0.3 * math.log(0.3) + 0.1 * math.log(0.1))]
    )


# -- the check -------------------------------------------------------------------------


def test_check_finds_that_active_learning_pays_off(planted: tuple[Case, Case], tmp_path) -> None:  # type: ignore[no-untyped-def]
    case, _ = planted
    evidence = Evidence(case, cache_dir=tmp_path)
    res = run(case, evidence, LabelingCostOptions())
    assert res.status == "ok", res.summary
    saved_mean, saved_std = (
        float(res.metrics["best_labels_saved_mean"] or 0),
        float(res.metrics["best_labels_saved_std"] or 0),
    )
    assert saved_mean > saved_std > 0
    assert res.metrics["seeds"] == 3 and res.metrics["budget"] == 450
    assert res.findings[0].code == "active_learning_saves" and res.findings[0].message.startswith(
        "active learning saves"
    )
    assert res.remedy is not None and (res.remedy.command or "").startswith("dlclinic treat data.labeling_cost --pool")
    plot = res.details["plots"][0]
    assert plot["kind"] == "line" and [s["label"] for s in plot["series"]] == ["random", "entropy", "margin", "kcenter"]
    assert len(res.details["tables"][0]["rows"]) == 4
    res.to_dict()  # JSON-ready
    # a second run reads the simulation from the cache; a stricter threshold turns it into a warning
    strict = run(case, evidence, LabelingCostOptions(warn_saved_fraction=0.99, min_accuracy_gain=0.5))
    assert "labeling_cost" in evidence.stats.cached
    assert strict.status == "warn" and "does not pay off" in strict.summary and "label at random" in strict.summary
    assert strict.metrics["best_labels_saved_mean"] == res.metrics["best_labels_saved_mean"]


def test_check_needs_a_labelled_test_split_and_enough_rows(planted: tuple[Case, Case], tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, no_test = planted
    res = run(no_test, Evidence(no_test, cache_dir=tmp_path), LabelingCostOptions())
    assert res.status == "not_examined" and "test" in res.summary
    x, y = blobs(80, k=3, d=8, seed=0)
    tiny = Case.from_arrays((x, y), (x, y), model=no_test.model)
    res = run(tiny, Evidence(tiny, cache_dir=tmp_path), LabelingCostOptions())
    assert res.status == "not_examined" and "Too few rows" in res.summary


def test_options_are_validated_with_the_allowed_values() -> None:
    assert build_options(CHECK, {"strategies": ["random", "bald"]}).strategies == ("random", "bald")
    with pytest.raises(ConfigError, match="'random'"):
        build_options(CHECK, {"strategies": ["entropy", "margin"]})
    with pytest.raises(ConfigError, match="uncertainty"):
        build_options(CHECK, {"strategies": ["random", "uncertainty"]})
    assert simulation_plan(3118, 10, LabelingCostOptions()) == (62, 110, 935)
    assert simulation_plan(150, 10, LabelingCostOptions()) == (20, 4, 45)  # at least 2 per class
    assert simulation_plan(100_000, 10, LabelingCostOptions()) == (300, 150, 1500)  # initial ≤ budget / 5


def test_a_pool_beyond_max_pool_is_a_stratified_sample_and_still_finds_the_saving(
    planted: tuple[Case, Case],
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    case, _ = planted
    res = run(case, Evidence(case, cache_dir=tmp_path), LabelingCostOptions(max_pool=1000))
    assert res.status == "ok", res.summary
    assert res.metrics["budget"] == 300  # the plan of a 1,000-row pool, not of the 1,500-row split
    assert float(res.metrics["best_labels_saved_mean"] or 0) > 0
    assert "sample of 1,000 of the 1,500 train rows" in res.summary
    with pytest.raises(ValueError, match="max_pool >= 0"):
        LabelingCostOptions(max_pool=-1)
