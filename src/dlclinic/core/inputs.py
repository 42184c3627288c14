"""Models whose ``forward`` takes several tensors (``input_ids`` + ``attention_mask``, a series + its lengths).

Every part of dlclinic (evidence, training, K-fold, attacks, attributions, export, serving)
passes one tensor per batch. A case with several named inputs keeps them *packed*: each row
is its parts flattened side by side, int64 when every part is integer, else float32 (ids
below 2**24 are exact in float32), and the model is wrapped in :class:`PackedInputs`, which
cuts a packed batch back into the named tensors (each in its own dtype and shape) and calls
the user's model with them, by keyword when ``forward`` names them, else in the declared order.

Why by hand: ``torch.func``/``nn.Module`` have no "several inputs as one" adapter, and the
alternative (a tuple threaded through every caller) would touch every place a model is
called. The first part is the *primary* one: token methods (corruptions, the token profile,
per-token attributions) act on it and leave the others (masks, lengths) as they are.

Example:
    >>> import numpy as np
    >>> packed, parts = pack_inputs({"ids": np.ones((2, 3), np.int64), "mask": np.ones((2, 3), np.int64)})
    >>> packed.shape, [p.name for p in parts], primary_width(parts)
    ((2, 6), ['ids', 'mask'], 3)
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from dlclinic.core.errors import InputError

__all__ = [
    "InputPart",
    "PackedFactory",
    "PackedInputs",
    "pack_inputs",
    "parts_from_metadata",
    "primary_width",
    "split_inputs",
    "wrap_factory",
    "wrap_model",
]


@dataclass(frozen=True)
class InputPart:
    """One named model input: its per-row shape and whether it holds integers."""

    name: str
    shape: tuple[int, ...]
    integer: bool

    @property
    def width(self) -> int:
        return math.prod(self.shape)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "integer": self.integer}


def pack_inputs(
    arrays: Mapping[str, Any], parts: Sequence[InputPart] | None = None, *, what: str = "x"
) -> tuple[np.ndarray, tuple[InputPart, ...]]:
    """``(packed, parts)``: named N × … arrays as one N × width array (the parts of ``parts`` when given, e.g. train's)."""
    if not arrays:
        raise InputError(f"{what}: expected at least one named input array, found none")
    named = {str(k): np.asarray(v) for k, v in arrays.items()}
    if parts is not None:
        want = [p.name for p in parts]
        if sorted(want) != sorted(named):
            raise InputError(f"{what}: expected the inputs {want} like train, found {list(named)}")
        named = {k: named[k] for k in want}
    n = {k: (a.shape[0] if a.ndim else 0) for k, a in named.items()}
    if len(set(n.values())) != 1 or min(n.values()) == 0:
        raise InputError(f"{what}: expected every input to have the same number of rows (≥ 1), found {n}")
    for k, a in named.items():
        if a.dtype.kind not in "fiub":
            raise InputError(f"{what} input {k!r}: expected numbers, found dtype {a.dtype}")
    found = tuple(InputPart(k, tuple(int(d) for d in a.shape[1:]), a.dtype.kind in "iub") for k, a in named.items())
    if parts is not None and tuple(p.shape for p in parts) != tuple(p.shape for p in found):
        raise InputError(
            f"{what}: expected per-row shapes {[p.shape for p in parts]} like train, found {[p.shape for p in found]}"
        )
    parts = tuple(parts) if parts is not None else found
    dtype = np.int64 if all(p.integer for p in parts) else np.float32
    rows = next(iter(n.values()))
    packed = np.concatenate([a.reshape(rows, -1).astype(dtype, copy=False) for a in named.values()], axis=1)
    return np.ascontiguousarray(packed), parts


def parts_from_metadata(metadata: Mapping[str, Any]) -> tuple[InputPart, ...] | None:
    """The parts a case records in ``metadata["inputs"]`` (``None`` for a one-input model)."""
    raw = metadata.get("inputs")
    if not raw:
        return None
    return tuple(InputPart(str(p["name"]), tuple(int(d) for d in p["shape"]), bool(p["integer"])) for p in raw)


def primary_width(parts: Sequence[InputPart] | None) -> int | None:
    """Columns of the packed row that hold the first (primary) input, ``None`` without parts."""
    return parts[0].width if parts else None


def _by_keyword(model: Any, names: Sequence[str]) -> bool:
    """Whether ``model.forward`` takes these names as keywords (named parameters or ``**kwargs``)."""
    try:
        params = inspect.signature(model.forward if hasattr(model, "forward") else model).parameters
    except (TypeError, ValueError):
        return False
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return True
    return all(n in params and params[n].kind is not inspect.Parameter.POSITIONAL_ONLY for n in names)


class PackedInputs(nn.Module):
    """The user's several-input model as a one-input module (its state dict is the user's, unprefixed)."""

    def __init__(self, model: nn.Module, parts: Sequence[InputPart]) -> None:
        super().__init__()
        self.model = model
        self.parts = tuple(parts)
        self.by_keyword = _by_keyword(model, [p.name for p in self.parts])

    def unpack(self, packed: torch.Tensor) -> list[torch.Tensor]:
        """The named tensors of a packed batch, each in its own shape and dtype (integers int64)."""
        out, start = [], 0
        float_dtype = packed.dtype if packed.is_floating_point() else torch.float32
        for p in self.parts:
            t = packed[:, start : start + p.width].reshape(packed.shape[0], *p.shape)
            if not p.integer:
                t = t.to(float_dtype)
            elif t.is_floating_point():  # ids packed beside float parts: exact below 2**24
                t = t.round().long()
            out.append(t)
            start += p.width
        return out

    def forward(self, packed: torch.Tensor) -> Any:
        tensors = self.unpack(packed)
        if self.by_keyword:
            return self.model(**{p.name: t for p, t in zip(self.parts, tensors, strict=True)})
        return self.model(*tensors)

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:  # type: ignore[override]
        return self.model.load_state_dict(state_dict, strict=strict, assign=assign)


@dataclass(frozen=True)
class PackedFactory:
    """A ``model_factory`` whose fresh models take the packed inputs (picklable when the factory is)."""

    factory: Any
    parts: tuple[InputPart, ...]

    def __call__(self) -> PackedInputs:
        return PackedInputs(self.factory(), self.parts)


def wrap_factory(factory: Any, parts: Sequence[InputPart] | None) -> Any:
    """``factory`` building one-input modules when the case has several inputs."""
    if factory is None or not parts or len(parts) < 2 or isinstance(factory, PackedFactory):
        return factory
    return PackedFactory(factory, tuple(parts))


def split_inputs(value: Any) -> Mapping[str, Any] | None:
    """The named inputs of one split's ``x`` (a mapping of arrays), else ``None``."""
    return value if isinstance(value, Mapping) else None


def wrap_model(model: Any, parts: Sequence[InputPart] | None) -> Any:
    """``model`` as a one-input module when the case has several inputs (already wrapped, ``None`` or one part: as is)."""
    if model is None or not parts or len(parts) < 2 or isinstance(model, PackedInputs):
        return model
    if not isinstance(model, nn.Module):
        raise InputError(
            f"model: several named inputs ({', '.join(p.name for p in parts)}) need a PyTorch nn.Module, found {type(model).__name__}"
        )
    return PackedInputs(model, parts)
