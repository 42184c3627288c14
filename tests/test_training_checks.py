"""The training checks find planted pathologies (with the layer/epoch named) and stay quiet on healthy models."""

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

FAST = FitConfig(epochs=6, batch_size=64)
RUN = {"steps": 120, "rows": 512, "every": 5}


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    """Tiny models train fastest on one thread; on a shared 2-core machine two threads thrash."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _deep_sigmoid() -> nn.Module:
    layers: list[nn.Module] = []
    width = 10
    for _ in range(8):
        layers += [nn.Linear(width, 32), nn.Sigmoid()]
        width = 32
    return nn.Sequential(*layers, nn.Linear(32, 3))


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def _check(case: Case, cid: str, tmp_path, **opts):  # type: ignore[no-untyped-def]
    return dlclinic.checkup(case, only=[cid], options={cid: opts}, fit_config=FAST, cache_dir=tmp_path)[cid]


def test_gradients_vanish_in_a_deep_sigmoid_mlp_and_not_in_a_relu_mlp(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = blobs(600, d=10, seed=0), blobs(200, d=10, seed=1)
    res = _check(Case.from_arrays(*data, model_factory=_deep_sigmoid), "model.gradients", tmp_path, **RUN)
    assert res.status == "fail", res.summary
    assert res.details["verdict"] == "vanishing"
    named = res.details["layer"]
    assert named in {str(i) for i in range(0, 16, 2)} and named != "16"  # a hidden Linear, not the output layer
    assert f"`{named}`" in res.summary
    healthy = _check(Case.from_arrays(*data, model_factory=lambda: MLP(10, 3)), "model.gradients", tmp_path, **RUN)
    assert healthy.status == "ok", healthy.summary


def test_a_huge_learning_rate_diverges_and_the_recipe_lr_converges(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = blobs(600, d=10, sep=1.0, seed=2), blobs(200, d=10, sep=1.0, seed=3)
    case = Case.from_arrays(*data, model_factory=lambda: MLP(10, 3))
    bad = _check(case, "optimization.convergence", tmp_path, lr=50.0, lr_steps=60, **RUN)
    assert bad.status in ("warn", "fail") and bad.details["verdict"] in ("diverging", "unstable", "plateau"), (
        bad.summary
    )
    assert bad.metrics["suggested_lr"] < 1.0
    grads = _check(case, "model.gradients", tmp_path, lr=50.0, **RUN)
    assert grads.status in ("warn", "fail"), grads.summary
    good = _check(case, "optimization.convergence", tmp_path, lr_steps=60, **RUN)
    assert good.status == "ok", good.summary
    assert good.details["verdict"] == "converging"


def _bn_model(x: np.ndarray, y: np.ndarray) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(x.shape[1], 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 3))
    return fit(net, x, y, FitConfig(epochs=8)).model


def test_batchnorm_finds_stale_statistics_and_small_batches(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (x, y), test = blobs(600, d=8, sep=1.0, seed=5), blobs(400, d=8, sep=1.0, seed=6)
    net = _bn_model(x, y)
    clean = _check(Case.from_arrays((x, y), test, model=net), "optimization.batchnorm", tmp_path)
    assert clean.status == "ok", clean.summary
    stale = copy.deepcopy(net)
    with torch.no_grad():  # changed after training (as compression would), running statistics kept
        stale[0].weight.mul_(3.0)
        stale[0].bias.add_(4.0 * torch.randn(32, generator=torch.Generator().manual_seed(0)))
    res = _check(Case.from_arrays((x, y), test, model=stale), "optimization.batchnorm", tmp_path)
    assert res.status == "fail", res.summary
    assert res.metrics["recalibration_gain"] > 0.1
    assert any(f.code == "stale_statistics" and f.extra["layer"] == "1" for f in res.findings)
    tiny = _check(Case.from_arrays((x, y), test, model=net), "optimization.batchnorm", tmp_path, train_batch_size=2)
    assert tiny.status == "warn" and any(f.code == "small_batch" for f in tiny.findings), tiny.summary
    no_bn = _check(Case.from_arrays((x, y), test, model=MLP(8, 3)), "optimization.batchnorm", tmp_path)
    assert no_bn.status == "ok" and no_bn.metrics["bn_layers"] == 0


def test_overfitting_curves_name_the_epoch_and_memorisation_is_measured(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 20)).astype(np.float32)
    y = rng.integers(0, 3, 300)  # noise labels: only memorisation is possible
    xt, yt = rng.normal(size=(200, 20)).astype(np.float32), rng.integers(0, 3, 200)
    factory = lambda: MLP(20, 3, hidden=(256, 256), dropout=0.0)  # noqa: E731
    memoriser = fit(factory(), x, y, FitConfig(epochs=60, val_fraction=0.0, weight_decay=0.0)).model
    opts = {**RUN, "steps": 200, "memorization_rows": 64, "memorization_steps": 60}
    res = _check(
        Case.from_arrays((x, y), (xt, yt), model=memoriser, model_factory=factory),
        "model.overfitting",
        tmp_path,
        **opts,
    )
    assert res.status == "fail"
    opened = res.metrics["curve_gap_open_epoch"]
    assert opened is not None and 1 <= opened <= res.metrics["curve_epochs"]
    assert any(f.code == "gap_opens" and f.extra["epoch"] == opened for f in res.findings)
    assert res.metrics["memorization_accuracy"] > res.metrics["memorization_chance"]
    (xh, yh), test = blobs(600, d=8, seed=7), blobs(300, d=8, seed=8)
    healthy = _check(
        Case.from_arrays((xh, yh), test, model_factory=lambda: MLP(8, 3)), "model.overfitting", tmp_path, **opts
    )
    assert healthy.status == "ok", healthy.summary
    assert healthy.metrics["curve_gap_open_epoch"] is None


def test_landscape_cost_and_energy_on_a_small_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    case = Case.from_arrays(blobs(400, d=8, seed=9), blobs(200, d=8, seed=10), model_factory=lambda: MLP(8, 3))
    report = dlclinic.checkup(
        case,
        only=["optimization.nonconvex", "compute.training_cost", "compute.energy"],
        options={
            "optimization.nonconvex": {"rows": 128, "grid": 5, "points_1d": 7, "barrier_steps": 30},
            "compute.training_cost": RUN,
            "compute.energy": RUN,
        },
        fit_config=FAST,
        cache_dir=tmp_path,
    )
    land = report["optimization.nonconvex"]
    assert land.status == "ok", land.summary
    assert land.metrics["hessian_top_eigenvalue"] > 0 and land.metrics["seed_barrier"] is not None
    assert land.metrics["slice_max_loss"] >= land.metrics["loss_at_weights"]
    cost = report["compute.training_cost"]
    assert (
        cost.status == "ok" and cost.metrics["samples_per_second"] > 0 and cost.metrics["forward_flops_per_sample"] > 0
    )
    energy = report["compute.energy"]
    assert energy.metrics["training_joules_per_sample"] > 0
    assert ("estimated from TDP" in energy.summary) == bool(energy.metrics["estimated"])


def test_sharp_solution_warns_at_the_edge_of_stability(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x, y = blobs(300, d=8, sep=1.0, seed=11)
    case = Case.from_arrays(
        (x, y),
        blobs(100, d=8, sep=1.0, seed=12),
        model=fit(MLP(8, 3), x, y, FAST).model,
        model_factory=lambda: MLP(8, 3),
    )
    fit_cfg = FitConfig(epochs=6, lr=1e4)  # the recipe's LR: λ_max × lr far above 2
    res = dlclinic.checkup(
        case,
        only=["optimization.nonconvex"],
        options={"optimization.nonconvex": {"rows": 128, "grid": 3, "points_1d": 5, "barrier": False}},
        fit_config=fit_cfg,
        cache_dir=tmp_path,
    )["optimization.nonconvex"]
    assert res.metrics["sharpness_x_lr"] > 2 and res.status == "warn"


class _NoLayers:
    """An ONNX-like model: logits only, no modules."""

    sha256 = "1" * 64

    def __init__(self, net: nn.Module) -> None:
        self.net = net

    def predict_logits(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.net.eval()(torch.from_numpy(x)).numpy()


def test_without_an_architecture_training_parts_are_not_examined(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (x, y), test = blobs(300, d=8, seed=13), blobs(100, d=8, seed=14)
    case = Case.from_arrays((x, y), test, model=_NoLayers(fit(MLP(8, 3), x, y, FAST).model))
    ids = [
        "model.gradients",
        "optimization.convergence",
        "optimization.batchnorm",
        "optimization.nonconvex",
        "compute.training_cost",
        "compute.energy",
    ]
    report = dlclinic.checkup(case, only=ids, fit_config=FAST, cache_dir=tmp_path)
    for cid in ids:
        assert report[cid].status == "not_examined", (cid, report[cid].summary)
        assert "--model" in report[cid].summary or "not measured" in report[cid].summary


class _Fragile(nn.Module):
    """Trains fine for a few steps, then raises in train mode."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if self.calls > 5:
                raise RuntimeError("planted failure")
        return self.body(x)


def test_no_hook_remains_on_the_model_after_any_check_even_when_it_raises(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (x, y), test = blobs(300, d=8, seed=15), blobs(100, d=8, seed=16)
    model = _Fragile()
    model.eval()
    ids = [
        "model.gradients",
        "model.overfitting",
        "optimization.convergence",
        "optimization.batchnorm",
        "optimization.nonconvex",
        "compute.training_cost",
        "compute.energy",
    ]
    report = dlclinic.checkup(
        Case.from_arrays((x, y), test, model=model),
        only=ids,
        options={"model.gradients": RUN},
        fit_config=FAST,
        cache_dir=tmp_path,
    )
    assert report["model.gradients"].status == "error" and "planted failure" in report["model.gradients"].summary
    assert _hooks(model) == 0
    with pytest.raises(RuntimeError):
        model.train()
        for _ in range(10):
            model(torch.from_numpy(x[:4]))
