"""The sequence demo: MNIST-1D series (generated locally by ``mnist1d``), a GRU, planted defects.

MNIST-1D (Greydanus, 2020, arXiv:2011.14439) draws each series of length 40 from one of ten
digit-like 1-D templates, padded, scaled, sheared, translated, with correlated and i.i.d.
noise: a small data set on which a linear model reaches 32 % and recurrent and convolutional
models about 90 %. Only ``mnist1d.data.make_dataset`` runs, which builds the series from the
package's templates; the package's ``get_dataset``, which downloads a pickle, is never
called, so nothing is fetched and nothing is cached on disk. ``make_dataset`` seeds Python's
and NumPy's global generators; their states are restored afterwards.

Rows are ``N×1×40`` float32 (one channel, time last), the ``sequence`` modality. The model is
:class:`SequenceGRU` (a convolutional stem, a GRU, max over time), left untrained: dlclinic trains it with its recipe, as it trains the
image demo's baseline.

Planted (all seeded, recorded in :class:`DemoTruth`): 8 % label flips in train; 40
duplicates in train (20 exact, 20 with noise of sd 0.01); 25 test rows that copy train rows
(13 with that noise); a ``deploy`` split generated with five times the i.i.d. noise (scale
0.02 → 0.1: a worse sensor; the trained model falls from about 94 % to 65 %). Group
attribute ``polarity``: "up" when a series' largest swing is above its mean, else "down".
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import nn

from dlclinic.core.case import Case
from dlclinic.demo._plant import DemoTruth, no_defects, plant_defects, truth_of

__all__ = ["DEPLOY_NOISE", "SequenceGRU", "build_sequence_demo"]

DEPLOY_NOISE = {"iid_noise_scale": 0.1}  # mnist1d default 0.02: the model drops from 94 % to about 65 %
SOURCE = "mnist1d.data.make_dataset (MNIST-1D, generated locally)"


class SequenceGRU(nn.Module):
    """1-D convolutions (the second with stride 2) → GRU over time → max over time → linear head.

    A user's recurrent model for ``N×1×T`` series: the convolutional stem finds local shapes,
    the GRU reads their order, the max keeps the strongest evidence wherever it occurs. With
    dlclinic's recipe (15 epochs) it reaches about 95 % on clean MNIST-1D; the GRU alone on
    the raw series, 48 %.

    Example:
        >>> SequenceGRU()(torch.zeros(2, 1, 40)).shape
        torch.Size([2, 10])
    """

    def __init__(self, n_classes: int = 10, channels: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv1d(1, channels, 5, padding=2),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.gru = nn.GRU(channels, hidden, batch_first=True)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(self.conv(x).transpose(1, 2))
        return self.head(h.amax(dim=1))


def mnist1d_series(num_samples: int, seed: int, **changes: Any) -> tuple[np.ndarray, np.ndarray]:
    """``num_samples`` MNIST-1D series (N×40 float32) and labels from ``make_dataset``, with argument ``changes``."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args(as_dict=True)
    args.update(num_samples=num_samples, seed=seed, train_split=1.0, **changes)
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(_Args(args))
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return np.asarray(data["x"], dtype=np.float32), np.asarray(data["y"], dtype=np.int64)


class _Args:
    """The attribute view of a dict that ``make_dataset`` reads its arguments from."""

    def __init__(self, d: dict[str, Any]) -> None:
        self.__dict__.update(d)


def _faint_noise(rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A near copy of standardised series: Gaussian noise of sd 0.01."""
    return rows + rng.normal(0, 0.01, rows.shape).astype(rows.dtype)


def _polarity(x: np.ndarray) -> np.ndarray:
    """The group attribute: "up" when a series' largest swing from its mean is upward, else "down"."""
    centred = x - x.mean(axis=1, keepdims=True)
    return np.where(centred.max(axis=1) >= -centred.min(axis=1), "up", "down")


def build_sequence_demo(
    *,
    clean: bool = False,
    seed: int = 0,
    n_train: int = 3400,
    n_test: int = 1000,
    n_deploy: int = 600,
    flip_rate: float = 0.08,
) -> tuple[Case, DemoTruth]:
    """Build the sequence demo case (MNIST-1D series, an untrained GRU) and its ground truth.

    Args:
        clean: no planted defects (true labels, no copies, a deploy split drawn like train).
        seed: seed of every random choice (MNIST-1D's own seed is 42 + ``seed``, deploy's one more).

    Example:
        >>> case, truth = build_sequence_demo()  # doctest: +SKIP
        >>> case.modality, case.input_shape  # doctest: +SKIP
        ('sequence', (1, 40))
    """
    rng = np.random.default_rng(seed)
    x_all, y_all = mnist1d_series(n_train + n_test, 42 + seed)
    order = rng.permutation(len(y_all))
    x_tr, y_tr = x_all[order[:n_train]], y_all[order[:n_train]]
    x_te, y_te = x_all[order[n_train:]], y_all[order[n_train:]]
    x_de, y_de = mnist1d_series(n_deploy, 43 + seed, **({} if clean else DEPLOY_NOISE))
    shift = "none"
    if clean:
        truth = no_defects(y_tr, None)
    else:
        planted = plant_defects(
            x_tr, y_tr, x_te, y_te, n_classes=10, flip_rate=flip_rate, near_copy=_faint_noise, rng=rng
        )
        x_tr, y_tr, x_te, y_te = planted.x_train, planted.y_train, planted.x_test, planted.y_test
        shift = "i.i.d. noise scale 0.02 -> 0.1 (mnist1d's iid_noise_scale)"
        truth = truth_of(planted, None, shift)
    case = Case.from_arrays(
        (x_tr[:, None], y_tr, _polarity(x_tr)),
        (x_te[:, None], y_te, _polarity(x_te)),
        (x_de[:, None], y_de, _polarity(x_de)),
        class_names=[str(i) for i in range(10)],
        name="demo-mnist1d" + ("-clean" if clean else ""),
        modality="sequence",
        model_factory=SequenceGRU,
        metadata={"source": SOURCE, "planted_defects": not clean, "deploy_shift": shift},
    )
    return case, truth
