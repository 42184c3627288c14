"""Exported and serialised forms of a model, each verified against eager PyTorch.

* :mod:`dlclinic.export.verified` — ONNX and ``torch.export`` ``.pt2`` exports, loaded back
  and compared with the eager model before the file is put in place.
* :mod:`dlclinic.export.onnx_variants` — int8 quantizations of an ONNX export (ONNX Runtime
  dynamic and static) and ONNX Runtime sessions to run them.
* :mod:`dlclinic.export.weights` — a model's weights as the bytes of a safetensors file.
"""

from __future__ import annotations

from dlclinic.export.verified import (
    SEQUENCE_MODALITIES,
    ExportResult,
    export_onnx,
    export_pt2,
    length_axis_for,
    verify_export,
)

__all__ = ["SEQUENCE_MODALITIES", "ExportResult", "export_onnx", "export_pt2", "length_axis_for", "verify_export"]
