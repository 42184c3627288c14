"""Pure maths of the research challenges: intervals, McNemar, slices, power-law fit, open set."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from dlclinic.functional.openset import calibrate_rejection, cluster_rejected, novelty_auroc
from dlclinic.functional.slices import find_weak_slices
from dlclinic.functional.spectral import (
    analyze_matrices,
    esd,
    fit_power_law,
    generalization_proxies,
    layer_matrices,
    stable_rank,
)
from dlclinic.functional.stats import (
    benjamini_hochberg,
    bootstrap_metrics,
    compare_predictions,
    mcnemar_test,
    paired_bootstrap_difference,
    wilson_interval,
)


def _noisy(y: np.ndarray, rate: float, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = y.copy()
    flip = rng.random(len(y)) < rate
    p[flip] = (y[flip] + rng.integers(1, k, flip.sum())) % k
    return p


def test_bootstrap_metrics_match_sklearn_and_cover_the_truth() -> None:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 800)
    p = _noisy(y, 0.2, 5, 1)
    cis = bootstrap_metrics(y, p, n_boot=400)
    assert cis["accuracy"].value == pytest.approx(accuracy_score(y, p))
    assert cis["macro_f1"].value == pytest.approx(f1_score(y, p, average="macro"))
    assert cis["balanced_accuracy"].value == pytest.approx(balanced_accuracy_score(y, p))
    for c in cis.values():
        assert c.low < c.value < c.high and c.high - c.low < 0.1
    lo, hi = wilson_interval(int((y == p).sum()), len(y))
    assert abs(lo - cis["accuracy"].low) < 0.01 and abs(hi - cis["accuracy"].high) < 0.01


def test_mcnemar_exact_matches_binomial_test() -> None:
    from scipy.stats import binomtest

    a = np.r_[np.ones(30), np.zeros(12), np.ones(50)].astype(bool)
    b = np.r_[np.zeros(30), np.ones(12), np.ones(50)].astype(bool)
    r = mcnemar_test(a, b)
    assert (r.b, r.c) == (30, 12)
    assert r.p_exact == pytest.approx(binomtest(12, 42, 0.5).pvalue)
    assert r.p_mid < r.p_exact


def test_comparison_significant_only_for_a_real_difference() -> None:
    y = np.arange(1000) % 4
    better, worse = _noisy(y, 0.05, 4, 1), _noisy(y, 0.15, 4, 2)
    assert compare_predictions(y, better, worse).significant
    twin_a, twin_b = _noisy(y, 0.10, 4, 3), _noisy(y, 0.10, 4, 4)  # same error rate, independent noise
    comp = compare_predictions(y, twin_a, twin_b)
    assert not comp.significant and comp.difference_low < 0 < comp.difference_high
    assert "not significant" in comp.verdict
    d, lo, hi = paired_bootstrap_difference(better == y, worse == y)
    assert lo < d < hi and lo > 0


def test_benjamini_hochberg_is_monotone_and_bounded() -> None:
    p = np.array([0.001, 0.2, 0.03, 0.04, 0.9])
    q = benjamini_hochberg(p)
    assert np.all(q >= p) and np.all(q <= 1)
    assert np.all(np.diff(q[np.argsort(p)]) >= -1e-12)


def test_planted_hard_slice_is_found_and_clean_data_is_quiet() -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(900, 6))
    emb[:80] += 7.0  # a separate sub-population ...
    correct = rng.random(900) < 0.92
    correct[:80] = rng.random(80) < 0.45  # ... where the model errs much more
    found, tested = find_weak_slices(correct, embeddings=emb)
    assert tested > 4 and found
    assert len(np.intersect1d(found[0].rows, np.arange(80))) / found[0].size > 0.8
    clean = rng.random(900) < 0.92
    assert find_weak_slices(clean, embeddings=emb)[0] == []


def test_feature_value_slices_for_tables() -> None:
    rng = np.random.default_rng(1)
    x = np.c_[rng.integers(0, 3, 900), rng.normal(size=900)]
    correct = rng.random(900) < 0.9
    bad = x[:, 0] == 2
    correct[bad] = rng.random(bad.sum()) < 0.5
    found, _ = find_weak_slices(correct, features=x, feature_names=["site", "age"])
    assert found and found[0].description == "site = 2"


@pytest.mark.parametrize("kind", ["pareto", "student_t", "gaussian"])
def test_power_law_fit_matches_the_powerlaw_package(kind: str) -> None:
    powerlaw = pytest.importorskip("powerlaw")
    rng = np.random.default_rng(3)
    if kind == "pareto":
        values = (1 - rng.random(800)) ** (-1 / 2.5)
    elif kind == "student_t":
        values = esd([rng.standard_t(2.5, size=(120, 300))])
    else:
        values = esd([rng.normal(size=(100, 250))])
    ours = fit_power_law(values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = powerlaw.Fit(values, verbose=False, parameter_ranges={"alpha": [1.0001, 100.0]})
    assert ours.xmin == pytest.approx(ref.xmin, rel=1e-9)
    assert ours.alpha == pytest.approx(ref.alpha, rel=1e-3)
    assert ours.ks == pytest.approx(ref.D, abs=1e-6)


def test_power_law_recovers_a_known_exponent() -> None:
    rng = np.random.default_rng(0)
    x = (1 - rng.random(5000)) ** (-1 / 2.0)  # alpha = 3
    fit = fit_power_law(x)
    assert abs(fit.alpha - 3.0) < 3 * fit.sigma + 0.05


def test_layer_spectra_conv_reshape_and_norms() -> None:
    rng = np.random.default_rng(0)
    conv = rng.normal(size=(32, 16, 3, 3))
    assert len(layer_matrices(conv)) == 9 and layer_matrices(conv)[0].shape == (32, 16)
    w = rng.normal(size=(64, 128))
    [spec] = analyze_matrices([("fc", w)])
    s = np.linalg.svd(w, compute_uv=False)
    assert spec.spectral_norm == pytest.approx(s[0]) and spec.stable_rank == pytest.approx(stable_rank(w))
    assert spec.n_evals == 64 and np.isfinite(spec.alpha)
    proxies = generalization_proxies([spec])
    assert proxies["log_spectral_product"] == pytest.approx(np.log(s[0]))


def test_open_set_auroc_threshold_and_clusters() -> None:
    rng = np.random.default_rng(0)
    known, unknown = rng.normal(0, 1, 300), rng.normal(2.5, 1, 100)
    auc, lo, hi = novelty_auroc(known, unknown, n_boot=100)
    assert 0.9 < auc and lo > 0.5 and lo <= auc <= hi
    rej = calibrate_rejection(rng.normal(0, 1, 500), known, unknown, reject_rate=0.05)
    assert abs(rej.false_rejection_rate - 0.05) < 0.04 and rej.detection_rate > 0.5
    emb = np.r_[rng.normal(0, 0.5, (50, 4)), rng.normal(5, 0.5, (50, 4)), rng.normal(-5, 0.5, (50, 4))]
    truth = np.repeat([7, 8, 9], 50)
    d = cluster_rejected(emb, truth)
    assert d.n_clusters == 3 and d.purity == 1.0 and sorted(d.majority) == [7, 8, 9]
