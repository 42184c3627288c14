"""The fp32 ONNX export of a classifier, its ONNX Runtime int8 quantizations, and sessions to run them.

* Dynamic int8 (``onnxruntime.quantization.quantize_dynamic``): weights int8, activations
  quantized on the fly; only MatMul/Gemm-type ops.
* Static int8 QDQ with per-channel weights (``quantize_static``), calibrated (MinMax) on
  real train samples — the one that speeds up convolutions.

Recurrent layers: dynamic int8 turns an ONNX ``LSTM`` into ``com.microsoft::DynamicQuantizeLSTM``
(ONNX Runtime only) and leaves ``GRU``/``RNN`` float; static QDQ has no recurrent kernel and
leaves them all float. Each file's note says which recurrent ops stayed float.

Token and sequence models are exported with a dynamic, verified time axis when the model
allows it (``length_axis``, :func:`dlclinic.export.export_onnx`); the quantized files keep
the fp32 file's input shape.

Files are written atomically (``core.atomic``). :func:`onnx_runner` builds the ONNX Runtime
CPU session that :mod:`dlclinic.functional.latency` times like any other backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dlclinic.core.atomic import atomic_path
from dlclinic.core.errors import brief
from dlclinic.core.threads import thread_settings
from dlclinic.export.verified import ExportResult, LengthAxis, export_onnx
from dlclinic.functional.compression import SweepConfig
from dlclinic.functional.latency import Runner
from dlclinic.io.models import onnx_feed

__all__ = ["OnnxFile", "onnx_runner", "onnx_variants", "quantize_onnx_dynamic", "quantize_onnx_static"]

#: ``(name, kind, path, note)`` of one ONNX file of :func:`onnx_variants`.
OnnxFile = tuple[str, str, Path, str]


class _Calibration:
    """An onnxruntime ``CalibrationDataReader`` over real inputs, one sample per call."""

    def __init__(self, input_name: str, x: np.ndarray, batch: int = 16) -> None:
        self._batches = iter([{input_name: onnx_feed(x[i : i + batch])} for i in range(0, len(x), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:  # pragma: no cover - not used by MinMax
        pass


def _preprocess(src: Path, dst: Path) -> Path:
    """ORT's recommended pre-processing (shape inference, graph optimisation); ``src`` if it fails."""
    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        return dst
    except Exception:
        return src


def quantize_onnx_dynamic(src: str | Path, dst: str | Path) -> Path:
    """Dynamic int8 quantization of an fp32 ONNX file (weights int8, activations at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with atomic_path(dst) as tmp:
        pre = _preprocess(Path(src), tmp.with_name(tmp.name + ".pre.onnx"))
        try:
            quantize_dynamic(str(pre), str(tmp), weight_type=QuantType.QInt8)
        finally:
            if pre != Path(src):
                pre.unlink(missing_ok=True)
    return Path(dst)


def quantize_onnx_static(
    src: str | Path, dst: str | Path, calibration_x: np.ndarray, *, per_channel: bool = True
) -> Path:
    """Static int8 (QDQ) quantization, calibrated with MinMax on real inputs ``calibration_x``."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    name = onnx.load(str(src), load_external_data=False).graph.input[0].name
    with atomic_path(dst) as tmp:
        pre = _preprocess(Path(src), tmp.with_name(tmp.name + ".pre.onnx"))
        try:
            quantize_static(
                str(pre),
                str(tmp),
                _Calibration(name, np.asarray(calibration_x)),  # type: ignore[arg-type]
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
        finally:
            if pre != Path(src):
                pre.unlink(missing_ok=True)
    return Path(dst)


def _length_text(result: ExportResult) -> str:
    """How the exported time axis was verified, or why it is fixed ("" for non-sequences)."""
    if result.dynamic_length is None:
        return ""
    if result.dynamic_length:
        lengths = " and ".join(str(n) for n in result.verified_lengths)
        return (
            f"; length dynamic, verified at {lengths} (max |logit diff| {result.length_max_abs_logit_diff or 0.0:.1e})"
        )
    return f"; length fixed: {result.length_note}"


def _export_fp32(
    model: Any, x_sample: np.ndarray, fp32: Path, exporter: str, length_axis: LengthAxis
) -> tuple[OnnxFile | None, list[str]]:
    """The verified fp32 export (TorchScript falling back to dynamo), or ``None`` and why."""
    notes: list[str] = []
    try:
        result = export_onnx(model, x_sample[:256], fp32, exporter=exporter, length_axis=length_axis)  # type: ignore[arg-type]
    except Exception as exc:
        if exporter != "torchscript":
            return None, [f"ONNX export failed ({brief(exc)}); no ONNX Runtime variants"]
        try:  # the legacy tracer failed: the torch.export-based exporter may still succeed
            result = export_onnx(model, x_sample[:256], fp32, exporter="dynamo", length_axis=length_axis)
            notes.append(f"TorchScript ONNX export failed ({brief(exc)}); exported with dynamo=True instead")
        except Exception as exc2:
            return None, [
                f"ONNX export failed with both exporters ({brief(exc)}; {brief(exc2)}); no ONNX Runtime variants"
            ]
    note = f"{result.exporter}, max |logit diff| vs eager {result.max_abs_logit_diff:.1e}, argmax agreement {result.argmax_agreement:.1%}"
    return ("onnx fp32", "onnx-fp32", fp32, note + _length_text(result)), notes


def _recurrent_note(path: Path) -> str:
    """Which recurrent ops of a quantized file stayed float, and which need ONNX Runtime's own operators."""
    import onnx

    ops = {(n.domain, n.op_type) for n in onnx.load(str(path), load_external_data=False).graph.node}
    left = sorted(op for domain, op in ops if domain in ("", "ai.onnx") and op in ("LSTM", "GRU", "RNN"))
    custom = sorted(f"{domain}::{op}" for domain, op in ops if domain == "com.microsoft" and "LSTM" in op)
    text = f"; {'/'.join(left)} left float (no int8 kernel in this mode)" if left else ""
    return text + (f"; {', '.join(custom)} runs in ONNX Runtime only" if custom else "")


def onnx_variants(
    model: Any,
    x_train: np.ndarray,
    x_sample: np.ndarray,
    workdir: str | Path,
    config: SweepConfig | None = None,
    *,
    length_axis: LengthAxis = None,
) -> tuple[list[OnnxFile], list[str]]:
    """Export fp32 ONNX and quantize it: ``([(name, kind, path, note)], notes)``.

    The first entry is the fp32 export (its note names the exporter, the verified logit
    difference and, with ``length_axis``, whether the time axis is dynamic); int8 dynamic
    and static follow when asked for and possible.
    """
    cfg = config or SweepConfig()
    work = Path(workdir)
    fp32 = work / "model_fp32.onnx"
    first, notes = _export_fp32(model, x_sample, fp32, cfg.exporter, length_axis)
    if first is None:
        return [], notes
    files = [first]
    if cfg.int8_dynamic:
        try:
            path = quantize_onnx_dynamic(fp32, work / "model_int8_dynamic.onnx")
            note = "weights int8, activations quantized per call" + _recurrent_note(path)
            files.append(("onnx int8 dynamic", "onnx-int8-dynamic", path, note))
        except Exception as exc:
            notes.append(f"int8 dynamic quantization failed ({brief(exc)})")
    if cfg.int8_static:
        calib = onnx_feed(x_train[: cfg.calibration_samples])
        try:
            path = quantize_onnx_static(fp32, work / "model_int8_static.onnx", calib)
            note = f"QDQ per-channel, MinMax calibration on {len(calib)} train samples" + _recurrent_note(path)
            files.append(("onnx int8 static", "onnx-int8-static", path, note))
        except Exception as exc:
            notes.append(f"int8 static quantization failed ({brief(exc)})")
    return files, notes


def onnx_runner(path: Any, *, threads: int | None = None) -> tuple[Runner, int]:
    """``(runner, threads)``: an onnxruntime CPU session on the file, with its intra-op threads set.

    Graph optimisations are at ``ORT_ENABLE_ALL`` (the default); ``threads`` defaults to
    torch's intra-op thread count so backends are compared on equal terms.
    """
    import onnxruntime as ort

    n_threads = int(threads or thread_settings().get("torch_intra_op_threads", 1))
    options = ort.SessionOptions()
    options.intra_op_num_threads = n_threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    name, onnx_type = inp.name, inp.type

    def run(batch: np.ndarray) -> Any:
        return session.run(None, {name: onnx_feed(batch, onnx_type)})[0]

    return run, n_threads
