"""Content fingerprints (SHA-256) of arrays, models and parameters, for caching and audit."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["fingerprint_array", "fingerprint_model", "fingerprint_params"]


def fingerprint_array(*arrays: np.ndarray | None) -> str:
    """SHA-256 over dtype, shape and bytes of each array (``None`` counts as absent)."""
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"<none>")
            continue
        a = np.ascontiguousarray(a)
        if a.dtype.kind in "OUS":
            a = a.astype(str).astype("U")
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.reshape(-1).view(np.uint8).data)  # the bytes of tobytes(), not a copy of them
    return h.hexdigest()


def fingerprint_model(model: Any) -> str:
    """SHA-256 of a model: class name, ``repr`` (its modules) and every parameter and buffer; an ONNX file's hash."""
    sha = getattr(model, "sha256", None)
    if isinstance(sha, str):
        return sha
    # the architecture (repr lists every submodule, activations included) and every tensor
    h = hashlib.sha256(type(model).__qualname__.encode())
    h.update(repr(model).encode())
    state = model.state_dict()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(-1).view(__import__("torch").uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def fingerprint_params(params: Mapping[str, Any]) -> str:
    """SHA-256 of a JSON-serialisable parameter mapping (keys sorted)."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()
