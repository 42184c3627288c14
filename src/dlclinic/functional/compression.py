"""Compressed variants of a classifier: pruning, distillation, and the Pareto front (the maths).

* ONNX Runtime int8 (dynamic, and static QDQ calibrated on train samples) is built by
  :mod:`dlclinic.export.onnx_variants`; the sweep over every variant, which writes and runs
  those files, is :func:`dlclinic.providers.compression_sweep.compression_sweep`.
* int8 dynamic eager (:func:`quantize_dynamic_int8`, ``torch.ao.quantization.quantize_dynamic``)
  for models with a recurrent layer: LSTM/GRU and Linear weights int8, activations quantized
  per call; embedding tables 8-bit per row (weight-only). ONNX Runtime cannot static-quantize
  an LSTM/GRU (it stays float in the QDQ file), so this and ONNX dynamic int8 are the
  variants that shrink a recurrent model.
* bf16 eager (``model.to(torch.bfloat16)``): half the weight bytes; on CPUs without bf16
  units it is usually slower, which the latency column then shows.
* Magnitude pruning (``torch.nn.utils.prune.global_unstructured`` with L1): zeros weights
  at a global sparsity. The dense file does not shrink (zeros are stored); the variant
  reports the non-zero count and the deflate-compressed size, which does.
* Structured channel pruning (:func:`channel_prune`, hand-written because no maintained
  library for it is a dependency here): the model is traced with ``torch.export``; every
  Conv2d/Linear whose output channels reach exactly the next Conv2d/Linear through
  channel-wise ops (BatchNorm, activations, pooling, dropout, flatten, spatial mean) loses
  its lowest-L1 channels; the producer, its BatchNorm and the consumer's input slice are
  replaced by smaller tensors, so the parameter count and the file really shrink. Layers
  whose channels are tied elsewhere (residual adds, concatenations, the output) are left
  alone.
* Distillation (:func:`distill`; Hinton et al., 2015, "Distilling the Knowledge in a Neural
  Network"): a narrower student — the teacher channel-pruned to a width ratio — trained
  on the teacher's temperature-softened outputs plus the labels.

Paired accuracy differences are reported with a normal-approximation CI on the per-sample
differences (the same test rows score both models).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils import prune

from dlclinic.core.errors import brief
from dlclinic.core.inference import eval_mode, input_tensor, model_input_spec, predict_logits

__all__ = [
    "PrunePlan",
    "Sweep",
    "SweepConfig",
    "Variant",
    "channel_prune",
    "choose_variant",
    "deflate_size_bytes",
    "distill",
    "magnitude_prune",
    "paired_accuracy_drop",
    "parameter_count",
    "pareto_front",
    "prune_plans",
    "quantize_dynamic_int8",
    "remove_masks",
]


# --------------------------------------------------------------------------- sizes


def parameter_count(model: Any, *, nonzero: bool = False) -> int:
    """Number of parameters (or of non-zero parameter entries) of a torch module."""
    if nonzero:
        return int(sum(int((p != 0).sum()) for p in model.parameters()))
    return int(sum(p.numel() for p in model.parameters()))


def deflate_size_bytes(blob: bytes) -> int:
    """Size after zlib (deflate, level 6): what zeros from unstructured pruning save on disk/over the wire."""
    return len(zlib.compress(blob, 6))


# --------------------------------------------------------------------------- statistics


def paired_accuracy_drop(
    base_correct: np.ndarray, variant_correct: np.ndarray, *, z: float = 1.96
) -> tuple[float, float, float]:
    """``(drop, low, high)``: base accuracy minus variant accuracy with a paired normal CI.

    Example:
        >>> paired_accuracy_drop(np.array([1, 1, 1, 0]), np.array([1, 0, 1, 0]))[0]
        0.25
    """
    d = np.asarray(base_correct, dtype=np.float64) - np.asarray(variant_correct, dtype=np.float64)
    n = len(d)
    if n == 0:
        return 0.0, 0.0, 0.0
    mean = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    return mean, mean - z * se, mean + z * se


def pareto_front(cost: Sequence[float], accuracy: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats (lower or equal cost and higher or equal accuracy, one strictly).

    Example:
        >>> pareto_front([1.0, 2.0, 3.0], [0.9, 0.8, 0.95])
        [0, 2]
    """
    c = np.asarray(cost, dtype=np.float64)
    a = np.asarray(accuracy, dtype=np.float64)
    keep = []
    for i in range(len(c)):
        dominated = np.any((c <= c[i]) & (a >= a[i]) & ((c < c[i]) | (a > a[i])))
        if not dominated:
            keep.append(i)
    return sorted(keep, key=lambda i: (c[i], -a[i]))


# --------------------------------------------------------------------------- pruning


def magnitude_prune(model: Any, sparsity: float, *, keep_masks: bool = False) -> Any:
    """A copy of ``model`` with the ``sparsity`` share of Conv/Linear weights (global L1) set to zero.

    With ``keep_masks=True`` the pruning masks stay attached (``weight_orig`` × mask), so
    fine-tuning keeps the zeros; call :func:`remove_masks` afterwards.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"`0 <= sparsity < 1` must hold, but got {sparsity=}")
    net = copy.deepcopy(model)
    targets = [
        (m, "weight") for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv1d, torch.nn.Linear))
    ]
    if not targets or sparsity == 0:
        return net
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=float(sparsity))
    if not keep_masks:
        remove_masks(net)
    return net.eval()


def remove_masks(model: Any) -> Any:
    """Make pruning permanent: fold ``weight_orig`` × ``weight_mask`` into ``weight`` (in place)."""
    for module in model.modules():
        if hasattr(module, "weight_orig"):
            prune.remove(module, "weight")
    return model


_PASS_OPS = (
    "batch_norm",
    "_native_batch_norm_legit_no_training",
    "relu",
    "relu_",
    "gelu",
    "silu",
    "sigmoid",
    "tanh",
    "leaky_relu",
    "hardtanh",
    "hardswish",
    "elu",
    "dropout",
    "max_pool2d",
    "avg_pool2d",
    "adaptive_avg_pool2d",
    "max_pool1d",
    "avg_pool1d",
    "clone",
    "contiguous",
    "_to_copy",
    "alias",
    "detach",
)


@dataclass(frozen=True)
class PrunePlan:
    """One prunable layer: the producer, the BatchNorms after it and its consumers.

    ``consumers`` are ``(module path, block)``: ``block`` > 1 when a flatten lies between
    (each channel feeds ``block`` consecutive inputs of the consumer Linear).
    """

    producer: str
    norms: tuple[str, ...]
    consumers: tuple[tuple[str, int], ...]
    channels: int


def _op_name(node: Any) -> str:
    target = node.target
    name = getattr(target, "__name__", str(target))
    return str(name).split(".")[0]


_LAYERS = (torch.nn.Conv2d, torch.nn.Conv1d, torch.nn.Linear)


@dataclass(frozen=True)
class _Trace:
    """A ``torch.export`` graph's parameter/buffer owners and the model's modules by path."""

    owners: dict[str, str]
    modules: dict[str, Any]

    def module_of(self, node: Any) -> str | None:
        name = self.owners.get(getattr(node, "name", ""))
        return name.rsplit(".", 1)[0] if name else None


def _producer(node: Any, trace: _Trace) -> str | None:
    """The Conv/Linear module a graph node calls, when it is an ungrouped prunable layer."""
    if node.op != "call_function" or _op_name(node) not in ("conv2d", "linear", "conv1d"):
        return None
    producer = trace.module_of(node.args[1]) if len(node.args) > 1 else None
    if producer is None or not isinstance(trace.modules.get(producer), _LAYERS):
        return None
    if getattr(trace.modules[producer], "groups", 1) != 1:
        return None
    return producer


def _follow(
    user: Any, current: Any, block: int, channels: int, trace: _Trace, plan: dict[str, list[Any]]
) -> tuple[Any, int] | bool:
    """One user of a producer's output: ``(node, block)`` to walk on, ``True`` when it ends a path, ``False`` when it ties the channels."""
    op = _op_name(user) if user.op == "call_function" else user.op
    if op in ("conv2d", "conv1d", "linear") and user.args[0] is current:
        consumer = trace.module_of(user.args[1])
        cmod = trace.modules.get(consumer or "")
        if consumer is None or getattr(cmod, "groups", 1) != 1 or not isinstance(cmod, _LAYERS):
            return False
        if isinstance(cmod, torch.nn.Linear) and int(cmod.weight.shape[1]) != channels * block:
            return False
        plan["consumers"].append((consumer, block))
        return True
    if op in _PASS_OPS and user.args[0] is current:
        if "batch_norm" in op:
            bn = trace.module_of(user.args[1]) if user.args[1] is not None else None
            if bn is None or not isinstance(trace.modules.get(bn), torch.nn.modules.batchnorm._BatchNorm):
                return False
            plan["norms"].append(bn)
        return user, block
    if op in ("flatten", "view", "reshape") and user.args[0] is current:
        shape = tuple(current.meta["val"].shape)
        out_shape = tuple(user.meta["val"].shape)
        if len(out_shape) != 2 or len(shape) < 2 or shape[1] != channels:
            return False
        return user, block * int(np.prod(shape[2:]) if len(shape) > 2 else 1)
    if (
        op == "mean"
        and user.args[0] is current
        and tuple(sorted(int(d) for d in user.args[1])) in ((2, 3), (2,), (-2, -1), (-1,))
    ):
        return user, block
    return False


def _plan_for(node: Any, producer: str, trace: _Trace) -> PrunePlan | None:
    """Walk the producer's output through channel-wise ops to its consumers; ``None`` when the channels are tied."""
    channels = int(trace.modules[producer].weight.shape[0])
    plan: dict[str, list[Any]] = {"norms": [], "consumers": []}
    frontier = [(node, 1)]
    seen = set()
    while frontier:
        current, block = frontier.pop()
        for user in current.users:
            if user in seen:
                continue
            seen.add(user)
            step = _follow(user, current, block, channels, trace, plan)
            if step is False:
                return None
            if isinstance(step, tuple):
                frontier.append(step)
    if not plan["consumers"]:
        return None
    return PrunePlan(producer, tuple(dict.fromkeys(plan["norms"])), tuple(dict.fromkeys(plan["consumers"])), channels)


def prune_plans(model: Any, sample_x: np.ndarray) -> list[PrunePlan]:
    """The layers :func:`channel_prune` can shrink, found on a ``torch.export`` trace."""
    dtype, device = model_input_spec(model)
    xb = input_tensor(sample_x[:2], dtype, device)
    net = copy.deepcopy(model).eval()
    with torch.no_grad(), warnings.catch_warnings():  # e.g. an LSTM's _flat_weights "assigned during export"
        warnings.simplefilter("ignore")
        program = torch.export.export(net, (xb,))
    params = dict(program.graph_signature.inputs_to_parameters)
    buffers = dict(program.graph_signature.inputs_to_buffers)
    trace = _Trace({**params, **buffers}, dict(net.named_modules()))
    plans = []
    for node in program.graph.nodes:
        producer = _producer(node, trace)
        if producer is None:
            continue
        plan = _plan_for(node, producer, trace)
        if plan is not None:
            plans.append(plan)
    return plans


def channel_prune(
    model: Any, keep_ratio: float, sample_x: np.ndarray, *, min_channels: int = 2
) -> tuple[Any, list[PrunePlan]]:
    """A copy of ``model`` whose prunable layers keep ``keep_ratio`` of their output channels.

    Channels are ranked by the L1 norm of the producer's filter times ``|gamma|`` of the
    BatchNorm after it (a channel a BN scales to zero carries nothing). The returned
    model has smaller tensors (parameter count and file size drop) and is ready for
    fine-tuning or distillation; accuracy before fine-tuning usually falls.

    Returns:
        ``(pruned_model, plans)``; ``plans`` is empty when nothing could be pruned.
    """
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"`0 < keep_ratio <= 1` must hold, but got {keep_ratio=}")
    plans = prune_plans(model, sample_x)
    net = copy.deepcopy(model).eval()
    modules = dict(net.named_modules())
    for plan in plans:
        prod = modules[plan.producer]
        w = prod.weight.detach()
        score = w.abs().reshape(w.shape[0], -1).sum(1)
        for bn in plan.norms:
            if getattr(modules[bn], "weight", None) is not None:
                score = score * modules[bn].weight.detach().abs()
        k = max(min_channels, int(round(keep_ratio * plan.channels)))
        if k >= plan.channels:
            continue
        keep = torch.sort(torch.topk(score, k).indices).values
        with torch.no_grad():
            prod.weight = torch.nn.Parameter(w[keep].clone())
            if prod.bias is not None:
                prod.bias = torch.nn.Parameter(prod.bias.detach()[keep].clone())
            if isinstance(prod, torch.nn.Linear):
                prod.out_features = k
            else:
                prod.out_channels = k
            for name in plan.norms:
                bn = modules[name]
                for attr in ("weight", "bias"):
                    t = getattr(bn, attr, None)
                    if t is not None:
                        setattr(bn, attr, torch.nn.Parameter(t.detach()[keep].clone()))
                for attr in ("running_mean", "running_var"):
                    t = getattr(bn, attr, None)
                    if t is not None:
                        setattr(bn, attr, t[keep].clone())
                bn.num_features = k
            for name, block in plan.consumers:
                cons = modules[name]
                cw = cons.weight.detach()
                idx = (
                    (keep[:, None] * block + torch.arange(block, device=keep.device)[None, :]).reshape(-1)
                    if block > 1
                    else keep
                )
                cons.weight = torch.nn.Parameter(cw[:, idx].clone())
                if isinstance(cons, torch.nn.Linear):
                    cons.in_features = int(idx.numel())
                else:
                    cons.in_channels = k
    return net, plans


# --------------------------------------------------------------------------- int8 dynamic (eager)

#: Layers with a dynamic int8 kernel in ``torch.ao.quantization`` (weights int8, activations per call).
_DYNAMIC_INT8 = (
    torch.nn.LSTM,
    torch.nn.GRU,
    torch.nn.LSTMCell,
    torch.nn.GRUCell,
    torch.nn.RNNCell,
    torch.nn.Linear,
)
_RECURRENT = _DYNAMIC_INT8[:-1]
_EMBEDDINGS = (torch.nn.Embedding, torch.nn.EmbeddingBag)


def _quantize_dynamic(model: Any, embeddings: bool) -> Any:
    """``quantize_dynamic`` on a copy; embedding tables 8-bit per row (weight-only) when ``embeddings``."""
    # attribute access, not an import: torch loads torch.ao.quantization itself, and a torch
    # without it (deprecated for torchao) makes this variant fail with a note, not the module
    tq = torch.ao.quantization
    spec: dict[Any, Any] = {t: tq.default_dynamic_qconfig for t in _DYNAMIC_INT8}
    if embeddings:
        spec.update({t: tq.float_qparams_weight_only_qconfig for t in _EMBEDDINGS})
    with warnings.catch_warnings():  # deprecation warnings: the variant's note says what it is
        warnings.simplefilter("ignore")
        return tq.quantize_dynamic(copy.deepcopy(model).eval(), spec, dtype=torch.qint8)


def quantize_dynamic_int8(model: Any, sample_x: np.ndarray) -> tuple[Any | None, str]:
    """``(quantized copy, note)`` — int8 dynamic quantisation of a recurrent model — or ``(None, why not)``.

    ``torch.ao.quantization.quantize_dynamic`` (Jacob et al., 2018, "Quantization and
    Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference"): the
    LSTM/GRU (and their cells) and Linear weights are stored int8 per tensor and the
    activations are quantized on the fly at each call, so no calibration data is needed.
    Embedding tables are stored 8-bit per row with a float scale and offset
    (``float_qparams_weight_only_qconfig``: weight-only, the lookup returns floats, the
    padding row stays zero); when that conversion fails they stay float and the note says
    so. Token ids still reach the embedding as int64. Plain ``nn.RNN`` has no dynamic int8
    kernel and stays float.

    Only models with a recurrent layer get this variant (``None`` otherwise): for
    convolutional models ONNX Runtime's static int8 is the one that pays, and a Linear head
    alone saves nothing. ``torch.ao.quantization`` is deprecated in favour of ``torchao``,
    which does not quantize recurrent layers; ``None`` with the reason when it is gone. The
    copy is run on ``sample_x`` before it is returned: a model whose forward does not
    accept the quantized layers (e.g. one that reads ``self.lstm.weight_ih_l0``) gets
    ``None`` and the error.
    """
    kinds = sorted({type(m).__name__ for m in model.modules() if isinstance(m, _RECURRENT)})
    if not kinds:
        return None, "int8 dynamic (eager) skipped: no LSTM/GRU layer (ONNX Runtime int8 covers the other layers)"
    has_embedding = any(isinstance(m, _EMBEDDINGS) for m in model.modules())
    failures: list[str] = []
    for embeddings in (True, False) if has_embedding else (False,):
        try:
            net = _quantize_dynamic(model, embeddings)
            predict_logits(net, np.asarray(sample_x)[:8])
        except Exception as exc:
            failures.append(brief(exc))
            continue
        float_left = sorted({type(m).__name__ for m in net.modules() if type(m) in (torch.nn.RNN, *_EMBEDDINGS)})
        note = f"torch.ao.quantization.quantize_dynamic: {'/'.join(kinds)} and Linear weights int8, activations quantized per call"
        if embeddings:
            note += "; embedding tables 8-bit per row (weight-only)"
        elif has_embedding:
            note += f"; embedding tables left float (8-bit per-row conversion failed: {failures[0]})"
        if float_left:
            note += f"; left float: {', '.join(float_left)}"
        return net.eval(), note
    return None, f"int8 dynamic (eager) quantisation failed ({'; '.join(failures)})"


# --------------------------------------------------------------------------- distillation


def distill(
    teacher: Any,
    student: Any,
    x: np.ndarray,
    y: np.ndarray | None = None,
    *,
    epochs: int = 3,
    batch_size: int = 64,
    lr: float = 2e-3,
    temperature: float = 4.0,
    alpha: float = 0.7,
    seed: int = 0,
    max_seconds: float | None = None,
    copy_student: bool = True,
) -> Any:
    """Train a copy of ``student`` to match ``teacher`` (Hinton et al., 2015).

    Loss: ``alpha * T² * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``
    (labels optional). AdamW with a cosine schedule; stops early at ``max_seconds``.
    ``copy_student=False`` trains ``student`` itself (needed for modules carrying pruning
    masks, which cannot be deep-copied).

    The teacher's logits and the input tensors are made batch by batch, for the rows a step
    uses: a student trained for two seconds on 60,000 rows sees a few thousand of them, and
    ``x`` may be a memory map larger than memory (nothing of size N is built but the order).

    Example:
        >>> from torch import nn
        >>> x = np.random.default_rng(0).random((32, 4), dtype=np.float32)
        >>> teacher = nn.Linear(4, 3)
        >>> distill(teacher, nn.Linear(4, 3), x, epochs=1, batch_size=8).training
        False
    """
    torch.manual_seed(seed)
    net = copy.deepcopy(student) if copy_student else student
    device, teacher_device = model_input_spec(net)[1], model_input_spec(teacher)[1]
    y_all = np.asarray(y, dtype=np.int64) if y is not None else None
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = max(1, epochs * math.ceil(len(x) / batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(len(x), generator=gen).numpy()
        for i in range(0, len(perm), batch_size):
            idx = np.sort(perm[i : i + batch_size])  # sorted: sequential reads from a memory map
            if len(idx) < 2:
                continue
            xb = input_tensor(x[idx], device=device)
            with torch.no_grad(), eval_mode(teacher):
                soft_target = F.softmax(teacher(xb.to(teacher_device)).float().to(device) / temperature, 1)
            out = net(xb)
            soft = F.kl_div(F.log_softmax(out / temperature, 1), soft_target, reduction="batchmean") * temperature**2
            hard = F.cross_entropy(out, torch.from_numpy(y_all[idx]).to(device)) if y_all is not None else 0.0
            loss = alpha * soft + (1 - alpha) * hard
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if max_seconds is not None and time.perf_counter() - started > max_seconds:
                return net.eval()
    return net.eval()


# --------------------------------------------------------------------------- the sweep


@dataclass(frozen=True)
class Variant:
    """One compressed variant, measured on the same test rows as the original.

    ``drop`` is original accuracy minus this variant's (positive = worse), with a paired
    95 % CI; ``p50_ms`` is the batch-1 median latency; ``size_bytes`` the file on disk
    (safetensors for torch variants, the ``.onnx`` file otherwise); ``deflate_bytes`` that
    file compressed with zlib.
    """

    name: str
    kind: str
    format: str
    accuracy: float
    drop: float
    drop_low: float
    drop_high: float
    size_bytes: int
    deflate_bytes: int
    n_params: int
    n_nonzero: int
    p50_ms: float
    p99_ms: float
    path: Path | None = None
    note: str = ""


@dataclass(frozen=True)
class SweepConfig:
    """What :func:`dlclinic.providers.compression_sweep.compression_sweep` tries, and its budgets.

    ``torch_int8_dynamic`` adds the eager int8 variant of :func:`quantize_dynamic_int8`
    (models with a recurrent layer). Off by default: the module it makes has no ``.pt2``
    or ONNX export, so only the check measures it; a remedy ships ONNX Runtime's int8
    file, which quantizes the same LSTM, Linear and embedding weights.
    ``max_eval_rows`` > 0 scores the variants on a seeded sample of that many rows of the
    scored split (0: all rows), so the sweep's cost does not grow with the split.
    """

    onnx: bool = True
    exporter: str = "dynamo"
    int8_dynamic: bool = True
    int8_static: bool = True
    torch_int8_dynamic: bool = False
    calibration_samples: int = 128
    bf16: bool = True
    sparsities: tuple[float, ...] = (0.5, 0.9)
    keep_ratios: tuple[float, ...] = (0.5,)
    distill_keep_ratio: float | None = 0.5
    distill_epochs: int = 2
    distill_seconds: float = 2.0
    finetune_epochs: int = 0
    latency_rounds: int = 15
    latency_seconds: float = 1.0
    latency_threads: int | None = 1
    seed: int = 0
    max_eval_rows: int = 0


@dataclass(frozen=True)
class Sweep:
    """The variants (first = the original), the test rows used and kept torch modules by name."""

    variants: tuple[Variant, ...]
    n_test: int
    models: dict[str, Any]
    notes: tuple[str, ...] = ()

    def by_name(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)


def choose_variant(
    variants: Sequence[Variant], max_accuracy_drop: float, *, objective: str = "size", conservative: bool = True
) -> Variant | None:
    """The smallest (``objective="size"``) or fastest (``"latency"``) variant within the drop tolerance.

    Near-ties (within 5 % of the best size, or of the best latency) go to the faster
    (or smaller) variant: a 3 % larger file that runs twice as fast is the better choice.

    With ``conservative=True`` the upper end of the drop's 95 % CI must be within the
    tolerance, not only the point estimate. The original is excluded, and so is a variant
    no smaller (``"size"``) or no faster (``"latency"``) than the original: an fp32 ONNX file
    larger than a tiny model's weights is no compression.

    Example:
        >>> v = lambda name, kind, size, ms: Variant(name, kind, "x", 0.9, 0, 0, 0, size, size, 1, 1, ms, ms)
        >>> choose_variant([v("original", "original", 100, 1.0), v("onnx", "onnx", 120, 0.9)], 0.01) is None
        True
    """
    orig = next((v for v in variants if v.kind == "original"), None)

    def improves(v: Variant) -> bool:
        if orig is None:
            return True
        return v.p50_ms < orig.p50_ms if objective == "latency" else v.size_bytes < orig.size_bytes

    ok = [
        v
        for v in variants
        if v.kind != "original" and (v.drop_high if conservative else v.drop) <= max_accuracy_drop and improves(v)
    ]
    if not ok:
        return None
    if objective == "latency":
        fastest = min(v.p50_ms for v in ok)
        return min((v for v in ok if v.p50_ms <= 1.05 * fastest), key=lambda v: (v.size_bytes, v.p50_ms))
    smallest = min(v.size_bytes for v in ok)
    return min((v for v in ok if v.size_bytes <= 1.05 * smallest), key=lambda v: (v.p50_ms, v.size_bytes))
