"""Training remedies close the loop: diverging → converging, ECE down, BN accuracy recovered, gradients verified."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import dlclinic
from conftest import blobs
from dlclinic import Case, FitConfig
from dlclinic.core.baselines import MLP
from dlclinic.core.recipe import fit
from dlclinic.functional.calibration import fit_temperature


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    """Tiny models train fastest on one thread; on a shared 2-core machine two threads thrash."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_fit_temperature_recovers_a_known_temperature() -> None:
    rng = np.random.default_rng(0)
    true = rng.normal(0, 2, size=(4000, 4))
    y = np.array([rng.choice(4, p=np.exp(r) / np.exp(r).sum()) for r in true])
    assert fit_temperature(true * 3.0, y) == pytest.approx(3.0, rel=0.1)


def test_treat_convergence_turns_a_diverging_run_into_a_converging_one(tmp_path) -> None:  # type: ignore[no-untyped-def]
    case = Case.from_arrays(
        blobs(500, d=10, sep=1.0, seed=2), blobs(200, d=10, sep=1.0, seed=3), model_factory=lambda: MLP(10, 3)
    )
    treatment, before, after = dlclinic.treat(
        case,
        "optimization.convergence",
        out_dir=tmp_path / "out",
        params={"lr_steps": 60},
        fit_config=FitConfig(epochs=3, lr=50.0),
        cache_dir=tmp_path,
    )
    assert before["optimization.convergence"].status in ("warn", "fail")
    assert after["optimization.convergence"].status == "ok", after["optimization.convergence"].summary
    assert treatment.after["lr"] < 1.0 and treatment.after["loss_progress"] > treatment.before["loss_progress"]
    assert (tmp_path / "out" / "curves.json").exists() and (tmp_path / "out" / "model.safetensors").exists()


class _Sharpened(nn.Module):
    """A planted over-confident model: a trained network's logits multiplied by ``factor``."""

    def __init__(self, net: nn.Module, factor: float) -> None:
        super().__init__()
        self.net, self.factor = net, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.factor


def test_temperature_scaling_lowers_ece(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (x, y), (xt, yt) = blobs(300, d=10, sep=0.5, seed=4), blobs(600, d=10, sep=0.5, seed=5)
    overconfident = _Sharpened(fit(MLP(10, 3), x, y, FitConfig(epochs=10)).model, 6.0)
    case = Case.from_arrays((x, y), (xt, yt), model=overconfident)
    treatment, before, _ = dlclinic.treat(
        case, "model.overfitting", params={"retrain": "false"}, fit_config=FitConfig(epochs=3), cache_dir=tmp_path
    )
    assert treatment.before["ece"] > 0.05
    assert treatment.after["ece"] < treatment.before["ece"] / 2
    assert treatment.after["temperature"] > 2.0


def test_bn_recalibration_recovers_the_accuracy_lost_to_stale_statistics(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (x, y), test = blobs(600, d=8, sep=1.0, seed=5), blobs(400, d=8, sep=1.0, seed=6)
    torch.manual_seed(0)
    net = fit(
        nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 3)), x, y, FitConfig(epochs=8)
    ).model
    stale = copy.deepcopy(net)
    with torch.no_grad():
        stale[0].weight.mul_(3.0)
        stale[0].bias.add_(4.0 * torch.randn(32, generator=torch.Generator().manual_seed(0)))
    treatment, before, after = dlclinic.treat(
        Case.from_arrays((x, y), test, model=stale),
        "optimization.batchnorm",
        fit_config=FitConfig(epochs=3),
        cache_dir=tmp_path,
    )
    assert before["optimization.batchnorm"].status == "fail"
    assert after["optimization.batchnorm"].status == "ok", after["optimization.batchnorm"].summary
    assert treatment.after["eval_accuracy"] > treatment.before["eval_accuracy"] + 0.1


@pytest.mark.slow
def test_treat_gradients_is_verified_by_the_monitor(tmp_path) -> None:  # type: ignore[no-untyped-def]
    def deep_sigmoid() -> nn.Module:
        layers: list[nn.Module] = []
        width = 10
        for _ in range(6):
            layers += [nn.Linear(width, 32), nn.Sigmoid()]
            width = 32
        return nn.Sequential(*layers, nn.Linear(32, 3))

    case = Case.from_arrays(blobs(400, d=10, seed=0), blobs(200, d=10, seed=1), model_factory=deep_sigmoid)
    treatment, before, after = dlclinic.treat(
        case, "model.gradients", params={"lr_steps": 50}, fit_config=FitConfig(epochs=3), cache_dir=tmp_path
    )
    assert before["model.gradients"].status in ("warn", "fail")
    assert treatment.after["min_depth_ratio"] > treatment.before["min_depth_ratio"]
    if after["model.gradients"].details.get("verdict") == "vanishing":
        assert any("normalisation" in n for n in treatment.notes)


def test_sam_lowers_the_measured_sharpness(tmp_path) -> None:  # type: ignore[no-untyped-def]
    case = Case.from_arrays(
        blobs(400, d=8, sep=1.0, seed=20),
        blobs(200, d=8, sep=1.0, seed=21),
        model_factory=lambda: MLP(8, 3, hidden=(64, 32)),
    )
    treatment, _, _ = dlclinic.treat(
        case, "optimization.nonconvex", params={"rho": "0.1"}, fit_config=FitConfig(epochs=6), cache_dir=tmp_path
    )
    assert treatment.after["hessian_top_eigenvalue"] < treatment.before["hessian_top_eigenvalue"]
    assert treatment.after["test_accuracy"] > 0.5
