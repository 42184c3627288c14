"""Load the user's classifier without ever unpickling untrusted code.

Accepted model specs (:func:`load_model`):
    * ``path/to/file.py:factory`` — the file is imported and ``factory()`` must return a
      ``torch.nn.Module``; optional ``weights`` (``.safetensors``, or a ``state_dict`` in
      ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt`` read with ``torch.load(weights_only=True)``).
    * ``package.module:factory`` — the same, for an importable module.
    * ``model.pt2`` — a ``torch.export`` program (``torch.export.save``).
    * ``model.onnx`` — run with onnxruntime on CPU through :class:`OnnxModel`.

Whole pickled models (``torch.save(model)``, ``.pkl``) are refused: unpickling runs
arbitrary code.

Example:
    >>> model, source = load_model("net.py:build", weights="net.safetensors")  # doctest: +SKIP
    >>> source  # doctest: +SKIP
    "factory 'build' in net.py with weights net.safetensors (sha256 1a2b3c4d5e6f)"
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import pickle
import re
import sys
import uuid
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from dlclinic.core.case import input_array
from dlclinic.core.errors import MissingDependencyError, ModelError, brief
from dlclinic.core.threads import torch_threads
from dlclinic.io.pickle_scan import scan_file

__all__ = ["ACCEPTED_MODELS", "OnnxModel", "file_sha256", "load_function", "load_model", "onnx_feed"]

ACCEPTED_MODELS = "path/to/file.py:factory (optionally with weights .safetensors/.pt/.pth/.bin), package.module:factory, model.pt2 (torch.export) or model.onnx"
PICKLED_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
TORCH_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
ONNX_BATCH = 256

_ONNX_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def onnx_feed(x: np.ndarray, onnx_type: str | None = None) -> np.ndarray:
    """``x`` in the dtype an ONNX input declares (``"tensor(int64)"`` for token ids); without a
    declared type, integers stay int64 (token ids) and floats become float32."""
    if onnx_type is None:
        return input_array(x)
    return np.ascontiguousarray(x, dtype=_ONNX_DTYPES.get(onnx_type, np.float32))


# --------------------------------------------------------------------------- public API


def load_model(spec: str, *, weights: str | Path | None = None, allow_pickle: bool = False) -> tuple[Any, str]:
    """Load a classifier from a spec string and describe where it came from.

    Args:
        spec: ``file.py:factory``, ``package.module:factory``, ``model.pt2`` or ``model.onnx``.
        weights: A weights file for a factory model: ``.safetensors`` or a ``state_dict``
            saved with ``torch.save`` (``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt``).
        allow_pickle: Load a whole pickled model (``torch.save(model)``) that you trust.
            The file is first scanned without loading (:mod:`dlclinic.io.pickle_scan`);
            files that import OS, process, network or interpreter functions, or that
            cannot be parsed, are refused even then. Off by default: unpickling runs code.

    Returns:
        ``(model, source)``: an ``nn.Module`` in eval mode (or an :class:`OnnxModel`) and
        a one-line description of where it came from.

    Raises:
        ModelError: The spec, the factory, the weights or the model file is unusable.
        MissingDependencyError: onnxruntime is needed for ``.onnx`` and is not installed.

    Example:
        >>> model, source = load_model("model.onnx")  # doctest: +SKIP
        >>> model.predict_logits(x).shape  # doctest: +SKIP
        (100, 10)
    """
    spec = str(spec).strip()
    factory = _split_factory_spec(spec)
    if factory is not None:
        # on one thread: building and loading the weights on several would start torch's OpenMP pool
        # here, and a checkup's forked processes could not then use several (threads_survive_fork)
        with torch_threads(1):
            return _load_factory(*factory, weights=weights)
    path = Path(spec)
    suffix = path.suffix.lower()
    if weights is not None:
        raise ModelError(
            f"weights {Path(weights).name!r}: expected a file.py:factory model to load them into, found model {path.name!r}, which carries its own weights; drop --weights"
        )
    if suffix in PICKLED_SUFFIXES:
        if allow_pickle:
            return _load_pickled_model(path)
        raise ModelError(
            f"model {path.name!r} looks like a whole pickled model, which dlclinic does not load because unpickling runs arbitrary code;"
            f" expected file.py:factory with --weights {path.name} (a state_dict), a .safetensors file, or a torch.export .pt2 (or --allow-pickle for a file you trust)"
        )
    if suffix == ".safetensors":
        raise ModelError(f"model {path.name!r} holds weights only; expected file.py:factory with --weights {path.name}")
    if suffix == ".py":
        raise ModelError(
            f"model {spec!r}: expected path/to/file.py:factory naming the function that builds the model, found no ':factory'"
        )
    if suffix == ".pt2":
        return _load_exported(path), f"torch.export program {path.name} (sha256 {_short_sha(path)})"
    if suffix == ".onnx":
        model = OnnxModel(path)
        return model, f"ONNX model {path.name} via onnxruntime (sha256 {model.sha256[:12]})"
    raise ModelError(f"model {spec!r}: expected {ACCEPTED_MODELS}, found suffix {suffix or 'none'!r}")


def load_function(spec: str, what: str) -> Any:
    """The callable named by ``file.py:function`` or ``module:function`` (a tokenizer, a preprocessing step).

    Raises:
        ModelError: The spec has no ``:function``, the file does not import, or the name is not callable.
    """
    parts = _split_factory_spec(str(spec).strip())
    if parts is None:
        raise ModelError(f"{what} {spec!r}: expected path/to/file.py:function or module:function")
    target, function = parts
    fn = getattr(_import_target(target), function, None)
    if not callable(fn):
        raise ModelError(f"{what} {spec!r}: {Path(target).name} has no function {function!r}")
    return fn


def load_factory(spec: str) -> Any:
    """The ``factory`` callable of a ``file.py:factory`` spec (fresh, untrained modules), or ``None``.

    Remedies use it to retrain the same architecture; ``.pt2`` and ``.onnx`` models
    carry no factory and cannot be retrained.
    """
    parts = _split_factory_spec(str(spec).strip())
    if parts is None:
        return None
    target, function = parts
    module = _import_target(target)
    factory = getattr(module, function, None)
    if not callable(factory):
        raise ModelError(
            f"{Path(target).name} has no function {function!r}; expected a factory returning a torch.nn.Module"
        )
    folder = Path(target).resolve().parent if target.lower().endswith(".py") else None

    def fresh() -> Any:
        with _sys_path(folder):
            return factory()

    return fresh


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """The hex SHA-256 of a file, read in chunks.

    Example:
        >>> file_sha256("model.onnx")  # doctest: +SKIP
        'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


class OnnxModel:
    """An ONNX classifier run by onnxruntime on CPU.

    Attributes:
        path: The ``.onnx`` file.
        input_name: The name of the (first) graph input.
        input_shape: The input shape, ``None`` for dynamic dimensions.
        input_dtype: The numpy dtype inputs are cast to.
        output_name: The name of the (first) graph output, taken as logits.
        sha256: The SHA-256 of the file.

    Example:
        >>> model = OnnxModel("model.onnx")  # doctest: +SKIP
        >>> model.predict_logits(np.zeros((4, 8), np.float32)).shape  # doctest: +SKIP
        (4, 3)
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"ONNX model file not found: {self.path}")
        try:
            import onnxruntime as ort
        except ImportError:
            raise MissingDependencyError("onnxruntime", "onnx") from None
        self.sha256 = file_sha256(self.path)
        self._session = _onnx_session(ort, self.path)
        first_input = self._session.get_inputs()[0]
        self.input_name: str = first_input.name
        self.input_shape: list[int | None] = [d if isinstance(d, int) else None for d in (first_input.shape or [])]
        self.input_dtype = np.dtype(_ONNX_DTYPES.get(first_input.type, np.float32))
        self.output_name: str = self._session.get_outputs()[0].name

    def __repr__(self) -> str:
        return f"OnnxModel({self.path.name!r}, input {self.input_name!r} {self.input_shape})"

    def predict_logits(self, x: np.ndarray) -> np.ndarray:
        """Run the model on ``x`` in batches of 256 and return float32 N×K logits.

        Raises:
            ModelError: The input does not fit the graph, or the output is not N×K.
        """
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[0] == 0:
            raise ModelError(
                f"ONNX model {self.path.name}: expected a batch of inputs shaped {self.input_shape}, found shape {x.shape}"
            )
        x = x.astype(self.input_dtype, copy=False)
        outputs = [self._run(x[start : start + ONNX_BATCH]) for start in range(0, x.shape[0], ONNX_BATCH)]
        logits = np.concatenate(outputs, axis=0).astype(np.float32, copy=False)
        if logits.ndim == 1:
            logits = logits[:, None]
        if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
            raise ModelError(
                f"ONNX model {self.path.name}: expected N×K logits for {x.shape[0]} inputs, found output shape {logits.shape}"
            )
        return logits

    def _run(self, batch: np.ndarray) -> np.ndarray:
        try:
            return np.asarray(self._session.run([self.output_name], {self.input_name: np.ascontiguousarray(batch)})[0])
        except Exception as exc:
            raise ModelError(
                f"ONNX model {self.path.name}: expected input {self.input_name!r} shaped {self.input_shape} ({self.input_dtype}), found {batch.shape} and onnxruntime failed ({brief(exc)})"
            ) from None


# --------------------------------------------------------------------------- factories


def _split_factory_spec(spec: str) -> tuple[str, str] | None:
    """``(target, function)`` when ``spec`` is ``file.py:fn`` or ``pkg.module:fn``, else ``None``."""
    if ":" not in spec:
        return None
    target, _, function = spec.rpartition(":")
    if target.lower().endswith(".py"):
        return target, function
    if re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", target) and function.isidentifier() and not Path(spec).exists():
        return target, function
    return None


def _load_factory(target: str, function: str, *, weights: str | Path | None) -> tuple[Any, str]:
    """Import ``target``, call ``function()``, check the result, load weights, set eval mode."""

    if not function.isidentifier():
        raise ModelError(f"model spec {target}:{function}: expected a function name after ':', found {function!r}")
    module = _import_target(target)
    where = Path(target).name if target.lower().endswith(".py") else target
    factory = getattr(module, function, None)
    if factory is None:
        found = sorted(
            k
            for k, v in vars(module).items()
            if callable(v) and not k.startswith("_") and getattr(v, "__module__", None) == module.__name__
        )
        raise ModelError(
            f"{where} has no function {function!r}; expected a factory returning a torch.nn.Module, found {found[:10] or 'no public functions'}"
        )
    if not callable(factory):
        raise ModelError(
            f"{function!r} in {where} is of type {type(factory).__name__}; expected a function returning a torch.nn.Module"
        )
    with _sys_path(Path(target).resolve().parent if target.lower().endswith(".py") else None):
        try:
            model = factory()
        except Exception as exc:
            raise ModelError(
                f"factory {function!r} in {where} raised {brief(exc)}; expected it to build the model with no arguments"
            ) from None
    if not isinstance(model, torch.nn.Module):
        raise ModelError(f"factory {function!r} in {where} returned {type(model).__name__}; expected a torch.nn.Module")
    source = f"factory {function!r} in {where}"
    if weights is not None:
        _apply_weights(model, Path(weights))
        source += f" with weights {Path(weights).name} (sha256 {_short_sha(Path(weights))})"
    model.eval()
    return model, source


def _import_target(target: str) -> Any:
    """Import a ``.py`` file under a unique module name, or an importable module."""
    if not target.lower().endswith(".py"):
        try:
            return importlib.import_module(target)
        except Exception as exc:
            raise ModelError(
                f"could not import module {target!r} ({brief(exc)}); expected an importable module or path/to/file.py"
            ) from None
    path = Path(target)
    if not path.is_file():
        raise ModelError(f"model factory file not found: {path}; expected path/to/file.py:factory")
    module_name = f"dlclinic_user_model_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ModelError(f"could not import {path}; expected a Python source file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        with _sys_path(path.resolve().parent):
            spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise ModelError(
            f"importing {path.name} failed with {brief(exc)}; expected a file that imports cleanly"
        ) from None
    return module


@contextmanager
def _sys_path(folder: Path | None) -> Iterator[None]:
    """Let a user's model file import its sibling modules while it is imported and called."""
    if folder is None or str(folder) in sys.path:
        yield
        return
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        with suppress(ValueError):
            sys.path.remove(str(folder))


# --------------------------------------------------------------------------- weights


def _apply_weights(model: Any, path: Path) -> None:
    """Load a state_dict file into ``model`` strictly, with a one-line report of mismatches."""
    state = _read_state_dict(path)
    expected = model.state_dict()
    state = _strip_prefix(state, expected)
    problems = _state_dict_problems(expected, state)
    if problems:
        raise ModelError(
            f"weights {path.name} do not fit the model built by the factory: {problems}; expected a state_dict saved from the same architecture"
        )
    try:
        model.load_state_dict(state, strict=True)
    except Exception as exc:
        raise ModelError(
            f"weights {path.name} could not be loaded into the model ({brief(exc)}); expected a state_dict of the same architecture"
        ) from None


def _read_state_dict(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        state = _read_safetensors(path)
    elif suffix in TORCH_WEIGHT_SUFFIXES:
        state = _read_torch_weights(path)
    else:
        raise ModelError(
            f"weights {path.name!r}: expected a .safetensors file or a state_dict in .pt/.pth/.bin/.ckpt, found suffix {suffix or 'none'!r}"
        )
    return _as_state_dict(state, path)


def _load_pickled_model(path: Path) -> tuple[Any, str]:
    """A whole pickled module, loaded only after a static scan finds nothing dangerous (opt-in)."""

    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    scan = scan_file(path)
    # besides the dangerous modules, refuse any unknown *function* outside torch: a class
    # (CamelCase) is the model's own architecture, a function is what a payload calls
    calls = sorted(
        {
            r.target
            for r in scan.imports
            if r.category == "unknown"
            and not r.target.startswith("torch.")
            and not r.target.rpartition(".")[2][:1].isupper()
        }
    )
    if scan.verdict in ("dangerous", "error") or calls:
        what = (
            ", ".join((scan.dangerous or tuple(calls))[:5]) if scan.verdict != "error" else (scan.error or "unreadable")
        )
        raise ModelError(
            f"model {path.name!r}: refused even with --allow-pickle, the file would call {what} when unpickled; expected a plain torch.save(model) file"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), weights_only=False, map_location="cpu")  # opt-in, after the scan
    except Exception as exc:
        raise ModelError(
            f"model {path.name!r}: expected a model saved with torch.save(model), found an unreadable file ({brief(exc)})"
        ) from None
    if not isinstance(obj, torch.nn.Module):
        raise ModelError(
            f"model {path.name!r}: expected a pickled nn.Module, found {type(obj).__name__}; for a state_dict use file.py:factory --weights {path.name}"
        )
    obj.eval()
    unknown = [r.target for r in scan.imports if r.category == "unknown"]
    note = f", references {', '.join(sorted(set(unknown))[:4])}" if unknown else ""
    return (
        obj,
        f"pickled model {path.name} loaded with --allow-pickle after a static scan ({scan.verdict}{note}; sha256 {_short_sha(path)})",
    )


def _read_safetensors(path: Path) -> Any:

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise ModelError(
            f"weights {path.name}: expected a valid .safetensors file, found an unreadable or corrupt one ({brief(exc)})"
        ) from None


def _read_torch_weights(path: Path) -> Any:

    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing
            warnings.simplefilter("ignore")
            return torch.load(str(path), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        blocked = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        what = f"it references {blocked.group(1)}" if blocked else "it is corrupt or holds Python objects"
        raise ModelError(
            f"weights {path.name}: expected a state_dict of tensors readable with torch.load(weights_only=True), found a file that is refused ({what});"
            " dlclinic never unpickles code: save torch.save(model.state_dict(), path) or use .safetensors"
        ) from None
    except Exception as exc:
        raise ModelError(
            f"weights {path.name}: expected a state_dict saved with torch.save, found an unreadable or corrupt file ({brief(exc)})"
        ) from None


def _as_state_dict(obj: Any, path: Path) -> dict[str, Any]:
    """Unwrap ``{"state_dict": ...}`` / ``{"model": ...}`` checkpoints and check it is name → tensor."""

    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ModelError(
            f"weights {path.name}: expected a state_dict (a dict of parameter name → tensor), found {type(obj).__name__}{' (empty)' if isinstance(obj, Mapping) else ''}"
        )
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelError(
            f"weights {path.name}: expected a state_dict of tensors, found non-tensor entries {[str(k) for k in bad[:5]]}"
        )
    return {str(k): v for k, v in obj.items()}


def _strip_prefix(state: dict[str, Any], expected: Mapping[str, Any]) -> dict[str, Any]:
    """Drop a ``module.`` (DataParallel) or ``model.`` (Lightning) prefix when it is the only difference."""
    if set(state) == set(expected):
        return state
    for prefix in ("module.", "model."):
        if all(k.startswith(prefix) for k in state):
            stripped = {k[len(prefix) :]: v for k, v in state.items()}
            if set(stripped) == set(expected):
                return stripped
    return state


def _state_dict_problems(expected: Mapping[str, Any], given: Mapping[str, Any]) -> str:
    """Missing keys, unexpected keys and shape mismatches (up to 5 each), or ``""``."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k}: model {tuple(expected[k].shape)} vs file {tuple(given[k].shape)}"
        for k in expected
        if k in given and tuple(expected[k].shape) != tuple(given[k].shape)
    ]
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            parts.append(f"{len(items)} {label} {items[:5]}{more}")
    return "; ".join(parts)


# --------------------------------------------------------------------------- .pt2 / .onnx


def _load_exported(path: Path) -> Any:
    """``torch.export.load(path).module()``: an nn.Module for inference (mode fixed at export)."""

    if not path.is_file():
        raise ModelError(f"torch.export model file not found: {path}")
    with _quiet("torch.export"):
        try:
            program = torch.export.load(str(path))
            return program.module()
        except Exception as exc:
            raise ModelError(
                f"model {path.name}: expected a torch.export program saved with torch.export.save, found an unreadable or corrupt file ({brief(exc)})"
            ) from None


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Silence a library logger's tracebacks while we turn its failure into a ModelError."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _onnx_session(ort: Any, path: Path) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = _num_threads()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(
            f"model {path.name}: expected a valid ONNX model, found an unreadable or corrupt file ({brief(exc)})"
        ) from None


def _num_threads() -> int:
    try:
        return int(torch.get_num_threads()) or 2
    except Exception:
        return min(os.cpu_count() or 2, 8)


# --------------------------------------------------------------------------- small helpers


def _short_sha(path: Path) -> str:
    return file_sha256(path)[:12]
