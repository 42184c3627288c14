"""Atomic file writes: a file is either fully written or not there at all."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

__all__ = ["atomic_path", "write_json", "write_weights"]


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place on success, delete it on error.

    Example:
        >>> with atomic_path("out/weights.safetensors") as tmp:  # doctest: +SKIP
        ...     save_file(state, str(tmp))
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike[str], payload: Any, *, indent: int = 2, default: Any = None) -> Path:
    """Write ``payload`` as JSON to ``path`` atomically; returns the path."""

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=indent, default=default))
    return Path(path)


def write_weights(model: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``model``'s state_dict as safetensors atomically (weights only, never a pickle); returns the path.

    Tensors are copied to CPU, made contiguous and cloned, so tied weights (one storage under
    two names, which safetensors refuses) are written as two tensors.
    """

    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))
    return Path(path)
