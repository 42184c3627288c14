"""Every check finds a planted defect and stays quiet on clean data (small synthetic cases)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import dlclinic
from conftest import blobs
from dlclinic import Case, EvidenceConfig, FitConfig
from dlclinic.challenges import CHECKS, PENDING
from dlclinic.core.baselines import MLP
from dlclinic.core.recipe import fit
from dlclinic.taxonomy import CHALLENGES

FAST = FitConfig(epochs=8, batch_size=64)


def _case(train: tuple, test: tuple | None = None, deploy: tuple | None = None, **kw) -> Case:  # type: ignore[type-arg]
    return Case.from_arrays(train, test, deploy, **kw)


def test_every_challenge_has_a_check_or_a_reason() -> None:
    assert set(CHECKS) | set(PENDING) == {c.id for c in CHALLENGES}
    assert not set(CHECKS) & set(PENDING)


def test_quality_finds_planted_flips_duplicates_and_leaks(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x, y = blobs(900, d=10, sep=3.0, seed=0)
    xt, yt = blobs(300, d=10, sep=3.0, seed=1)
    rng = np.random.default_rng(0)
    flipped = rng.choice(900, 60, replace=False)
    y_noisy = y.copy()
    y_noisy[flipped] = (y[flipped] + 1) % 3
    x_dup = np.concatenate([x, x[:10]])  # 10 exact copies appended
    y_dup = np.concatenate([y_noisy, y_noisy[:10]])
    xt[:5] = x[100:105]
    yt[:5] = y[100:105]
    report = dlclinic.checkup(
        _case((x_dup, y_dup), (xt, yt)), only=["data.quality"], fit_config=FAST, cache_dir=tmp_path
    )
    res = report["data.quality"]
    assert res.status == "fail"  # leaks above 1 % of test
    found = set(next(f for f in res.findings if f.code == "label_issue").indices)
    truth = set(flipped.tolist())
    assert len(found & truth) / len(found) >= 0.8 and len(found & truth) / len(truth) >= 0.8
    assert res.metrics["exact_duplicate_groups"] == 10
    leak = next(f for f in res.findings if f.code == "leak")
    assert sorted(leak.indices) == [0, 1, 2, 3, 4]


def test_embedding_oof_heads_fit_on_a_capped_stratified_sample_and_still_find_flips(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from dlclinic.core import evidence as ev

    y = np.repeat([0, 1, 2], [600, 300, 100])
    monkeypatch.setattr(ev, "OOF_HEAD_ROWS", 200)
    picked = ev._head_rows(np.arange(0, 1000, 2), y, seed=0)  # 500 fit rows -> 200, by class
    assert len(picked) == 200 and set(picked) <= set(range(0, 1000, 2))
    assert np.bincount(y[picked]).tolist() == [120, 60, 20]
    assert ev._head_rows(np.arange(150), y, seed=0).tolist() == list(range(150))  # under the cap: all
    x, y = blobs(900, d=10, sep=3.0, seed=0)
    flipped = np.random.default_rng(0).choice(900, 60, replace=False)
    y[flipped] = (y[flipped] + 1) % 3
    monkeypatch.setattr(ev, "OOF_HEAD_ROWS", 300)  # each fold fits 675 rows: capped
    res = dlclinic.checkup(
        _case((x, y), blobs(300, d=10, sep=3.0, seed=1)),
        only=["data.quality"],
        fit_config=FAST,
        evidence_config=EvidenceConfig(oof="embeddings"),
        cache_dir=tmp_path,
    )["data.quality"]
    found, truth = set(next(f for f in res.findings if f.code == "label_issue").indices), set(flipped.tolist())
    assert len(found & truth) / len(found) >= 0.8 and len(found & truth) / len(truth) >= 0.8


def test_clean_label_null_on_a_row_sample_keeps_the_grade(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x, y = blobs(3000, d=10, sep=3.0, seed=0)
    test = blobs(600, d=10, sep=3.0, seed=1)
    flipped = np.random.default_rng(0).choice(3000, 300, replace=False)
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + 1) % 3
    opts = {"data.quality": {"label_null_rows": 1000}}
    res = {
        name: dlclinic.checkup(
            _case((x, labels), test), only=["data.quality"], options=opts, fit_config=FAST, cache_dir=tmp_path
        )["data.quality"]
        for name, labels in (("clean", y), ("noisy", noisy))
    }
    assert res["noisy"].metrics["label_null_rows"] == 1000
    assert res["noisy"].metrics["label_excess_fraction"] > 0.03, res["noisy"].summary
    assert (
        "on a random 1,000 of 3,000 rows" in next(f for f in res["noisy"].findings if f.code == "label_issue").message
    )
    assert res["clean"].metrics["label_excess_fraction"] < 0.03, res["clean"].summary


def test_quality_stays_quiet_on_clean_data(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x, y = blobs(900, d=10, sep=3.0, seed=0)
    xt, yt = blobs(300, d=10, sep=3.0, seed=1)
    res = dlclinic.checkup(_case((x, y), (xt, yt)), only=["data.quality"], fit_config=FAST, cache_dir=tmp_path)[
        "data.quality"
    ]
    assert res.status == "ok", res.summary
    assert res.metrics["label_issue_fraction"] < 0.03


def test_quality_reports_nan_rows_and_imbalance(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x, y = blobs(600, d=6, seed=2)
    keep = np.concatenate([np.flatnonzero(y != 2), np.flatnonzero(y == 2)[:15]])
    x, y = x[keep], y[keep]
    x[3, 1] = np.nan
    res = dlclinic.checkup(_case((x, y)), only=["data.quality"], fit_config=FAST, cache_dir=tmp_path)["data.quality"]
    assert res.metrics["nonfinite_rows"] == 1
    assert res.metrics["imbalance_ratio"] > 5
    assert res.status == "fail"
    assert {f.code for f in res.findings} >= {"nonfinite", "imbalance"}


@pytest.mark.parametrize("shift, expect", [(0.0, "ok"), (1.0, "warn_or_fail")])
def test_generalization_detects_a_known_shift_only(tmp_path, shift: float, expect: str) -> None:  # type: ignore[no-untyped-def]
    x, y = blobs(600, d=8, seed=3)
    xt, yt = blobs(300, d=8, seed=4)
    xd, yd = blobs(300, d=8, seed=5, shift=shift)
    res = dlclinic.checkup(
        _case((x, y), (xt, yt), (xd, yd)), only=["data.generalization"], fit_config=FAST, cache_dir=tmp_path
    )["data.generalization"]
    if expect == "ok":
        assert res.status == "ok", res.summary
    else:
        assert res.status in ("warn", "fail")
        assert res.metrics["shift_test_vs_deploy"] is True
        assert res.metrics["ood_fraction_deploy"] > 0.2


def test_generalization_false_positive_rate_over_seeds(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Unshifted copies: the MMD p-values must not reject more often than α allows."""
    model = fit(MLP(8, 3), *blobs(600, d=8, seed=3), FAST).model
    alarms = 0
    for seed in range(8):
        case = _case(
            blobs(600, d=8, seed=3), blobs(200, d=8, seed=100 + seed), blobs(200, d=8, seed=200 + seed), model=model
        )
        res = dlclinic.checkup(case, only=["data.generalization"], cache_dir=tmp_path)["data.generalization"]
        alarms += res.status != "ok"
    assert alarms <= 1  # α = 0.01 per test, two tests + OOD binomial per case


def test_overfitting_detects_memorisation_and_not_a_healthy_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 20)).astype(np.float32)
    y = rng.integers(0, 3, 200)  # pure noise labels: nothing to learn, everything to memorise
    xt = rng.normal(size=(300, 20)).astype(np.float32)
    yt = rng.integers(0, 3, 300)
    memoriser = fit(
        MLP(20, 3, hidden=(512, 256), dropout=0.0),
        x,
        y,
        FitConfig(epochs=150, lr=3e-3, val_fraction=0.0, weight_decay=0.0),
    ).model
    res = dlclinic.checkup(_case((x, y), (xt, yt), model=memoriser), only=["model.overfitting"], cache_dir=tmp_path)[
        "model.overfitting"
    ]
    assert res.status == "fail"
    assert res.metrics["accuracy_gap"] > 0.4

    xh, yh = blobs(600, d=8, seed=7)
    healthy = fit(MLP(8, 3), xh, yh, FAST).model
    res = dlclinic.checkup(
        _case((xh, yh), blobs(400, d=8, seed=8), model=healthy), only=["model.overfitting"], cache_dir=tmp_path
    )["model.overfitting"]
    assert res.status == "ok", res.summary


def test_unselected_and_unbuilt_challenges_are_not_examined(tmp_path) -> None:  # type: ignore[no-untyped-def]
    report = dlclinic.checkup(
        _case(blobs(200, seed=1), blobs(100, seed=2)), only=["model.overfitting"], fit_config=FAST, cache_dir=tmp_path
    )
    assert [r.id for r in report.challenges] == [c.id for c in CHALLENGES]
    statuses = {r.id: r.status for r in report.challenges}
    assert statuses["model.overfitting"] != "not_examined"
    assert all(s == "not_examined" for cid, s in statuses.items() if cid != "model.overfitting")
    assert all(r.summary for r in report.challenges)


def test_user_module_gets_no_hooks_left_and_is_not_mutated(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x, y = blobs(300, d=8, seed=9)
    model = fit(MLP(8, 3), x, y, FAST).model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dlclinic.checkup(_case((x, y), blobs(100, d=8, seed=10), model=model), cache_dir=tmp_path)
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_check_that_crashes_is_an_error_row_not_a_lost_report(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import dataclasses

    from dlclinic import challenges as checks

    def boom(case, evidence, options):  # type: ignore[no-untyped-def]
        raise RuntimeError("planted bug\nsecond line")

    monkeypatch.setitem(
        checks.CHECKS, "model.overfitting", dataclasses.replace(checks.CHECKS["model.overfitting"], run=boom)
    )
    report = dlclinic.checkup(
        _case(blobs(200, seed=1), blobs(100, seed=2)),
        only=["data.quality", "model.overfitting"],
        fit_config=FAST,
        cache_dir=tmp_path,
    )
    assert report["model.overfitting"].status == "error"
    assert "planted bug" in report["model.overfitting"].summary and "\n" not in report["model.overfitting"].summary
    assert report["data.quality"].status != "error"


def test_unknown_check_option_names_the_valid_ones(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(dlclinic.ConfigError, match="unknown option.*'warn_gapp'.*warn_gap"):
        dlclinic.checkup(
            _case(blobs(100), blobs(60, seed=3)), options={"model.overfitting": {"warn_gapp": 0.1}}, cache_dir=tmp_path
        )


@pytest.mark.parametrize(
    "options, message",
    [
        ({"data.quality": {"max_examples": "-1"}}, "`max_examples >= 0` must hold, but got max_examples=-1"),
        ({"data.quality": {"max_examples": -3}}, "max_examples=-3"),
        ({"data.quality": {"warn_imbalance_ratio": "nan"}}, "warn_imbalance_ratio=nan"),
        ({"data.quality": {"memorisation_agreement": 1.5}}, "`0 <= memorisation_agreement <= 1.0` must hold"),
        ({"ethics.fairness": {"n_boot": "-5"}}, "n_boot=-5"),
        ({"compute.realtime": {"batch_sizes": "1,-8"}}, "batch_sizes=(1, -8)"),
    ],
)
def test_negative_or_nan_numeric_options_are_refused_before_any_work(options, message) -> None:  # type: ignore[no-untyped-def]
    from dlclinic.api import check_options

    with pytest.raises(dlclinic.ConfigError, match=re.escape(message)):
        check_options(options)


def test_options_objects_given_ready_made_are_bounds_checked_too(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from dlclinic.challenges.data.quality import QualityOptions

    with pytest.raises(dlclinic.ConfigError, match="max_examples >= 0"):
        dlclinic.checkup(
            _case(blobs(60)),
            only=["data.quality"],
            options={"data.quality": QualityOptions(max_examples=-1)},
            cache_dir=tmp_path,
        )


def test_every_default_option_is_within_its_bounds() -> None:
    from dlclinic.challenges import REMEDIES
    from dlclinic.core.registry import build_options

    for spec in CHECKS.values():
        build_options(spec, {})
    for spec in REMEDIES.values():
        if spec.id != "model.interpretability":  # its remedy needs the shortcut named
            build_options(spec, {})


@pytest.mark.parametrize(
    "region, message",
    [
        ("0-4,0:4", "expected 'r0:r1,c0:c1'"),
        ("a:b,0:1", "expected 'r0:r1,c0:c1'"),
        ("0:2,0:2", "expected an image input"),
    ],
)
def test_a_suspect_region_is_validated_before_any_work(tmp_path, region, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(dlclinic.ConfigError, match=re.escape(message)):  # the table case has no rows and columns
        dlclinic.checkup(
            _case(blobs(60)),
            only=["model.interpretability"],
            options={"model.interpretability": {"suspect_region": region}},
            cache_dir=tmp_path,
        )


def test_onnx_like_model_without_layers_uses_input_pca(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x, y = blobs(300, d=8, seed=11)
    torch_model = fit(MLP(8, 3), x, y, FAST).model

    class Opaque:
        sha256 = "0" * 64

        def predict_logits(self, arr: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return torch_model(torch.from_numpy(arr)).numpy()

    report = dlclinic.checkup(
        _case((x, y), blobs(100, d=8, seed=12), blobs(100, d=8, seed=13), model=Opaque()),
        evidence_config=EvidenceConfig(oof="embeddings"),
        cache_dir=tmp_path,
    )
    assert report.case["evidence"]["embedding_source"] == "input-pca"
    assert report["data.generalization"].status == "ok"
    assert report["model.overfitting"].status in ("ok", "warn")


def test_quantity_says_steep_when_data_is_scarce_and_flat_when_saturated(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # scarce: 40-dimensional, weakly separated classes and only 150 rows -> error still falls with n
    scarce = dlclinic.checkup(
        _case(blobs(150, d=40, sep=0.25, seed=1), blobs(600, d=40, sep=0.25, seed=2)),
        only=["data.quantity"],
        fit_config=FAST,
        cache_dir=tmp_path,
    )["data.quantity"]
    assert scarce.status == "warn", scarce.summary
    assert "steep" in scarce.summary
    # saturated: well separated classes, plenty of rows -> the curve is flat
    flat = dlclinic.checkup(
        _case(blobs(1500, d=4, sep=6.0, seed=3), blobs(600, d=4, sep=6.0, seed=4)),
        only=["data.quantity"],
        fit_config=FAST,
        cache_dir=tmp_path,
    )["data.quantity"]
    assert flat.status == "ok", flat.summary
    assert flat.metrics["gain_from_doubling"] < 0.01


def test_quantity_proxy_curve_is_capped_and_extrapolated_beyond_max_proxy_rows(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from dlclinic.challenges.data.quantity import QuantityOptions, proxy_pool

    y = np.repeat([0, 1, 2], [3000, 1500, 500])
    pool = proxy_pool(y, QuantityOptions(max_proxy_rows=1000))
    assert len(pool) == 1000 and np.bincount(y[pool]).tolist() == [600, 300, 100]
    assert len(proxy_pool(y, QuantityOptions())) == len(y)  # under the cap: every row
    case = _case(blobs(3000, d=4, sep=6.0, seed=3), blobs(600, d=4, sep=6.0, seed=4))
    full, capped = (
        dlclinic.checkup(
            case,
            only=["data.quantity"],
            options={"data.quantity": {"mode": "proxy", "max_proxy_rows": cap}},
            fit_config=FAST,
            cache_dir=tmp_path,
        )["data.quantity"]
        for cap in (50_000, 1000)
    )
    assert not full.metrics["curve_extrapolated"] and full.metrics["curve_max_rows"] == 3000
    # the pool is rounded per class
    assert capped.metrics["curve_extrapolated"] and abs(capped.metrics["curve_max_rows"] - 1000) <= 3
    assert capped.metrics["train_size"] == 3000 and "of the 3,000 train rows (max_proxy_rows)" in capped.summary
    assert capped.status == full.status == "ok", capped.summary
    assert abs(capped.metrics["gain_from_doubling"] - full.metrics["gain_from_doubling"]) < 0.01


def test_warm_started_proxy_head_predicts_as_a_cold_fit() -> None:
    from sklearn.linear_model import LogisticRegression

    from dlclinic.challenges.data.quantity import _proxy_predict

    x, y = blobs(4000, k=4, d=16, sep=1.0, seed=5)
    xt, _ = blobs(1000, k=4, d=16, sep=1.0, seed=6)
    head = LogisticRegression(max_iter=300, warm_start=True)
    _proxy_predict(head, x[:800], y[:800], xt)
    cold_iters = LogisticRegression(max_iter=300)
    warm = _proxy_predict(head, x, y, xt)
    cold = _proxy_predict(cold_iters, x, y, xt)
    assert (warm == cold).mean() >= 0.995
    assert head.n_iter_[0] < cold_iters.n_iter_[0]  # it started near the optimum


def test_power_law_recovers_known_parameters() -> None:
    from dlclinic.functional.learning_curve import fit_power_law, samples_for_error

    n = np.repeat([100, 200, 400, 700, 1000.0], 3)
    rng = np.random.default_rng(0)
    err = 3.0 * n**-0.6 + 0.04 + rng.normal(0, 1e-4, n.shape)
    law = fit_power_law(n, err)
    assert law.b == pytest.approx(0.6, abs=0.05) and law.c == pytest.approx(0.04, abs=0.005)
    assert law.r2 > 0.99
    assert samples_for_error(law, 0.05) == pytest.approx((3.0 / 0.01) ** (1 / 0.6), rel=0.15)
    assert samples_for_error(law, 0.03) == float("inf")


def test_quality_profiles_columns_and_images(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x, y = blobs(400, d=6, seed=21)
    x = np.c_[x, np.ones(400, np.float32)]  # a constant column
    x[7, 2] = 1e5  # an extreme value
    res = dlclinic.checkup(
        _case((x, y), feature_names=[f"f{i}" for i in range(7)]),
        only=["data.quality"],
        fit_config=FAST,
        cache_dir=tmp_path,
    )["data.quality"]
    codes = {f.code for f in res.findings}
    assert {"constant_column", "extreme_value"} <= codes
    assert next(f for f in res.findings if f.code == "extreme_value").indices == (7,)
    assert "f6" in next(f for f in res.findings if f.code == "constant_column").message

    rng = np.random.default_rng(0)
    imgs = (rng.random((300, 1, 8, 8)) * np.linspace(0.2, 1, 8)).astype(np.float32)
    labels = (imgs[:, 0, :4, :].mean((1, 2)) > imgs[:, 0, 4:, :].mean((1, 2))).astype(int)
    imgs[[5, 9]] = 0.5  # blank
    res = dlclinic.checkup(
        _case((imgs, labels), modality="image"), only=["data.quality"], fit_config=FAST, cache_dir=tmp_path
    )["data.quality"]
    blank = next(f for f in res.findings if f.code == "blank_image")
    assert set(blank.indices) == {5, 9}
    clean = dlclinic.checkup(
        _case((imgs[10:], labels[10:]), modality="image"), only=["data.quality"], fit_config=FAST, cache_dir=tmp_path
    )["data.quality"]
    assert not {"blank_image", "dark_image", "bright_image"} & {f.code for f in clean.findings}


def test_knn_outliers_find_planted_points() -> None:
    from dlclinic.functional.profile import find_knn_outliers

    rng = np.random.default_rng(3)
    emb = rng.normal(size=(500, 16)) + 4
    emb[[10, 20]] = -emb[[10, 20]]  # opposite direction after L2 normalisation
    rows, _ = find_knn_outliers(emb)
    assert set(rows.tolist()) == {10, 20}


def test_every_copy_in_a_large_duplicate_group_is_flagged_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from dlclinic.challenges.data.quality import redundant_copies

    assert redundant_copies(6, np.array([[0, 3], [3, 5]]), [np.array([1, 4])]).tolist() == [3, 4, 5]
    x, y = blobs(400, d=6, seed=31)
    x = np.concatenate([x, np.repeat(x[:1], 30, axis=0)])
    y = np.concatenate([y, np.repeat(y[:1], 30)])
    res = dlclinic.checkup(_case((x, y)), only=["data.quality"], fit_config=FAST, cache_dir=tmp_path)["data.quality"]
    dup = next(f for f in res.findings if f.code == "duplicate")
    assert sorted(dup.indices) == list(range(400, 430))


def test_all_categorical_tables_repeat_by_chance_not_by_leakage(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    cats = rng.integers(0, 3, size=(1200, 4))
    x = np.eye(3, dtype=np.float32)[cats].reshape(1200, 12)  # 81 distinct rows
    y = (cats[:, 0] + cats[:, 1] > 2).astype(int)
    res = dlclinic.checkup(
        _case((x[:800], y[:800]), (x[800:], y[800:])), only=["data.quality"], fit_config=FAST, cache_dir=tmp_path
    )["data.quality"]
    codes = {f.code for f in res.findings}
    assert {"chance_matches", "chance_repeats"} <= codes and not {"leak", "duplicate"} & codes
    assert res.metrics["test_train_matches"] == 400 and res.metrics["test_leaks"] == 0
    assert res.status == "ok", res.summary


def test_embedding_oof_on_a_memorising_model_is_inconclusive_not_ok(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x, y = blobs(600, d=8, sep=1.0, seed=41)
    y_noisy = y.copy()
    y_noisy[:60] = (y[:60] + 1) % 3
    memoriser = fit(
        MLP(8, 3, hidden=(256, 256), dropout=0.0),
        x,
        y_noisy,
        FitConfig(epochs=300, lr=3e-3, val_fraction=0.0, weight_decay=0.0, batch_size=128),
    ).model
    res = dlclinic.checkup(
        _case((x, y_noisy), blobs(200, d=8, sep=1.0, seed=42), model=memoriser),
        only=["data.quality"],
        cache_dir=tmp_path,
    )["data.quality"]
    assert res.status != "ok"
    assert res.metrics["train_label_agreement"] >= 0.995 or any(f.code == "label_issue" for f in res.findings)


def test_nan_rows_do_not_abort_the_checkup_for_a_user_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x, y = blobs(300, d=6, seed=51)
    model = fit(MLP(6, 3), x, y, FAST).model
    x = x.copy()
    x[[4, 8]] = np.nan
    report = dlclinic.checkup(_case((x, y), blobs(100, d=6, seed=52), model=model), cache_dir=tmp_path)
    res = report["data.quality"]
    assert res.metrics["nonfinite_rows"] == 2 and res.status == "fail"
    assert report.case["evidence"]["nonfinite_input_rows"] == {"train": 2}
    assert report["model.overfitting"].status != "error"


def test_fingerprint_sees_the_architecture_not_only_the_weights() -> None:
    from dlclinic.core.fingerprint import fingerprint_model

    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    b = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    b.load_state_dict(a.state_dict())
    assert fingerprint_model(a) != fingerprint_model(b)


def test_feature_shift_names_the_moved_column_only(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x, y = blobs(600, d=6, seed=61)
    xt, yt = blobs(300, d=6, seed=62)
    xd, yd = blobs(300, d=6, seed=63)
    xd[:, 4] += 1.0  # one feature moves by about one within-class σ
    names = [f"f{i}" for i in range(6)]
    res = dlclinic.checkup(
        _case((x, y), (xt, yt), (xd, yd), feature_names=names),
        only=["data.generalization"],
        fit_config=FAST,
        cache_dir=tmp_path,
    )["data.generalization"]
    assert res.metrics["shifted_features_test"] == 0
    moved = next(f for f in res.findings if f.code == "feature_shift" and f.split == "deploy")
    assert moved.extra["features"] == ["f4"]
    assert res.metrics["c2st_auc_deploy_ci_low"] > 0.5


def test_classifier_two_sample_test_is_near_half_without_shift() -> None:
    from dlclinic.functional.drift import classifier_two_sample_test

    rng = np.random.default_rng(5)
    same = classifier_two_sample_test(rng.normal(size=(300, 5)), rng.normal(size=(300, 5)))
    assert same.p_value > 0.01 and same.auc < 0.6  # cross-validated AUC sits slightly below 0.5 under H0
    moved = classifier_two_sample_test(rng.normal(size=(300, 5)), rng.normal(0.5, 1, size=(300, 5)))
    assert moved.ci_low > 0.6 and moved.p_value < 1e-6
