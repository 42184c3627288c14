"""Where the model runs (``--device``) and in which precision (``--precision``).

The device is a property of the model: :func:`move_model` puts the case's model on the chosen
device once, when the checkup or remedy starts, and everything after follows the model —
``dlclinic.core.inference.model_input_spec`` gives the device every tensor that meets the
model is created on, and :func:`dlclinic.core.recipe.fit` builds each retrained model on
``FitConfig.device``. Results always come back as CPU numpy arrays, so cached evidence does
not depend on the device.

The precision is mixed precision through ``torch.autocast`` (the weights stay float32):
``bf16`` on CPU or CUDA, ``fp16`` on CUDA (training then uses a ``GradScaler``) or MPS.
It applies to the forward passes of evidence (:func:`dlclinic.core.inference.predict_logits`
and the evidence pass) and to training (:func:`dlclinic.core.recipe.fit`); gradient-based
probes (attacks, attributions, gradient norms) run in float32. ``fp32`` — the default — is
the plain path, unchanged.

Written by hand because torch has the pieces (``torch.device``, ``torch.autocast``) but no
check that a requested device exists that fails with one sentence.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch

from dlclinic.core.errors import ConfigError

__all__ = [
    "DEVICE_CHOICES",
    "PRECISIONS",
    "active_precision",
    "autocast",
    "check_precision",
    "device_info",
    "move_model",
    "on_device",
    "resolve_device",
    "use_precision",
]

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"
PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

_active = "fp32"  # the precision of evidence forward passes in this process (use_precision)


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _available() -> str:
    """The devices present here, for error messages: ``'cpu'`` or ``'cpu, cuda:0, cuda:1'``."""
    found = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ", ".join(found + (["mps"] if _mps_available() else []))


def _default_cuda_index() -> int:
    """The GPU of plain ``cuda``: this process's ``LOCAL_RANK`` under torchrun when there is such a GPU, else the current one."""
    local = os.environ.get("LOCAL_RANK", "").strip()
    if local.isdigit() and int(local) < torch.cuda.device_count():
        return int(local)
    return int(torch.cuda.current_device()) if torch.cuda.is_available() else 0


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The ``torch.device`` named by ``spec``, checked to exist here.

    ``auto`` (or ``None``) is CUDA when available, else MPS when available, else the CPU. Plain
    ``cuda`` is the process's ``LOCAL_RANK`` GPU under torchrun (``--nproc``), else the current one.

    Raises:
        ConfigError: an unknown name, or a device this machine does not have (one line).

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    name = (spec or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", _default_cuda_index())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device: expected {DEVICE_CHOICES}, found {spec!r}") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = _default_cuda_index() if device.index is None else device.index
        if index >= count:
            raise ConfigError(f"--device {name}: expected one of the devices here ({_available()}), found no {name}")
        return torch.device("cuda", index)
    if device.type == "mps":
        if not _mps_available():
            raise ConfigError(f"--device mps: expected one of the devices here ({_available()}), found no mps")
        return torch.device("mps")
    raise ConfigError(f"--device: expected {DEVICE_CHOICES}, found {spec!r}")


def check_precision(precision: str, device: torch.device | str) -> str:
    """``precision`` when ``device`` supports it as mixed precision; else a one-line :class:`ConfigError`.

    Example:
        >>> check_precision("bf16", "cpu")
        'bf16'
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision: expected one of {', '.join(PRECISIONS)}, found {precision!r}")
    kind = torch.device(device).type
    if precision == "fp16" and kind == "cpu":
        raise ConfigError("--precision fp16: expected a cuda or mps device, found cpu (use bf16 or fp32 on the CPU)")
    if precision == "bf16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"--precision bf16: expected a GPU with bfloat16, found {torch.cuda.get_device_name()}")
    if precision == "bf16" and kind == "mps":
        raise ConfigError("--precision bf16: expected cpu or cuda, found mps (use fp16 on mps)")
    return precision


def autocast(precision: str, device_type: str) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for ``precision`` on ``device_type``; a no-op context for ``fp32``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=_DTYPES[precision])


def active_precision() -> str:
    """The precision of evidence forward passes in this process (``fp32`` unless :func:`use_precision` says)."""
    return _active


@contextlib.contextmanager
def use_precision(precision: str) -> Iterator[None]:
    """Run the block's evidence forward passes in ``precision`` (forked workers inherit it)."""
    global _active
    saved, _active = _active, precision
    try:
        yield
    finally:
        _active = saved


def move_model(model: Any, device: torch.device) -> Any:
    """``model`` on ``device``: itself when it is already there (or is not a torch module), else a moved copy.

    The user's module is never moved in place.
    """
    params = getattr(model, "parameters", None)
    if not isinstance(model, torch.nn.Module) or not callable(params):
        return model
    tensors = [*model.parameters(), *model.buffers()]
    if all(t.device == device for t in tensors):
        return model
    try:
        return copy.deepcopy(model).to(device)
    except Exception as exc:  # e.g. a torch.export module that refuses .to()
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ConfigError(
            f"--device {device}: expected a model that can move there, found {type(exc).__name__}: {first}"
        ) from None


def on_device(factory: Callable[[], Any], device: str | None) -> Callable[[], Any]:
    """``factory`` whose fresh models are built on ``device`` (``FitConfig.device``; ``None``: ``factory`` itself).

    For training loops outside :func:`dlclinic.core.recipe.fit`, which moves its copy itself.
    The initial weights are those of ``factory()`` under the same seed, on any device.
    """
    if device is None:
        return factory
    target = resolve_device(device)

    def build() -> Any:
        return factory().to(target)

    return build


def device_info(device: torch.device, precision: str) -> dict[str, Any]:
    """What the report's ``environment`` records: the device, its name, and the precision."""
    info: dict[str, Any] = {"device": str(device), "precision": precision}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    return info
