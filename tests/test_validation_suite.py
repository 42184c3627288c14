"""The validation suite's machinery: interval maths, per-sample scores, one real trial end to end."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from validation.stats import clopper_pearson, detection_scores, exceeds_level, wilson  # noqa: E402


def test_clopper_pearson_matches_closed_forms() -> None:
    # k = 0 and k = n have closed forms: (1 - a/2)^(1/n) bounds
    lo, hi = clopper_pearson(0, 20)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 20), rel=1e-9)
    lo, hi = clopper_pearson(20, 20)
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / 20), rel=1e-9)
    # symmetry k <-> n-k, and containment of the estimate
    a, b = clopper_pearson(3, 40)
    c, d = clopper_pearson(37, 40)
    assert a == pytest.approx(1 - d) and b == pytest.approx(1 - c)
    assert a < 3 / 40 < b
    assert clopper_pearson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="k <= n"):
        clopper_pearson(5, 4)


def test_wilson_matches_its_formula_and_is_inside_the_exact_interval() -> None:
    k, n, z = 12, 50, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert wilson(k, n) == pytest.approx((centre - half, centre + half))
    lo, hi = clopper_pearson(k, n)
    assert lo <= wilson(k, n)[0] and wilson(k, n)[1] <= hi


def test_exceeds_level_distinguishes_noise_from_a_real_excess() -> None:
    assert exceeds_level(1, 40, 0.05) == "no"  # 2.5 %
    assert exceeds_level(3, 40, 0.05) == "point"  # 7.5 %, CI reaches below 5 %
    assert exceeds_level(12, 40, 0.05) == "significant"


def test_detection_scores_on_a_hand_made_ranking() -> None:
    s = detection_scores(10, truth=[1, 2, 3], flagged=[2, 7, 1])
    assert (s["tp"], s["fp"], s["fn"]) == (2, 1, 1)
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(2 / 3)
    # ranking: 2 (hit), 7 (miss), 1 (hit), then 7 rows tied: AP = (1/1 + 2/3)/3 + tie share
    assert 0.5 < s["auprc"] < 0.8
    assert detection_scores(5, truth=[], flagged=[1])["recall"] is None
    assert detection_scores(5, truth=[0], flagged=[])["precision"] is None


def test_one_real_trial_through_the_runner_and_the_report(tmp_path: Path) -> None:
    from validation import report
    from validation.run import Job, aggregate, run_job

    rec = run_job(Job("deployment.drift", "table", "concept_drift", 0.2, 0), str(tmp_path / "cache"))
    assert rec["status"] in ("ok", "warn", "fail"), rec["summary"]
    clean = dict(rec, defect="clean", strength=0.0, status="ok")
    records = [rec, clean, dict(clean, seed=1, status="warn"), dict(clean, seed=2, status="exception", summary="boom")]
    agg = aggregate(records)["deployment.drift"]
    fa = agg["false_alarm"]
    assert (fa["flagged"], fa["n"], fa["not_graded"]) == (1, 2, {"exception": 1})  # an exception is never a silent ok
    assert fa["ci95"] == pytest.approx(list(clopper_pearson(1, 2)))
    assert agg["defects"]["concept_drift"]["rows"][0]["strength"] == 0.2
    doc = report.document(
        {"deployment.drift": agg},
        settings={"mode": "quick", "seeds_clean": 1, "seeds_defect": 1, "all_strengths": False},
        wall_seconds=1.0,
        workers=1,
        trials=4,
    )
    report.write_all(doc, records, tmp_path / "docs", packaged=tmp_path / "pkg.json")
    md = (tmp_path / "docs" / "validation.md").read_text()
    assert "deployment.drift" in md and "1/2 = 50 %" in md
    packed = json.loads((tmp_path / "pkg.json").read_text())["checks"]["deployment.drift"]
    assert (packed["flagged"], packed["n"], packed["exceeds_level"]) == (
        1,
        2,
        "significant",
    )  # 50 %, CI [1.3 %, 99 %] > 1 %


def test_report_trust_reads_the_packaged_table(monkeypatch: pytest.MonkeyPatch) -> None:
    from dlclinic.report import trust

    table = trust.validation_table()
    assert isinstance(table, dict)  # the packaged file, or {} when absent: never an error
    monkeypatch.setattr(
        trust,
        "validation_table",
        lambda: {
            "x.y": {
                "false_alarm_rate": 0.025,
                "ci95": [0.001, 0.13],
                "flagged": 1,
                "n": 40,
                "level": 0.05,
                "exceeds_level": "no",
            }
        },
    )
    assert trust.false_alarm_for("x.y")["n"] == 40  # type: ignore[index]
    assert trust.false_alarm_for("nope") is None
    assert (
        trust.false_alarm_note("x.y")
        == "This check's false-alarm rate on clean data: 2% [0%, 13%] (1 of 40 clean cases)."
    )


# -- fixes made from the suite's findings (data.quality column profile, data.quantity verdict) --------


def test_column_profile_judges_skewed_columns_on_a_log_scale() -> None:
    """Log-normal tails are not extreme values; gross errors in normal and skewed columns still are."""
    import numpy as np

    from dlclinic.functional.profile import find_column_issues

    rng = np.random.default_rng(0)
    skewed = rng.lognormal(3.0, 1.0, 2000)  # sizes/areas: heavy right tail
    normal = rng.normal(0.0, 1.0, 2000)
    clean = find_column_issues(np.c_[skewed, normal])
    raw_z = np.abs(skewed - np.median(skewed)) / (1.4826 * np.median(np.abs(skewed - np.median(skewed))))
    assert (raw_z > 10).any()  # the raw-scale rule would have flagged the natural tail
    assert clean.extreme_rows.tolist() == []
    bad = np.c_[skewed, normal]
    bad[5, 0] = 1e9  # a sentinel / unit error in the skewed column
    bad[7, 1] = 50.0  # a gross error in the normal column
    assert find_column_issues(bad).extreme_rows.tolist() == [5, 7]


def test_quantity_does_not_warn_on_an_ill_fitting_flat_curve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A saturated task with erratic small runs: the fitted law extrapolates a gain above 1 point, but the
    measured error at full size is 0 and no test set can gain more than its error."""
    import numpy as np

    from dlclinic import Case
    from dlclinic.challenges.data import quantity as data_quantity
    from dlclinic.core.baselines import MLP
    from dlclinic.core.evidence import Evidence
    from dlclinic.functional.learning_curve import fit_power_law

    n = np.repeat([21.0, 42.0, 85.0, 148.0, 212.0], 2)
    flat = np.array([0.5, 0.05, 0.0, 0.3, 0.1, 0.0, 0.0, 0.08, 0.0, 0.0])  # erratic small runs, 0 % error at full size
    steep = 1.5 * n**-0.5 + 0.02
    rng = np.random.default_rng(0)
    x = rng.normal(size=(212, 4)).astype("float32")
    y = np.arange(212) % 2
    case = Case.from_arrays((x, y), (x[:100], y[:100]), model=MLP(4, 2))
    results = {}
    for name, err in (("flat", flat), ("steep", steep)):
        monkeypatch.setattr(
            data_quantity,
            "learning_curve",
            lambda *a, err=err, **k: {"n": n, "error": err, "per_class": np.c_[err, err]},
        )
        res = data_quantity.run(case, Evidence(case, cache_dir=tmp_path / name), data_quantity.QuantityOptions())
        results[name] = res
    assert fit_power_law(n, flat).gain_from_doubling(212.0) > 0.01  # the old point-estimate rule warned
    assert results["flat"].status == "ok", results["flat"].summary
    assert results["steep"].status == "warn", results["steep"].summary


def test_every_check_has_a_validation_plan_or_a_stated_reason() -> None:
    """Coverage of the suite: each registered check is planned (with well-formed defects) or says why not."""
    from dlclinic.challenges import CHECKS
    from validation.scenarios import NOT_VALIDATED, PLANS

    planned = [p.check for p in PLANS]
    assert len(planned) == len(set(planned)), "a check planned twice"
    assert set(planned) <= set(CHECKS), sorted(set(planned) - set(CHECKS))
    missing = sorted(set(CHECKS) - set(planned) - set(NOT_VALIDATED))
    assert not missing, f"checks with neither a plan nor a reason: {missing}"
    for plan in PLANS:
        assert 0 < plan.level < 0.5 and plan.level_source and plan.clean_description
        assert plan.defects, plan.check
        for d in plan.defects:
            assert d.strengths and d.unit and d.expect, (
                plan.check,
                d.name,
            )  # one strength: a yes/no defect (e.g. not exportable)
            assert set(d.quick_strengths or ()) <= set(d.strengths), (plan.check, d.name)
            assert set(d.modalities or plan.modalities) <= {"image", "table", "mnist", "tokens", "sequence"}
        assert all(why for why in plan.not_validated.values()), plan.check  # a modality left out says why


def test_labels_saved_on_a_common_target_ignores_a_lucky_last_round() -> None:
    """Active learning that plateaus two rounds in saves labels even when random's last round is one sample luckier."""
    import numpy as np

    from dlclinic.functional.active_learning import labels_saved

    n = np.array([30, 90, 150, 210, 270, 330])
    random = np.array([0.93, 0.96, 0.975, 0.98, 0.985, 0.995])
    active = np.array([0.93, 0.99, 0.993, 0.993, 0.993, 0.993])
    assert math.isnan(labels_saved(n, random, n, active, monotone=True))  # random's final: never reached
    saved = labels_saved(n, random, n, active, monotone=True, common=True)
    assert saved == pytest.approx(318 - 150)  # both reach 99.3 %: active at 150 labels, random at 270 + 0.8 × 60
    assert labels_saved(n, random, n, random, monotone=True, common=True) == 0.0


def test_generalization_grades_its_tests_as_one_holm_family() -> None:
    """Five tests at α each would add up to ~5α false alarms; the check adjusts them together."""
    import numpy as np

    from dlclinic.functional.stats import holm

    assert holm([0.005, 0.3, 0.9, 0.02, 0.5]).round(3).tolist() == [0.025, 0.9, 1.0, 0.08, 1.0]
    assert np.isnan(holm([np.nan, 0.01])[0]) and holm([np.nan, 0.01])[1] == 0.01


def test_report_shows_each_status_with_its_validation_row(monkeypatch: pytest.MonkeyPatch) -> None:
    from dlclinic.report import trust

    row = {
        "false_alarm_rate": 0.0,
        "ci95": [0.0, 0.06],
        "flagged": 0,
        "n": 60,
        "level": 0.05,
        "exceeds_level": "no",
        "power": {"label_noise": {"unit": "fraction of train labels flipped", "rows": [[0.02, 1, 16], [0.2, 16, 16]]}},
    }
    monkeypatch.setattr(trust, "validation_table", lambda: {"data.quality": row})
    assert trust.power_rows("data.quality") == [
        {"defect": "label_noise", "unit": "fraction of train labels flipped", "power": "0.02: 1/16 · 0.2: 16/16"}
    ]
    assert trust.power_rows("data.privacy") == []
    sys.path.insert(0, str(ROOT / "tests"))
    from dlclinic.report import render_html
    from helpers_report import synthetic_case, synthetic_report

    case = synthetic_case()
    page = render_html(synthetic_report(case), case=case)
    assert "false-alarm rate on clean data: 0% [0%, 6%] (0 of 60 clean cases)" in page
    assert "0.02: 1/16 · 0.2: 16/16" in page and "docs/validation.md#dataquality" in page


def test_quick_mode_agreement_is_recorded_in_the_published_table(tmp_path: Path) -> None:
    from validation import report
    from validation.run import compare

    entry = {
        "level": 0.05,
        "level_source": "x",
        "clean_description": "y",
        "false_alarm": {"n": 60, "flagged": 1, "rate": 1 / 60, "ci95": list(clopper_pearson(1, 60)), "fail": 0},
        "false_alarm_by_modality": {},
        "exceeds_level": "no",
        "defects": {},
        "seconds_per_trial": 1.0,
    }
    published = report.document(
        {"data.quality": entry},
        settings={"mode": "full", "seeds_clean": 30, "seeds_defect": 8, "all_strengths": True},
        wall_seconds=1.0,
        workers=1,
        trials=60,
    )
    quick = {
        "data.quality": dict(
            entry, false_alarm={"n": 12, "flagged": 6, "rate": 0.5, "ci95": list(clopper_pearson(6, 12))}
        )
    }
    lines = compare(quick, published)
    assert lines == ["data.quality: false alarms 6/12 now vs 1/60 published: DISAGREE (95 % intervals do not overlap)"]
    published["quick_check"] = {
        "generated": "t",
        "wall_seconds": 300.0,
        "workers": 2,
        "trials": 12,
        "checks": 1,
        "agree": 0,
        "lines": lines,
    }
    (tmp_path / "validation").mkdir()
    report.rewrite_published(published, tmp_path)
    md = (tmp_path / "validation.md").read_text()
    assert "Quick mode against this table" in md and "overlap the published ones for 0 of 1 checks" in md
    assert json.loads((tmp_path / "validation.json").read_text())["quick_check"]["agree"] == 0


def test_fair_table_clean_fairness_groups_are_coin_flips_independent_of_the_data() -> None:
    """On the real table the clean groups are the same per-row coin flips as on the other
    modalities (drawn from the seed alone), not a real attribute of the rows."""
    import numpy as np

    from validation.scenarios import _groups, fairness_clean

    case = fairness_clean("fair", 3).case
    for name, seed in (("train", 3), ("test", 3 + 7919)):
        g = case.splits[name].groups
        assert set(g) == {"A", "B"}
        assert np.array_equal(g, _groups(len(g), seed))


def test_reaggregated_checks_keep_the_date_each_modality_was_measured() -> None:
    from validation.run import _keep_measured_dates

    rate = {"n": 30, "flagged": 0}
    row = {"strength": 1.0, "by_modality": {"image": rate}}
    published = {
        "c": {
            "generated": "2026-11-25T00:00:00Z",
            "false_alarm_by_modality": {"image": rate},
            "defects": {"d": {"rows": [row]}},
        }
    }
    checks = {
        "c": {
            "false_alarm_by_modality": {"image": dict(rate), "fair": {"n": 30, "flagged": 1}},
            "defects": {"d": {"rows": [row]}},
        }
    }
    _keep_measured_dates(checks, published, "2026-12-03T00:00:00Z")
    assert checks["c"]["measured_by_modality"] == {"image": "2026-11-25T00:00:00Z", "fair": "2026-12-03T00:00:00Z"}
    assert checks["c"]["generated"] == "2026-12-03T00:00:00Z"


def test_a_modality_run_with_fewer_seeds_is_stated_per_modality() -> None:
    from validation.report import _seeds

    per = {
        "image": {"seeds_clean": 30, "seeds_defect": 8, "all_strengths": True},
        "fair": {"seeds_clean": 30, "seeds_defect": 0, "all_strengths": True},
        "tokens": {"seeds_clean": 6, "seeds_defect": 2, "all_strengths": False},
    }
    assert _seeds({"seeds_clean": 30, "seeds_defect": 2, "by_modality": per}) == (
        "image: 30 clean seeds, 8 per defect strength; fair: 30 clean seeds;"
        " tokens: 6 clean seeds, 2 per defect strength (quick-mode strengths)"
    )
