"""Pure training maths compared with references: dense Hessian, hand FLOPs, fake RAPL counters."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import blobs
from dlclinic.core.recipe import FitConfig, fit
from dlclinic.functional.batchnorm import accuracy_in_train_mode, recalibrate_bn, running_stat_shift
from dlclinic.functional.cost import EnergyMeter, co2e_grams, count_flops
from dlclinic.functional.gradients import find_loss_spikes
from dlclinic.functional.landscape import (
    filter_normalized_direction,
    hessian_top_eigenvalue,
    interpolation_barrier,
    loss_slice_1d,
    loss_slice_2d,
    make_loss,
)
from dlclinic.functional.lr_range import analyse_loss_curve, lr_range_test


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    """Tiny models train fastest on one thread; on a shared 2-core machine two threads thrash."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_hessian_top_eigenvalue_matches_the_dense_hessian() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x, y = blobs(40, k=2, d=3, seed=1)
    loss = make_loss(x, y)
    params = list(net.parameters())
    shapes = [p.shape for p in params]
    flat0 = torch.cat([p.detach().flatten() for p in params]).double()

    def f(flat: torch.Tensor) -> torch.Tensor:
        chunks, i = [], 0
        for s in shapes:
            n = int(np.prod(s))
            chunks.append(flat[i : i + n].reshape(s))
            i += n
        h = torch.tanh(torch.from_numpy(x).double() @ chunks[0].T + chunks[1])
        return nn.functional.cross_entropy(h @ chunks[2].T + chunks[3], torch.from_numpy(y))

    dense = torch.autograd.functional.hessian(f, flat0)
    eigs = torch.linalg.eigvalsh(dense)
    top = float(eigs[eigs.abs().argmax()])
    before = copy.deepcopy(net.state_dict())
    got, _ = hessian_top_eigenvalue(net, loss, iters=500, tol=1e-10)
    assert got == pytest.approx(top, rel=1e-3)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])


def test_slices_are_centred_on_the_model_and_leave_it_unchanged() -> None:
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    x, y = blobs(60, seed=2)
    loss = make_loss(x, y)
    before = copy.deepcopy(net.state_dict())
    s1 = loss_slice_1d(net, loss, np.linspace(-1, 1, 5))
    s2 = loss_slice_2d(net, loss, np.linspace(-1, 1, 3), np.linspace(-1, 1, 3))
    centre = float(loss(net).detach())
    assert s1[2] == pytest.approx(centre, rel=1e-5) and s2[1, 1] == pytest.approx(centre, rel=1e-5)
    d = filter_normalized_direction(net)
    assert torch.allclose(d[0].norm(dim=1), net[0].weight.norm(dim=1), rtol=1e-4) and float(d[1].abs().sum()) == 0.0
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])


def test_barrier_is_zero_between_identical_models_and_positive_between_seeds() -> None:
    x, y = blobs(300, seed=3)
    loss = make_loss(x, y)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(
            fit(
                nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3)), x, y, FitConfig(epochs=5, seed=seed)
            ).model
        )
    assert interpolation_barrier(models[0], models[0], loss).barrier == pytest.approx(0.0, abs=1e-6)
    assert interpolation_barrier(models[0], models[1], loss).barrier >= 0.0


def test_lr_range_test_suggests_a_reasonable_lr_and_stops_on_divergence() -> None:
    x, y = blobs(512, seed=4)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))
    r = lr_range_test(net, x, y, steps=80, lr_max=1e4)
    assert 1e-5 < r.suggested_lr < 1.0
    assert r.diverged_lr is not None and r.diverged_lr > r.suggested_lr
    assert len(r.lrs) < 80


def test_loss_curve_verdicts() -> None:
    rng = np.random.default_rng(0)
    assert analyse_loss_curve(np.linspace(1.1, 0.2, 300) + rng.normal(0, 0.02, 300)).verdict == "converging"
    assert analyse_loss_curve(1.1 + rng.normal(0, 0.02, 300)).verdict == "plateau"
    assert analyse_loss_curve(np.r_[np.linspace(1.1, 0.5, 100), np.full(200, 1e4)]).verdict == "diverging"
    assert analyse_loss_curve(np.r_[np.linspace(1.1, 0.9, 50), [np.nan] * 5]).verdict == "diverging"


def test_loss_spikes_found_and_quiet_on_noise() -> None:
    rng = np.random.default_rng(0)
    noisy = np.linspace(2, 0.5, 500) + rng.normal(0, 0.05, 500)
    assert len(find_loss_spikes(noisy)) == 0
    noisy[300] = 8.0
    assert find_loss_spikes(noisy).tolist() == [300]


def _bn_net(x: np.ndarray, y: np.ndarray, batch_size: int = 64) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(x.shape[1], 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 3))
    return fit(net, x, y, FitConfig(epochs=8, batch_size=batch_size)).model


def _make_stale(net: nn.Module) -> nn.Module:
    """Change the layer before BN after training (as compression or fine-tuning would), keep the running stats."""
    stale = copy.deepcopy(net)
    with torch.no_grad():
        stale[0].weight.mul_(3.0)
        stale[0].bias.add_(4.0 * torch.randn(stale[0].bias.shape, generator=torch.Generator().manual_seed(0)))
    return stale


def test_recalibration_repairs_stale_statistics() -> None:
    x, y = blobs(600, d=8, sep=1.0, seed=5)
    net = _bn_net(x, y)
    stale = _make_stale(net)
    shift_stale, shift_fresh = running_stat_shift(stale, x), running_stat_shift(net, x)
    assert max(s for s, _ in shift_stale.values()) > 5 * max(s for s, _ in shift_fresh.values())
    rec = recalibrate_bn(stale, x)
    assert max(s for s, _ in running_stat_shift(rec, x).values()) < 0.05
    assert stale[1].momentum == 0.1  # the original is untouched

    def acc(m: nn.Module) -> float:
        with torch.no_grad():
            return float((m.eval()(torch.from_numpy(x)).argmax(1).numpy() == y).mean())

    assert acc(rec) > acc(stale) + 0.1
    assert acc(rec) == pytest.approx(acc(net), abs=0.02)


def test_train_mode_accuracy_drops_at_batch_size_two() -> None:
    x, y = blobs(600, d=8, seed=6)
    net = _bn_net(x, y)
    assert accuracy_in_train_mode(net, x, y, 2) < accuracy_in_train_mode(net, x, y, 128) - 0.05


def test_flops_match_the_hand_count() -> None:
    net = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    f = count_flops(net, np.zeros((4, 10), np.float32))
    assert f.forward == 2 * (10 * 20 + 20 * 5)
    assert f.train == pytest.approx(3 * f.forward, rel=0.5)
    assert f.parameters == 10 * 20 + 20 + 20 * 5 + 5


def test_energy_reads_powercap_counters_with_wraparound(tmp_path: Path) -> None:
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    (zone / "max_energy_range_uj").write_text("1000000\n")
    (zone / "energy_uj").write_text("999000\n")
    sub = tmp_path / "intel-rapl:0:0"  # a sub-zone: must not be double counted
    sub.mkdir()
    (sub / "energy_uj").write_text("5\n")
    with EnergyMeter(root=tmp_path) as meter:
        (zone / "energy_uj").write_text("4000\n")  # wrapped around
    assert meter.reading is not None and meter.reading.method == "powercap" and not meter.reading.estimated
    assert meter.reading.joules == pytest.approx(0.005)


def test_energy_without_counters_is_labelled_estimated(tmp_path: Path) -> None:
    with EnergyMeter(root=tmp_path / "absent", tdp_watts=100.0) as meter:
        sum(i * i for i in range(200_000))
    r = meter.reading
    assert r is not None and r.estimated and r.method == "tdp-estimate" and r.joules > 0
    assert co2e_grams(1.0, 400.0) == 400.0
