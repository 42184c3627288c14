"""Run by tests/test_distributed.py, alone and under ``torchrun``: ``python helpers_distributed.py MODE OUT``.

Modes:
* ``fit`` — :func:`dlclinic.core.recipe.fit` of a plain MLP (no dropout, no BatchNorm: the
  only randomness is the shared batch order) and of the baseline MLP (dropout) on a small
  separable problem; writes the weights, histories and test accuracies.
* ``evidence`` — the evidence pass of a fixed model (a CNN with BatchNorm in eval mode, uneven
  batch shards) on train and test, and the K-fold out-of-fold probabilities; writes every array.
* ``checkup`` — :func:`dlclinic.checkup` (data.generalization) of a user model that each rank
  initialises with another seed (``seed = rank``): rank 0's model must be the one examined; writes
  the report's result and world size.
* ``data`` — writes the tiny ``train.npz``/``test.npz`` the CLI test treats.

Rank 0 writes ``OUT`` (an ``.npz``); every rank writes ``OUT.rank<r>.json`` with the world size it saw.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dlclinic.api import checkup
from dlclinic.core import distributed
from dlclinic.core.baselines import MLP
from dlclinic.core.case import Case
from dlclinic.core.evidence import KINDS, Evidence, EvidenceConfig
from dlclinic.core.recipe import FitConfig, fit, seed_everything


def problem(n: int = 1200, d: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A noisy linear 3-class problem: accuracy well below 1, so a broken training shows."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    score = x[:, 0] + 0.5 * x[:, 1] + 0.7 * rng.normal(size=n)
    return x, np.digitize(score, [-0.6, 0.6]).astype(np.int64)


def plain_mlp(d: int, k: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, k))


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def run_fit(out: Path) -> None:
    x, y = problem()
    xt, yt, xs, ys = x[:1000], y[:1000], x[1000:], y[1000:]
    arrays: dict[str, np.ndarray] = {}
    for name, factory in (("plain", lambda: plain_mlp(8, 3)), ("mlp", lambda: MLP(8, 3))):
        seed_everything(0)
        result = fit(factory(), xt, yt, FitConfig(epochs=6, batch_size=64, seed=0))
        arrays[f"{name}.acc"] = np.array(accuracy(result.model, xs, ys))
        arrays[f"{name}.val_loss"] = np.array(result.history["val_loss"])
        arrays[f"{name}.train_loss"] = np.array(result.history["train_loss"])
        arrays[f"{name}.weights"] = torch.cat([p.detach().flatten() for p in result.model.parameters()]).numpy()
    save(out, arrays)


class SmallCNN(nn.Module):
    """Convolution + BatchNorm + a linear head: an embedding layer the evidence hook captures."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())
        self.head = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def run_evidence(out: Path) -> None:
    x, y = problem(n=760, d=64, seed=1)
    x = x.reshape(-1, 1, 8, 8)
    seed_everything(0)
    model = SmallCNN().eval()

    def retrain(xf: np.ndarray, yf: np.ndarray, seed: int) -> nn.Module:
        seed_everything(seed)
        return fit(SmallCNN(), xf, yf, FitConfig(epochs=2, batch_size=64, seed=seed)).model

    # 610 train rows in batches of 64: 10 batches, 5 per rank; 150 test rows: 3 batches, 2 and 1
    case = Case.from_arrays((x[:610], y[:610]), (x[610:], y[610:]), model=model)
    evidence = Evidence(
        case, EvidenceConfig(batch_size=64, oof="kfold", folds=3, cache=False), retrain=retrain, recipe="test"
    )
    arrays = {f"{kind}.{split}": evidence.get(kind, split) for split in ("train", "test") for kind in KINDS[:4]}
    arrays["oof_probs.train"] = evidence.get("oof_probs", "train")
    save(out, arrays)


def run_checkup(out: Path) -> None:
    x, y = problem(n=600, seed=3)
    torch.manual_seed(distributed.rank())  # another initial model on each rank, as a factory without weights gives
    case = Case.from_arrays((x[:400], y[:400]), (x[400:], y[400:]), model=plain_mlp(8, 3))
    report = checkup(case, only=["data.generalization"], evidence_config=EvidenceConfig(cache=False))
    result = {k: v for k, v in report["data.generalization"].to_dict().items() if k != "seconds"}
    save(
        out,
        {
            "result": np.array(json.dumps(result, sort_keys=True)),
            "world_size": np.array(report.environment["world_size"]),
        },
    )


def run_data(out: Path) -> None:
    x, y = problem(n=900, d=8, seed=2)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "train.npz", x=x[:700], y=y[:700])
    np.savez(out / "test.npz", x=x[700:], y=y[700:])


def save(out: Path, arrays: dict[str, np.ndarray]) -> None:
    seen = {"rank": distributed.rank(), "world_size": distributed.world_size()}
    Path(f"{out}.rank{seen['rank']}.json").write_text(json.dumps(seen))
    if distributed.is_main():
        np.savez(out, **arrays)


if __name__ == "__main__":
    torch.set_num_threads(1)  # the same in one process and under torchrun (which sets OMP_NUM_THREADS=1)
    mode, target = sys.argv[1], Path(sys.argv[2])
    {"fit": run_fit, "evidence": run_evidence, "checkup": run_checkup, "data": run_data}[mode](target)
