"""Float sequences (time series) through all 31 checks (issue 19): a user's 1-D CNN over N×1×T.

Data: noisy sine waves whose frequency is the class (4 classes), with a random phase, so the
model must read the shape of the series, not a fixed position.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

import dlclinic
from dlclinic.core.case import Case
from dlclinic.taxonomy import CHALLENGES


def _waves(n: int, seed: int, length: int = 64, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    t = np.arange(length) / length
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1))
    x = np.sin(2 * np.pi * (2 + 2 * y[:, None]) * t + phase) + rng.normal(0, 0.6, size=(n, length))
    return x[:, None, :].astype(np.float32), y.astype(np.int64)


class Conv1dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, 8, 7, padding=3), nn.ReLU(), nn.Conv1d(8, 16, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool1d(1)
        )
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def test_a_1d_cnn_over_float_sequences_runs_every_check_without_error(tmp_path: Path) -> None:
    x, y = _waves(1000, seed=0)
    torch.manual_seed(0)
    model = Conv1dNet()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    xt, yt = torch.as_tensor(x[:600]), torch.as_tensor(y[:600])
    for _ in range(15):
        for i in range(0, 600, 50):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[i : i + 50]), yt[i : i + 50]).backward()
            opt.step()
    case = Case.from_arrays(
        (x[:600], y[:600]),
        (x[600:800], y[600:800]),
        deploy=(x[800:], y[800:]),
        model=model.eval(),
        model_factory=Conv1dNet,
    )
    assert case.modality == "sequence"
    report = dlclinic.checkup(case, cache_dir=tmp_path)
    rows = {r.id: r for r in report.challenges}
    assert list(rows) == [c.id for c in CHALLENGES]
    errors = {cid: r.summary for cid, r in rows.items() if r.status == "error"}
    assert not errors, errors
    examined = [cid for cid, r in rows.items() if r.status != "not_examined"]
    assert len(examined) >= 26, sorted(set(rows) - set(examined))
    # the sequence corruptions ran (time shift, scaling, noise, missing steps), not the image ones
    gen = rows["data.generalization"].metrics
    assert "corruption_time_shift_s1_accuracy" in gen and "corruption_blur_s1_accuracy" not in gen, sorted(gen)
