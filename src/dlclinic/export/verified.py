"""Export a classifier to ONNX or ``torch.export`` ``.pt2``, verified against eager PyTorch.

Every export is checked on real inputs before the file is put in place: the exported
model is loaded back (onnxruntime for ONNX, ``torch.export.load`` for ``.pt2``), run on
``sample_x`` and compared with the eager model (largest absolute logit difference and the
share of inputs whose argmax agrees). Files are written atomically (``core.atomic``): a
failed export or a model that cannot be loaded back leaves no file behind.

ONNX exporter: by default the ``torch.export``-based exporter
(``torch.onnx.export(..., dynamo=True)``, onnxscript translation), the recommended one since
PyTorch 2.9. ``exporter="torchscript"`` selects the legacy TorchScript tracer
(``dynamo=False``); ``exporter="auto"`` tries dynamo first and falls back to TorchScript,
recording why in :attr:`ExportResult.note`. The exporter actually used is always stated
in :attr:`ExportResult.exporter`.

Sequence length: for token ids (N×T) and sequences (N×T, N×C×T, N×T×F) pass
``length_axis`` (``"auto"`` finds the time axis: the one the eager model accepts shortened)
and the time axis is exported dynamic too. That is verified, not assumed: onnxruntime runs
the file at the sample's length and at half of it and both are compared with PyTorch at the
same length. A graph that fails or differs at the shorter length (a length the tracer baked
in, e.g. ``x.view(n, 48 * d)`` or ``/ float(x.shape[1])``) is exported again with the length
fixed, so the file declares only the length it computes correctly, and
:attr:`ExportResult.length_note` says why.

Example:
    >>> result = export_onnx(model, x_test[:256], "out/model.onnx")  # doctest: +SKIP
    >>> result.exporter, result.argmax_agreement  # doctest: +SKIP
    ('torch.onnx.export(dynamo=True)', 1.0)
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from dlclinic.core.atomic import atomic_path
from dlclinic.core.device import move_model, use_precision
from dlclinic.core.errors import InputError, ModelError, brief
from dlclinic.core.inference import eval_mode, first_output, input_tensor, model_input_spec, predict_logits
from dlclinic.io.models import OnnxModel

__all__ = ["SEQUENCE_MODALITIES", "ExportResult", "export_onnx", "export_pt2", "length_axis_for", "verify_export"]

Exporter = Literal["dynamo", "torchscript", "auto"]
LengthAxis = int | Literal["auto"] | None

#: Modalities whose inputs have a time axis that may vary: token ids N×T, sequences N×T / N×C×T.
SEQUENCE_MODALITIES = ("tokens", "sequence")
#: Logit difference (relative to the largest logit, at least 1) allowed at the shorter length.
LENGTH_RTOL = 1e-3

#: Inputs used to trace the model (a batch of >= 2 so the batch dimension is not specialised to 1).
TRACE_BATCH = 8
#: Inputs compared with eager after export (the first ones of ``sample_x``).
VERIFY_MAX = 512


@dataclass(frozen=True)
class ExportResult:
    """A verified export.

    Attributes:
        path: The written file.
        format: ``"onnx"`` or ``"pt2"``.
        exporter: How it was produced, e.g. ``"torch.onnx.export(dynamo=True)"``,
            ``"torch.onnx.export(dynamo=False)"`` (TorchScript) or ``"torch.export.export"``.
        size_bytes: Size of the file on disk.
        max_abs_logit_diff: Largest ``|exported - eager|`` over the verified logits.
        argmax_agreement: Share of verified inputs whose predicted class is the same.
        n_verified: Number of real inputs compared.
        dynamic_batch: Whether the batch dimension is dynamic in the exported graph.
        opset: ONNX opset of the graph (``None`` for ``.pt2``).
        seconds: Wall time of export plus verification.
        note: Fallbacks taken (e.g. why dynamo was not used under ``exporter="auto"``).
        dynamic_length: Whether the time axis is dynamic and verified at two lengths;
            ``None`` when no ``length_axis`` was asked for (not a sequence).
        length_axis: The input axis exported dynamic (``None`` when the length is fixed).
        verified_lengths: The lengths onnxruntime was compared with PyTorch at.
        length_max_abs_logit_diff: Largest ``|exported - eager|`` at the shorter length.
        length_note: Why the length is fixed, when it is.
    """

    path: Path
    format: str
    exporter: str
    size_bytes: int
    max_abs_logit_diff: float
    argmax_agreement: float
    n_verified: int
    dynamic_batch: bool
    opset: int | None = None
    seconds: float = 0.0
    note: str = ""
    dynamic_length: bool | None = None
    length_axis: int | None = None
    verified_lengths: tuple[int, ...] = ()
    length_max_abs_logit_diff: float | None = None
    length_note: str = ""

    @property
    def size_mb(self) -> float:
        return self.size_bytes / 1e6

    def agrees(self, *, atol: float = 1e-3, min_agreement: float = 0.999) -> bool:
        """Whether the export matches eager within fp32 tolerance (``atol`` on logits)."""
        return self.max_abs_logit_diff <= atol and self.argmax_agreement >= min_agreement

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        out["verified_lengths"] = list(self.verified_lengths)
        return out


@dataclass(frozen=True)
class _Length:
    """The time axis of a sequence export: which one, the lengths verified, or why it is fixed."""

    axis: int | None
    full: int
    short: int | None
    dynamic: bool
    diff: float | None = None
    note: str = ""

    def fixed(self, why: str) -> _Length:
        return replace(self, dynamic=False, diff=None, note=why)

    def fields(self) -> dict[str, Any]:
        """The :class:`ExportResult` fields it fills."""
        lengths = (self.full, self.short) if self.dynamic and self.short else ()
        return {
            "dynamic_length": self.dynamic,
            "length_axis": self.axis if self.dynamic else None,
            "verified_lengths": tuple(int(n) for n in lengths),
            "length_max_abs_logit_diff": self.diff,
            "length_note": self.note,
        }


def length_axis_for(modality: str) -> Literal["auto"] | None:
    """The ``length_axis`` to export a model of this modality with: ``"auto"`` for tokens and sequences.

    Example:
        >>> length_axis_for("tokens"), length_axis_for("image")
        ('auto', None)
    """
    return "auto" if modality in SEQUENCE_MODALITIES else None


# --------------------------------------------------------------------------- public API


def export_onnx(
    model: Any,
    sample_x: np.ndarray,
    path: str | Path,
    *,
    dynamic_batch: bool = True,
    length_axis: LengthAxis = None,
    opset: int | None = None,
    exporter: Exporter = "dynamo",
) -> ExportResult:
    """Export ``model`` to ONNX at ``path`` and verify it against eager on ``sample_x``.

    Args:
        model: A ``torch.nn.Module`` classifier (N×... → N×K logits). Not modified; it is
            exported in eval mode and its previous mode is restored.
        sample_x: Real inputs (numpy, batch first). The first ``TRACE_BATCH`` trace the
            model, the first ``VERIFY_MAX`` are compared with eager.
        path: Where to write the ``.onnx`` file (atomically, parents created).
        dynamic_batch: Make the batch dimension dynamic (any batch size at run time).
        length_axis: Make this input axis (the time axis of token ids or sequences) dynamic
            too; ``"auto"`` takes the last axis the eager model accepts at half its length
            (N×T: 1; N×C×T: 2; N×T×F: 1). Verified with onnxruntime at the sample's length
            and at half of it; when the graph fails or differs there, or the eager model
            itself refuses another length, the length is fixed and
            :attr:`ExportResult.length_note` says why (never an error).
        opset: ONNX opset; ``None`` = the exporter's recommended default.
        exporter: ``"dynamo"`` (``torch.onnx.export(dynamo=True)``, default),
            ``"torchscript"`` (``dynamo=False``) or ``"auto"`` (dynamo, else TorchScript).

    Returns:
        The :class:`ExportResult` with the verified numbers.

    Raises:
        InputError: ``sample_x`` is empty or not an array.
        ModelError: The model cannot be exported or the export cannot be run.
    """
    if exporter not in ("dynamo", "torchscript", "auto"):
        raise InputError(f"exporter={exporter!r}: expected 'dynamo', 'torchscript' or 'auto'")
    x = _as_inputs(sample_x)
    started = time.perf_counter()
    module = _as_module(model)
    reference = _eager_logits(module, x[:VERIFY_MAX])
    probe = _length_probe(module, x, length_axis)
    order = ["dynamo", "torchscript"] if exporter == "auto" else [exporter]
    failures: list[str] = []
    target = Path(path)
    for choice in order:
        try:
            with atomic_path(target) as tmp:
                used, logits, graph_opset, length = _export_checked(
                    module, x, tmp, _Settings(choice == "dynamo", dynamic_batch, opset), reference, probe
                )
        except ModelError as exc:
            failures.append(str(exc))
            continue
        result = _result(
            target, "onnx", used, reference, logits, dynamic_batch, graph_opset, started, "; ".join(failures)
        )
        return replace(result, **length.fields()) if length is not None else result
    raise ModelError(" / ".join(failures))


def export_pt2(model: Any, sample_x: np.ndarray, path: str | Path, *, dynamic_batch: bool = True) -> ExportResult:
    """Export ``model`` with ``torch.export`` to a ``.pt2`` file and verify it against eager.

    The program is loaded back with ``torch.export.load`` (as
    :func:`dlclinic.io.models.load_model` does for ``.pt2``) and run on ``sample_x``.

    Raises:
        InputError: ``sample_x`` is empty or not an array.
        ModelError: ``torch.export`` fails on the model or the program does not load back.
    """
    x = _as_inputs(sample_x)
    started = time.perf_counter()
    module = _as_module(model)
    reference = _eager_logits(module, x[:VERIFY_MAX])
    target = Path(path)
    dtype = _input_dtype(module)
    xb = input_tensor(x[:TRACE_BATCH], dtype)
    note = ""
    with atomic_path(target) as tmp, _quiet_export():
        program, dynamic, note = _torch_export(module, xb, dynamic_batch)
        try:
            torch.export.save(program, str(tmp))
            loaded = torch.export.load(str(tmp)).module()
        except Exception as exc:
            raise ModelError(f"torch.export.save/load of the model failed ({brief(exc)})") from None
        logits = _module_logits(
            loaded, x[:VERIFY_MAX] if dynamic else x[: xb.shape[0]], dtype, fixed_batch=None if dynamic else xb.shape[0]
        )
    ref = reference if dynamic else reference[: xb.shape[0]]
    return _result(target, "pt2", "torch.export.export", ref, logits, dynamic, None, started, note)


def verify_export(reference_logits: np.ndarray, logits: np.ndarray) -> tuple[float, float]:
    """``(max_abs_logit_diff, argmax_agreement)`` of exported vs eager logits (same rows).

    Example:
        >>> verify_export(np.array([[0.0, 1.0]]), np.array([[0.0, 1.5]]))
        (0.5, 1.0)
    """
    a = np.asarray(reference_logits, dtype=np.float64)
    b = np.asarray(logits, dtype=np.float64)
    if a.shape != b.shape:
        raise ModelError(f"exported model returned logits of shape {b.shape}; expected {a.shape} like the eager model")
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    agree = float(np.mean(a.argmax(1) == b.argmax(1))) if a.size else 1.0
    return diff, agree


# --------------------------------------------------------------------------- helpers


def _as_inputs(sample_x: Any) -> np.ndarray:
    x = np.asarray(sample_x)
    if x.ndim < 2 or x.shape[0] == 0:
        raise InputError(f"sample_x: expected a non-empty batch of real inputs (N×...), found shape {x.shape}")
    if x.dtype.kind == "f" and x.dtype != np.float32:
        x = x.astype(np.float32)
    return x


def _as_module(model: Any) -> Any:
    if not isinstance(model, torch.nn.Module):
        raise ModelError(
            f"export: expected a torch.nn.Module, found {type(model).__name__} (ONNX/.pt2 models are already exported)"
        )
    return move_model(model, torch.device("cpu"))  # exports are CPU programs: a copy of a model on a GPU is exported


def _input_dtype(module: Any) -> Any:
    return model_input_spec(module)[0]


def _eager_logits(module: Any, x: np.ndarray) -> np.ndarray:
    with use_precision("fp32"):  # the reference is the float32 model, whatever precision the checkup runs in
        return predict_logits(module, x)


@contextmanager
def _eval(module: Any) -> Iterator[None]:
    with eval_mode(module):
        yield


@contextmanager
def _quiet_export() -> Iterator[None]:
    """Silence torch.onnx/torch.export chatter (warnings, info logs) during an export."""
    names = ("torch.onnx", "torch.export", "torch._dynamo", "torch._export", "onnxscript")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@dataclass(frozen=True)
class _Settings:
    """How one ONNX export is made: the exporter, a dynamic batch, the opset."""

    dynamo: bool
    dynamic_batch: bool
    opset: int | None


def _length_probe(module: Any, x: np.ndarray, request: LengthAxis) -> _Length | None:
    """The time axis: the first candidate the eager model accepts at half its length (``None`` if not asked)."""
    if request is None:
        return None
    if request != "auto" and not (isinstance(request, int) and 0 < request < x.ndim):
        raise InputError(f"length_axis: expected 'auto' or an axis in 1..{x.ndim - 1}, found {request!r}")
    axes = tuple(range(x.ndim - 1, 0, -1)) if request == "auto" else (int(request),)
    refused = []
    for axis in axes:
        full, short = int(x.shape[axis]), int(x.shape[axis]) // 2
        if short < 1:
            continue
        try:
            out = predict_logits(module, np.take(x[:4], np.arange(short), axis=axis))
        except ModelError as exc:
            refused.append(str(exc))
            continue
        if out.shape[0] == len(x[:4]):
            return _Length(axis, full, short, True)
    why = f"the PyTorch model itself accepts no other length ({'; '.join(refused)})" if refused else ""
    return _Length(None, int(x.shape[axes[0]]), None, False, note=why or "the time axis has length 1")


def _export_checked(
    module: Any, x: np.ndarray, tmp: Path, how: _Settings, reference: np.ndarray, probe: _Length | None
) -> tuple[str, np.ndarray, int | None, _Length | None]:
    """Export, verify at the sample's length, and at half of it when the length is dynamic.

    A dynamic length the exporter refuses, or one whose graph fails or differs at the
    shorter length, is exported again with the length fixed.
    """
    axis = probe.axis if probe is not None and probe.dynamic else None
    try:
        used = _onnx_export(module, x[:TRACE_BATCH], tmp, how, axis)
    except ModelError as exc:
        if axis is None or probe is None:
            raise
        probe, axis = probe.fixed(f"the exporter refused a dynamic length ({exc})"), None
        used = _onnx_export(module, x[:TRACE_BATCH], tmp, how, None)
    logits, graph_opset = _onnx_logits(tmp, x[:VERIFY_MAX])
    if axis is not None and probe is not None:
        full_diff = float(np.max(np.abs(logits - reference))) if logits.shape == reference.shape else 0.0
        probe = _verify_length(module, x, tmp, probe, full_diff)
        if not probe.dynamic:
            used = _onnx_export(module, x[:TRACE_BATCH], tmp, how, None)
            logits, graph_opset = _onnx_logits(tmp, x[:VERIFY_MAX])
    return used, logits, graph_opset, probe


def _verify_length(module: Any, x: np.ndarray, path: Path, probe: _Length, full_diff: float) -> _Length:
    """onnxruntime vs PyTorch at the shorter length: the probe, or a fixed length and why."""
    if probe.axis is None or probe.short is None:
        return probe
    short = np.ascontiguousarray(np.take(x[:VERIFY_MAX], np.arange(probe.short), axis=probe.axis))
    ref = predict_logits(module, short)
    try:
        got = OnnxModel(path).predict_logits(short)
    except ModelError as exc:
        return probe.fixed(f"onnxruntime fails at length {probe.short} ({brief(exc)}): the graph holds a fixed length")
    if got.shape != ref.shape:
        return probe.fixed(f"at length {probe.short} the ONNX graph returns shape {got.shape}, PyTorch {ref.shape}")
    diff = float(np.max(np.abs(got - ref))) if ref.size else 0.0
    tol = max(LENGTH_RTOL * max(1.0, float(np.max(np.abs(ref))) if ref.size else 1.0), 10 * full_diff)
    if diff > tol:
        return probe.fixed(
            f"at length {probe.short} the ONNX graph differs from PyTorch by up to {diff:.2e} in logits (tolerance {tol:.1e}): the trace baked in length {probe.full}"
        )
    return replace(probe, diff=diff)


def _onnx_export(module: Any, x: np.ndarray, tmp: Path, how: _Settings, length_axis: int | None) -> str:
    """Write the ONNX graph to ``tmp`` (batch and ``length_axis`` dynamic as asked); return the exporter description."""
    dtype = _input_dtype(module)
    xb = input_tensor(x, dtype)
    name = f"torch.onnx.export(dynamo={how.dynamo})"
    with _eval(module), _quiet_export(), torch.no_grad():
        try:
            if how.dynamo:
                dims: dict[int, Any] = {0: torch.export.Dim("batch", min=1, max=1 << 16)} if how.dynamic_batch else {}
                if length_axis is not None:  # AUTO: torch.export keeps it dynamic or specialises it, never refuses
                    dims[length_axis] = torch.export.Dim.AUTO
                program = torch.onnx.export(
                    module,
                    (xb,),
                    None,
                    dynamo=True,
                    opset_version=how.opset,
                    input_names=["input"],
                    output_names=["logits"],
                    external_data=False,
                    verbose=False,
                    dynamic_shapes=(dims,) if dims else None,
                )
                if program is None:
                    raise RuntimeError("the exporter returned no program")
                program.save(str(tmp))
            else:
                in_axes = {0: "batch"} if how.dynamic_batch else {}
                if length_axis is not None:
                    in_axes[length_axis] = "length"
                axes = {"input": in_axes, "logits": {0: "batch"} if how.dynamic_batch else {}} if in_axes else None
                torch.onnx.export(
                    module,
                    (xb,),
                    str(tmp),
                    dynamo=False,
                    opset_version=how.opset or 17,
                    input_names=["input"],
                    output_names=["logits"],
                    dynamic_axes=axes,
                )
        except Exception as exc:
            raise ModelError(f"ONNX export with {name} failed ({brief(exc)})") from None
    return name


def _onnx_logits(path: Path, x: np.ndarray) -> tuple[np.ndarray, int | None]:
    """Run the ONNX file with onnxruntime (:class:`dlclinic.io.models.OnnxModel`)."""
    model = OnnxModel(path)
    logits = model.predict_logits(x)
    opset = None
    try:
        import onnx

        graph = onnx.load(str(path), load_external_data=False)
        opset = next((int(o.version) for o in graph.opset_import if o.domain in ("", "ai.onnx")), None)
    except Exception:  # opset is informative only
        opset = None
    return logits, opset


def _torch_export(module: Any, xb: Any, dynamic_batch: bool) -> tuple[Any, bool, str]:
    """``(program, dynamic, note)``: ``torch.export.export`` with a dynamic batch if possible."""
    note = ""
    # a failed trace prints the partial graph of the user's model to stdout/stderr; the error below says what failed
    quiet = io.StringIO()
    with _eval(module), torch.no_grad(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        if dynamic_batch:
            try:
                batch = torch.export.Dim("batch", min=1, max=1 << 16)
                return torch.export.export(module, (xb,), dynamic_shapes=({0: batch},)), True, ""
            except Exception as exc:
                note = f"dynamic batch refused by torch.export ({brief(exc)}); exported with a fixed batch of {xb.shape[0]}"
        try:
            return torch.export.export(module, (xb,)), False, note
        except Exception as exc:
            raise ModelError(
                f"torch.export.export failed on the model ({brief(exc)}); expected a model traceable without data-dependent control flow"
            ) from None


def _module_logits(loaded: Any, x: np.ndarray, dtype: Any, *, fixed_batch: int | None) -> np.ndarray:
    step = fixed_batch or 256
    parts = []
    with torch.no_grad():
        for i in range(0, len(x), step):
            xb = input_tensor(x[i : i + step], dtype)
            try:
                parts.append(first_output(loaded(xb)).detach().float().cpu().numpy())
            except Exception as exc:
                raise ModelError(
                    f"the exported .pt2 program failed on inputs of shape {tuple(xb.shape)} ({brief(exc)})"
                ) from None
    return np.concatenate(parts)


def _result(
    path: Path,
    fmt: str,
    exporter: str,
    reference: np.ndarray,
    logits: np.ndarray,
    dynamic: bool,
    opset: int | None,
    started: float,
    note: str,
) -> ExportResult:
    diff, agree = verify_export(reference, logits)
    return ExportResult(
        path=path,
        format=fmt,
        exporter=exporter,
        size_bytes=int(path.stat().st_size),
        max_abs_logit_diff=diff,
        argmax_agreement=agree,
        n_verified=int(len(logits)),
        dynamic_batch=bool(dynamic),
        opset=opset,
        seconds=float(time.perf_counter() - started),
        note=note,
    )
