"""Pure maths against reference computations and planted truths."""

from __future__ import annotations

import numpy as np
import pytest

from dlclinic.functional.calibration import estimate_ece, reliability_bins
from dlclinic.functional.drift import gaussian_kernel, median_bandwidth, mmd2_biased, mmd_test
from dlclinic.functional.duplicates import (
    find_cross_duplicates,
    find_exact_duplicates,
    find_near_duplicates,
    nn_distance_scale,
)
from dlclinic.functional.labels import find_label_issues, imbalance_ratio
from dlclinic.functional.ood import score_energy, score_knn, score_max_softmax


def _naive_mmd2(x: np.ndarray, y: np.ndarray, sigma: float) -> float:
    def k(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.exp(-np.sum((a - b) ** 2) / (2 * sigma * sigma)))

    kxx = np.mean([k(a, b) for a in x for b in x])
    kyy = np.mean([k(a, b) for a in y for b in y])
    kxy = np.mean([k(a, b) for a in x for b in y])
    return kxx + kyy - 2 * kxy


def test_mmd_statistic_matches_direct_computation() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 3)), rng.normal(0.5, 1, size=(25, 3))
    sigma = median_bandwidth(np.concatenate([x, y]))
    assert mmd2_biased(x, y, sigma) == pytest.approx(_naive_mmd2(x, y, sigma), abs=1e-9)
    res = mmd_test(x, y, permutations=100, bandwidth=sigma)
    assert res.mmd2 == pytest.approx(_naive_mmd2(x, y, sigma), abs=1e-9)


def test_mmd_detects_shift_and_controls_false_positives() -> None:
    rng = np.random.default_rng(1)
    shifted = [
        mmd_test(rng.normal(size=(150, 4)), rng.normal(0.5, 1, size=(150, 4)), permutations=200, seed=s).p_value
        for s in range(5)
    ]
    assert max(shifted) < 0.01
    null = [
        mmd_test(rng.normal(size=(100, 4)), rng.normal(size=(100, 4)), permutations=100, seed=s).p_value
        for s in range(40)
    ]
    # p-values are valid: the rejection rate at 5 % stays near 5 % (binomial 99.9 % bound for 40 trials)
    assert np.mean(np.array(null) < 0.05) <= 0.2
    assert 0.2 < np.mean(null) < 0.8


def test_kernel_is_symmetric_psd() -> None:
    z = np.random.default_rng(2).normal(size=(20, 3))
    k = gaussian_kernel(z, z, 1.0)
    assert np.allclose(k, k.T)
    assert np.linalg.eigvalsh(k).min() > -1e-8


def test_exact_and_near_duplicates_found_exactly() -> None:
    rng = np.random.default_rng(3)
    x = rng.random((300, 200)).astype(np.float32)
    x[10] = x[5]
    x[20] = x[7] + rng.normal(0, 1e-3, 200)
    groups = find_exact_duplicates(x)
    assert [g.tolist() for g in groups] == [[5, 10]]
    near = find_near_duplicates(x)
    assert {tuple(p) for p in near.pairs.tolist()} == {(5, 10), (7, 20)}
    clean = rng.random((300, 200)).astype(np.float32)
    assert len(find_near_duplicates(clean)) == 0


def test_cross_duplicates_find_leaks_only() -> None:
    rng = np.random.default_rng(4)
    train, test = rng.random((200, 16)), rng.random((100, 16))
    test[[3, 50]] = train[[9, 90]]
    leaks = find_cross_duplicates(train, test)
    assert sorted(leaks.pairs[:, 1].tolist()) == [3, 50]
    assert sorted(leaks.pairs[:, 0].tolist()) == [9, 90]


def test_distance_scale_ignores_copies() -> None:
    x = np.repeat(np.random.default_rng(5).random((100, 5)), 2, axis=0)  # every row twice
    assert nn_distance_scale(x) > 0.01


def test_label_issues_find_planted_flips() -> None:
    rng = np.random.default_rng(6)
    n, k = 1000, 4
    y_true = rng.integers(0, k, n)
    probs = np.full((n, k), 0.05)
    probs[np.arange(n), y_true] = 0.85
    y = y_true.copy()
    flipped = rng.choice(n, 60, replace=False)
    y[flipped] = (y[flipped] + 1) % k
    issues = find_label_issues(y, probs)
    assert set(issues.indices.tolist()) == set(flipped.tolist())
    assert (issues.suggested == y_true[issues.indices]).all()
    assert issues.noise_rate == pytest.approx(0.06, abs=0.01)
    pairs = issues.confusion(y)
    assert sum(c for _, _, c in pairs) == 60


def test_label_issues_with_an_absent_class() -> None:
    y = np.array([0, 0, 0, 1, 1, 1, 0])
    p = np.array([[0.9, 0.05, 0.05]] * 3 + [[0.05, 0.9, 0.05]] * 3 + [[0.05, 0.9, 0.05]])
    issues = find_label_issues(y, p)
    assert issues.indices.tolist() == [6]
    assert issues.suggested.tolist() == [1]


def test_imbalance_ratio() -> None:
    assert imbalance_ratio(np.array([100, 10])) == 10
    assert imbalance_ratio(np.array([5, 0])) == float("inf")


def test_ece_matches_reference_and_bins() -> None:
    rng = np.random.default_rng(7)
    probs = rng.dirichlet(np.ones(3), size=500)
    labels = rng.integers(0, 3, 500)
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, 16)
    ref = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ref += m.mean() * abs((pred[m] == labels[m]).mean() - conf[m].mean())
    assert estimate_ece(probs, labels) == pytest.approx(ref, abs=1e-9)
    rel = reliability_bins(probs, labels)
    assert rel.count.sum() == 500


def test_ood_scores_rank_unusual_inputs_higher() -> None:
    rng = np.random.default_rng(8)
    ref = rng.normal(size=(300, 8)) + 5
    near, far = rng.normal(size=(50, 8)) + 5, rng.normal(size=(50, 8)) - 5
    s_near, s_far = score_knn(ref, near), score_knn(ref, far)
    assert s_far.min() > np.median(s_near)
    logits = np.array([[10.0, 0, 0], [0.1, 0, 0]])
    assert score_max_softmax(np.exp(logits) / np.exp(logits).sum(1, keepdims=True))[1] > 0.5
    assert score_energy(logits)[1] > score_energy(logits)[0]


def test_ece_null_keeps_calibrated_small_samples_quiet() -> None:
    from dlclinic.functional.calibration import ece_calibrated_null

    rng = np.random.default_rng(9)
    alarms = 0
    for seed in range(40):
        conf = rng.uniform(0.5, 1.0, 100)
        probs = np.c_[conf, 1 - conf]
        labels = np.where(rng.random(100) < conf, 0, 1)  # calibrated by construction
        null = ece_calibrated_null(probs, resamples=200, seed=seed)
        alarms += float((1 + np.sum(null >= estimate_ece(probs, labels))) / 201) < 0.05
    assert alarms <= 6  # about 5 % expected
    over = np.c_[np.full(300, 0.95), np.full(300, 0.05)]
    wrong = np.where(rng.random(300) < 0.7, 0, 1)  # 70 % accurate at 95 % confidence
    null = ece_calibrated_null(over, resamples=200)
    assert estimate_ece(over, wrong) > null.max()


def test_knn_scores_on_a_sampled_reference_keep_their_verdicts() -> None:
    """Beyond ``reference_rows`` the kNN scores use a seeded sample of the reference (cost O(N × sample), not N²)."""
    from dlclinic.functional.profile import find_knn_outliers

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(3000, 8)) + np.repeat(np.eye(8)[:3] * 6, 1000, axis=0)
    emb[[5, 1500, 2999]] = rng.normal(size=(3, 8)) * 0.2 + np.eye(8)[6] * 6  # three far from every cluster
    full, _ = find_knn_outliers(emb)
    sampled, _ = find_knn_outliers(emb, reference_rows=400)
    assert {5, 1500, 2999} <= set(full[:3].tolist()) and {5, 1500, 2999} <= set(sampled[:3].tolist())
    assert len(sampled) <= 3 * max(len(full), 3)  # the fence adapts to the sampled scores: no flood
    near = rng.normal(size=(200, 8)) + np.eye(8)[0] * 6
    far = rng.normal(size=(200, 8)) + np.eye(8)[7] * 6
    s_near, s_far = score_knn(emb, near, reference_rows=400), score_knn(emb, far, reference_rows=400)
    assert s_far.min() > s_near.max()


@pytest.mark.parametrize("rank", [20, 200])  # the projection keeps every distance; it shrinks many (brute fallback)
def test_projected_neighbours_give_the_brute_force_scale(monkeypatch: pytest.MonkeyPatch, rank: int) -> None:
    """Beyond ``PROJECTED_SCALE_ROWS`` wide rows the scale's neighbours come through a projection: the same unit."""
    from dlclinic.functional import duplicates

    rng = np.random.default_rng(4)
    x = (rng.random((1200, rank)) @ rng.random((rank, 200))).astype(np.float32)
    x[5] = x[9]  # a copy is not the unit of nearness
    brute = duplicates.nn_distance_scale(x, sample=300)
    monkeypatch.setattr(duplicates, "PROJECTED_SCALE_ROWS", 100)
    assert duplicates.nn_distance_scale(x, sample=300) == pytest.approx(brute, rel=1e-5)


@pytest.mark.parametrize("width", [8, 40, 300])  # raw coordinates; rotated to principal axes; a PCA projection
def test_near_copies_by_kd_tree_equal_the_brute_force_search(width: int) -> None:
    """Beyond ``tree_rows`` the search is a radius query on a k-d tree: the same pairs, never N² work."""
    from dlclinic.functional.duplicates import find_cross_duplicates, find_near_duplicates

    rng = np.random.default_rng(3)
    x = rng.random((1500, width)).astype(np.float32)
    copies = rng.choice(1500, 40, replace=False)
    x[copies[20:]] = x[copies[:20]] + rng.normal(0, 1e-3, (20, width)).astype(np.float32)
    brute, tree = find_near_duplicates(x), find_near_duplicates(x, tree_rows=0)
    assert len(brute.pairs) >= 20 and brute.pairs.tolist() == tree.pairs.tolist()
    q = np.concatenate([x[:10] + 1e-4, rng.random((50, width)).astype(np.float32)])
    leaks, leaks_tree = find_cross_duplicates(x, q), find_cross_duplicates(x, q, tree_rows=0)
    assert sorted(leaks.pairs[:, 1].tolist()) == list(range(10)) and leaks.pairs.tolist() == leaks_tree.pairs.tolist()


def test_image_moments_in_chunks_equal_the_whole_array_scaled() -> None:
    from dlclinic.functional.profile import _row_moments

    x = np.random.default_rng(5).integers(0, 256, size=(50, 1, 6, 6)).astype(np.uint8)  # raw 8-bit images
    flat = x.reshape(50, -1).astype(np.float32)
    scaled = (flat - flat.min()) / (flat.max() - flat.min())
    mean, std = _row_moments(x, chunk=7)
    assert np.allclose(mean, scaled.mean(1), atol=1e-6) and np.allclose(std, scaled.std(1), atol=1e-6)
    assert not _row_moments(np.ones((3, 4), np.float32))[1].any()  # a constant array: no contrast anywhere
