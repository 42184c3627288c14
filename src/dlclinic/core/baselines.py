"""Baseline models that dlclinic trains when the user gives none.

Small on purpose: an MLP for vectors and tables, a two-block CNN for images, a bag of
embeddings for token ids and a 1-D CNN for float sequences. All expose their penultimate
layer as ``embedding`` so evidence can hook it by name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from dlclinic.core.case import MAX_ABS_INPUT

__all__ = ["MLP", "SmallCNN", "SmallConv1d", "TokenBag", "baseline_for"]


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


class TokenBag(nn.Module):
    """fastText-style classifier of token ids: embedding, masked mean and max pooling, MLP head.

    Id 0 is padding (masked out of both pools); ids at or beyond ``vocab_size`` (unseen at
    training time) read as padding rather than failing. Order-insensitive on purpose: a fast,
    strong baseline for text classification; the user's own LSTM or transformer is what a
    checkup examines when they bring one.
    """

    def __init__(self, vocab_size: int, n_classes: int, dim: int = 64, hidden: int = 64, dropout: float = 0.1) -> None:
        super().__init__()
        self.vocab_size = int(vocab_size)
        self.tokens = nn.Embedding(self.vocab_size, dim, padding_idx=0)
        self.embedding = nn.Sequential(nn.Linear(2 * dim, hidden), nn.ReLU())
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = torch.where((x >= 0) & (x < self.vocab_size), x, torch.zeros_like(x)).long()
        mask = (ids != 0).unsqueeze(-1)
        e = self.tokens(ids)
        mean = (e * mask).sum(1) / mask.sum(1).clamp(min=1)
        top = e.masked_fill(~mask, float("-inf")).amax(1)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        return self.head(self.dropout(self.embedding(torch.cat([mean, top], dim=1))))


class SmallConv1d(nn.Module):
    """Two 1-D conv blocks and global average pooling, for N × T or N × C × T float sequences."""

    def __init__(
        self, in_channels: int, n_classes: int, channels: tuple[int, int] = (32, 64), hidden: int = 64
    ) -> None:
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv1d(in_channels, c1, 5, padding=2),
            nn.BatchNorm1d(c1),
            nn.ReLU(),
            nn.Conv1d(c1, c2, 5, padding=2),
            nn.BatchNorm1d(c2),
            nn.ReLU(),
            nn.AdaptiveAvgPool1d(1),
        )
        self.embedding = nn.Sequential(nn.Flatten(), nn.Linear(c2, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        return self.head(self.embedding(self.features(_usable(x))))


def baseline_for(input_shape: Sequence[int], n_classes: int, modality: str, vocab_size: int = 0) -> nn.Module:
    """The baseline architecture for data of this shape: a CNN for images, a bag of embeddings
    for token ids, a 1-D CNN for N × T / N × C × T sequences, an MLP otherwise."""
    shape = tuple(int(s) for s in input_shape)
    if modality == "tokens" and vocab_size > 0:
        return TokenBag(vocab_size, n_classes)
    if modality == "sequence" and len(shape) in (1, 2):
        return SmallConv1d(1 if len(shape) == 1 else shape[0], n_classes)
    if modality == "image" and len(shape) in (2, 3):
        c, h, w = (1, *shape) if len(shape) == 2 else shape
        if h >= 8 and w >= 8:
            return SmallCNN(c, n_classes, h, w)
    return MLP(int(math.prod(shape)), n_classes)
