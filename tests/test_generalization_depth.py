"""data.generalization in depth: corruptions, OOD AUROC, and the two data remedies that rank or augment."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import dlclinic
from dlclinic.core.case import Case
from dlclinic.functional.corruptions import corrupt, corruption_names, data_stats, paired_drop
from dlclinic.functional.ood import auroc_ci, fpr_at_tpr

H = W = 12


def halves(n: int, *, seed: int, ambiguous: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Class 0: left half bright; class 1: right half bright (or both equally when ``ambiguous``)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.uniform(0.0, 0.15, size=(n, 1, H, W))
    for i in range(n):
        if ambiguous:
            x[i, 0, :, :] += 0.4
        elif y[i] == 0:
            x[i, 0, :, : W // 2] += 0.7
        else:
            x[i, 0, :, W // 2 :] += 0.7
    return np.clip(x, 0, 1).astype(np.float32), y.astype(np.int64)


def linear_model(kind: str) -> nn.Module:
    """A fixed linear model: ``robust`` compares the halves; ``fragile`` thresholds the left half's absolute brightness."""
    left = torch.zeros(H, W)
    left[:, : W // 2] = 1.0
    right = 1.0 - left
    lin = nn.Linear(H * W, 2)
    with torch.no_grad():
        if kind == "robust":
            lin.weight.copy_(torch.stack([(left - right).flatten(), (right - left).flatten()]) * 0.2)
            lin.bias.zero_()
        else:
            mid = (H * W / 2) * 0.15  # just above class 1's left-half sum: right on clean data, fooled by brightness
            lin.weight.copy_(torch.stack([left.flatten(), torch.zeros(H * W)]) * 0.2)
            lin.bias.copy_(torch.tensor([-mid * 0.2, 0.0]))
    return nn.Sequential(nn.Flatten(), lin).eval()


def halves_case(kind: str) -> Case:
    return Case.from_arrays(halves(300, seed=1), halves(300, seed=2), model=linear_model(kind), modality="image")


def test_corruptions_keep_shape_range_and_change_the_input() -> None:
    x, _ = halves(8, seed=0)
    st = data_stats(x)
    for name in corruption_names("image"):
        for sev in (1, 2, 3):
            out = corrupt(x, name, sev, st, seed=1)
            assert out.shape == x.shape and out.dtype == x.dtype
            assert out.min() >= st.low - 1e-6 and out.max() <= st.high + 1e-6
            assert not np.allclose(out, x), (name, sev)
    t = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    for name in corruption_names("table"):
        assert not np.allclose(corrupt(t, name, 2, data_stats(t)), t)
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(x, "fog", 1, st)


def test_paired_drop_is_significant_only_for_a_real_drop() -> None:
    rng = np.random.default_rng(0)
    clean = rng.random(400) < 0.9
    same = clean.copy()
    flip = np.concatenate([np.flatnonzero(clean)[:10], np.flatnonzero(~clean)[:10]])
    same[flip] = ~same[flip]  # as many rows gained as lost: no drop
    assert paired_drop(clean, same).p_value > 0.01
    worse = clean & (rng.random(400) < 0.8)
    r = paired_drop(clean, worse)
    assert r.p_value < 1e-6 and r.ci_low > 0.1


def test_fragile_model_fails_brightness_and_robust_model_stays_ok(tmp_path: Path) -> None:
    fragile = dlclinic.checkup(halves_case("fragile"), only=["data.generalization"], cache_dir=tmp_path)[
        "data.generalization"
    ]
    assert fragile.status in ("warn", "fail")
    hit = {f.extra["corruption"] for f in fragile.findings if f.code == "corruption"}
    assert "brightness" in hit
    assert fragile.remedy is not None and "treat data.generalization" in (fragile.remedy.command or "")
    robust = dlclinic.checkup(halves_case("robust"), only=["data.generalization"], cache_dir=tmp_path)[
        "data.generalization"
    ]
    assert not [f for f in robust.findings if f.code == "corruption"], robust.summary
    assert robust.metrics["corruption_worst_mild_drop"] < 0.05


def test_ood_auroc_separates_noise_and_not_more_of_the_same(tmp_path: Path) -> None:
    case = halves_case("robust")
    noise = np.random.default_rng(5).uniform(0, 1, size=(200, 1, H, W)).astype(np.float32)
    np.savez(tmp_path / "noise.npz", x=noise)
    np.savez(tmp_path / "same.npz", x=halves(200, seed=9)[0])
    res = dlclinic.checkup(
        case,
        only=["data.generalization"],
        options={"data.generalization": {"ood": str(tmp_path / "noise.npz")}},
        cache_dir=tmp_path,
    )["data.generalization"]
    assert res.metrics["ood_auroc_best"] > 0.95
    assert res.metrics["ood_auroc_knn_ci_low"] <= res.metrics["ood_auroc_knn"] <= res.metrics["ood_auroc_knn_ci_high"]
    assert not [f for f in res.findings if f.code == "ood_detection"]
    same = dlclinic.checkup(
        case,
        only=["data.generalization"],
        options={"data.generalization": {"ood": str(tmp_path / "same.npz")}},
        cache_dir=tmp_path,
    )["data.generalization"]
    assert same.metrics["ood_auroc_knn"] < 0.65
    assert [f for f in same.findings if f.code == "ood_detection"]


def test_ood_file_with_the_wrong_shape_is_one_clear_error(tmp_path: Path) -> None:
    np.savez(tmp_path / "bad.npz", x=np.zeros((10, 1, 5, 5), dtype=np.float32))
    res = dlclinic.checkup(
        halves_case("robust"),
        only=["data.generalization"],
        options={"data.generalization": {"ood": str(tmp_path / "bad.npz")}},
        cache_dir=tmp_path,
    )["data.generalization"]
    assert res.status == "error" and "expected samples of shape (1, 12, 12)" in res.summary


def test_auroc_helpers_agree_with_sklearn() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    a, b = rng.normal(0, 1, 120), rng.normal(0.7, 1, 80)
    point, lo, hi = auroc_ci(a, b)
    assert point == pytest.approx(roc_auc_score(np.r_[np.zeros(120), np.ones(80)], np.r_[a, b]))
    assert lo < point < hi
    thr, fpr = fpr_at_tpr(a, b, 0.95)
    assert (b >= thr).mean() >= 0.95 and 0 < fpr < 1


def test_treat_labeling_cost_ranks_ambiguous_pool_rows_first(tmp_path: Path) -> None:
    case = halves_case("robust")
    clear, _ = halves(60, seed=11)
    ambiguous, _ = halves(15, seed=12, ambiguous=True)
    pool = np.concatenate([clear, ambiguous])
    ids = np.array([f"img{i:03d}" for i in range(len(pool))])
    np.savez(tmp_path / "pool.npz", x=pool, id=ids)
    treatment, _, _ = dlclinic.treat(
        case,
        "data.labeling_cost",
        params={"pool": str(tmp_path / "pool.npz"), "budget": "15", "strategy": "entropy"},
        out_dir=tmp_path / "out",
        cache_dir=tmp_path,
    )
    with open(treatment.artifacts["next_to_label"]) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 15
    assert {int(r["row"]) for r in rows} == set(range(60, 75))
    assert rows[0]["id"].startswith("img") and float(rows[0]["score"]) >= float(rows[-1]["score"])
    assert treatment.after["picked_mean_entropy"] > treatment.before["pool_mean_entropy"]


def test_treat_labeling_cost_without_a_pool_says_what_to_pass(tmp_path: Path) -> None:
    from dlclinic.core.errors import ConfigError

    with pytest.raises(ConfigError, match="pool=FILE"):
        dlclinic.treat(halves_case("robust"), "data.labeling_cost", cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="strategy must be one of"):
        dlclinic.treat(halves_case("robust"), "data.labeling_cost", params={"strategy": "magic"}, cache_dir=tmp_path)


@pytest.mark.slow
def test_treat_generalization_augmentation_recovers_noise_robustness(tmp_path: Path) -> None:
    """A baseline MLP trained on clean blobs loses accuracy under strong feature noise; augmentation recovers some."""
    from conftest import blobs
    from dlclinic.core.recipe import FitConfig

    x, y = blobs(900, d=8, sep=1.6, seed=0)
    xt, yt = blobs(600, d=8, sep=1.6, seed=1)
    case = Case.from_arrays((x, y), (xt, yt))
    treatment, _, after = dlclinic.treat(
        case,
        "data.generalization",
        params={"corruptions": "feature_noise", "copies": "2"},
        out_dir=tmp_path / "out",
        cache_dir=tmp_path,
        fit_config=FitConfig(epochs=8, seed=0),
    )
    assert treatment.after["feature_noise_mean_accuracy"] >= treatment.before["feature_noise_mean_accuracy"] - 0.01
    assert treatment.after["train_rows"] == 3 * len(x)
    for key in ("model", "ood_threshold", "corruption_table"):
        assert Path(treatment.artifacts[key]).exists()
    assert after["data.generalization"].status in ("ok", "warn", "fail")
