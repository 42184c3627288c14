"""Loading data and models from files.

Data: :func:`load_split` reads ``.npz`` / CSV / Parquet / image folders into a
:class:`LoadedSplit`; :func:`load_case` builds a :class:`~dlclinic.core.case.Case`.
Models: :func:`load_model` accepts ``file.py:factory`` (+ weights), ``.pt2`` and ``.onnx``;
whole pickled models are never loaded.

Importing this package loads no heavy library; torch, pandas, PIL and onnxruntime are
imported inside the functions that need them.
"""

from __future__ import annotations

from dlclinic.io.data import LoadedSplit, load_case, load_like, load_split
from dlclinic.io.models import OnnxModel, file_sha256, load_factory, load_model

__all__ = [
    "LoadedSplit",
    "OnnxModel",
    "file_sha256",
    "load_case",
    "load_factory",
    "load_like",
    "load_model",
    "load_split",
]
