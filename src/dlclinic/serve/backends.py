"""Model backends for serving: eager PyTorch or ONNX Runtime, one interface.

A backend maps a float32 batch ``N×input_shape`` to ``(probs N×K, embeddings N×D or
None)``. The torch backend takes the embedding as the input of the last ``nn.Linear``
(a forward hook, as the checkup's evidence does), so the served stream can be compared
with the reference in the same space. ONNX graphs expose only their output: no
embeddings, and the monitor falls back to prediction and confidence statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from dlclinic.core.device import autocast, check_precision, move_model, resolve_device
from dlclinic.core.errors import ConfigError, ModelError
from dlclinic.core.inference import eval_mode, first_output, input_tensor, model_input_spec, reads_token_ids
from dlclinic.export import export_onnx
from dlclinic.io.models import OnnxModel

__all__ = ["Backend", "OnnxBackend", "TorchBackend", "make_backend"]


class Backend(Protocol):
    """What the server needs from a model."""

    name: str
    input_shape: tuple[int, ...]
    n_classes: int

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``(probs, embeddings)`` for a float32 batch."""
        ...


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # infinite logits give NaN rows: the server refuses them (422)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class TorchBackend:
    """Eager PyTorch under ``inference_mode`` and eval mode, embeddings from the last Linear's input."""

    name = "torch"

    def __init__(
        self,
        model: Any,
        input_shape: tuple[int, ...],
        n_classes: int,
        *,
        embeddings: bool = True,
        precision: str = "fp32",
    ) -> None:
        self.model = model
        self.precision = precision  # mixed precision of the forward pass (dlclinic.core.device.autocast)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.n_classes = int(n_classes)
        self._dtype, self._device = model_input_spec(model)
        self._ids = reads_token_ids(model)  # token ids stay integers; any other input becomes the model's float dtype
        self._last: Any = None
        if embeddings:
            for module in model.modules():
                if isinstance(module, torch.nn.Linear):
                    self._last = module

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        captured: list[Any] = []
        handle = (
            self._last.register_forward_hook(lambda _m, inp, _o: captured.append(inp[0].detach()))
            if self._last is not None
            else None
        )
        try:
            with eval_mode(self.model), torch.inference_mode(), autocast(self.precision, self._device.type):
                xb = input_tensor(np.asarray(x, dtype=np.int64 if self._ids else np.float32), self._dtype, self._device)
                try:
                    logits = first_output(self.model(xb)).float().cpu().numpy()
                except Exception as exc:
                    raise ModelError(
                        f"the model failed on inputs of shape {tuple(xb.shape)}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    ) from None
        finally:
            if handle is not None:
                handle.remove()
        emb = captured[-1].float().reshape(len(x), -1).cpu().numpy() if captured else None
        return _softmax(logits), emb


class OnnxBackend:
    """ONNX Runtime on CPU through :class:`dlclinic.io.models.OnnxModel` (no embeddings)."""

    name = "onnx"

    def __init__(self, model: Any, input_shape: tuple[int, ...], n_classes: int) -> None:
        self.model = model
        self.input_shape = tuple(int(s) for s in input_shape)
        self.n_classes = int(n_classes)

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return _softmax(self.model.predict_logits(np.asarray(x))), None


@dataclass(frozen=True)
class _Exported:
    path: Path
    note: str


def _export(model: Any, sample_x: np.ndarray, path: Path, exporter: str = "auto") -> _Exported:
    """ONNX export through :func:`dlclinic.export.export_onnx` (verified against eager)."""
    res = export_onnx(model, sample_x, path, exporter=exporter)  # type: ignore[arg-type]
    return _Exported(res.path, f"{res.exporter}, max |Δlogit| {res.max_abs_logit_diff:.2e} on {res.n_verified} rows")


def make_backend(
    model: Any,
    input_shape: tuple[int, ...],
    n_classes: int,
    *,
    kind: str = "auto",
    sample_x: np.ndarray | None = None,
    export_path: str | Path | None = None,
    exporter: str = "auto",
    device: str | None = None,
    precision: str = "fp32",
) -> tuple[Backend, str]:
    """A backend for ``model`` and a one-line description.

    ``kind``: ``"auto"`` (torch for an ``nn.Module``, ONNX Runtime for an ONNX model),
    ``"torch"`` or ``"onnx"``. ``"onnx"`` with an ``nn.Module`` exports it first
    (to ``export_path``, verified on ``sample_x``, with ``exporter`` as in
    :func:`dlclinic.export.export_onnx`) and serves the export. ``device`` and ``precision``
    (``--device``, ``--precision``) place the torch backend's model (a copy) and its autocast;
    ONNX Runtime runs on the CPU.
    """
    is_torch = hasattr(model, "state_dict") and callable(model)
    if kind not in ("auto", "torch", "onnx"):
        raise ConfigError(f"--backend {kind!r}: expected auto, torch or onnx")
    if kind == "torch" and not is_torch:
        raise ConfigError(
            f"--backend torch: expected a PyTorch model, found {type(model).__name__}; use --backend onnx"
        )
    if kind in ("auto", "torch") and is_torch:
        where = resolve_device(device or "cpu")
        backend = TorchBackend(
            move_model(model, where), input_shape, n_classes, precision=check_precision(precision, where)
        )
        placed = (f" on {where}" if where.type != "cpu" else "") + (f" ({precision})" if precision != "fp32" else "")
        return backend, f"torch {type(model).__name__}{placed}"
    if is_torch:
        if sample_x is None or export_path is None:
            raise ConfigError("--backend onnx with a PyTorch model needs sample inputs and a path to export to")
        exported = _export(model, sample_x, Path(export_path), exporter)
        return OnnxBackend(
            OnnxModel(exported.path), input_shape, n_classes
        ), f"onnxruntime on {exported.path.name} ({exported.note})"
    if hasattr(model, "predict_logits"):
        return OnnxBackend(model, input_shape, n_classes), f"onnxruntime {getattr(model, 'path', '')}"
    raise ConfigError(f"cannot serve a {type(model).__name__}: expected a torch.nn.Module or an ONNX model")
