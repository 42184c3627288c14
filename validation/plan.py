"""The vocabulary of validation plans: :class:`Trial`, :class:`Defect`, :class:`Plan`, and the
helpers every plan module shares (case construction, label flips, mean shifts, recipes).

Plan modules (``validation/scenarios.py`` and ``validation/plans_*.py``) import from here
and from :mod:`validation.data` only; :mod:`validation.scenarios` gathers their ``PLANS``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from validation.data import Splits

__all__ = [
    "Defect",
    "Plan",
    "Trial",
    "case_from",
    "default_fit",
    "fast_fit",
    "flip_labels",
    "mean_shift",
    "memorise_fit",
    "rng_for",
]


@dataclass(frozen=True)
class Trial:
    """One case to examine, the check options, and the planted rows (``{split: indices}``) if any."""

    case: Any
    options: Mapping[str, Any] = field(default_factory=dict)
    truth: Mapping[str, Sequence[int]] | None = None
    fit: Any = None  # FitConfig; None = the suite's fast default
    evidence: Any = None  # EvidenceConfig; None = dlclinic's default


@dataclass(frozen=True)
class Defect:
    """A planted defect: ``build(modality, strength, seed) -> Trial`` at each of ``strengths``."""

    name: str
    unit: str
    strengths: tuple[float, ...]
    build: Callable[[str, float, int], Trial]
    codes: tuple[str, ...] = ()  # finding codes whose indices are scored against the truth
    quick_strengths: tuple[float, ...] | None = None
    modalities: tuple[str, ...] | None = None  # None = the plan's
    expect: tuple[str, ...] = ()  # finding codes that name this defect: "right diagnosis" = flagged with one of them


@dataclass(frozen=True)
class Plan:
    """Validation plan of one check."""

    check: str
    level: float
    level_source: str
    modalities: tuple[str, ...]
    clean: Callable[[str, int], Trial]
    defects: tuple[Defect, ...]
    clean_description: str
    cost: float = 1.0  # relative cost of one trial (scheduling only)


def fast_fit() -> Any:
    """The suite's fast recipe (8 epochs): what the check tests use for baselines."""
    from dlclinic.core.recipe import FitConfig

    return FitConfig(epochs=8, batch_size=64)


def case_from(s: Splits, modality: str, *, deploy: bool = True, test: bool = True, **kw: Any) -> Any:
    from dlclinic import Case

    mod = "image" if modality in ("image", "mnist") else "table"
    return Case.from_arrays(
        (s.x_train, s.y_train),
        (s.x_test, s.y_test) if test and len(s.x_test) else None,
        (s.x_deploy, s.y_deploy) if deploy and len(s.x_deploy) else None,
        modality=mod,
        **kw,
    )


def rng_for(*parts: float) -> np.random.Generator:
    return np.random.default_rng([int(abs(p) * 1000) for p in parts])


def flip_labels(
    y: np.ndarray, fraction: float, n_classes: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Give ``round(fraction × n)`` rows a different label drawn uniformly among the other classes."""
    y = y.copy()
    rows = np.sort(rng.choice(len(y), size=int(round(fraction * len(y))), replace=False))
    y[rows] = (y[rows] + rng.integers(1, n_classes, size=len(rows))) % n_classes
    return y, rows


def mean_shift(x: np.ndarray, reference: np.ndarray, sigma: float, modality: str) -> np.ndarray:
    """Move every feature by ``sigma`` of its train standard deviation (images: of the pixel values)."""
    if modality in ("image", "mnist"):
        return (x + sigma * float(reference.std())).astype(np.float32)
    return (x + sigma * reference.std(axis=0, keepdims=True)).astype(np.float32)


def memorise_fit() -> Any:
    """A recipe that memorises: many epochs, no validation slice, no weight decay."""
    from dlclinic.core.recipe import FitConfig

    return FitConfig(epochs=40, batch_size=32, weight_decay=0.0, val_fraction=0.0, schedule="constant")


def default_fit() -> Any:
    """dlclinic's default recipe (15 epochs): the suite's 8-epoch recipe leaves the digits CNN
    underconfident (ECE ≈ 0.13), which model.overfitting rightly reports as miscalibration."""
    from dlclinic.core.recipe import FitConfig

    return FitConfig()
