"""The reference a deployment is compared with, and the calibration CBPE relies on.

A :class:`Reference` holds what the checkup knows about the model on held-out data
(the ``test`` split): logits, penultimate-layer embeddings and labels, plus a softmax
temperature fitted on them (temperature scaling, Guo et al., ICML 2017). Confidence-based
performance estimation reads accuracy off *calibrated* confidences, so the temperature
is part of the reference. Saved as one ``.npz`` (no pickle) beside the prediction log.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dlclinic.core.atomic import atomic_path
from dlclinic.core.errors import InputError
from dlclinic.functional.calibration import fit_temperature

__all__ = ["Reference", "fit_temperature", "softmax"]


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (float64, numerically stable)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass(frozen=True, eq=False)
class Reference:
    """Held-out model outputs that deployment windows are compared with.

    Attributes:
        logits: N×K logits on the reference rows.
        labels: their labels (``None`` when unlabelled: no calibration, no reference accuracy).
        embeddings: N×D embeddings (``None`` for models without accessible layers, e.g. ONNX).
        class_names: K names.
        temperature: softmax temperature fitted on ``(logits, labels)`` (1.0 without labels).
        meta: free-form provenance (model version, split, source).
    """

    logits: np.ndarray
    labels: np.ndarray | None
    embeddings: np.ndarray | None
    class_names: tuple[str, ...]
    temperature: float = 1.0
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        logits: np.ndarray,
        labels: np.ndarray | None = None,
        embeddings: np.ndarray | None = None,
        class_names: tuple[str, ...] | None = None,
        *,
        calibrate: bool = True,
        meta: dict[str, Any] | None = None,
    ) -> Reference:
        """Validate the arrays and fit the temperature (when labels are given and ``calibrate``)."""
        z = np.asarray(logits, dtype=np.float32)
        if z.ndim != 2 or len(z) < 2 or z.shape[1] < 2:
            raise InputError(f"reference logits: expected N×K with N ≥ 2 and K ≥ 2, found shape {z.shape}")
        y = None if labels is None else np.asarray(labels, dtype=np.int64).reshape(-1)
        if y is not None and len(y) != len(z):
            raise InputError(f"reference: {len(z)} logits but {len(y)} labels; expected equal lengths")
        e = None if embeddings is None else np.asarray(embeddings, dtype=np.float32).reshape(len(z), -1)
        names = tuple(class_names) if class_names is not None else tuple(str(i) for i in range(z.shape[1]))
        t = fit_temperature(z, y) if (calibrate and y is not None) else 1.0
        return cls(logits=z, labels=y, embeddings=e, class_names=names, temperature=t, meta=dict(meta or {}))

    @property
    def n_classes(self) -> int:
        return int(self.logits.shape[1])

    @property
    def probs(self) -> np.ndarray:
        """Calibrated probabilities (temperature applied)."""
        return softmax(self.logits, self.temperature)

    @property
    def accuracy(self) -> float | None:
        """Observed accuracy on the reference rows (``None`` without labels)."""
        return None if self.labels is None else float(np.mean(self.logits.argmax(1) == self.labels))

    def save(self, path: str | Path) -> Path:
        """Write the reference as one ``.npz`` (atomically)."""
        arrays: dict[str, np.ndarray] = {
            "logits": self.logits,
            "class_names": np.array(self.class_names),
            "temperature": np.array(self.temperature),
            "meta": np.array(json.dumps(self.meta, default=str)),
        }
        if self.labels is not None:
            arrays["labels"] = self.labels
        if self.embeddings is not None:
            arrays["embeddings"] = self.embeddings
        target = Path(path)
        with atomic_path(target) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]
        return target

    @classmethod
    def load(cls, path: str | Path) -> Reference:
        """Read a reference written by :meth:`save` (no pickle)."""
        p = Path(path)
        if not p.is_file():
            raise InputError(f"reference file not found: {p}; expected the reference.npz written by `dlclinic serve`")
        try:
            with np.load(p, allow_pickle=False) as data:
                d = {k: data[k] for k in data.files}
        except Exception as exc:
            raise InputError(
                f"reference {p}: expected an .npz written by `dlclinic serve`, found an unreadable file ({type(exc).__name__})"
            ) from None
        if "logits" not in d:
            raise InputError(f"reference {p}: expected a 'logits' array, found keys {sorted(d)}")
        return cls(
            logits=d["logits"].astype(np.float32),
            labels=d["labels"].astype(np.int64) if "labels" in d else None,
            embeddings=d["embeddings"].astype(np.float32) if "embeddings" in d else None,
            class_names=tuple(
                str(c) for c in d.get("class_names", np.array([str(i) for i in range(d["logits"].shape[1])]))
            ),
            temperature=float(d.get("temperature", np.array(1.0))),
            meta=json.loads(str(d["meta"])) if "meta" in d else {},
        )
