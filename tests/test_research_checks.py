"""research.* checks on small synthetic cases with planted defects (and their clean controls)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import blobs
from dlclinic.challenges.research.benchmark_saturation import BenchmarkOptions, run_benchmark
from dlclinic.challenges.research.open_ended import OpenEndedOptions, run_open_ended
from dlclinic.challenges.research.reproducibility import ReproducibilityOptions, run_reproducibility
from dlclinic.challenges.research.theory import TheoryOptions, run_theory
from dlclinic.core.baselines import MLP
from dlclinic.core.case import Case
from dlclinic.core.evidence import Evidence
from dlclinic.core.recipe import FitConfig, fit, seed_everything

D, K = 8, 3


def _factory() -> MLP:
    return MLP(D, K, hidden=(32, 16))


def _case(
    *,
    model: Any = None,
    test: tuple[np.ndarray, np.ndarray] | None = None,
    factory: Any = _factory,
    k: int = K,
    d: int = D,
    sep: float = 4.0,
) -> Case:
    x, y = blobs(300, k=k, d=d, sep=sep)
    xt, yt = test if test is not None else blobs(240, k=k, d=d, sep=sep, seed=1)
    if model is None:
        seed_everything(0)
        model = fit(factory(), x, y, FitConfig(epochs=10)).model
    return Case.from_arrays((x, y), (xt, yt), model=model, model_factory=factory)


def _recipe(factory: Any, *, unseeded_shuffle: bool = False) -> Any:
    """A small SGD recipe; with ``unseeded_shuffle`` the data order comes from an unseeded generator."""

    def retrain(x: np.ndarray, y: np.ndarray, seed: int) -> Any:
        seed_everything(seed)
        model = factory()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        rng = np.random.default_rng() if unseeded_shuffle else np.random.default_rng(seed)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        model.train()
        for _ in range(2):
            order = torch.from_numpy(rng.permutation(len(x)))
            for i in range(0, len(x), 32):
                idx = order[i : i + 32]
                loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        return model.eval()

    return retrain


def _evidence(case: Case, tmp_path: Path, retrain: Any = None) -> Evidence:
    return Evidence(case, retrain=retrain, recipe="test", cheap_retrain=True, cache_dir=tmp_path)


# -- reproducibility -----------------------------------------------------------------------------
def test_reproducibility_deterministic_recipe_is_bit_identical(tmp_path: Path) -> None:
    case = _case()
    res = run_reproducibility(
        case,
        _evidence(case, tmp_path, _recipe(_factory)),
        ReproducibilityOptions(max_train_rows=200, seeds=3, budget_seconds=60),
    )
    assert res.status == "ok", res.summary
    assert res.metrics["bit_identical"] is True and res.metrics["seeds_run"] == 3
    assert res.metrics["accuracy_min"] <= res.metrics["accuracy_mean"] <= res.metrics["accuracy_max"]


def test_reproducibility_scores_the_seed_spread_on_a_test_sample(tmp_path: Path) -> None:
    case = _case()  # 240 test rows
    opts = ReproducibilityOptions(max_train_rows=200, max_test_rows=100, seeds=2, budget_seconds=60)
    res = run_reproducibility(case, _evidence(case, tmp_path, _recipe(_factory)), opts)
    assert res.metrics["test_rows_used"] == 100 and res.metrics["seeds_run"] == 2
    assert "(on 100 of 240 test rows)" in res.summary
    every = run_reproducibility(
        case, _evidence(case, tmp_path / "all", _recipe(_factory)), dataclasses.replace(opts, max_test_rows=0)
    )
    assert every.metrics["test_rows_used"] == 240 and "test rows)" not in every.summary


def test_reproducibility_names_an_unseeded_shuffle(tmp_path: Path) -> None:
    case = _case()
    res = run_reproducibility(
        case,
        _evidence(case, tmp_path, _recipe(_factory, unseeded_shuffle=True)),
        ReproducibilityOptions(max_train_rows=200, seeds=1),
    )
    assert res.status == "fail"
    assert res.metrics["bit_identical"] is False and res.metrics["tensors_differing"] > 0
    [finding] = res.findings
    calls = finding.extra["unseeded_generator_calls"]
    assert any("numpy.random.default_rng()" in c and "test_research_checks.py" in c for c in calls), calls
    assert "first" in res.summary and "numpy.random.default_rng()" in res.summary


class NoisyMLP(MLP):
    """Adds training-time noise from a generator seeded from OS entropy (not by seed_everything)."""

    def __init__(self) -> None:
        super().__init__(D, K, hidden=(32, 16))
        self.gen = torch.Generator()
        self.gen.seed()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            x = x + 0.5 * torch.randn(x.shape, generator=self.gen)
        return super().forward(x)


def test_reproducibility_blames_a_random_forward_pass(tmp_path: Path) -> None:
    case = _case(factory=NoisyMLP)
    res = run_reproducibility(
        case, _evidence(case, tmp_path, _recipe(NoisyMLP)), ReproducibilityOptions(max_train_rows=200, seeds=1)
    )
    assert res.status == "fail"
    assert "forward pass" in res.findings[0].message


def test_reproducibility_without_recipe_is_not_examined(tmp_path: Path) -> None:
    case = _case()
    assert run_reproducibility(case, _evidence(case, tmp_path), ReproducibilityOptions()).status == "not_examined"


# -- benchmark saturation ------------------------------------------------------------------------
def _planted_slice_test(plant: bool) -> tuple[np.ndarray, np.ndarray]:
    xt, yt = blobs(600, k=K, d=D, sep=8.0, seed=1)
    rng = np.random.default_rng(5)
    if plant:
        xt[:90] += 6.0  # a sub-population with shifted features ...
        yt[:90] = (yt[:90] + rng.integers(0, K, 90)) % K  # ... and labels the model cannot get right
    else:  # the control: as many label errors, scattered at random rows (no structure)
        rows = rng.permutation(600)[:90]
        yt[rows] = (yt[rows] + rng.integers(0, K, 90)) % K
    return xt, yt


def test_benchmark_finds_planted_weak_slice_and_not_on_clean(tmp_path: Path) -> None:
    planted = _case(test=_planted_slice_test(True), sep=8.0)
    res = run_benchmark(planted, _evidence(planted, tmp_path / "a"), BenchmarkOptions(n_boot=200))
    assert res.status == "warn" and res.metrics["weak_slices"] >= 1
    slice_rows = np.array(res.findings[0].indices)
    assert np.isin(slice_rows, np.arange(90)).mean() > 0.8 and len(slice_rows) >= 30
    assert res.metrics["accuracy_low"] < res.metrics["accuracy"] < res.metrics["accuracy_high"]
    clean = _case(test=_planted_slice_test(False), sep=8.0)
    res_clean = run_benchmark(clean, _evidence(clean, tmp_path / "b"), BenchmarkOptions(n_boot=200))
    assert res_clean.status == "ok" and res_clean.metrics["weak_slices"] == 0, res_clean.summary


def test_benchmark_compare_says_significant_or_not(tmp_path: Path) -> None:
    xt, yt = blobs(800, k=K, d=D, seed=1)
    case = _case(test=(xt, yt))
    ev = _evidence(case, tmp_path)
    own = ev.get("probs", "test").argmax(1)
    rng = np.random.default_rng(0)
    worse = own.copy()
    hit = np.flatnonzero(own == yt)[:120]  # the other model gets 120 more rows wrong
    worse[hit] = (yt[hit] + 1) % K
    res = run_benchmark(case, ev, BenchmarkOptions(n_boot=200, compare=worse))
    assert res.metrics["significant"] is True and "significant" in res.summary
    same = own.copy()  # a different model with the same accuracy: as many new errors as fixed ones
    wrong, right = np.flatnonzero(own != yt), rng.permutation(np.flatnonzero(own == yt))
    m = min(12, len(wrong))
    assert m >= 5
    same[wrong[:m]] = yt[wrong[:m]]
    same[right[:m]] = (yt[right[:m]] + 1) % K
    res2 = run_benchmark(case, ev, BenchmarkOptions(n_boot=200, compare=same))
    assert res2.metrics["significant"] is False and "not significant" in res2.summary


def test_benchmark_compare_from_file(tmp_path: Path) -> None:
    case = _case()
    ev = _evidence(case, tmp_path)
    path = tmp_path / "other.npz"
    np.savez(path, probs=ev.get("probs", "test"))
    res = run_benchmark(case, ev, BenchmarkOptions(n_boot=100, compare=str(path)))
    assert res.metrics["accuracy_difference"] == 0.0 and res.metrics["significant"] is False


# -- theory --------------------------------------------------------------------------------------
def _wide(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP(64, 4, hidden=(256, 128))


def test_theory_flags_untrained_layers_and_not_trained_ones(tmp_path: Path) -> None:
    x, y = blobs(600, k=4, d=64, sep=1.0)
    xt, yt = blobs(200, k=4, d=64, sep=1.0, seed=1)
    untrained = Case.from_arrays((x, y), (xt, yt), model=_wide())
    res = run_theory(untrained, _evidence(untrained, tmp_path / "u"), TheoryOptions())
    assert res.status == "warn"
    flagged = {f.extra["layer"] for f in res.findings if "untrained-like" in f.message}
    assert flagged == {"body.0", "embedding.0"}
    trained_model = fit(_wide(), x, y, FitConfig(epochs=10)).model
    trained = Case.from_arrays((x, y), (xt, yt), model=trained_model)
    res_t = run_theory(trained, _evidence(trained, tmp_path / "t"), TheoryOptions())
    assert not [f for f in res_t.findings if "untrained-like" in f.message], res_t.summary
    assert "generalization gap" in res_t.summary and res_t.metrics["layers_fitted"] == 2


def _heavy_tailed(model: MLP, alpha: float = 1.4) -> MLP:
    """``body.0``'s singular values replaced by Pareto quantiles (eigenvalue tail exponent ``alpha``)."""
    layer = model.body[0]
    u, sv, vt = np.linalg.svd(layer.weight.detach().double().numpy(), full_matrices=False)
    new = np.sqrt((np.arange(1, len(sv) + 1) / len(sv)) ** (-1.0 / (alpha - 1.0)))
    new *= np.linalg.norm(sv) / np.linalg.norm(new)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy((u * new) @ vt).float())
    return model


def test_theory_grades_a_heavy_tail_only_when_the_measured_gap_agrees(tmp_path: Path) -> None:
    """α < 2 is a proxy for over-fitting: with a labelled test split and no gap it is information; alone, a warning."""
    x, y = blobs(600, k=4, d=64, sep=1.0)
    xt, yt = blobs(200, k=4, d=64, sep=1.0, seed=1)
    model = _heavy_tailed(fit(_wide(), x, y, FitConfig(epochs=10)).model)
    labelled = Case.from_arrays((x, y), (xt, yt), model=model)
    res = run_theory(labelled, _evidence(labelled, tmp_path / "l"), TheoryOptions())
    assert abs(res.metrics["generalization_gap"]) < 0.05, res.summary
    assert res.status == "ok", res.summary
    assert [f.extra["layer"] for f in res.findings if f.code == "heavy_tail_uncorroborated"] == ["body.0"]
    assert "not graded" in res.summary and res.metrics["layers_heavy_tail_uncorroborated"] == 1
    unlabelled = Case.from_arrays((x, y), (xt, None), model=model)
    res_u = run_theory(unlabelled, _evidence(unlabelled, tmp_path / "u"), TheoryOptions())
    assert res_u.status == "warn", res_u.summary
    assert [f.extra["layer"] for f in res_u.findings if f.code == "layer_flagged"] == ["body.0"]


# -- open-ended ----------------------------------------------------------------------------------
def _open_case(overlap: bool) -> tuple[Case, Any]:
    from dlclinic.api import retrainer

    k, d = 5, 8
    x, y = blobs(500, k=k, d=d, sep=5.0)
    xt, yt = blobs(400, k=k, d=d, sep=5.0, seed=1)
    if overlap:  # the "new" classes look exactly like known class 0: nothing to detect
        rng = np.random.default_rng(2)
        for arr, lab in ((x, y), (xt, yt)):
            new = np.isin(lab, [3, 4])
            arr[new] = arr[lab == 0][rng.integers(0, (lab == 0).sum(), new.sum())] + rng.normal(
                0, 0.05, (new.sum(), d)
            ).astype(np.float32)

    def factory() -> MLP:
        return MLP(d, k, hidden=(32, 16))

    case = Case.from_arrays((x, y), (xt, yt), model=factory(), model_factory=factory)
    retrain, _ = retrainer(case, FitConfig(epochs=6))
    return case, retrain


def test_open_ended_detects_held_out_classes(tmp_path: Path) -> None:
    case, retrain = _open_case(overlap=False)
    res = run_open_ended(case, _evidence(case, tmp_path, retrain), OpenEndedOptions(unknown_classes=(3, 4)))
    assert res.status == "ok", res.summary
    assert res.metrics["auroc_low"] > 0.5 and res.metrics["auroc"] > 0.9
    assert 0 <= res.metrics["purity"] <= 1 and "purity" in res.summary


def test_open_ended_warns_when_new_classes_are_indistinguishable(tmp_path: Path) -> None:
    case, retrain = _open_case(overlap=True)
    res = run_open_ended(case, _evidence(case, tmp_path, retrain), OpenEndedOptions(unknown_classes=(3, 4)))
    assert res.status == "warn" and res.metrics["auroc"] < 0.75


def test_open_ended_default_simulation_is_information_not_a_warning(tmp_path: Path) -> None:
    """Held-out classes the user did not name are a what-if: reported (graded: false), never a warning."""
    case, retrain = _open_case(overlap=True)
    res = run_open_ended(case, _evidence(case, tmp_path, retrain), OpenEndedOptions(n_unknown=2))
    assert res.status == "ok" and res.metrics["graded"] is False, res.summary
    assert res.metrics["auroc"] < 0.75 and res.summary.startswith("What-if, not graded")
    assert res.remedy is not None


def test_open_ended_without_inputs_is_not_examined(tmp_path: Path) -> None:
    case, retrain = _open_case(overlap=False)
    ev = Evidence(case, retrain=retrain, cheap_retrain=False, cache_dir=tmp_path)
    res = run_open_ended(case, ev, OpenEndedOptions())
    assert res.status == "not_examined" and "ood" in res.summary


def test_open_ended_with_ood_file(tmp_path: Path) -> None:
    case = _case()
    far, _ = blobs(100, k=K, d=D, shift=8.0, seed=7)
    path = tmp_path / "new.npz"
    np.savez(path, x=far)
    res = run_open_ended(case, _evidence(case, tmp_path), OpenEndedOptions(ood=str(path)))
    assert res.status == "ok" and res.metrics["auroc"] > 0.9


@pytest.mark.parametrize("k", [2, 3])
def test_open_ended_default_holds_out_what_few_classes_allow_never_an_error(tmp_path: Path, k: int) -> None:
    case = _case(k=k, factory=lambda: MLP(D, k, hidden=(32, 16)))
    res = run_open_ended(
        case, _evidence(case, tmp_path, _recipe(lambda: MLP(D, k, hidden=(32, 16)))), OpenEndedOptions()
    )
    if k == 2:  # holding one of two classes out leaves one: nothing to simulate
        assert res.status == "not_examined" and "3 or more classes" in res.summary
    else:  # the default of 2 held-out classes leaves one known class: hold out one instead
        assert res.status in ("ok", "warn"), res.summary


@pytest.mark.parametrize("name", ["reproducibility", "benchmark_saturation", "theory", "open_ended"])
def test_specs_are_registered(name: str) -> None:
    import importlib

    from dlclinic.challenges import CHECKS

    spec = importlib.import_module(f"dlclinic.challenges.research.{name}").CHECK
    assert CHECKS[spec.id] is spec


# -- remedies ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_treat_benchmark_exports_the_hard_slice(tmp_path: Path) -> None:
    import dlclinic

    case = _case(test=_planted_slice_test(True), sep=8.0)
    treatment, before, after = dlclinic.treat(
        case, "research.benchmark_saturation", out_dir=tmp_path, cache_dir=tmp_path / "cache"
    )
    with np.load(tmp_path / "hard_slice.npz") as data:
        rows = data["rows"]
        assert len(data["x"]) == len(rows) == treatment.after["test_rows"]
    assert np.isin(rows, np.arange(90)).mean() > 0.8
    assert treatment.after["accuracy"] < treatment.before["accuracy"] - 0.3


@pytest.mark.slow
def test_treat_reproducibility_writes_weights_and_manifest(tmp_path: Path) -> None:
    import dlclinic
    from dlclinic.core.manifest import read_manifest
    from dlclinic.core.recipe import FitConfig

    case = _case()
    treatment, _, after = dlclinic.treat(
        case, "research.reproducibility", out_dir=tmp_path, cache_dir=tmp_path / "cache", fit_config=FitConfig(epochs=2)
    )
    assert treatment.after["bit_identical"] is True and treatment.after_status == "ok"
    manifest = read_manifest(tmp_path / "manifest.json")
    assert (
        manifest["seeds"] == {"fit": 0} and "model" in manifest["hashes"] and (tmp_path / "model.safetensors").is_file()
    )
    assert after["research.reproducibility"].status == "ok"
