"""compute.edge: does the model fit the device it is meant for?

Sizes (fp32 / fp16 / int8), parameters, peak inference memory at batch 1, ONNX operator
support, which input axes of the ONNX file are dynamic (for token and sequence models the
time axis, verified with onnxruntime at two lengths, or fixed with the reason) and ``.pt2``
exportability; a verdict against ``max_size_mb`` / ``max_memory_mb``
when given. The ONNX export and its int8 quantizations come from
:mod:`dlclinic.providers.compression_sweep` (built once per checkup, shared with
model.compression and compute.realtime).

The remedy writes the smallest verified variant within the accuracy tolerance
(:mod:`dlclinic.providers.compression_remedy`).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlclinic.core.case import Case
from dlclinic.core.evidence import Evidence, machine
from dlclinic.core.registry import CheckSpec, RemedySpec, TreatContext, TreatOutcome
from dlclinic.core.results import CheckResult, Finding, Remedy, Status, worst
from dlclinic.core.threads import on_threads
from dlclinic.export import SEQUENCE_MODALITIES
from dlclinic.export.onnx_variants import OnnxFile
from dlclinic.export.weights import state_dict_bytes
from dlclinic.functional.compression import parameter_count
from dlclinic.functional.latency import peak_inference_memory
from dlclinic.providers.compression_remedy import CompressParams, compress_and_verify
from dlclinic.providers.compression_sweep import (
    eval_split,
    missing_onnx,
    needs_torch,
    onnx_core,
    pt2_export,
    torch_model,
)

__all__ = ["CHECK", "REMEDY", "CompressParams", "EdgeOptions", "run_edge", "treat_edge"]


@dataclass(frozen=True)
class EdgeOptions:
    """The device budget (``None`` = report only). The verdict uses the smallest verified artifact."""

    max_size_mb: float | None = None
    max_memory_mb: float | None = None
    exporter: str = "torchscript"
    calibration_samples: int = 128
    threads: int | None = 1


@dataclass(frozen=True)
class _Sizes:
    """What the model weighs: parameters, weight bytes fp32/fp16, the ONNX files and the smallest int8 one."""

    n_params: int
    fp32_bytes: int
    fp16_bytes: int
    files: dict[str, int]
    int8_bytes: int | None

    @property
    def smallest(self) -> int:
        return min([self.fp32_bytes, self.fp16_bytes] + ([self.int8_bytes] if self.int8_bytes else []))


@dataclass(frozen=True)
class _Pt2:
    """What the check reports of a verified ``.pt2`` export (:class:`~dlclinic.export.ExportResult`)."""

    size_bytes: int
    max_abs_logit_diff: float
    argmax_agreement: float


def _measure(case: Case, evidence: Evidence, options: EdgeOptions, model: Any) -> dict[str, Any]:
    """Exports, sizes, operators and peak memory, as plain values (cached: they need the exports)."""
    _, x, _ = eval_split(case)
    files, notes = onnx_core(case, evidence, options.exporter, options.calibration_samples)
    sz = _sizes(model, files)
    ops, odd, dims = _onnx_graph(files[0][2]) if files else ([], [], [])
    pt2 = pt2_export(case, evidence)
    return {
        "files": [[name, kind, note] for name, kind, _, note in files],
        "notes": list(notes),
        "input_dims": dims,
        "sizes": dataclasses.asdict(sz),
        "memory": peak_inference_memory(model, np.ascontiguousarray(x[:1])),
        "ops": ops,
        "odd": odd,
        "pt2": pt2
        if isinstance(pt2, str)
        else {
            "size_bytes": pt2.size_bytes,
            "max_abs_logit_diff": pt2.max_abs_logit_diff,
            "argmax_agreement": pt2.argmax_agreement,
        },
    }


def _onnx_graph(path: Path) -> tuple[list[str], list[str], list[int | str]]:
    """``(op types, non-standard op types, input dims)`` of an ONNX graph.

    Standard = in the ONNX default domain schema; a dim is its size, or its name when dynamic.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    shape = graph.graph.input[0].type.tensor_type.shape
    dims: list[int | str] = [d.dim_param or (int(d.dim_value) if d.HasField("dim_value") else "?") for d in shape.dim]
    ops = sorted({n.op_type for n in graph.graph.node})
    odd = sorted(
        {
            f"{n.domain}::{n.op_type}"
            for n in graph.graph.node
            if n.domain not in ("", "ai.onnx") or not onnx.defs.has(n.op_type)
        }
    )
    return ops, odd, dims


def _dynamic_axes(case: Case, dims: list[int | str]) -> tuple[bool | None, bool | None]:
    """``(batch dynamic, length dynamic)`` of the exported input; the length only for token/sequence models."""
    if not dims:
        return None, None
    length = any(isinstance(d, str) for d in dims[1:]) if case.modality in SEQUENCE_MODALITIES else None
    return isinstance(dims[0], str), length


def _sizes(model: Any, files: list[OnnxFile]) -> _Sizes:
    fp32_bytes = len(state_dict_bytes(model))
    fp16_bytes = len(state_dict_bytes(copy.deepcopy(model).to(torch.float16)))
    sizes = {name: path.stat().st_size for name, _, path, _ in files}
    int8_bytes = min((s for n, s in sizes.items() if "int8" in n), default=None)
    return _Sizes(parameter_count(model), fp32_bytes, fp16_bytes, sizes, int8_bytes)


def _export_findings(
    files: list[OnnxFile], notes: list[str], odd: list[str], pt2: _Pt2 | str
) -> tuple[list[Status], list[Finding]]:
    statuses: list[Status] = []
    findings: list[Finding] = []
    if not files:
        statuses.append("warn")
        findings.append(Finding("onnx_export_failed", "; ".join(notes) or "ONNX export failed"))
    elif odd:
        statuses.append("warn")
        findings.append(
            Finding(
                "nonstandard_ops",
                f"the ONNX graph uses operators outside the ONNX standard: {', '.join(odd)}; edge runtimes may not run them",
            )
        )
    if isinstance(pt2, str):
        statuses.append("warn")
        findings.append(Finding("pt2_export_failed", f"torch.export failed: {pt2}"))
    return statuses, findings


def _size_verdict(options: EdgeOptions, sz: _Sizes) -> tuple[Status | None, Finding | None]:
    if options.max_size_mb is None:
        return None, None
    budget = options.max_size_mb * 1e6
    if sz.smallest > budget:
        return "fail", Finding(
            "over_size_budget",
            f"even the smallest artifact ({sz.smallest / 1e6:.2f} MB) exceeds the {options.max_size_mb:g} MB budget; a narrower model (distillation/structured pruning) is needed",
        )
    if sz.fp32_bytes > budget:
        return "warn", Finding(
            "fp32_over_size_budget",
            f"the fp32 weights ({sz.fp32_bytes / 1e6:.2f} MB) exceed the {options.max_size_mb:g} MB budget; the int8/fp16 artifact ({sz.smallest / 1e6:.2f} MB) fits",
        )
    return "ok", None


def _memory_verdict(options: EdgeOptions, mem: dict[str, float]) -> tuple[Status | None, Finding | None]:
    if options.max_memory_mb is None:
        return None, None
    if mem["peak_bytes"] > options.max_memory_mb * 1e6:
        return "fail", Finding(
            "over_memory_budget",
            f"peak inference memory at batch 1 is {mem['peak_bytes'] / 1e6:.2f} MB (weights {mem['weights_bytes'] / 1e6:.2f} MB + activations {mem['activations_peak_bytes'] / 1e6:.2f} MB) > {options.max_memory_mb:g} MB",
        )
    return "ok", None


_LENGTH_TEXT = {
    None: "",
    True: " with a dynamic input length (verified at two lengths)",
    False: " with a fixed input length (why: the ONNX fp32 row of the artifacts table)",
}


def _summary(
    options: EdgeOptions,
    sz: _Sizes,
    mem: dict[str, float],
    onnx_ok: bool,
    pt2: _Pt2 | str,
    verdicts: tuple[Status | None, Status | None],
    dynamic_length: bool | None = None,
) -> str:
    size_verdict, mem_verdict = verdicts
    budget_text = []
    if options.max_size_mb is not None:
        budget_text.append(f"size budget {options.max_size_mb:g} MB: {size_verdict}")
    if options.max_memory_mb is not None:
        budget_text.append(f"memory budget {options.max_memory_mb:g} MB: {mem_verdict}")
    return (
        f"{sz.n_params:,} parameters; weights {sz.fp32_bytes / 1e6:.2f} MB fp32, {sz.fp16_bytes / 1e6:.2f} MB fp16"
        + (f", {sz.int8_bytes / 1e6:.2f} MB int8 ONNX" if sz.int8_bytes else "")
        + f"; peak inference memory {mem['peak_bytes'] / 1e6:.2f} MB at batch 1; ONNX {'exports with standard operators' if onnx_ok else 'export has problems'}"
        + _LENGTH_TEXT[dynamic_length]
        + f", .pt2 {'exports' if not isinstance(pt2, str) else 'fails'}."
        + (
            " " + "; ".join(budget_text) + "."
            if budget_text
            else " No device budget given (--option compute.edge.max_size_mb=…, max_memory_mb=…)."
        )
    )


def _artifact_rows(sz: _Sizes, files: list[OnnxFile], pt2: _Pt2 | str) -> list[list[Any]]:
    rows: list[list[Any]] = [
        ["weights fp32 (safetensors)", round(sz.fp32_bytes / 1e6, 4), ""],
        ["weights fp16 (safetensors)", round(sz.fp16_bytes / 1e6, 4), ""],
    ]
    rows += [[name, round(sz.files[name] / 1e6, 4), note] for name, _, _, note in files]
    if not isinstance(pt2, str):
        rows.append(
            [
                ".pt2 (torch.export)",
                round(pt2.size_bytes / 1e6, 4),
                f"max |logit diff| {pt2.max_abs_logit_diff:.1e}, argmax agreement {pt2.argmax_agreement:.1%}",
            ]
        )
    return rows


def run_edge(case: Case, evidence: Evidence, options: EdgeOptions) -> CheckResult:
    """Run the check with torch on ``options.threads`` threads."""
    return on_threads(_run_edge, case, evidence, options)


def _run_edge(case: Case, evidence: Evidence, options: EdgeOptions) -> CheckResult:
    """Size, memory and exportability of the model, against a device budget."""
    cid = "compute.edge"
    model = torch_model(case)
    if model is None:
        return needs_torch(cid)
    missing = missing_onnx(cid)
    if missing is not None:
        return missing
    params = {
        "exporter": options.exporter,
        "calibration": options.calibration_samples,
        "machine": machine(),
        "format": 2,  # 2: the input dims of the ONNX file (dynamic length of sequence models)
    }
    m = evidence.cached_json("compute.edge.measured", params, lambda: _measure(case, evidence, options, model))
    files: list[Any] = [(name, kind, None, note) for name, kind, note in m["files"]]
    notes, sz, mem, ops, odd = m["notes"], _Sizes(**m["sizes"]), m["memory"], m["ops"], m["odd"]
    pt2: _Pt2 | str = m["pt2"] if isinstance(m["pt2"], str) else _Pt2(**m["pt2"])
    statuses, findings = _export_findings(files, notes, odd, pt2)
    size_verdict, size_finding = _size_verdict(options, sz)
    mem_verdict, mem_finding = _memory_verdict(options, mem)
    for verdict, finding in ((size_verdict, size_finding), (mem_verdict, mem_finding)):
        if finding is not None:
            statuses.append(verdict or "ok")
            findings.append(finding)
    status = worst(statuses) if statuses else "ok"
    onnx_ok = bool(files) and not odd
    dynamic_batch, dynamic_length = _dynamic_axes(case, m["input_dims"])
    remedy = None
    if status in ("warn", "fail"):
        remedy = Remedy(
            command="dlclinic treat compute.edge --option max_accuracy_drop=0.01",
            description="write the smallest verified variant (int8 ONNX, pruned or distilled) within the accuracy tolerance",
        )
    return CheckResult(
        id=cid,
        status=status,
        summary=_summary(options, sz, mem, onnx_ok, pt2, (size_verdict, mem_verdict), dynamic_length),
        metrics={
            "n_params": sz.n_params,
            "size_fp32_mb": sz.fp32_bytes / 1e6,
            "size_fp16_mb": sz.fp16_bytes / 1e6,
            "size_int8_mb": sz.int8_bytes / 1e6 if sz.int8_bytes else None,
            "size_onnx_fp32_mb": sz.files.get("onnx fp32", 0) / 1e6 if files else None,
            "peak_memory_mb": mem["peak_bytes"] / 1e6,
            "weights_memory_mb": mem["weights_bytes"] / 1e6,
            "activations_peak_mb": mem["activations_peak_bytes"] / 1e6,
            "onnx_exportable": bool(files),
            "onnx_nonstandard_ops": len(odd),
            "onnx_dynamic_batch": dynamic_batch,
            "onnx_dynamic_length": dynamic_length,
            "pt2_exportable": not isinstance(pt2, str),
        },
        thresholds={"max_size_mb": options.max_size_mb, "max_memory_mb": options.max_memory_mb},
        findings=tuple(findings),
        remedy=remedy,
        details={
            "notes": notes
            + [
                "peak memory: weights + peak live activations of one batch-1 forward pass (PyTorch profiler, profile_memory)"
            ],
            "tables": [
                {
                    "title": "Artifacts on disk",
                    "columns": ["artifact", "MB", "verification"],
                    "rows": _artifact_rows(sz, files, pt2),
                },
                {
                    "title": "ONNX operators",
                    "columns": ["operator", "standard"],
                    "rows": [[op, "no" if any(o.endswith("::" + op) for o in odd) else "yes"] for op in ops],
                },
            ],
        },
    )


def treat_edge(ctx: TreatContext, params: CompressParams) -> TreatOutcome:
    """Fit the device: the smallest compressed variant within the accuracy tolerance, verified and written."""
    return compress_and_verify(ctx, params)


CHECK = CheckSpec(
    id="compute.edge",
    requires=(),
    options=EdgeOptions,
    run=run_edge,
    description="size fp32/fp16/int8, parameters, peak inference memory, ONNX operators, .pt2 export, against a device budget",
)
REMEDY = RemedySpec(
    id="compute.edge",
    params=CompressParams,
    run=treat_edge,
    description="Fit the device: the smallest compressed variant (int8, fp16, pruning, distillation) within the accuracy tolerance, exported as .onnx/.pt2, chosen and verified on disjoint test rows; compute.edge is measured again on it.",
)
