"""Running a user's model safely: one place that knows the quirks.

``predict_logits`` evaluates any classifier dlclinic accepts in batches, under
``inference_mode``, in eval mode (restored afterwards; ``torch.export`` modules that refuse
``.eval()`` are left as they are), with inputs cast to the model's dtype and device, and
tuple/list outputs unwrapped to their first element. Mixed precision follows
:func:`dlclinic.core.device.active_precision` (float32 by default); logits come back as CPU float32.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from dlclinic.core.case import Case, usable_inputs
from dlclinic.core.device import active_precision, autocast
from dlclinic.core.errors import InputError, ModelError
from dlclinic.core.threads import torch_threads

__all__ = [
    "channels_last",
    "check_label_range",
    "contiguous",
    "conv_layout",
    "eval_mode",
    "first_output",
    "gradient_batch",
    "inference_batch",
    "input_tensor",
    "model_device",
    "model_input_spec",
    "model_tensors",
    "predict_logits",
    "reads_token_ids",
]


def reads_token_ids(model: Any) -> bool:
    """Whether the model has an embedding layer (``nn.Embedding`` / ``nn.EmbeddingBag``): it reads integer ids."""
    modules = getattr(model, "modules", None)
    return callable(modules) and any(isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag)) for m in modules())


def input_tensor(x: np.ndarray, dtype: Any = torch.float32, device: Any = None) -> torch.Tensor:
    """Model inputs as a tensor: floats in ``dtype`` on ``device``, integers (token ids) as int64.

    The one conversion every caller uses, so token ids never become floats on their way to an
    embedding layer.

    Example:
        >>> input_tensor(np.array([[1, 2]])).dtype, input_tensor(np.array([[1.0]]), torch.float64).dtype
        (torch.int64, torch.float64)
    """
    with warnings.catch_warnings():  # a read-only array (usable_inputs' view): the tensor is only read
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        t = torch.from_numpy(np.ascontiguousarray(x))
    if t.is_floating_point() or t.dtype == torch.bool:
        return t.to(device=device, dtype=dtype)
    return t.to(device=device, dtype=torch.int64)


@contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Put ``model`` in eval mode for the block and restore its previous mode after."""
    was_training = getattr(model, "training", False)
    try:
        model.eval()
        switched = True
    except (NotImplementedError, AttributeError, RuntimeError):  # torch.export modules refuse .eval()
        switched = False
    try:
        yield
    finally:
        if switched and was_training:
            model.train(True)


def model_input_spec(model: Any) -> tuple[Any, Any]:
    """``(dtype, device)`` of the model's first floating parameter (float32/CPU when it has none).

    The one place that says where a tensor meeting the model must live: every helper that makes
    inputs, labels or noise for a model creates them on this device.
    """

    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype, p.device
    return torch.float32, torch.device("cpu")


def model_device(model: Any) -> torch.device:
    """The device of ``model``'s first floating parameter (the CPU when it has none): where its inputs, labels and noise go."""
    device: torch.device = model_input_spec(model)[1]
    return device


def model_tensors(model: Any, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, labels)`` for a training loop on ``model``: :func:`input_tensor` floats (float32) or
    int64 ids, and int64 labels, both on the model's device."""
    device = model_device(model)
    return input_tensor(x, device=device), torch.from_numpy(np.asarray(y, dtype=np.int64)).to(device)


def first_output(out: Any) -> Any:
    """The logits of a model that returns a tuple/list/dict (first element / ``'logits'``)."""
    if isinstance(out, dict):
        out = out.get("logits", next(iter(out.values())))
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out


def channels_last(net: torch.nn.Module) -> bool:
    """Put a CPU model with 4-D (convolution) weights in channels-last layout, in place; whether it did.

    On CPU, oneDNN's convolutions and max-pooling run much faster on channels-last tensors (a
    small image CNN trains ~30 % faster on one thread); the values are the same, only the
    layout of the weights changes. :func:`contiguous` puts them back after training.
    """
    params = list(net.parameters())
    if not params or any(p.device.type != "cpu" for p in params) or not any(p.dim() == 4 for p in params):
        return False
    net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # the stubs lack memory_format
    return True


def contiguous(net: torch.nn.Module) -> torch.nn.Module:
    """The model with its weights back in the default (contiguous) layout, in place."""
    return net.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]  # the stubs lack memory_format


@contextmanager
def conv_layout(model: Any) -> Iterator[None]:
    """Within: :func:`channels_last` on the model; its default layout back, after.

    oneDNN's CPU convolutions run on channels-last weights without the reorders the default
    layout costs them: the issue-21 CNN (Conv 1→32→64 on 28×28) scored 4,096 rows in 0.90 s
    instead of 1.57 s on two threads, and 1.57 s instead of 2.46 s on one, the same logits up
    to float rounding. Inputs may stay in the default layout. A model that is not a module,
    one already channels-last, or one that refuses ``.to`` (``torch.export`` modules) is left
    as it is.
    """
    switch = False
    if callable(getattr(model, "parameters", None)) and all(
        p.is_contiguous() for p in model.parameters() if p.dim() == 4
    ):
        try:
            switch = channels_last(model)
        except (AttributeError, NotImplementedError, RuntimeError, TypeError):
            switch = False
    try:
        yield
    finally:
        if switch:
            contiguous(model)


def inference_batch(device: torch.device) -> int:
    """Rows per inference batch: 128 on a CPU, 512 on an accelerator.

    On a CPU a convolution's workspace grows with the batch while the throughput does not: the
    issue-21 CNN (Conv 1→32→64 on 28×28) scored 5,120 rows in 2.9 s at batch 128 and 4.2 s
    at 512, peaking at 338 MB instead of 534–707 MB (one process, two threads).
    """
    return 128 if device.type == "cpu" else 512


def gradient_batch(device: torch.device) -> int:
    """Rows per batch of the checkup's own backward passes through the model (attacks): 64 on a CPU, 256 on an accelerator.

    A backward pass keeps every activation of the batch; on a CPU a larger batch buys no
    throughput either: PGD-L∞ (10 steps) on 1,024 rows of the issue-21 CNN took 8.2 s at
    batch 64, 8.9 s at 128 and 14.6 s at 256, peaking 190–215, 295–327 and 346–383 MB over
    the process (one process, two threads).
    """
    return 64 if device.type == "cpu" else 256


def predict_logits(model: Any, x: np.ndarray, *, batch_size: int | None = None) -> np.ndarray:
    """Logits (N×K, float32 numpy) of ``model`` on ``x``, batch by batch (:func:`inference_batch` rows by default).

    Accepts an ``nn.Module`` / exported module, or an object with ``predict_logits`` (ONNX).
    """
    predict = getattr(model, "predict_logits", None)
    if predict is not None and not hasattr(model, "state_dict"):
        bs = batch_size or inference_batch(torch.device("cpu"))
        return np.concatenate([np.asarray(predict(x[i : i + bs]), dtype=np.float32) for i in range(0, len(x), bs)])

    dtype, device = model_input_spec(model)
    batch_size = batch_size or inference_batch(device)
    parts = []
    with eval_mode(model), conv_layout(model), torch.inference_mode(), autocast(active_precision(), device.type):
        for i in range(0, len(x), batch_size):
            xb = input_tensor(x[i : i + batch_size], dtype, device)
            try:
                out = first_output(model(xb))
            except Exception as exc:
                raise ModelError(
                    f"the model failed on inputs of shape {tuple(xb.shape)}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                ) from None
            parts.append(out.detach().float().cpu().numpy())
    return np.concatenate(parts)


def check_label_range(case: Case) -> None:
    """A label the model cannot output is a data problem, found before any work: label 12 for a 10-class model.

    The model is run on one train row for its output width, on one thread: a process that
    ran torch on several threads keeps an OpenMP pool its forked children cannot use
    (:func:`dlclinic.core.workers.threads_survive_fork`). A model that fails on it is left
    for the checkup to report (with the batch shape).

    Raises:
        InputError: a split holds a label at or beyond the model's number of outputs (the row is named).
    """
    if case.model is None:
        return
    try:
        with torch_threads(1):
            width = int(predict_logits(case.model, usable_inputs(case.train.x[:1])).shape[1])
    except Exception:  # the forward pass fails: the checkup says why, with the batch shape
        return
    for split in case.splits.values():
        if split.y is not None and split.y.size and int(split.y.max()) >= width:
            row = int(np.flatnonzero(split.y >= width)[0])
            raise InputError(
                f"split {split.name!r} labels: expected values in 0..{width - 1} (the model outputs {width} classes), found {int(split.y[row])} at row {row}"
            )
