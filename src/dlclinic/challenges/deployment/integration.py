"""deployment.integration — does the served model answer like the offline one?

The model is served in-process (FastAPI ``TestClient``): the predictions from ``/predict``
must equal the offline ones on real test rows and a malformed request must get a 422; the
OpenAPI document's schemas must be valid JSON Schema and accept a real request; the ONNX
export is loaded with plain ``onnxruntime`` and compared with eager (for token and sequence
models with a dynamic time axis, verified at the data's length and at half of it, or fixed
with the reason); a file is batch-scored.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dlclinic.core.case import Case
from dlclinic.core.evidence import Evidence
from dlclinic.core.registry import CheckSpec
from dlclinic.core.results import CheckResult, Finding, Remedy, Status, worst
from dlclinic.export import ExportResult, export_onnx, length_axis_for
from dlclinic.io.models import onnx_feed
from dlclinic.serve.app import ServeConfig, create_app, in_process_client
from dlclinic.serve.backends import Backend, make_backend
from dlclinic.serve.scoring import score_file

__all__ = ["CHECK", "REMEDY", "IntegrationOptions", "run_integration"]

_SERVE_HINT = "pip install 'dlclinic[serve]'"

Metrics = dict[str, float | int | bool | None]


@dataclass(frozen=True)
class IntegrationOptions:
    """How much of the test split goes through the server, export and file scoring, and the tolerances.

    ``exporter`` is passed to :func:`dlclinic.export.export_onnx`: ``"torchscript"`` by
    default because the ``torch.export``-based exporter (``"dynamo"``, the recommended one)
    takes about 9 s on the demo's small CNN, too long for a checkup row.
    """

    rows: int = 64
    prob_atol: float = 1e-4
    logit_atol: float = 1e-3
    onnx: bool = True
    exporter: str = "torchscript"


def _validate_openapi(schema: dict[str, Any], example: dict[str, Any]) -> list[str]:
    """Problems with the OpenAPI document: version, /predict, component schemas (JSON Schema 2020-12), a real request validating."""
    import jsonschema

    problems: list[str] = []
    if not str(schema.get("openapi", "")).startswith("3."):
        problems.append(f"openapi version {schema.get('openapi')!r}, expected 3.x")
    post = schema.get("paths", {}).get("/predict", {}).get("post")
    if not post or "requestBody" not in post:
        problems.append("no POST /predict with a request body")
        return problems
    comps = schema.get("components", {}).get("schemas", {})
    for name, sub in comps.items():
        try:
            jsonschema.Draft202012Validator.check_schema(sub)
        except jsonschema.SchemaError as exc:
            problems.append(f"component {name}: {exc.message}")
    ref = post["requestBody"]["content"]["application/json"]["schema"]
    root = {"$defs": comps, **ref}
    root_text = json.dumps(root).replace("#/components/schemas/", "#/$defs/")
    try:
        jsonschema.Draft202012Validator(json.loads(root_text)).validate(example)
    except jsonschema.ValidationError as exc:
        problems.append(f"a real request does not validate against the request schema: {exc.message[:120]}")
    return problems


def _round_trip(app: Any, example: dict[str, Any], x: np.ndarray, metrics: Metrics) -> tuple[Any, Any, Any, Any]:
    """A real request, a malformed one, a good one after it, and the OpenAPI document."""
    with in_process_client(app) as client:
        t0 = time.perf_counter()
        resp = client.post("/predict", json=example)
        metrics["roundtrip_ms"] = (time.perf_counter() - t0) * 1000
        bad = client.post("/predict", json={"inputs": [[0.0]]})
        again = client.post("/predict", json={"inputs": x[:1].tolist()})
        schema = client.get("/openapi.json").json()
    return resp, bad, again, schema


def _served_findings(
    served: np.ndarray,
    offline: np.ndarray,
    bad: Any,
    again: Any,
    ref_split: str,
    options: IntegrationOptions,
    metrics: Metrics,
) -> tuple[float, list[Status], list[Finding]]:
    """Served vs offline probabilities and the malformed-request handling; the max |Δp|."""
    statuses: list[Status] = []
    findings: list[Finding] = []
    diff = float(np.max(np.abs(served - offline))) if served.shape == offline.shape else float("inf")
    agree = float(np.mean(served.argmax(1) == offline.argmax(1))) if served.shape == offline.shape else 0.0
    metrics.update(
        {
            "served_max_abs_prob_diff": diff,
            "served_argmax_agreement": agree,
            "malformed_status": bad.status_code,
            "serves_after_malformed": again.status_code == 200,
        }
    )
    if diff > options.prob_atol or agree < 1.0:
        statuses.append("fail")
        findings.append(
            Finding(
                "served_mismatch",
                f"served probabilities differ from offline ones by up to {diff:.2e} (tolerance {options.prob_atol:g}); argmax agreement {agree:.1%}",
                split=ref_split,
            )
        )
    if bad.status_code != 422 or again.status_code != 200:
        statuses.append("fail")
        findings.append(
            Finding(
                "validation",
                f"a wrong-shaped request got {bad.status_code} (expected 422) and the next good one {again.status_code}",
            )
        )
    return diff, statuses, findings


def _file_scoring(
    backend: Backend,
    case: Case,
    x: np.ndarray,
    offline: np.ndarray,
    tmp: Path,
    options: IntegrationOptions,
    metrics: Metrics,
    statuses: list[Status],
    findings: list[Finding],
) -> None:
    """Batch scoring of a file, as ``dlclinic predict`` does, compared with the offline predictions."""
    k = len(x)
    np.savez(tmp / "rows.npz", x=x)
    score_file(backend, tmp / "rows.npz", tmp / "scored.csv", class_names=case.class_names, batch_size=max(1, k // 3))
    scored = pd.read_csv(tmp / "scored.csv")
    file_probs = scored[[f"p_{c}" for c in case.class_names]].to_numpy()
    file_diff = float(np.max(np.abs(file_probs - offline))) if file_probs.shape == offline.shape else float("inf")
    metrics["file_scoring_max_abs_prob_diff"] = file_diff
    if file_diff > max(options.prob_atol, 1e-5):
        statuses.append("fail")
        findings.append(
            Finding("file_scoring", f"batch-scored file differs from offline predictions by up to {file_diff:.2e}")
        )


def _onnx_parity(
    case: Case,
    evidence: Evidence,
    ref_split: str,
    x: np.ndarray,
    tmp: Path,
    options: IntegrationOptions,
    metrics: Metrics,
    statuses: list[Status],
    findings: list[Finding],
) -> str:
    """Export to ONNX, run it in plain onnxruntime and compare logits with eager; a one-line note."""
    if not options.onnx:
        return "skipped (option onnx=false)" if hasattr(case.model, "state_dict") else _NOT_TORCH
    if not hasattr(case.model, "state_dict"):
        return _NOT_TORCH
    try:
        import onnxruntime as ort
    except ImportError:
        return "not examined: pip install 'dlclinic[onnx]'"
    try:
        t0 = time.perf_counter()
        exported = export_onnx(
            case.model,
            x,
            tmp / "model.onnx",
            exporter=options.exporter,  # type: ignore[arg-type]
            length_axis=length_axis_for(case.modality),
        )
        metrics["onnx_export_seconds"] = time.perf_counter() - t0
        sess = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        logits = np.asarray(sess.run(None, {inp.name: onnx_feed(x, inp.type)})[0], dtype=np.float64)
        eager = evidence.get("logits", ref_split)[: len(x)].astype(np.float64)
        ldiff = float(np.max(np.abs(logits - eager)))
        lagree = float(np.mean(logits.argmax(1) == eager.argmax(1)))
        metrics.update(
            {
                "onnx_max_abs_logit_diff": ldiff,
                "onnx_argmax_agreement": lagree,
                "onnx_size_mb": exported.size_mb,
                "onnx_dynamic_batch": exported.dynamic_batch,
                "onnx_dynamic_length": exported.dynamic_length,
                "onnx_length_max_abs_logit_diff": exported.length_max_abs_logit_diff,
            }
        )
        note = f"{exported.exporter}, plain onnxruntime max |Δlogit| {ldiff:.1e}" + _length_note(exported)
        if ldiff > options.logit_atol or lagree < 1.0:
            statuses.append("warn")
            findings.append(
                Finding(
                    "onnx_mismatch",
                    f"the ONNX export run by plain onnxruntime differs from eager PyTorch by up to {ldiff:.2e} in logits (tolerance {options.logit_atol:g}); argmax agreement {lagree:.1%}",
                )
            )
    except Exception as exc:
        statuses.append("warn")
        note = f"export failed: {str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}"
        findings.append(Finding("onnx_export", f"ONNX export {note}"))
    return note


_NOT_TORCH = "the model is already a non-PyTorch runtime model"


def _length_note(exported: ExportResult) -> str:
    """The time axis of a token/sequence export: dynamic and where verified, or fixed and why."""
    if exported.dynamic_length is None:
        return ""
    if exported.dynamic_length:
        return f", input length dynamic (verified at {' and '.join(map(str, exported.verified_lengths))})"
    return f", input length fixed ({exported.length_note})"


def run_integration(case: Case, evidence: Evidence, options: IntegrationOptions) -> CheckResult:
    """Serve in-process, compare with offline predictions; validate OpenAPI; ONNX export parity; batch scoring."""
    try:
        import fastapi  # noqa: F401
        import httpx  # noqa: F401
    except ImportError:
        return CheckResult(
            id="deployment.integration",
            status="not_examined",
            summary=f"Needs FastAPI and httpx to serve the model in-process: {_SERVE_HINT}.",
        )
    ref_split = "test" if case.get("test") is not None else "train"
    split = case.splits[ref_split]
    k = min(options.rows, len(split))
    x = split.x[:k]
    offline = evidence.get("probs", ref_split)[:k]
    backend, desc = make_backend(case.model, case.input_shape, case.n_classes)
    metrics: Metrics = {"rows": k}
    app = create_app(backend, config=ServeConfig(max_rows=max(k, 1)), class_names=case.class_names)
    example = {"inputs": x.tolist(), "request_id": "dlclinic-integration-1"}
    resp, bad, again, schema = _round_trip(app, example, x, metrics)
    if resp.status_code != 200:
        return CheckResult(
            id="deployment.integration",
            status="fail",
            summary=f"POST /predict answered {resp.status_code} on {k} real {ref_split} rows: {str(resp.json())[:200]}.",
        )
    served = np.asarray(resp.json()["probabilities"], dtype=np.float64)
    diff, statuses, findings = _served_findings(served, offline, bad, again, ref_split, options, metrics)
    problems = _validate_openapi(schema, example)
    metrics["openapi_problems"] = len(problems)
    if problems:
        statuses.append("fail")
        findings.append(Finding("openapi", "OpenAPI document: " + "; ".join(problems[:3])))
    with tempfile.TemporaryDirectory(prefix="dlclinic-integration-") as tmpdir:
        tmp = Path(tmpdir)
        _file_scoring(backend, case, x, offline, tmp, options, metrics, statuses, findings)
        onnx_note = _onnx_parity(case, evidence, ref_split, x, tmp, options, metrics, statuses, findings)
    status = worst(statuses) if statuses else "ok"
    if status == "ok":
        summary = f"Served predictions equal the offline ones on {k} {ref_split} rows (max |Δp| {diff:.1e}); the OpenAPI document validates; file scoring agrees; ONNX: {onnx_note}."
    else:
        summary = "Integration problems: " + "; ".join(f.message for f in findings[:2]) + "."
    return CheckResult(
        id="deployment.integration",
        status=status,
        summary=summary,
        metrics=metrics,
        thresholds={"prob_atol": options.prob_atol, "logit_atol": options.logit_atol},
        findings=tuple(findings),
        remedy=Remedy(
            command="dlclinic serve --out serve/",
            description=f"serve the model over HTTP ({desc} backend; --backend onnx serves the verified export) and score files with `dlclinic predict FILE --model MODEL --out scored.csv`",
        ),
        details={"onnx": onnx_note, "backend": desc},
    )


CHECK = CheckSpec(
    id="deployment.integration",
    requires=(("probs", "test"), ("logits", "test")),
    options=IntegrationOptions,
    run=run_integration,
    description="in-process HTTP round trip vs offline predictions, OpenAPI validity, ONNX export parity in plain onnxruntime, file batch scoring",
)

REMEDY = None
