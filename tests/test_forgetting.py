"""optimization.forgetting: the continual-learning harness, the check and the remedy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import blobs
from dlclinic.challenges.optimization.forgetting import ForgettingOptions, run
from dlclinic.core.baselines import MLP
from dlclinic.core.case import Case
from dlclinic.core.evidence import Evidence
from dlclinic.functional.continual import (
    ContinualConfig,
    continual_metrics,
    run_task_sequence,
    split_classes,
    tasks_from_classes,
    tasks_from_ids,
)

K, D = 6, 16


def _factory() -> MLP:
    return MLP(D, K, hidden=(64, 32))


def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y = blobs(900, k=K, d=D, sep=3.0)
    xt, yt = blobs(450, k=K, d=D, sep=3.0, seed=1)
    return x, y, xt, yt


def test_metrics_of_a_known_matrix() -> None:
    r = np.array([[0.9, 0.0, 0.0], [0.5, 0.8, 0.0], [0.3, 0.6, 0.95]])
    avg, bwt, forgetting = continual_metrics(r)
    assert avg == pytest.approx((0.3 + 0.6 + 0.95) / 3)
    assert bwt == pytest.approx(((0.3 - 0.9) + (0.6 - 0.8)) / 2)
    assert forgetting == pytest.approx(((0.9 - 0.3) + (0.8 - 0.6)) / 2)


def test_task_sequences() -> None:
    y = np.arange(12) % 4
    seq = tasks_from_classes(y, y, split_classes(range(4), 2))
    assert len(seq) == 2 and set(y[seq.train_rows[1]]) == {2, 3}
    ids = np.array(["a", "b"] * 6)
    assert len(tasks_from_ids(ids, ids, y)) == 2


def test_replay_forgets_less_than_naive_fine_tuning_over_seeds() -> None:
    x, y, xt, yt = _data()
    seq = tasks_from_classes(y, yt, split_classes(range(K), 3))
    bwt: dict[str, list[float]] = {"naive": [], "replay": []}
    for strategy in bwt:
        for seed in range(3):
            res = run_task_sequence(
                _factory, x, y, xt, yt, seq, ContinualConfig(strategy=strategy, seed=seed, memory=100)
            )
            assert res.matrix.shape == (3, 3)
            bwt[strategy].append(res.bwt)
    naive, replay = np.array(bwt["naive"]), np.array(bwt["replay"])
    assert naive.mean() < -0.5  # catastrophic forgetting, planted by naive sequential training
    assert np.all(replay > naive) and replay.mean() - naive.mean() > 0.2


@pytest.mark.parametrize("strategy", ["ewc", "lwf"])
def test_regularisation_strategies_run(strategy: str) -> None:
    x, y, xt, yt = _data()
    seq = tasks_from_classes(y, yt, split_classes(range(K), 2))
    res = run_task_sequence(
        _factory, x, y, xt, yt, seq, ContinualConfig(strategy=strategy, epochs=2, fisher_samples=30)
    )
    assert np.isfinite(res.bwt) and 0 <= res.average_accuracy <= 1


def _case() -> Case:
    x, y, xt, yt = _data()
    return Case.from_arrays((x, y), (xt, yt), model=_factory(), model_factory=_factory)


def test_check_warns_on_naive_and_is_quiet_without_forgetting(tmp_path: Path) -> None:
    case = _case()
    ev = Evidence(case, cache_dir=tmp_path)
    res = run(case, ev, ForgettingOptions(tasks="classes", n_tasks=3))
    assert res.status == "warn" and res.metrics["bwt_high"] < 0 and res.metrics["graded"] is True
    assert res.remedy is not None and res.remedy.command == "dlclinic treat optimization.forgetting"
    assert res.details["plots"][0]["kind"] == "heatmap"
    quiet = run(
        case, ev, ForgettingOptions(tasks="classes", n_tasks=3, scenario="task")
    )  # task-incremental: well-separated tasks do not interfere
    assert quiet.status == "ok", quiet.summary


def test_undeclared_sequence_is_information_not_a_warning(tmp_path: Path) -> None:
    """A model trained once has no task sequence: the split-class what-if is reported, never graded."""
    case = _case()
    res = run(case, Evidence(case, cache_dir=tmp_path), ForgettingOptions(n_tasks=3))
    assert res.status == "ok" and res.metrics["graded"] is False
    assert res.summary.startswith("What-if, not graded")
    assert res.metrics["forgetting"] > 0.2  # the same figures as the graded run ...
    assert res.remedy is not None  # ... and the remedy stays available


def test_binary_task_has_no_split_class_sequence(tmp_path: Path) -> None:
    x, y = blobs(400, k=2, d=D, sep=3.0)
    xt, yt = blobs(200, k=2, d=D, sep=3.0, seed=1)
    factory = lambda: MLP(D, 2, hidden=(32,))  # noqa: E731
    case = Case.from_arrays((x, y), (xt, yt), model=factory(), model_factory=factory)
    ev = Evidence(case, cache_dir=tmp_path)
    for tasks in ("auto", "classes"):
        res = run(case, ev, ForgettingOptions(tasks=tasks))
        assert res.status == "not_examined" and "--tasks groups" in res.summary, res.summary


def _grouped_case(conflict: bool) -> Case:
    """Two declared tasks (group ids 0/1) drawn from the same blobs; ``conflict``: task 1 moves every label on."""
    x, y, xt, yt = _data()
    rng = np.random.default_rng(3)
    g, gt = rng.integers(0, 2, len(x)), rng.integers(0, 2, len(xt))
    if conflict:
        y, yt = np.where(g == 1, (y + 1) % K, y), np.where(gt == 1, (yt + 1) % K, yt)
    return Case.from_arrays((x, y), (xt, yt), model=_factory(), model_factory=_factory, groups={"train": g, "test": gt})


def test_declared_task_sequence_is_graded(tmp_path: Path) -> None:
    options = ForgettingOptions(tasks="groups", epochs=8)
    conflicting = _grouped_case(conflict=True)
    res = run(conflicting, Evidence(conflicting, cache_dir=tmp_path), options)
    assert res.status == "warn" and res.metrics["graded"] is True, res.summary
    consistent = _grouped_case(conflict=False)
    res = run(consistent, Evidence(consistent, cache_dir=tmp_path), options)
    assert res.status == "ok", res.summary


def test_check_without_factory_is_not_examined(tmp_path: Path) -> None:
    x, y, xt, yt = _data()
    case = Case.from_arrays((x, y), (xt, yt), model=_factory())
    assert run(case, Evidence(case, cache_dir=tmp_path), ForgettingOptions()).status == "not_examined"


@pytest.mark.slow
def test_treat_picks_a_strategy_that_forgets_less(tmp_path: Path) -> None:
    import dlclinic

    case = _case()
    treatment, before, after = dlclinic.treat(
        case,
        "optimization.forgetting",
        out_dir=tmp_path,
        params={"seeds": "1", "strategies": "replay,lwf"},
        cache_dir=tmp_path / "cache",
    )
    assert treatment.after["bwt"] > treatment.before["bwt"]
    assert treatment.after["average_accuracy"] > treatment.before["average_accuracy"]
    assert (tmp_path / "continual_comparison.json").is_file()
    assert after["optimization.forgetting"].metrics["bwt"] > before["optimization.forgetting"].metrics["bwt"]


@pytest.mark.slow
def test_replay_reduces_forgetting_on_the_demo_split_class_sequence() -> None:
    """Acceptance: on the demo's split-MNIST sequence (5 tasks of 2 digits) replay beats naive BWT for every seed."""
    import dataclasses

    from dlclinic.challenges.optimization.forgetting import run_sequence
    from dlclinic.core.baselines import baseline_for
    from dlclinic.demo import build_demo

    case, _ = build_demo()
    case = dataclasses.replace(
        case, model_factory=lambda: baseline_for(case.input_shape, case.n_classes, case.modality)
    )
    for seed in (0, 1):
        naive = run_sequence(case, ForgettingOptions(), strategy="naive", seed=seed)["summary"]
        replay = run_sequence(case, ForgettingOptions(), strategy="replay", seed=seed)["summary"]
        assert replay[1] > naive[1] + 0.1  # BWT closer to 0
        assert replay[0] > naive[0]  # and a higher final average accuracy
