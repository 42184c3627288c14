"""``--budget`` (issue 21): a time budget for the whole checkup.

No assertion here reads a wall clock against a limit (timings belong to ``bench/``): the tests
pin the mechanism — durations parse or fail in one line, the shares follow the cost weights and
never exceed what is left, a training stops at the end of its window and says so, the
same-seed pair of research.reproducibility is never cut, and a checkup under a budget far too
small still examines every check, each reporting its share and what it cut.
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import dlclinic
from conftest import blobs
from dlclinic import Case, EvidenceConfig, FitConfig
from dlclinic.core import budget
from dlclinic.core.baselines import MLP
from dlclinic.core.errors import ConfigError
from dlclinic.core.recipe import fit


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90.0), ("90s", 90.0), ("2m", 120.0), ("1.5m", 90.0), ("1h30m", 5400.0), (30, 30.0)]
)
def test_durations_parse(text: object, seconds: float) -> None:
    assert budget.parse_budget(text) == seconds  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["", "ten minutes", "2x", "0", "-5s", "2m2m", "m"])
def test_bad_durations_fail_in_one_line(text: str) -> None:
    with pytest.raises(ConfigError, match="--budget") as err:
        budget.parse_budget(text)
    assert "\n" not in str(err.value)


def test_shares_follow_the_weights_and_never_exceed_what_is_left() -> None:
    ids = ["model.compression", "data.quality", "compute.edge"]  # weights 6, 2, 1
    one = budget.Scheduler(90.0, ids, workers=1, reserve=0.0)
    assert one.share("model.compression") == pytest.approx(90.0 * 6 / 9, rel=0.01)
    assert one.share("data.quality") == pytest.approx(90.0 * 2 / 3, rel=0.01)  # no time used yet: 2 of the 3 left
    assert one.share("compute.edge") == pytest.approx(90.0, rel=0.01)  # the last check gets all that is left
    two = budget.Scheduler(90.0, ids, workers=2, reserve=0.0)
    assert two.share("model.compression") == pytest.approx(90.0, rel=0.01)  # 2 × 60 s side by side, capped at 90


def test_without_a_budget_nothing_is_cut() -> None:
    assert budget.time_left() is None and not budget.expired()
    budget.cut("ignored")  # a no-op outside a window


def test_a_training_stops_at_the_end_of_its_window() -> None:
    x, y = blobs(600, d=6, sep=2.0, seed=0)
    cfg = FitConfig(epochs=50, batch_size=32, patience=10**6)
    with budget.window(0.0) as win:
        result = fit(MLP(6, 3), x, y, cfg)
    assert result.stopped_early and len(result.history["train_loss"]) == 1  # one batch at least, then stopped
    assert win.cuts == ["training stopped by the time budget in epoch 1 of 50"]
    whole = fit(MLP(6, 3), x, y, FitConfig(epochs=3, batch_size=32, patience=10**6))  # no window: never cut
    assert len(whole.history["train_loss"]) == 3


def test_a_checkup_under_a_tiny_budget_examines_every_check_and_says_what_it_cut(tmp_path) -> None:
    x, y = blobs(400, d=6, sep=3.0, seed=0)
    xt, yt = blobs(150, d=6, sep=3.0, seed=1)
    case = Case.from_arrays((x, y), (xt, yt))
    report = dlclinic.checkup(
        case,
        budget="4s",
        cache_dir=tmp_path,
        fit_config=FitConfig(epochs=3, batch_size=64),
        evidence_config=EvidenceConfig(oof="embeddings"),
    )
    assert report.environment["budget_s"] == 4.0
    ran = [r for r in report.challenges if r.status != "not_examined"]
    assert len(ran) >= 20 and not [r.id for r in report.challenges if r.status == "error"]
    for r in ran:
        assert r.budget is not None and r.budget["share_s"] >= 0 and r.budget["used_s"] >= 0, r.id
        assert r.to_dict()["budget"]["cut"] == r.budget["cut"]
    assert any(r.budget["cut"] for r in ran), "a 4-second budget for every check must cut something"
    for r in ran:  # a check that was cut says so in its summary
        assert ("Under the time budget:" in r.summary) == bool(r.budget["cut"]), (r.id, r.summary)
    without = dlclinic.checkup(
        case, only=["data.quality"], cache_dir=tmp_path, evidence_config=EvidenceConfig(oof="embeddings")
    )
    assert without["data.quality"].budget is None and "budget" not in without["data.quality"].to_dict()
    assert "budget_s" not in without.environment


def test_the_cli_refuses_a_bad_budget_before_any_work(tmp_path) -> None:
    x, y = blobs(60, d=4, sep=3.0, seed=0)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    out = subprocess.run(
        [sys.executable, "-m", "dlclinic.cli", "checkup", "--train", str(tmp_path / "train.npz"), "--budget", "soon"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().count("\n") == 0 and "--budget" in out.stderr and "'soon'" in out.stderr
    assert not (tmp_path / "dlclinic-report").exists()


def test_a_result_cut_by_the_budget_is_not_cached(tmp_path) -> None:
    from dlclinic.core.evidence import Evidence

    x, y = blobs(120, d=4, sep=3.0, seed=0)
    case = Case.from_arrays((x, y), model=MLP(4, 3))
    evidence = Evidence(case, EvidenceConfig(), cache_dir=tmp_path)

    def cut_short() -> dict[str, np.ndarray]:
        budget.cut("half the work skipped")
        return {"value": np.zeros(1)}

    with budget.window(10.0):
        evidence.cached("cut", {}, cut_short)
        evidence.cached("whole", {}, lambda: {"value": np.ones(1)})
    assert evidence.stats.computed == ["cut", "whole"]
    again = Evidence(case, EvidenceConfig(), cache_dir=tmp_path)
    again.cached("cut", {}, lambda: {"value": np.zeros(1)})
    again.cached("whole", {}, lambda: {"value": np.ones(1)})
    assert again.stats.computed == ["cut"] and again.stats.cached == ["whole"]


def test_trainings_compared_with_each_other_stop_at_the_same_batch() -> None:
    """research.reproducibility's same-seed pair: the clock cuts the first, the second trains as many batches."""
    x, y = blobs(600, d=6, sep=2.0, seed=0)
    cfg = FitConfig(epochs=20, batch_size=32, patience=10**6)
    with budget.window(0.0), budget.same_steps():
        torch.manual_seed(0)
        a = fit(MLP(6, 3), x, y, cfg)
        time.sleep(0.01)
        torch.manual_seed(0)
        b = fit(MLP(6, 3), x, y, cfg)
    assert len(a.history["train_loss"]) == len(b.history["train_loss"]) == 1
    assert a.history["train_loss"] == b.history["train_loss"]  # same seed, same batches: the same run
    with budget.window(60.0), budget.same_steps():  # time enough: both whole
        c = fit(MLP(6, 3), x, y, FitConfig(epochs=3, batch_size=32, patience=10**6))
        d = fit(MLP(6, 3), x, y, FitConfig(epochs=3, batch_size=32, patience=10**6))
    assert len(c.history["train_loss"]) == len(d.history["train_loss"]) == 3


def test_a_budget_too_small_for_every_row_examines_a_sample_and_names_the_users_rows(tmp_path) -> None:
    """When one forward pass over every row would take more than 35 % of the budget, the splits are
    sampled (stratified, seeded); findings still name rows of the user's splits."""
    from dlclinic.api import _original_rows, _sampled_for_budget
    from dlclinic.core.results import CheckResult, Finding

    x, y = blobs(3000, d=6, sep=3.0, seed=0)
    xt, yt = blobs(1000, d=6, sep=3.0, seed=1)
    case = Case.from_arrays((x, y), (xt, yt), model=fit(MLP(6, 3), x, y, FitConfig(epochs=2)).model)
    same, none = _sampled_for_budget(case, 3600.0, 256)
    assert none == {} and same is case  # an hour is plenty for 4,000 rows
    small, rows = _sampled_for_budget(case, 1e-4, 256)
    assert set(rows) == {"train", "test"} and len(small.train) == len(rows["train"]) == 200
    assert np.bincount(small.train.y).min() >= 60  # stratified: every class kept
    np.testing.assert_array_equal(small.train.x, x[rows["train"]])
    result = CheckResult(
        "data.quality", "warn", "s", findings=(Finding("label_issue", "m", split="train", indices=(0, 7)),)
    )
    (mapped,) = _original_rows([result], {"train": (rows["train"], 3000)})
    assert mapped.findings[0].indices == (int(rows["train"][0]), int(rows["train"][7]))
    report = dlclinic.checkup(
        case, only=["data.quality"], budget=1e-4, cache_dir=tmp_path, evidence_config=EvidenceConfig(oof="embeddings")
    )
    assert report.case["sampled_by_budget"] == {"train": {"rows": 200, "of": 3000}, "test": {"rows": 200, "of": 1000}}
    assert report.case["splits"] == {"train": 200, "test": 200}
