"""ethics.fairness: the maths agrees with fairlearn, a planted bias is found, a fair case stays ok, the remedy helps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dlclinic
from dlclinic import Case
from dlclinic.functional.fairness import estimate_fairness

D, K, SEP = 8, 3, 1.6


def _centroid_model(centres: np.ndarray) -> torch.nn.Module:
    """A fixed nearest-centroid classifier (no training): logits = x·c − |c|²/2."""
    net = torch.nn.Linear(centres.shape[1], centres.shape[0])
    with torch.no_grad():
        net.weight.copy_(torch.from_numpy(centres.astype(np.float32)))
        net.bias.copy_(torch.from_numpy((-(centres**2).sum(1) / 2).astype(np.float32)))
    return net.eval()


def _data(n: int, seed: int, *, biased: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Blobs; group 'b' is 25 % of rows. Biased: only b's inputs are noisier. Fair: everyone's are."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).normal(0, SEP, size=(K, D))
    y = rng.integers(0, K, n)
    g = np.where(rng.random(n) < 0.25, "b", "a")
    noise = np.where(g == "b", 2.2, 1.0) if biased else np.full(n, 1.3)
    x = centres[y] + rng.normal(size=(n, D)) * noise[:, None]
    return x.astype(np.float32), y, g, centres


def _case(biased: bool) -> Case:
    x, y, g, c = _data(600, 0, biased=biased)
    xt, yt, gt, _ = _data(1200, 1, biased=biased)
    return Case.from_arrays((x, y), (xt, yt), model=_centroid_model(c), groups={"train": g, "test": gt})


def test_point_estimates_match_fairlearn() -> None:
    from fairlearn.metrics import MetricFrame, demographic_parity_difference, equalized_odds_difference

    rng = np.random.default_rng(0)
    n = 800
    g = np.where(rng.random(n) < 0.3, "a", "b")
    y = rng.integers(0, 2, n)
    p = np.where(rng.random(n) < np.where(g == "a", 0.3, 0.1), 1 - y, y)
    rep = estimate_fairness(y, p, g, n_boot=50, n_perm=50)
    assert rep.eo_difference == pytest.approx(equalized_odds_difference(y, p, sensitive_features=g))
    assert rep.dp_difference == pytest.approx(demographic_parity_difference(y, p, sensitive_features=g))
    frame = MetricFrame(metrics=lambda a, b: float((a == b).mean()), y_true=y, y_pred=p, sensitive_features=g)
    assert rep.accuracy.tolist() == pytest.approx(frame.by_group.to_numpy().ravel().tolist())
    # multiclass: the deciding class's one-vs-rest difference is fairlearn's on that binarisation
    y3 = rng.integers(0, 4, n)
    p3 = np.where(rng.random(n) < np.where(g == "a", 0.3, 0.1), rng.integers(0, 4, n), y3)
    rep3 = estimate_fairness(y3, p3, g, n_boot=50, n_perm=50)
    c = rep3.eo_class
    assert rep3.eo_difference == pytest.approx(
        equalized_odds_difference((y3 == c).astype(int), (p3 == c).astype(int), sensitive_features=g)
    )
    for other in range(4):
        assert (
            equalized_odds_difference((y3 == other).astype(int), (p3 == other).astype(int), sensitive_features=g)
            <= rep3.eo_difference + 1e-12
        )


def test_planted_bias_is_found_with_intervals_excluding_zero(tmp_path) -> None:  # type: ignore[no-untyped-def]
    res = dlclinic.checkup(_case(biased=True), only=["ethics.fairness"], cache_dir=tmp_path)["ethics.fairness"]
    assert res.status in ("warn", "fail"), res.summary
    assert res.details["worst_group"] == "b"
    assert res.metrics["accuracy_gap_ci_low"] > 0
    assert res.metrics["equalized_odds_ci_low"] > 0
    assert res.remedy is not None and "dlclinic treat ethics.fairness" in (res.remedy.command or "")
    assert res.details["tables"][0]["rows"]


def test_fair_case_stays_ok(tmp_path) -> None:  # type: ignore[no-untyped-def]
    res = dlclinic.checkup(_case(biased=False), only=["ethics.fairness"], cache_dir=tmp_path)["ethics.fairness"]
    assert res.status == "ok", res.summary
    assert (
        res.metrics["accuracy_gap_ci_low"] <= 0.0 <= res.metrics["accuracy_gap_ci_high"]
        or res.metrics["accuracy_gap"] < 0.1
    )


def test_without_groups_not_examined_with_how_to(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x, y, _, c = _data(300, 0, biased=False)
    case = Case.from_arrays((x, y), (x, y), model=_centroid_model(c))
    res = dlclinic.checkup(case, only=["ethics.fairness"], cache_dir=tmp_path)["ethics.fairness"]
    assert res.status == "not_examined"
    assert "--group-col" in res.summary


def test_threshold_optimizer_reduces_equalized_odds(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # binary task; group b's inputs are shifted against the positive class, so the model under-selects b
    rng = np.random.default_rng(3)

    def make(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        y = rng.integers(0, 2, n)
        g = np.where(rng.random(n) < 0.4, "b", "a")
        x = (2.0 * y - 1.0)[:, None] * np.array([1.2, 0.0]) + rng.normal(size=(n, 2))
        x[g == "b", 0] -= 1.0
        return x.astype(np.float32), y, g

    x, y, g = make(400)
    xt, yt, gt = make(2000)
    net = torch.nn.Linear(2, 2)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[-1.2, 0.0], [1.2, 0.0]]))
        net.bias.zero_()
    case = Case.from_arrays((x, y), (xt, yt), model=net, groups={"train": g, "test": gt})
    treatment, before, after = dlclinic.treat(case, "ethics.fairness", out_dir=tmp_path / "out", cache_dir=tmp_path)
    assert before["ethics.fairness"].status in ("warn", "fail")
    assert treatment.after["equalized_odds_difference"] < treatment.before["equalized_odds_difference"] - 0.1
    assert "accuracy_cost" in treatment.after
    assert (tmp_path / "out" / "fairness_before_after.json").exists()
