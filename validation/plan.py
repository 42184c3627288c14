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
    "FLOAT_MODALITIES",
    "NEW_MODALITIES",
    "Defect",
    "Plan",
    "Trial",
    "baseline",
    "case_from",
    "case_modality",
    "default_fit",
    "fast_fit",
    "flip_labels",
    "mean_shift",
    "memorise_fit",
    "rng_for",
    "token_lstm",
    "token_shift",
]

NEW_MODALITIES = ("tokens", "sequence")
"""Issue 19's modalities: token ids (int64, 0 = padding) and float sequences (N × 1 × T)."""
FLOAT_MODALITIES = ("image", "table", "sequence")
"""The modalities whose inputs are floats (a mean shift, a blend or an L∞ ball means something)."""


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
    not_validated: Mapping[str, str] = field(default_factory=dict)  # modality -> why the plan does not run there


# Token and series baselines learn slowly at the recipe's lr 2e-3: in 8 epochs on 2,100 train rows TokenBag
# reaches 86 % and the 1-D CNN 68 % (MNIST-1D) where lr 1e-2 gives 99 % and 85 % (scanned 2e-3..4e-2 on 3
# splits; the 1-D CNN's last ReLU layer is 30 % dead at 1e-2, 50 % at 2e-2).
_LR = {"tokens": 1e-2, "sequence": 1e-2}


def fast_fit(modality: str | None = None) -> Any:
    """The suite's fast recipe (8 epochs): what the check tests use for baselines (tokens, sequences: a higher LR)."""
    from dlclinic.core.recipe import FitConfig

    return FitConfig(epochs=8, batch_size=64, **({"lr": _LR[modality]} if modality in _LR else {}))


def token_lstm(k: int, width: int = 32) -> Any:
    """A user's token model, the text demo's: embedding → bidirectional LSTM → masked mean → linear head.
    No ReLU anywhere: dlclinic's TokenBag keeps 45-90 % of its hidden ReLU units dead after training, which the
    dead-unit checks rightly report, so the checks that grade dead units see this model on token ids."""
    from dlclinic.demo.text import TextLSTM
    from validation.data import TOKEN_VOCAB

    return TextLSTM(TOKEN_VOCAB, k, dim=width, hidden=width)


def case_modality(modality: str) -> str:
    """dlclinic's modality for a validation modality (``mnist`` is an image, ``fair`` and ``wine`` tables)."""
    if modality in ("image", "mnist"):
        return "image"
    return modality if modality in NEW_MODALITIES else "table"


def baseline(s: Splits, modality: str) -> Any:
    """dlclinic's baseline for the splits' inputs, freshly initialised (TokenBag for token ids, a 1-D CNN for sequences)."""
    from dlclinic.core.baselines import baseline_for
    from validation.data import TOKEN_VOCAB

    k = int(max(s.y_train.max(), s.y_test.max() if len(s.y_test) else 0)) + 1
    return baseline_for(tuple(s.x_train.shape[1:]), k, case_modality(modality), vocab_size=TOKEN_VOCAB)


def case_from(s: Splits, modality: str, *, deploy: bool = True, test: bool = True, **kw: Any) -> Any:
    from dlclinic import Case

    mod = case_modality(modality)
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
    """Move every feature by ``sigma`` of its train standard deviation (images, sequences: of all the values)."""
    if modality in ("image", "mnist", "sequence"):
        return (x + sigma * float(reference.std())).astype(np.float32)
    return (x + sigma * reference.std(axis=0, keepdims=True)).astype(np.float32)


def token_shift(x: np.ndarray, share: float, rng: np.random.Generator, first: int = 21, vocab: int = 300) -> np.ndarray:
    """Token ids whose filler follows another distribution: a ``share`` of the filler tokens (ids
    ``first``.. ``vocab - 1``; cue ids and padding untouched) redrawn Zipf-like with the rank order
    reversed, so the rare ids become the frequent ones (a new topic or source: the token-id
    analogue of a mean shift, every id still in the vocabulary)."""
    x = x.copy()
    ranks = np.arange(1, vocab - first + 1, dtype=np.float64)
    p = 1.0 / ranks
    p /= p.sum()
    filler = np.flatnonzero((x >= first).ravel())
    pick = filler[rng.random(len(filler)) < share]
    x.ravel()[pick] = vocab - 1 - rng.choice(len(ranks), size=len(pick), p=p)
    return x


def memorise_fit() -> Any:
    """A recipe that memorises: many epochs, no validation slice, no weight decay."""
    from dlclinic.core.recipe import FitConfig

    return FitConfig(epochs=40, batch_size=32, weight_decay=0.0, val_fraction=0.0, schedule="constant")


def default_fit(modality: str | None = None) -> Any:
    """dlclinic's default recipe (15 epochs): the suite's 8-epoch recipe leaves the digits CNN
    underconfident (ECE ≈ 0.13), which model.overfitting rightly reports as miscalibration.
    Tokens and sequences: the same with :func:`fast_fit`'s higher LR."""
    from dlclinic.core.recipe import FitConfig

    return FitConfig(**({"lr": _LR[modality]} if modality in _LR else {}))
