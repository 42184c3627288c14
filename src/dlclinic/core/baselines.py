"""Baseline models that dlclinic trains when the user gives none.

Small on purpose: an MLP for vectors and tables, a two-block CNN for images. Both expose
their penultimate layer as ``embedding`` so evidence can hook it by name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from dlclinic.core.case import MAX_ABS_INPUT

__all__ = ["MLP", "SmallCNN", "baseline_for"]


def _usable(x: torch.Tensor) -> torch.Tensor:
    """``x`` with NaN, ±Inf and values beyond ±``MAX_ABS_INPUT`` read as 0 (as :func:`dlclinic.core.case.usable_inputs` does)."""
    return torch.where(x.abs() <= MAX_ABS_INPUT, x, torch.zeros((), dtype=x.dtype, device=x.device))


class MLP(nn.Module):
    """Standardising MLP: ``x -> (Linear, ReLU, Dropout)* -> embedding -> head``.

    Input statistics are stored as buffers so the model is self-contained (no
    external scaler to ship with the weights).
    """

    def __init__(
        self, in_features: int, n_classes: int, hidden: Sequence[int] = (256, 128), dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("std", torch.ones(in_features))
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden[:-1]:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        self.body = nn.Sequential(*layers)
        self.embedding = nn.Sequential(nn.Linear(width, hidden[-1]), nn.ReLU())
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden[-1], n_classes)

    mean: torch.Tensor
    std: torch.Tensor

    def set_input_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        with torch.no_grad():
            self.mean.copy_(mean)
            self.std.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _usable(x.flatten(1))
        x = (x - self.mean) / self.std
        return self.head(self.dropout(self.embedding(self.body(x))))


class SmallCNN(nn.Module):
    """Two conv blocks (conv-BN-ReLU-pool) and an MLP head, for N×C×H×W images."""

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        height: int,
        width: int,
        channels: tuple[int, int] = (16, 32),
        hidden: int = 64,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1),
            nn.BatchNorm2d(c1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.BatchNorm2d(c2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        flat = c2 * max(1, height // 4) * max(1, width // 4)
        self.embedding = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU())
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        return self.head(self.dropout(self.embedding(self.features(_usable(x)))))


def baseline_for(input_shape: Sequence[int], n_classes: int, modality: str) -> nn.Module:
    """The baseline architecture for data of this shape: CNN for images, MLP otherwise."""
    shape = tuple(int(s) for s in input_shape)
    if modality == "image" and len(shape) in (2, 3):
        c, h, w = (1, *shape) if len(shape) == 2 else shape
        if h >= 8 and w >= 8:
            return SmallCNN(c, n_classes, h, w)
    return MLP(int(math.prod(shape)), n_classes)
