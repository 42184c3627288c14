"""TrainingMonitor: what it records, and that it never leaves a hook behind (even on error)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

from dlclinic.core.errors import ConfigError
from dlclinic.core.recipe import FitConfig, fit
from dlclinic.functional.gradients import diagnose_gradients
from dlclinic.training import MonitorRecord, TrainingMonitor


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    """Tiny models train fastest on one thread; on a shared 2-core machine two threads thrash."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def _deep(act: type[nn.Module], depth: int = 8, width: int = 32, d: int = 10, k: int = 3) -> nn.Sequential:
    layers: list[nn.Module] = []
    w = d
    for _ in range(depth):
        layers += [nn.Linear(w, width), act()]
        w = width
    return nn.Sequential(*layers, nn.Linear(width, k))


def _train(model: nn.Module, steps: int, lr: float = 1e-2, every: int = 1) -> MonitorRecord:
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    x, y = torch.randn(64, 10), torch.randint(0, 3, (64,))
    with TrainingMonitor(model, every=every) as mon:
        for _ in range(steps):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(loss)
    return mon.record()


def test_records_layers_in_execution_order_with_sampling() -> None:
    net = _deep(nn.ReLU, depth=3)
    rec = _train(net, 10, every=3)
    assert rec.layers == ("0", "2", "4", "6")
    assert rec.steps.tolist() == [0, 3, 6, 9]
    assert rec.grad_rms.shape == (4, 4) and np.isfinite(rec.grad_rms).all()
    assert rec.n_steps == 10 and np.isfinite(rec.loss).all()
    assert (rec.update_ratio > 0).all()
    assert rec.dead_share.shape == (4, 3)
    assert _hooks(net) == 0


def test_matches_gradients_computed_by_hand() -> None:
    net = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    x, y = torch.randn(8, 4), torch.tensor([0, 1] * 4)
    with TrainingMonitor(net, every=1, track_updates=False) as mon:
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        expect = [torch.cat([p.grad.flatten() for p in m.parameters()]) for m in (net[0], net[2])]
        mon.step(loss)
    got = mon.record().grad_rms[0]
    for g, e in zip(got, expect):
        assert g == pytest.approx(float(e.norm() / e.numel() ** 0.5), rel=1e-6)


def test_no_hook_left_behind_even_when_the_loop_raises() -> None:
    net = _deep(nn.Sigmoid, depth=2)
    with pytest.raises(RuntimeError, match="planted"):
        with TrainingMonitor(net, every=1) as mon:
            net(torch.randn(4, 10)).sum().backward()
            mon.step(1.0)
            net(torch.randn(4, 10))  # sampled step: temporary hooks are registered now
            raise RuntimeError("planted")
    assert _hooks(net) == 0


def test_fit_integration_and_hooks_removed_when_fit_raises() -> None:
    net = _deep(nn.ReLU, depth=2)
    x = np.random.default_rng(0).normal(size=(80, 10)).astype(np.float32)
    y = np.arange(80) % 3
    mon = TrainingMonitor(None, every=2)
    res = fit(net, x, y, FitConfig(epochs=2, batch_size=16), monitor=mon)
    rec = mon.record()
    assert rec.n_steps == 2 * 5 and len(rec.epochs["train_loss"]) == 2
    assert _hooks(res.model) == 0

    class Boom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(10, 3)
            self.calls = 0

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.calls > 3:
                raise RuntimeError("planted")
            return self.lin(t)

    seen: list[nn.Module] = []

    class Spy(TrainingMonitor):
        def on_fit_start(self, model: nn.Module) -> None:
            seen.append(model)
            super().on_fit_start(model)

    with pytest.raises(RuntimeError, match="planted"):
        fit(Boom(), x, y, FitConfig(epochs=1, batch_size=16), monitor=Spy(None))
    assert _hooks(seen[0]) == 0


def test_record_round_trips_through_arrays() -> None:
    rec = _train(_deep(nn.Tanh, depth=2), 4)
    back = MonitorRecord.from_arrays(rec.to_arrays("m."), "m.")
    assert back.layers == rec.layers and back.activation_kinds == ("tanh", "tanh")
    np.testing.assert_array_equal(back.grad_rms, rec.grad_rms)


def test_step_outside_the_context_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="not attached"):
        TrainingMonitor(nn.Linear(2, 2)).step(0.0)
    with pytest.raises(ConfigError, match="every >= 1"):
        TrainingMonitor(nn.Linear(2, 2), every=0)


def test_deep_sigmoid_vanishes_at_a_named_layer_and_relu_does_not() -> None:
    sig = _train(_deep(nn.Sigmoid), 30)
    d = diagnose_gradients(sig.layers, sig.grad_rms, sig.grad_total, sig.loss)
    assert d.verdict == "vanishing" and d.layer is not None and d.layer != sig.layers[-1]
    relu = _train(_deep(nn.ReLU, depth=3), 30)
    assert diagnose_gradients(relu.layers, relu.grad_rms, relu.grad_total, relu.loss).verdict == "healthy"


def test_saturation_and_dead_units_are_seen() -> None:
    net = nn.Sequential(nn.Linear(10, 16), nn.Sigmoid(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    with torch.no_grad():
        net[0].weight.mul_(100)  # saturate the sigmoid
        net[2].bias.fill_(-1e3)  # kill every ReLU unit
    rec = _train(net, 2)
    assert rec.saturated_share[0, 0] > 0.8
    assert rec.dead_share[0, 1] == 1.0


@pytest.mark.skipif(
    importlib.util.find_spec("lightning") is None and importlib.util.find_spec("pytorch_lightning") is None,
    reason="Lightning not installed",
)
def test_lightning_callback_is_a_thin_adapter() -> None:  # pragma: no cover - needs the optional extra
    from dlclinic.training.lightning import monitor_callback

    cb, mon = monitor_callback(every=1)
    assert hasattr(cb, "on_train_batch_end") and isinstance(mon, TrainingMonitor)


def test_lightning_missing_gives_install_hint() -> None:
    if importlib.util.find_spec("lightning") is not None or importlib.util.find_spec("pytorch_lightning") is not None:
        pytest.skip("Lightning installed")
    from dlclinic.core.errors import MissingDependencyError
    from dlclinic.training.lightning import monitor_callback

    with pytest.raises(MissingDependencyError, match="lightning"):
        monitor_callback()
