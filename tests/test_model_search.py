"""model.hyperparameters / model.architecture checks and the tune / search / compress remedies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import dlclinic
from conftest import blobs
from dlclinic import Case, FitConfig
from dlclinic.core.baselines import MLP, SmallCNN
from dlclinic.functional.search import hyperparameter_study, model_summary, narrower


@pytest.fixture(autouse=True)
def _one_thread():  # type: ignore[no-untyped-def]
    """Small models train faster on one thread, and much faster on a CPU shared with other jobs."""
    from dlclinic.core.threads import torch_threads

    with torch_threads(1):
        yield


FAST = FitConfig(epochs=6, batch_size=64)


def _blob_case(seed: int = 0, sep: float = 3.0) -> Case:
    x, y = blobs(600, k=3, d=12, sep=sep, seed=seed)
    xt, yt = blobs(300, k=3, d=12, sep=sep, seed=seed + 1)
    return Case.from_arrays((x, y), (xt, yt))


def test_study_beats_a_bad_recipe_and_resumes_from_sqlite(tmp_path: Path) -> None:
    x, y = blobs(500, k=3, d=12, sep=2.0, seed=0)
    factory = lambda: MLP(12, 3, hidden=(32,))  # noqa: E731
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    bad = {"lr": 1e-5, "weight_decay": 1e-4, "batch_size": 256}
    first = hyperparameter_study(
        factory,
        x[:350],
        y[:350],
        x[350:],
        y[350:],
        baseline=bad,
        n_trials=6,
        epochs=2,
        storage=storage,
        study_name="s",
        seed=0,
    )
    assert first.baseline_params == bad
    assert first.best_accuracy >= first.baseline_accuracy + 0.2
    assert first.gain_ci[0] > 0
    again = hyperparameter_study(
        factory,
        x[:350],
        y[:350],
        x[350:],
        y[350:],
        baseline=bad,
        n_trials=2,
        epochs=2,
        storage=storage,
        study_name="s",
        seed=1,
    )
    assert again.n_trials == first.n_trials + 2  # resumed, not restarted


def test_hyperparameter_check_flags_bad_recipe_only(tmp_path: Path) -> None:
    case = _blob_case(sep=2.0)
    opts = {"n_trials": 5, "timeout_s": 30.0, "n_train": 400, "n_val": 200}
    bad = dlclinic.checkup(
        case,
        only=["model.hyperparameters"],
        options={"model.hyperparameters": {**opts, "lr": 1e-5, "batch_size": 256}},
        fit_config=FAST,
        cache_dir=tmp_path,
    )["model.hyperparameters"]
    assert bad.status == "warn" and bad.findings[0].code == "better_recipe", bad.summary
    good = dlclinic.checkup(
        case,
        only=["model.hyperparameters"],
        options={"model.hyperparameters": opts},
        fit_config=FAST,
        cache_dir=tmp_path,
    )["model.hyperparameters"]
    assert good.status == "ok", good.summary
    assert good.remedy is not None and "treat model.hyperparameters" in str(good.remedy.command)


def test_redundancy_finds_dead_channels_and_low_rank() -> None:
    import torch

    from dlclinic.functional.search import redundancy

    net = MLP(12, 3, hidden=(32, 16))
    with torch.no_grad():
        net.body[0].bias[:16] = -100.0  # half of the first hidden layer can never fire
        w = net.embedding[0].weight
        w.copy_(torch.outer(torch.randn(w.shape[0]), torch.randn(w.shape[1])))  # rank 1
    rows = {
        (r["layer"], r["kind"]): r
        for r in redundancy(net, np.random.default_rng(0).normal(size=(64, 12)).astype(np.float32))
    }
    assert rows[("body.1", "activations")]["dead_fraction"] == pytest.approx(0.5)
    assert rows[("embedding.0", "weights")]["rank_ratio"] < 0.2
    assert rows[("body.0", "weights")]["rank_ratio"] > 0.5


def test_user_search_space_is_parsed_and_checked() -> None:
    from dlclinic.challenges.model.hyperparameters import parse_space
    from dlclinic.core.errors import ConfigError

    space = parse_space(
        '{"lr": ["float_log", 1e-4, 1e-1], "batch_size": ["categorical", [16, 32]], "epochs": ["int", 2, 4]}'
    )
    assert space == {"lr": ("float_log", 1e-4, 1e-1), "batch_size": ("categorical", (16, 32)), "epochs": ("int", 2, 4)}
    with pytest.raises(ConfigError):
        parse_space('{"lr": ["float_log", 1e-1, 1e-4]}')
    with pytest.raises(ConfigError):
        parse_space("not json")


def test_architecture_summary_and_oversized_model(tmp_path: Path) -> None:
    info = model_summary(SmallCNN(1, 10, 28, 28), np.zeros((1, 28, 28), np.float32))
    assert info["n_params"] == 105962 and info["flops"] > 2e6
    small = narrower(lambda: MLP(12, 3), 0.25, np.zeros((2, 12), np.float32))
    assert sum(p.numel() for p in small.parameters()) < 0.15 * sum(p.numel() for p in MLP(12, 3).parameters())
    res = dlclinic.checkup(
        _blob_case(),
        only=["model.architecture"],
        options={"model.architecture": {"n_train": 400, "n_val": 200, "epochs": 3, "tolerance": 0.04}},
        fit_config=FAST,
        cache_dir=tmp_path,
    )["model.architecture"]  # 200 validation rows: an exact bound cannot certify a drop under 2 %
    assert res.status == "warn" and any(f.code == "oversized" for f in res.findings), res.summary
    assert any(t["title"].startswith("Redundancy") for t in res.details["tables"])
    assert res.metrics["width_25_params"] < 0.15 * res.metrics["n_params"]


@pytest.mark.slow
def test_tune_remedy_improves_a_bad_recipe_and_writes_a_resumable_study(tmp_path: Path) -> None:
    case = _blob_case(sep=2.0)
    bad = FitConfig(epochs=3, batch_size=256, lr=1e-5)
    params = {"n_trials": 6, "trial_epochs": 2}
    treatment, before, after = dlclinic.treat(
        case,
        "model.hyperparameters",
        out_dir=tmp_path / "out",
        params=params,
        fit_config=bad,
        cache_dir=tmp_path / "cache",
    )
    assert treatment.after["test_accuracy"] >= treatment.before["test_accuracy"] + 0.1
    assert treatment.after["gain_ci_low"] > 0
    assert treatment.after["seed_gain_min"] > 0  # the winner stays ahead with fresh seeds
    assert (tmp_path / "out" / "optuna.db").exists() and Path(treatment.artifacts["weights"]).exists()
    best = json.loads((tmp_path / "out" / "best_hyperparameters.json").read_text())
    assert best["best"]["lr"] > 1e-5


@pytest.mark.slow
def test_compress_remedy_writes_a_verified_model_within_tolerance(tmp_path: Path) -> None:
    case = _blob_case()
    params = {
        "max_accuracy_drop": 0.02,
        "sparsities": "0.5",
        "keep_ratios": "0.5",
        "finetune_epochs": 1,
        "distill_epochs": 2,
        "distill_seconds": 5.0,
    }
    treatment, before, after = dlclinic.treat(
        case,
        "model.compression",
        out_dir=tmp_path / "out",
        params=params,
        fit_config=FAST,
        cache_dir=tmp_path / "cache",
    )
    assert Path(treatment.artifacts["model"]).exists()
    assert treatment.after["size_mb"] < 0.5 * treatment.before["size_mb"]
    assert treatment.after["accuracy_drop"] <= 0.02
    table = json.loads((tmp_path / "out" / "compression.json").read_text())
    assert table["chosen"] and table["verified"]["size_bytes"] > 0
    assert not (tmp_path / "out" / ".compress-work").exists()
