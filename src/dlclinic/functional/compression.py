"""Compressed variants of a classifier: quantization, pruning, distillation, and the Pareto front.

* ONNX Runtime int8 (``onnxruntime.quantization``): dynamic (weights int8, activations
  quantized on the fly; only MatMul/Gemm-type ops) and static QDQ with per-channel weights,
  calibrated (MinMax) on real train samples — the one that speeds up convolutions.
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
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "PrunePlan",
    "Sweep",
    "SweepConfig",
    "Variant",
    "channel_prune",
    "choose_variant",
    "compression_sweep",
    "deflate_size_bytes",
    "distill",
    "magnitude_prune",
    "onnx_variants",
    "paired_accuracy_drop",
    "parameter_count",
    "pareto_front",
    "prune_plans",
    "quantize_onnx_dynamic",
    "quantize_onnx_static",
    "remove_masks",
    "state_dict_bytes",
]


# --------------------------------------------------------------------------- sizes


def parameter_count(model: Any, *, nonzero: bool = False) -> int:
    """Number of parameters (or of non-zero parameter entries) of a torch module."""
    if nonzero:
        return int(sum(int((p != 0).sum()) for p in model.parameters()))
    return int(sum(p.numel() for p in model.parameters()))


def state_dict_bytes(model: Any) -> bytes:
    """The model's state_dict serialised as safetensors (what a weights file would hold)."""
    from safetensors.torch import save

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return bytes(save(state))


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


# --------------------------------------------------------------------------- ONNX Runtime int8


class _Calibration:
    """An onnxruntime ``CalibrationDataReader`` over real inputs, one sample per call."""

    def __init__(self, input_name: str, x: np.ndarray, batch: int = 16) -> None:
        self._batches = iter(
            [{input_name: np.ascontiguousarray(x[i : i + batch], dtype=np.float32)} for i in range(0, len(x), batch)]
        )

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

    from dlclinic.core.atomic import atomic_path

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

    from dlclinic.core.atomic import atomic_path

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


# --------------------------------------------------------------------------- pruning


def magnitude_prune(model: Any, sparsity: float, *, keep_masks: bool = False) -> Any:
    """A copy of ``model`` with the ``sparsity`` share of Conv/Linear weights (global L1) set to zero.

    With ``keep_masks=True`` the pruning masks stay attached (``weight_orig`` × mask), so
    fine-tuning keeps the zeros; call :func:`remove_masks` afterwards.
    """
    import torch
    from torch.nn.utils import prune

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
    from torch.nn.utils import prune

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


def prune_plans(model: Any, sample_x: np.ndarray) -> list[PrunePlan]:
    """The layers :func:`channel_prune` can shrink, found on a ``torch.export`` trace."""
    import torch

    from dlclinic.core.inference import model_input_spec

    dtype = model_input_spec(model)[0]
    xb = torch.from_numpy(np.ascontiguousarray(sample_x[:2])).to(dtype)
    net = copy.deepcopy(model).eval()
    with torch.no_grad():
        program = torch.export.export(net, (xb,))
    params = dict(program.graph_signature.inputs_to_parameters)
    buffers = dict(program.graph_signature.inputs_to_buffers)
    owners = {**params, **buffers}
    modules = dict(net.named_modules())

    def module_of(node: Any) -> str | None:
        name = owners.get(getattr(node, "name", ""))
        return name.rsplit(".", 1)[0] if name else None

    plans = []
    for node in program.graph.nodes:
        if node.op != "call_function" or _op_name(node) not in ("conv2d", "linear", "conv1d"):
            continue
        producer = module_of(node.args[1]) if len(node.args) > 1 else None
        if producer is None or not isinstance(
            modules.get(producer), (torch.nn.Conv2d, torch.nn.Conv1d, torch.nn.Linear)
        ):
            continue
        if getattr(modules[producer], "groups", 1) != 1:
            continue
        channels = int(modules[producer].weight.shape[0])
        norms: list[str] = []
        consumers: list[tuple[str, int]] = []
        ok = True
        frontier = [(node, 1)]
        seen = set()
        while frontier and ok:
            current, block = frontier.pop()
            for user in current.users:
                if user in seen:
                    continue
                seen.add(user)
                op = _op_name(user) if user.op == "call_function" else user.op
                if op in ("conv2d", "conv1d", "linear") and user.args[0] is current:
                    consumer = module_of(user.args[1])
                    cmod = modules.get(consumer or "")
                    if (
                        consumer is None
                        or getattr(cmod, "groups", 1) != 1
                        or not isinstance(cmod, (torch.nn.Conv2d, torch.nn.Conv1d, torch.nn.Linear))
                    ):
                        ok = False
                        break
                    if isinstance(cmod, torch.nn.Linear) and int(cmod.weight.shape[1]) != channels * block:
                        ok = False
                        break
                    consumers.append((consumer, block))
                elif op in _PASS_OPS and user.args[0] is current:
                    if "batch_norm" in op:
                        bn = module_of(user.args[1]) if user.args[1] is not None else None
                        if bn is None or not isinstance(modules.get(bn), torch.nn.modules.batchnorm._BatchNorm):
                            ok = False
                            break
                        norms.append(bn)
                    frontier.append((user, block))
                elif op in ("flatten", "view", "reshape") and user.args[0] is current:
                    shape = tuple(current.meta["val"].shape)
                    out_shape = tuple(user.meta["val"].shape)
                    if len(out_shape) != 2 or len(shape) < 2 or shape[1] != channels:
                        ok = False
                        break
                    frontier.append((user, block * int(np.prod(shape[2:]) if len(shape) > 2 else 1)))
                elif (
                    op == "mean"
                    and user.args[0] is current
                    and tuple(sorted(int(d) for d in user.args[1])) in ((2, 3), (2,), (-2, -1), (-1,))
                ):
                    frontier.append((user, block))
                else:
                    ok = False
                    break
        if ok and consumers:
            plans.append(PrunePlan(producer, tuple(dict.fromkeys(norms)), tuple(dict.fromkeys(consumers)), channels))
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
    import torch

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
                idx = (keep[:, None] * block + torch.arange(block)[None, :]).reshape(-1) if block > 1 else keep
                cons.weight = torch.nn.Parameter(cw[:, idx].clone())
                if isinstance(cons, torch.nn.Linear):
                    cons.in_features = int(idx.numel())
                else:
                    cons.in_channels = k
    return net, plans


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
    """
    import time

    import torch
    import torch.nn.functional as F

    from dlclinic.core.inference import predict_logits

    torch.manual_seed(seed)
    net = copy.deepcopy(student) if copy_student else student
    teacher_logits = torch.from_numpy(predict_logits(teacher, x))
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64)) if y is not None else None
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = max(1, epochs * math.ceil(len(x) / batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(perm), batch_size):
            idx = perm[i : i + batch_size]
            if len(idx) < 2:
                continue
            out = net(xt[idx])
            soft = (
                F.kl_div(
                    F.log_softmax(out / temperature, 1),
                    F.softmax(teacher_logits[idx] / temperature, 1),
                    reduction="batchmean",
                )
                * temperature**2
            )
            loss = alpha * soft + ((1 - alpha) * F.cross_entropy(out, yt[idx]) if yt is not None else 0.0)
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
    """What :func:`compression_sweep` tries, and its budgets."""

    onnx: bool = True
    exporter: str = "dynamo"
    int8_dynamic: bool = True
    int8_static: bool = True
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
    seed: int = 0


@dataclass(frozen=True)
class Sweep:
    """The variants (first = the original), the test rows used and kept torch modules by name."""

    variants: tuple[Variant, ...]
    n_test: int
    models: dict[str, Any]
    notes: tuple[str, ...] = ()

    def by_name(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)


def onnx_variants(
    model: Any, x_train: np.ndarray, x_sample: np.ndarray, workdir: str | Path, config: SweepConfig | None = None
) -> tuple[list[tuple[str, str, Path, str]], list[str]]:
    """Export fp32 ONNX and quantize it: ``([(name, kind, path, note)], notes)``.

    The first entry is the fp32 export (its note names the exporter and the verified
    logit difference); int8 dynamic and static follow when asked for and possible.
    """
    from dlclinic.core.errors import brief
    from dlclinic.export import export_onnx

    cfg = config or SweepConfig()
    work = Path(workdir)
    notes: list[str] = []
    fp32 = work / "model_fp32.onnx"
    try:
        result = export_onnx(model, x_sample[:256], fp32, exporter=cfg.exporter)  # type: ignore[arg-type]
    except Exception as exc:
        if cfg.exporter != "torchscript":
            return [], [f"ONNX export failed ({brief(exc)}); no ONNX Runtime variants"]
        try:  # the legacy tracer failed: the torch.export-based exporter may still succeed
            result = export_onnx(model, x_sample[:256], fp32, exporter="dynamo")
            notes.append(f"TorchScript ONNX export failed ({brief(exc)}); exported with dynamo=True instead")
        except Exception as exc2:
            return [], [
                f"ONNX export failed with both exporters ({brief(exc)}; {brief(exc2)}); no ONNX Runtime variants"
            ]
    files = [
        (
            "onnx fp32",
            "onnx-fp32",
            fp32,
            f"{result.exporter}, max |logit diff| vs eager {result.max_abs_logit_diff:.1e}, argmax agreement {result.argmax_agreement:.1%}",
        )
    ]
    if cfg.int8_dynamic:
        try:
            files.append(
                (
                    "onnx int8 dynamic",
                    "onnx-int8-dynamic",
                    quantize_onnx_dynamic(fp32, work / "model_int8_dynamic.onnx"),
                    "weights int8, activations quantized per call",
                )
            )
        except Exception as exc:
            notes.append(f"int8 dynamic quantization failed ({brief(exc)})")
    if cfg.int8_static:
        calib = np.asarray(x_train[: cfg.calibration_samples], dtype=np.float32)
        try:
            files.append(
                (
                    "onnx int8 static",
                    "onnx-int8-static",
                    quantize_onnx_static(fp32, work / "model_int8_static.onnx", calib),
                    f"QDQ per-channel, MinMax calibration on {len(calib)} train samples",
                )
            )
        except Exception as exc:
            notes.append(f"int8 static quantization failed ({brief(exc)})")
    return files, notes


def compression_sweep(
    model: Any,
    x_train: np.ndarray,
    y_train: np.ndarray | None,
    x_test: np.ndarray,
    y_test: np.ndarray,
    workdir: str | Path,
    config: SweepConfig | None = None,
    *,
    progress: Any = None,
    prebuilt: tuple[list[tuple[str, str, Path, str]], list[str]] | None = None,
) -> Sweep:
    """Build and measure every variant of ``model`` that ``config`` asks for.

    ONNX variants are written to ``workdir`` (or taken from ``prebuilt``, the output of
    :func:`onnx_variants`); torch variants are kept in memory (``Sweep.models``). Every
    variant is scored on all of ``x_test``.
    """
    import torch

    from dlclinic.core.inference import predict_logits
    from dlclinic.functional.latency import measure_interleaved, onnx_runner, torch_runner

    cfg = config or SweepConfig()
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    y_test = np.asarray(y_test)
    base_logits = predict_logits(model, x_test)
    base_correct = base_logits.argmax(1) == y_test
    one = np.ascontiguousarray(x_test[:1])
    pending: list[tuple[str, str, str, np.ndarray, int, int, int, int, Path | None, str]] = []
    runners: dict[str, Any] = {}
    models: dict[str, Any] = {}
    notes: list[str] = []

    def step(text: str) -> None:
        if progress is not None:
            progress(text)

    def add(
        name: str,
        kind: str,
        fmt: str,
        correct: np.ndarray,
        size: int,
        deflate: int,
        n_params: int,
        n_nonzero: int,
        runner: Any,
        path: Path | None = None,
        note: str = "",
    ) -> None:
        pending.append((name, kind, fmt, correct, int(size), int(deflate), int(n_params), int(n_nonzero), path, note))
        runners[name] = runner

    def add_torch(name: str, kind: str, net: Any, note: str = "") -> None:
        blob = state_dict_bytes(net)
        correct = predict_logits(net, x_test).argmax(1) == y_test
        add(
            name,
            kind,
            "torch",
            correct,
            len(blob),
            deflate_size_bytes(blob),
            parameter_count(net),
            parameter_count(net, nonzero=True),
            torch_runner(net),
            note=note,
        )
        models[name] = net

    step("original (fp32 eager)")
    add_torch("fp32 eager", "original", model)
    if cfg.onnx:
        step("ONNX export and int8 quantization")
        onnx_files, onnx_notes = prebuilt if prebuilt is not None else onnx_variants(model, x_train, x_test, work, cfg)
        notes.extend(onnx_notes)
        n_params = parameter_count(model)
        for name, kind, path, note in onnx_files:
            run, _ = onnx_runner(path)
            logits = np.concatenate([np.asarray(run(x_test[i : i + 256])) for i in range(0, len(x_test), 256)])
            blob = path.read_bytes()
            add(
                name,
                kind,
                "onnx",
                logits.argmax(1) == y_test,
                len(blob),
                deflate_size_bytes(blob),
                n_params,
                n_params,
                run,
                path,
                note,
            )
    if cfg.bf16:
        step("bf16")
        add_torch(
            "bf16 eager", "bf16", copy.deepcopy(model).to(torch.bfloat16).eval(), "weights and compute in bfloat16"
        )
    tuned = cfg.finetune_epochs > 0 and y_train is not None
    how = f"fine-tuned {cfg.finetune_epochs} epochs with distillation from the original" if tuned else "no fine-tuning"

    def finetune(net: Any) -> Any:
        if not tuned:
            return net
        # fine-tuning starts from trained weights: a tenth of the from-scratch learning rate
        return remove_masks(
            distill(
                model,
                net,
                np.asarray(x_train),
                np.asarray(y_train),
                epochs=cfg.finetune_epochs,
                lr=2e-4,
                seed=cfg.seed,
                copy_student=False,
            )
        )

    for s in cfg.sparsities:
        step(f"magnitude pruning {s:.0%}")
        add_torch(
            f"magnitude {s:.0%}",
            "magnitude-pruning",
            finetune(magnitude_prune(model, s, keep_masks=tuned)),
            f"global L1 unstructured, {how}; dense file keeps the zeros",
        )
    sample = np.asarray(x_train[:4])
    for r in cfg.keep_ratios:
        step(f"channel pruning keep {r:.0%}")
        try:
            pruned, plans = channel_prune(model, r, sample)
        except Exception as exc:
            notes.append(f"structured pruning not possible ({type(exc).__name__}: {str(exc)[:120]})")
            break
        if not plans:
            notes.append(
                "structured pruning found no prunable layer (channels tied by residual adds/concatenations or the output)"
            )
            break
        add_torch(f"channels {r:.0%}", "channel-pruning", finetune(pruned), f"{len(plans)} layers shrunk, {how}")
    if cfg.distill_keep_ratio is not None and y_train is not None and cfg.distill_epochs > 0:
        step("distillation into a narrower student")
        try:
            student, plans = channel_prune(model, cfg.distill_keep_ratio, sample)
        except Exception as exc:
            notes.append(f"no student for distillation ({type(exc).__name__})")
        else:
            if plans:
                trained = distill(
                    model,
                    student,
                    np.asarray(x_train),
                    np.asarray(y_train),
                    epochs=cfg.distill_epochs,
                    seed=cfg.seed,
                    max_seconds=cfg.distill_seconds,
                )
                add_torch(
                    f"distilled {cfg.distill_keep_ratio:.0%} width",
                    "distillation",
                    trained,
                    f"student = teacher at {cfg.distill_keep_ratio:.0%} channels, {cfg.distill_epochs} epochs of KD (≤ {cfg.distill_seconds:.0f} s)",
                )
    step("latency at batch 1 (interleaved)")
    stats = measure_interleaved(
        runners, one, warmup=3, rounds=cfg.latency_rounds, calls_per_round=3, max_seconds=cfg.latency_seconds
    )
    variants = []
    for v_name, v_kind, v_fmt, v_correct, v_size, v_deflate, v_params, v_nonzero, v_path, v_note in pending:
        drop, low, high = paired_accuracy_drop(base_correct, v_correct)
        lat = stats[v_name]
        variants.append(
            Variant(
                v_name,
                v_kind,
                v_fmt,
                float(np.mean(v_correct)),
                drop,
                low,
                high,
                v_size,
                v_deflate,
                v_params,
                v_nonzero,
                lat.p50_ms,
                lat.p99_ms,
                v_path,
                v_note,
            )
        )
    return Sweep(tuple(variants), int(len(y_test)), models, tuple(notes))


def choose_variant(
    variants: Sequence[Variant], max_accuracy_drop: float, *, objective: str = "size", conservative: bool = True
) -> Variant | None:
    """The smallest (``objective="size"``) or fastest (``"latency"``) variant within the drop tolerance.

    Near-ties (within 5 % of the best size, or of the best latency) go to the faster
    (or smaller) variant: a 3 % larger file that runs twice as fast is the better choice.

    With ``conservative=True`` the upper end of the drop's 95 % CI must be within the
    tolerance, not only the point estimate. The original is excluded.
    """
    ok = [
        v for v in variants if v.kind != "original" and (v.drop_high if conservative else v.drop) <= max_accuracy_drop
    ]
    if not ok:
        return None
    if objective == "latency":
        fastest = min(v.p50_ms for v in ok)
        return min((v for v in ok if v.p50_ms <= 1.05 * fastest), key=lambda v: (v.size_bytes, v.p50_ms))
    smallest = min(v.size_bytes for v in ok)
    return min((v for v in ok if v.size_bytes <= 1.05 * smallest), key=lambda v: (v.p50_ms, v.size_bytes))
