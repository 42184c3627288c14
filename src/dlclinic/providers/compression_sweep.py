"""The compression sweep shared by model.compression, compute.edge and compute.realtime.

One piece of work per model and data, cached on the :class:`~dlclinic.core.evidence.Evidence`
(``Evidence.memo``; files in ``Evidence.workdir()``), so a checkup pays it once: the
verified ONNX export of the user's model and its int8 quantizations (ONNX Runtime dynamic,
and static calibrated on train samples), the ``.pt2`` export, and the sweep of every
compressed variant (:func:`compression_sweep`: ONNX int8, bf16, magnitude and channel
pruning, a distilled narrower student), each scored on the same test rows and timed at
batch 1 with the backends interleaved.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlclinic.core import budget
from dlclinic.core.case import Case, infer_modality
from dlclinic.core.device import move_model, use_precision
from dlclinic.core.errors import ModelError, brief
from dlclinic.core.evidence import Evidence
from dlclinic.core.inference import model_device, predict_logits
from dlclinic.core.results import CheckResult
from dlclinic.core.threads import torch_threads
from dlclinic.export import ExportResult, export_pt2, length_axis_for
from dlclinic.export.onnx_variants import OnnxFile, onnx_runner, onnx_variants
from dlclinic.export.weights import state_dict_bytes
from dlclinic.functional.compression import (
    Sweep,
    SweepConfig,
    Variant,
    channel_prune,
    deflate_size_bytes,
    distill,
    magnitude_prune,
    paired_accuracy_drop,
    parameter_count,
    quantize_dynamic_int8,
    remove_masks,
)
from dlclinic.functional.latency import measure_interleaved, torch_runner
from dlclinic.providers.search import installed

__all__ = [
    "compression_sweep",
    "eval_split",
    "missing_onnx",
    "needs_torch",
    "onnx_core",
    "pt2_export",
    "sweep_for",
    "torch_model",
]

OnnxFiles = tuple[list[OnnxFile], list[str]]


# --------------------------------------------------------------------------- the case


def torch_model(case: Case) -> Any:
    """The case's model when it is a PyTorch module (``None`` for ONNX or plain callables)."""
    model = case.model
    return model if hasattr(model, "state_dict") and callable(model) else None


def eval_split(case: Case) -> tuple[str, np.ndarray, np.ndarray | None]:
    """``(name, x, y)`` of the split scored: labelled test, else train."""
    test = case.get("test")
    if test is not None and test.labelled:
        return "test", test.x, test.y
    return "train", case.train.x, case.train.y


def needs_torch(cid: str) -> CheckResult:
    """The result of a check that cannot compress a model which is not a PyTorch module."""
    return CheckResult(
        id=cid,
        status="not_examined",
        summary="Needs a PyTorch model (file.py:factory or .pt2); an ONNX model is already exported and cannot be re-quantized or pruned here.",
    )


def missing_onnx(cid: str) -> CheckResult | None:
    """A ``not_examined`` result when onnx or onnxruntime is not installed, else ``None``."""
    if not installed("onnx", "onnxruntime"):
        return CheckResult(
            id=cid, status="not_examined", summary="Needs onnx and onnxruntime: pip install 'dlclinic[onnx]'."
        )
    return None


# --------------------------------------------------------------------------- cached on the evidence


def onnx_core(case: Case, evidence: Evidence, exporter: str, calibration_samples: int) -> OnnxFiles:
    """The fp32 ONNX export and its int8 variants, built once per checkup (``Evidence.memo``)."""

    def build() -> OnnxFiles:
        _, x, _ = eval_split(case)
        work = evidence.workdir() / f"onnx-{exporter}-{calibration_samples}"
        work.mkdir(parents=True, exist_ok=True)
        with evidence.progress.step("ONNX export and int8 quantization", total=1) as advance:
            cfg = SweepConfig(exporter=exporter, calibration_samples=calibration_samples)
            built = onnx_variants(
                torch_model(case), case.train.x, x, work, cfg, length_axis=length_axis_for(case.modality)
            )
            advance(1)
        return built

    files, notes = evidence.memo(f"compression.onnx|{exporter}|{calibration_samples}", build)
    return files, notes


def sweep_for(case: Case, evidence: Evidence, cfg: SweepConfig) -> Sweep:
    """:func:`compression_sweep` on the scored split, once per checkup and ``cfg``; ONNX files from :func:`onnx_core`."""

    def build() -> Sweep:
        prebuilt = (
            onnx_core(case, evidence, cfg.exporter, cfg.calibration_samples)
            if missing_onnx("model.compression") is None
            else ([], ["onnx/onnxruntime not installed: no ONNX Runtime variants"])
        )
        split, x, y = eval_split(case)
        y = np.asarray(y)
        n = len(y)
        if 0 < cfg.max_eval_rows < n:  # the variants' accuracies on a seeded sample: the cost does not grow with N
            rows = np.sort(np.random.default_rng(cfg.seed).choice(n, cfg.max_eval_rows, replace=False))
            x, y = x[rows], y[rows]
        with evidence.progress.step("compression sweep", total=1) as advance:
            sweep = compression_sweep(
                torch_model(case),
                case.train.x,
                case.train.y,
                x,
                y,
                evidence.workdir() / "sweep",
                cfg,
                prebuilt=prebuilt,
            )
            advance(1)
        if len(y) < n:
            note = f"variants scored on a seeded sample of {len(y):,} of the {n:,} {split} rows (option max_test_rows)"
            sweep = dataclasses.replace(sweep, notes=(*sweep.notes, note))
        return sweep

    return evidence.memo(f"compression.sweep|{cfg!r}", build)


def pt2_export(case: Case, evidence: Evidence) -> ExportResult | str:
    """The verified ``torch.export`` ``.pt2`` of the model, or why it failed (once per checkup)."""

    def build() -> ExportResult | str:
        _, x, _ = eval_split(case)
        try:
            return export_pt2(torch_model(case), x[:64], evidence.workdir() / "model.pt2")
        except Exception as exc:
            return brief(exc)

    return evidence.memo("compression.pt2", build)


# --------------------------------------------------------------------------- the sweep


@dataclass
class _Variants:
    """Variants measured so far: their accuracy and sizes, the runners to time, the torch modules kept."""

    x_test: np.ndarray
    y_test: np.ndarray
    pending: list[tuple[str, str, str, np.ndarray, int, int, int, int, Path | None, str]] = field(default_factory=list)
    runners: dict[str, Any] = field(default_factory=dict)
    models: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(
        self,
        name: str,
        kind: str,
        fmt: str,
        correct: np.ndarray,
        sizes: tuple[int, int, int, int],
        runner: Any,
        path: Path | None = None,
        note: str = "",
    ) -> None:
        """``sizes`` = ``(bytes, deflated bytes, parameters, non-zero parameters)``."""
        size, deflate, n_params, n_nonzero = sizes
        self.pending.append(
            (name, kind, fmt, correct, int(size), int(deflate), int(n_params), int(n_nonzero), path, note)
        )
        self.runners[name] = runner

    def add_torch(self, name: str, kind: str, net: Any, note: str = "") -> np.ndarray:
        """Measure a torch variant; returns which test rows it gets right."""
        blob = state_dict_bytes(net)
        correct = predict_logits(net, self.x_test).argmax(1) == self.y_test
        sizes = (len(blob), deflate_size_bytes(blob), parameter_count(net), parameter_count(net, nonzero=True))
        self.add(name, kind, "torch", correct, sizes, torch_runner(net), note=note)
        self.models[name] = net
        return correct

    def add_onnx(self, files: list[OnnxFile], n_params: int, latency_threads: int | None) -> None:
        """Score each ONNX file, then keep a fresh session for the batch-1 timing.

        The scoring session is dropped after use: onnxruntime's memory arena keeps the largest
        batch's buffers for the session's life (about 150 MB per variant for the issue-21 CNN
        at 256 rows, every variant alive until the timing), and an arena shrunk after each run
        scored 1.5× slower. A new session costs a few milliseconds. Batches of 32 rows score
        as fast as 128 on a CPU with a third of the arena.
        """
        x_test = self.x_test
        step = 32
        for name, kind, path, note in files:
            score, _ = onnx_runner(path)
            logits = np.concatenate([np.asarray(score(x_test[i : i + step])) for i in range(0, len(x_test), step)])
            del score
            blob = path.read_bytes()
            sizes = (len(blob), deflate_size_bytes(blob), n_params, n_params)
            run, _ = onnx_runner(path, threads=latency_threads)
            self.add(name, kind, "onnx", logits.argmax(1) == self.y_test, sizes, run, path, note)

    def measured(self, base_correct: np.ndarray, cfg: SweepConfig) -> tuple[Variant, ...]:
        """Every variant, timed at batch 1 with the backends interleaved, on ``cfg.latency_threads`` threads."""
        one = np.ascontiguousarray(self.x_test[:1])
        with torch_threads(cfg.latency_threads):
            stats = measure_interleaved(
                self.runners,
                one,
                warmup=3,
                rounds=cfg.latency_rounds,
                calls_per_round=3,
                max_seconds=cfg.latency_seconds,
            )
        variants = []
        for v_name, v_kind, v_fmt, v_correct, v_size, v_deflate, v_params, v_nonzero, v_path, v_note in self.pending:
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
        return tuple(variants)


def _out_of_time(found: _Variants, what: str) -> bool:
    """Whether the check's window of a time budget is over; then ``what`` is skipped and said so."""
    if not budget.expired():
        return False
    found.notes.append(f"{what} not built: the check's share of the time budget was spent")
    budget.cut(f"compression sweep: {what} skipped")
    return True


def _add_pruned(
    found: _Variants, model: Any, x_train: np.ndarray, y_train: np.ndarray | None, cfg: SweepConfig, step: Any
) -> None:
    """Magnitude- and channel-pruned variants, fine-tuned by distillation when ``cfg.finetune_epochs`` > 0."""
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
                x_train,
                np.asarray(y_train),
                epochs=cfg.finetune_epochs,
                lr=2e-4,
                seed=cfg.seed,
                copy_student=False,
            )
        )

    for s in cfg.sparsities:
        step(f"magnitude pruning {s:.0%}")
        found.add_torch(
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
            found.notes.append(f"structured pruning not possible ({type(exc).__name__}: {str(exc)[:120]})")
            break
        if not plans:
            found.notes.append(
                "structured pruning found no prunable layer (channels tied by residual adds/concatenations or the output)"
            )
            break
        found.add_torch(f"channels {r:.0%}", "channel-pruning", finetune(pruned), f"{len(plans)} layers shrunk, {how}")


def _add_student(
    found: _Variants, model: Any, x_train: np.ndarray, y_train: np.ndarray | None, cfg: SweepConfig, step: Any
) -> None:
    """A narrower student (the teacher channel-pruned to ``cfg.distill_keep_ratio``) trained by distillation."""
    if cfg.distill_keep_ratio is None or y_train is None or cfg.distill_epochs <= 0:
        return
    step("distillation into a narrower student")
    try:
        student, plans = channel_prune(model, cfg.distill_keep_ratio, np.asarray(x_train[:4]))
    except Exception as exc:
        found.notes.append(f"no student for distillation ({type(exc).__name__})")
        return
    if not plans:
        return
    trained = distill(
        model,
        student,
        x_train,
        np.asarray(y_train),
        epochs=cfg.distill_epochs,
        seed=cfg.seed,
        max_seconds=cfg.distill_seconds,
    )
    found.add_torch(
        f"distilled {cfg.distill_keep_ratio:.0%} width",
        "distillation",
        trained,
        f"student = teacher at {cfg.distill_keep_ratio:.0%} channels, {cfg.distill_epochs} epochs of KD (≤ {cfg.distill_seconds:.0f} s)",
    )


@use_precision("fp32")  # the variants are float32 CPU programs: the reference is too
def compression_sweep(
    model: Any,
    x_train: np.ndarray,
    y_train: np.ndarray | None,
    x_test: np.ndarray,
    y_test: np.ndarray,
    workdir: str | Path,
    config: SweepConfig | None = None,
    *,
    progress: Callable[[str], Any] | None = None,
    prebuilt: OnnxFiles | None = None,
) -> Sweep:
    """Build and measure every variant of ``model`` that ``config`` asks for.

    ONNX variants are written to ``workdir`` (or taken from ``prebuilt``, the output of
    :func:`~dlclinic.export.onnx_variants.onnx_variants`); torch variants are kept in
    memory (``Sweep.models``). Every variant is scored on all of ``x_test``, on the CPU and in
    float32 whatever ``--device``/``--precision`` the checkup runs with (the variants are CPU programs).
    """
    cfg = config or SweepConfig()
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    y_test = np.asarray(y_test)
    on = model_device(model) if hasattr(model, "parameters") else torch.device("cpu")
    # int8 kernels and ONNX Runtime run on the CPU: every variant is measured there
    model = move_model(model, torch.device("cpu"))
    found = _Variants(x_test, y_test)
    if on.type != "cpu":
        found.notes.append(
            f"the variants are built and timed on the CPU (int8 and ONNX Runtime run there), not on {on}"
        )

    def step(text: str) -> None:
        if progress is not None:
            progress(text)

    step("original (fp32 eager)")
    base_correct = found.add_torch("fp32 eager", "original", model)
    if _out_of_time(found, "ONNX variants"):
        return Sweep(found.measured(base_correct, cfg), int(len(y_test)), found.models, tuple(found.notes))
    if cfg.onnx:
        step("ONNX export and int8 quantization")
        length = length_axis_for(infer_modality(x_test, model))  # a token/sequence model ships with a dynamic length
        onnx_files, onnx_notes = (
            prebuilt if prebuilt is not None else onnx_variants(model, x_train, x_test, work, cfg, length_axis=length)
        )
        found.notes.extend(onnx_notes)
        found.add_onnx(onnx_files, parameter_count(model), cfg.latency_threads)
    if cfg.torch_int8_dynamic:
        step("int8 dynamic (eager)")
        int8, note = quantize_dynamic_int8(model, x_test)
        if int8 is None:
            found.notes.append(note)
        else:
            found.add_torch("int8 dynamic eager", "torch-int8-dynamic", int8, note)
    if cfg.bf16:
        step("bf16")
        bf16 = copy.deepcopy(model).to(torch.bfloat16).eval()
        try:
            found.add_torch("bf16 eager", "bf16", bf16, "weights and compute in bfloat16")
        except ModelError as exc:  # e.g. a forward that casts to float32 itself (a float mask times bf16 states)
            found.notes.append(f"bf16 variant skipped: {exc}")
    if not _out_of_time(found, "pruned variants"):
        _add_pruned(found, model, x_train, y_train, cfg, step)
    if not _out_of_time(found, "the distilled student"):
        _add_student(found, model, x_train, y_train, cfg, step)
    step("latency at batch 1 (interleaved)")
    return Sweep(found.measured(base_correct, cfg), int(len(y_test)), found.models, tuple(found.notes))
