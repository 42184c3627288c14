"""deployment.* — drift over time, integration, monitoring and scalability of the served model.

* ``deployment.drift`` streams the ``deploy`` split, in its order, through the same window
  analysis as ``dlclinic monitor`` (:func:`dlclinic.monitoring.evaluate_stream`) with the
  held-out ``test`` split as reference: embedding MMD, PSI/χ² of predicted classes,
  confidence shift, accuracy estimated without labels (CBPE, temperature-calibrated on
  test) and observed accuracy where deploy labels exist. Holm's procedure over all windows
  and tests keeps the chance of any false alarm on a stationary stream at ``alpha``.
* ``deployment.integration`` serves the model in-process (FastAPI ``TestClient``): the
  predictions from ``/predict`` must equal the offline ones on real test rows; the OpenAPI
  document's schemas must be valid JSON Schema and accept a real request; the ONNX export
  is loaded with plain ``onnxruntime`` and compared with eager; a file is batch-scored.
* ``deployment.monitoring`` writes and reads the prediction log (SQLite, one writer) with
  a retried request id, checks ``/metrics`` exposes the series and computes the alert
  thresholds a window of this size needs (bootstrap from the reference), including the
  smallest accuracy drop such windows can detect.
* ``deployment.scalability`` runs a bounded in-process load test of the dynamic batcher
  (1 vs several concurrent clients, batching on/off) and the model's throughput per batch
  size. Timings depend on the machine and its load; they are reported, and only a p99
  above the latency budget warns. Multi-worker serving (``dlclinic serve --workers N``)
  is not exercised here (separate processes).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dlclinic.core.case import Case
from dlclinic.core.evidence import Evidence
from dlclinic.core.registry import CheckSpec
from dlclinic.core.results import CheckResult, Finding, Remedy, Status, worst

__all__ = [
    "DRIFT",
    "INTEGRATION",
    "MONITORING",
    "SCALABILITY",
    "DriftOptions",
    "IntegrationOptions",
    "MonitoringOptions",
    "ScalabilityOptions",
    "drift_result",
]

_SERVE_HINT = "pip install 'dlclinic[serve]'"


def _reference(case: Case, evidence: Evidence) -> Any:
    from dlclinic.monitoring import Reference

    test = case.splits["test"]
    emb = evidence.get("embeddings", "test") if evidence.available("embeddings", "test") else None
    return Reference.build(
        evidence.get("logits", "test"),
        test.y,
        emb,
        case.class_names,
        meta={"split": "test", "model": case.model_source},
    )


def _test_client() -> Any:
    """FastAPI's in-process client, without the deprecation chatter of its httpx backend."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # StarletteDeprecationWarning about its httpx backend
        from fastapi.testclient import TestClient
    return TestClient


def _need_reference(case: Case) -> str | None:
    test = case.get("test")
    if test is None or not test.labelled:
        return "a labelled test split (the reference the deployment is compared with; pass --test)"
    return None


# ----------------------------------------------------------------------------- drift


@dataclass(frozen=True)
class DriftOptions:
    """Windows and alert levels of deployment.drift (see :class:`dlclinic.monitoring.MonitorConfig`).

    The false-alarm level is ``alpha`` for the whole deploy stream (Holm over windows × tests).
    """

    window: int = 100
    alpha: float = 0.01
    warn_accuracy_drop: float = 0.05
    fail_accuracy_drop: float = 0.10
    max_reference_rows: int = 300
    seed: int = 0

    def __post_init__(self) -> None:
        if self.window < 10:
            raise ValueError(f"`window >= 10` must hold, but got window={self.window}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"`0 < alpha < 1` must hold, but got alpha={self.alpha}")


def drift_result(result: Any, *, source: str, labels_known: bool, seconds_windows: bool = False) -> CheckResult:
    """The deployment.drift row from a :class:`~dlclinic.monitoring.MonitorResult` (checkup and ``monitor`` share it)."""
    ws = result.windows
    if not ws:
        return CheckResult(
            id="deployment.drift",
            status="not_examined",
            summary=f"No complete window in {source}: nothing to compare with the reference yet.",
        )
    status: Status = result.status  # type: ignore[assignment]
    alerts = [w for w in ws if w.status != "ok"]
    est = np.array([w.estimated_accuracy for w in ws])
    obs = [w.accuracy for w in ws]
    worst_drop = float(max(w.estimated_drop for w in ws))
    metrics: dict[str, float | int | bool | None] = {
        "windows": len(ws),
        "alert_windows": len(alerts),
        "drifted_windows": sum(w.drifted for w in ws),
        "first_alert_window": result.first_alert,
        "reference_accuracy": result.reference_accuracy,
        "reference_estimated_accuracy": result.reference_estimated_accuracy,
        "min_estimated_accuracy": float(est.min()),
        "max_estimated_drop": worst_drop,
        "max_psi": float(max(w.psi for w in ws)),
        "max_mmd2": max((w.mmd2 for w in ws if w.mmd2 is not None), default=None),
        "temperature": result.temperature,
        "permutations": result.permutations,
    }
    known = [
        (w.estimated_accuracy, w.accuracy)
        for w in ws
        if w.accuracy is not None and w.accuracy_n >= result.config.min_labels
    ]
    if known:
        errs = np.array([e - a for e, a in known])
        metrics["min_observed_accuracy"] = float(min(a for _, a in known))
        metrics["cbpe_mean_error"] = float(errs.mean())
        metrics["cbpe_max_abs_error"] = float(np.abs(errs).max())
    findings = tuple(
        Finding(
            "drift_window",
            f"window {w.index} (rows {w.start}–{w.stop - 1}{'' if w.t_start is None else f', t {w.t_start:.0f}–{w.t_end:.0f}'}): "
            + "; ".join(w.reasons),
            extra={"window": w.index, "status": w.status},
        )
        for w in alerts
    )
    cfg = result.config
    if status == "ok":
        summary = f"No window of {source} differs from the reference ({len(ws)} windows, family-wise false-alarm level {cfg.alpha:.0%}); estimated accuracy {est.min():.1%}–{est.max():.1%} vs {result.reference_estimated_accuracy:.1%}."
    else:
        first = ws[result.first_alert]
        drop_txt = f"estimated accuracy (CBPE) down to {est.min():.1%} from {result.reference_estimated_accuracy:.1%}"
        if known:
            drop_txt += f", observed {metrics['min_observed_accuracy']:.1%} vs {result.reference_accuracy:.1%}"
        summary = f"Drift from window {first.index} on ({len(alerts)} of {len(ws)} windows alert): {drop_txt}."
    remedy = None
    if status != "ok":
        acc_fell = any("accuracy" in r for w in alerts for r in w.reasons)
        what = (
            "Accuracy fell: retrain (or fine-tune) on labelled data from the drifted windows, starting at window "
            + str(result.first_alert)
            if acc_fell
            else "Inputs moved but accuracy held: recalibrate (temperature on recent labelled rows) and keep watching; retrain if the observed accuracy falls"
        )
        remedy = Remedy(
            command="dlclinic treat deployment.drift",
            description=what
            + " (the remedy writes the rows to label as drift_trigger.json, and with labels recalibrates and retrains on half of the drifted rows, verified on the other half). Label-free estimates (CBPE) assume calibration carries over; confirm with fed-back labels (POST /feedback, `dlclinic monitor`).",
        )
    labels = [str(w.index) for w in ws]
    series_acc: list[dict[str, Any]] = [{"label": "estimated (CBPE)", "x": list(range(len(ws))), "y": est.tolist()}]
    if labels_known and any(a is not None for a in obs):
        series_acc.append(
            {
                "label": "observed",
                "x": [i for i, a in enumerate(obs) if a is not None],
                "y": [a for a in obs if a is not None],
            }
        )
    series_acc.append(
        {"label": "reference (est.)", "x": [0, len(ws) - 1], "y": [result.reference_estimated_accuracy] * 2}
    )
    plots = [
        {
            "kind": "line",
            "title": "Accuracy per window",
            "xlabel": "window (seconds)" if seconds_windows else "window",
            "ylabel": "accuracy",
            "series": series_acc,
        },
        {
            "kind": "line",
            "title": "Shift per window",
            "xlabel": "window",
            "ylabel": "statistic",
            "series": [
                s
                for s in (
                    {"label": "PSI (predicted classes)", "x": list(range(len(ws))), "y": [w.psi for w in ws]},
                    {"label": "embedding MMD²", "x": list(range(len(ws))), "y": [w.mmd2 for w in ws]}
                    if ws[0].mmd2 is not None
                    else None,
                )
                if s is not None
            ],
        },
    ]
    table = {
        "title": "Windows vs reference (p-values Holm-adjusted)",
        "columns": ["window", "rows", "status", "est. acc", "obs. acc", "MMD² (p)", "PSI", "χ² p", "conf. mean (p)"],
        "rows": [
            [
                labels[i],
                f"{w.start}–{w.stop - 1}",
                w.status,
                f"{w.estimated_accuracy:.3f}",
                "" if w.accuracy is None else f"{w.accuracy:.3f} (n={w.accuracy_n})",
                "" if w.mmd2 is None else f"{w.mmd2:.3g} ({w.adjusted.get('mmd', 1):.2g})",
                f"{w.psi:.3f}",
                f"{w.adjusted.get('chi2', 1):.2g}",
                f"{w.confidence_mean:.3f} ({w.adjusted.get('confidence', 1):.2g})",
            ]
            for i, w in enumerate(ws)
        ],
    }
    return CheckResult(
        id="deployment.drift",
        status=status,
        summary=summary,
        metrics=metrics,
        thresholds={
            "alpha.family_wise": cfg.alpha,
            "accuracy_drop.warn": cfg.warn_accuracy_drop,
            "accuracy_drop.fail": cfg.fail_accuracy_drop,
            "window": cfg.window,
        },
        findings=findings,
        remedy=remedy,
        details={
            "plots": plots,
            "tables": [table],
            "windows": [w.to_dict() for w in ws],
            "note": "CBPE (estimated accuracy) reads accuracy off calibrated confidences: it needs the temperature fitted on the reference to carry over, and it cannot see concept shift (labels changing for the same inputs).",
        },
    )


def run_drift(case: Case, evidence: Evidence, options: DriftOptions) -> CheckResult:
    """Window the deploy split in order and compare each window with the test split."""
    from dlclinic.monitoring import MonitorConfig, evaluate_stream, softmax

    deploy = case.get("deploy")
    if deploy is None:
        return CheckResult(
            id="deployment.drift",
            status="not_examined",
            summary="Needs a deploy split (rows seen after deployment, in time order; pass --deploy) or a prediction log (`dlclinic monitor`).",
        )
    missing = _need_reference(case)
    if missing:
        return CheckResult(id="deployment.drift", status="not_examined", summary=f"Needs {missing}.")
    ref = _reference(case, evidence)
    n = len(deploy)
    window = min(options.window, max(10, n))
    cfg = MonitorConfig(
        window=window,
        min_window=max(2, window // 2),
        alpha=options.alpha,
        warn_accuracy_drop=options.warn_accuracy_drop,
        fail_accuracy_drop=options.fail_accuracy_drop,
        max_reference_rows=options.max_reference_rows,
        seed=options.seed,
    )
    emb = evidence.get("embeddings", "deploy") if ref.embeddings is not None else None
    labels = deploy.y
    res = evaluate_stream(ref, softmax(evidence.get("logits", "deploy")), embeddings=emb, labels=labels, config=cfg)
    return drift_result(
        res, source=f"the deploy split ({n} rows in windows of {window})", labels_known=labels is not None
    )


DRIFT = CheckSpec(
    id="deployment.drift",
    requires=(("logits", "test"), ("embeddings", "test"), ("logits", "deploy"), ("embeddings", "deploy")),
    options=DriftOptions,
    run=run_drift,
    description="windows of the deploy split vs test: embedding MMD, PSI/χ² of predictions, confidence shift, CBPE estimated accuracy, observed accuracy; Holm-controlled alerts",
)


# ----------------------------------------------------------------------------- integration


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
    root_text = __import__("json").dumps(root).replace("#/components/schemas/", "#/$defs/")
    try:
        jsonschema.Draft202012Validator(__import__("json").loads(root_text)).validate(example)
    except jsonschema.ValidationError as exc:
        problems.append(f"a real request does not validate against the request schema: {exc.message[:120]}")
    return problems


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
    TestClient = _test_client()

    from dlclinic.serve.app import ServeConfig, create_app
    from dlclinic.serve.backends import make_backend

    ref_split = "test" if case.get("test") is not None else "train"
    split = case.splits[ref_split]
    k = min(options.rows, len(split))
    x = split.x[:k]
    offline = evidence.get("probs", ref_split)[:k]
    backend, desc = make_backend(case.model, case.input_shape, case.n_classes)
    statuses: list[Status] = []
    findings: list[Finding] = []
    metrics: dict[str, float | int | bool | None] = {"rows": k}
    app = create_app(backend, config=ServeConfig(max_rows=max(k, 1)), class_names=case.class_names)
    example = {"inputs": x.tolist(), "request_id": "dlclinic-integration-1"}
    with TestClient(app) as client:
        t0 = time.perf_counter()
        resp = client.post("/predict", json=example)
        metrics["roundtrip_ms"] = (time.perf_counter() - t0) * 1000
        bad = client.post("/predict", json={"inputs": [[0.0]]})
        again = client.post("/predict", json={"inputs": x[:1].tolist()})
        schema = client.get("/openapi.json").json()
    if resp.status_code != 200:
        return CheckResult(
            id="deployment.integration",
            status="fail",
            summary=f"POST /predict answered {resp.status_code} on {k} real {ref_split} rows: {str(resp.json())[:200]}.",
        )
    served = np.asarray(resp.json()["probabilities"], dtype=np.float64)
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
    problems = _validate_openapi(schema, example)
    metrics["openapi_problems"] = len(problems)
    if problems:
        statuses.append("fail")
        findings.append(Finding("openapi", "OpenAPI document: " + "; ".join(problems[:3])))

    with tempfile.TemporaryDirectory(prefix="dlclinic-integration-") as tmpdir:
        tmp = Path(tmpdir)
        # batch scoring of a file, as `dlclinic predict` does
        from dlclinic.serve.scoring import score_file

        np.savez(tmp / "rows.npz", x=x)
        score_file(
            backend, tmp / "rows.npz", tmp / "scored.csv", class_names=case.class_names, batch_size=max(1, k // 3)
        )
        import pandas as pd

        scored = pd.read_csv(tmp / "scored.csv")
        file_probs = scored[[f"p_{c}" for c in case.class_names]].to_numpy()
        file_diff = float(np.max(np.abs(file_probs - offline))) if file_probs.shape == offline.shape else float("inf")
        metrics["file_scoring_max_abs_prob_diff"] = file_diff
        if file_diff > max(options.prob_atol, 1e-5):
            statuses.append("fail")
            findings.append(
                Finding("file_scoring", f"batch-scored file differs from offline predictions by up to {file_diff:.2e}")
            )
        # ONNX export, loaded with plain onnxruntime
        onnx_note = "skipped (option onnx=false)"
        if options.onnx and hasattr(case.model, "state_dict"):
            try:
                import onnxruntime as ort

                from dlclinic.export import export_onnx
            except ImportError:
                onnx_note = "not examined: pip install 'dlclinic[onnx]'"
            else:
                try:
                    t0 = time.perf_counter()
                    exported = export_onnx(case.model, x, tmp / "model.onnx", exporter=options.exporter)  # type: ignore[arg-type]
                    metrics["onnx_export_seconds"] = time.perf_counter() - t0
                    sess = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
                    inp = sess.get_inputs()[0]
                    logits = np.asarray(sess.run(None, {inp.name: x.astype(np.float32)})[0], dtype=np.float64)
                    eager = evidence.get("logits", ref_split)[:k].astype(np.float64)
                    ldiff = float(np.max(np.abs(logits - eager)))
                    lagree = float(np.mean(logits.argmax(1) == eager.argmax(1)))
                    metrics.update(
                        {
                            "onnx_max_abs_logit_diff": ldiff,
                            "onnx_argmax_agreement": lagree,
                            "onnx_size_mb": exported.size_mb,
                            "onnx_dynamic_batch": exported.dynamic_batch,
                        }
                    )
                    onnx_note = f"{exported.exporter}, plain onnxruntime max |Δlogit| {ldiff:.1e}"
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
                    onnx_note = f"export failed: {str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}"
                    findings.append(Finding("onnx_export", f"ONNX export {onnx_note}"))
        elif not hasattr(case.model, "state_dict"):
            onnx_note = "the model is already a non-PyTorch runtime model"
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
            command="dlclinic serve --model MODEL --test TEST --store predictions.db",
            description=f"serve the model over HTTP ({desc} backend; --backend onnx serves the verified export) and score files with `dlclinic predict FILE --model MODEL --out scored.csv`",
        ),
        details={"onnx": onnx_note, "backend": desc},
    )


INTEGRATION = CheckSpec(
    id="deployment.integration",
    requires=(("probs", "test"), ("logits", "test")),
    options=IntegrationOptions,
    run=run_integration,
    description="in-process HTTP round trip vs offline predictions, OpenAPI validity, ONNX export parity in plain onnxruntime, file batch scoring",
)


# ----------------------------------------------------------------------------- monitoring


@dataclass(frozen=True)
class MonitoringOptions:
    """Log round trip size, the window the thresholds are computed for, and what counts as too blind."""

    rows: int = 200
    request_rows: int = 10
    window: int = 100
    alpha: float = 0.01
    warn_min_detectable_drop: float = 0.10
    resamples: int = 300


_SERIES = (
    "dlclinic_requests_total",
    "dlclinic_request_latency_seconds_bucket",
    "dlclinic_batch_rows_bucket",
    "dlclinic_drift_psi",
    "dlclinic_estimated_accuracy",
    "dlclinic_drift_alert",
)


def run_monitoring(case: Case, evidence: Evidence, options: MonitoringOptions) -> CheckResult:
    """Prediction-log round trip with retried ids, /metrics series, alert thresholds for the window size."""
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError:
        return CheckResult(
            id="deployment.monitoring",
            status="not_examined",
            summary=f"Needs FastAPI, SQLAlchemy and prometheus_client: {_SERVE_HINT}.",
        )
    missing = _need_reference(case)
    if missing:
        return CheckResult(id="deployment.monitoring", status="not_examined", summary=f"Needs {missing}.")
    TestClient = _test_client()

    from dlclinic.monitoring import alert_thresholds
    from dlclinic.serve.app import ServeConfig, create_app
    from dlclinic.serve.backends import make_backend
    from dlclinic.serve.store import PredictionStore

    ref = _reference(case, evidence)
    test = case.splits["test"]
    n = min(options.rows, len(test))
    x = test.x[:n]
    statuses: list[Status] = []
    findings: list[Finding] = []
    backend, _ = make_backend(case.model, case.input_shape, case.n_classes)
    with tempfile.TemporaryDirectory(prefix="dlclinic-monitoring-") as tmpdir:
        store = PredictionStore(Path(tmpdir) / "predictions.db")
        app = create_app(
            backend,
            reference=ref,
            store=store,
            config=ServeConfig(window=max(2, min(options.window, n)), max_rows=options.request_rows),
            class_names=case.class_names,
        )
        step = max(1, options.request_rows)
        ids = [f"check-{i // step}" for i in range(0, n, step)]
        codes: list[int] = []
        served: list[np.ndarray] = []
        with TestClient(app) as client:
            for j, start in enumerate(range(0, n, step)):
                r = client.post("/predict", json={"inputs": x[start : start + step].tolist(), "request_id": ids[j]})
                codes.append(r.status_code)
                if r.status_code == 200:
                    served.append(np.asarray(r.json()["probabilities"]))
            retries = [
                client.post(
                    "/predict", json={"inputs": x[start : start + step].tolist(), "request_id": ids[j]}
                ).status_code
                for j, start in list(enumerate(range(0, n, step)))[:2]
            ]
            fb = client.post(
                "/feedback",
                json={
                    "items": [
                        {"request_id": ids[0], "row": i, "label": int(test.y[i])}
                        for i in range(min(step, n))
                        if test.y is not None
                    ]
                },
            )
            app.state.dlclinic.monitor.wait()
            metrics_text = client.get("/metrics").text
            windows = client.get("/monitor").json()["windows"]
        # the lifespan's shutdown flushed and closed the store; read it back through a new one
        reader = PredictionStore(Path(tmpdir) / "predictions.db")
        try:
            rows = reader.count()
            integrity = reader.integrity_check()
            logged = reader.read()
        finally:
            reader.close()
    served_all = np.concatenate(served) if served else np.zeros((0, case.n_classes))
    order = (
        np.lexsort((logged.row, np.array([int(r.split("-")[1]) for r in logged.request_id])))
        if len(logged)
        else np.zeros(0, dtype=np.int64)
    )
    roundtrip = (
        float(np.max(np.abs(logged.probs[order] - served_all)))
        if len(logged) == len(served_all) and len(served_all)
        else float("inf")
    )
    labels_joined = int((logged.labels >= 0).sum())
    missing_series = [s for s in _SERIES if s not in metrics_text]
    thr = alert_thresholds(ref, options.window, alpha=options.alpha, resamples=options.resamples, seed=0)
    metrics: dict[str, float | int | bool | None] = {
        "requests": len(codes),
        "requests_ok": sum(c == 200 for c in codes),
        "retried_requests": len(retries),
        "logged_rows": rows,
        "expected_rows": n,
        "duplicate_rows": max(0, rows - n),
        "corrupt_rows": integrity["corrupt_rows"],
        "log_roundtrip_max_abs_diff": roundtrip,
        "feedback_labels_joined": labels_joined,
        "metrics_series_missing": len(missing_series),
        "live_windows": len(windows),
        "psi_no_drift_quantile": thr.psi,
        "estimated_drop_no_drift_quantile": thr.estimated_drop,
        "min_detectable_accuracy_drop": thr.min_detectable_drop,
    }
    if (
        rows != n
        or not integrity["ok"]
        or roundtrip > 1e-6
        or any(c != 200 for c in codes + retries)
        or fb.status_code != 200
    ):
        statuses.append("fail")
        findings.append(
            Finding(
                "log",
                f"prediction log: {rows} rows for {n} predictions (+{len(retries)} retried requests), integrity {integrity}, round-trip max |Δp| {roundtrip:.1e}",
            )
        )
    if missing_series:
        statuses.append("fail")
        findings.append(Finding("metrics", f"/metrics lacks {', '.join(missing_series)}"))
    if thr.min_detectable_drop > options.warn_min_detectable_drop:
        statuses.append("warn")
        findings.append(
            Finding(
                "blind_windows",
                f"windows of {options.window} predictions against a reference of {len(test)} rows can only detect accuracy drops above {thr.min_detectable_drop:.1%} (80 % power, α={options.alpha}); use larger windows or a larger reference",
            )
        )
    status = worst(statuses) if statuses else "ok"
    if status == "ok":
        summary = f"Every prediction is logged once ({rows} rows, {len(retries)} retried ids not duplicated), read back exactly and /metrics exposes the drift series; windows of {options.window} can detect an accuracy drop of {thr.min_detectable_drop:.1%} (PSI no-drift {1 - options.alpha:.0%} quantile {thr.psi:.3f})."
    else:
        summary = "Monitoring problems: " + "; ".join(f.message for f in findings[:2]) + "."
    return CheckResult(
        id="deployment.monitoring",
        status=status,
        summary=summary,
        metrics=metrics,
        thresholds={"min_detectable_drop.warn": options.warn_min_detectable_drop, "alpha": options.alpha},
        findings=tuple(findings),
        remedy=Remedy(
            command="dlclinic monitor --store predictions.db --reference reference.npz --out monitor/",
            description="serve with the log (`dlclinic serve --store ...`), feed labels back (POST /feedback), run `dlclinic monitor` from cron: it exits 1 when a window alerts; /dashboard shows the windows",
        ),
        details={
            "alert_thresholds": thr.to_dict(),
            "tables": [
                {
                    "title": "No-drift quantiles for one window (bootstrap from the reference)",
                    "columns": ["statistic", f"{1 - options.alpha:.0%} quantile"],
                    "rows": [
                        ["PSI of predicted classes", f"{thr.psi:.4f}"],
                        ["estimated-accuracy drop", f"{thr.estimated_drop:.4f}"],
                        ["mean-confidence drop", f"{thr.confidence_drop:.4f}"],
                        ["minimum detectable accuracy drop (80 % power)", f"{thr.min_detectable_drop:.4f}"],
                    ],
                }
            ],
        },
    )


MONITORING = CheckSpec(
    id="deployment.monitoring",
    requires=(("logits", "test"), ("embeddings", "test")),
    options=MonitoringOptions,
    run=run_monitoring,
    description="prediction-log round trip (SQLite, idempotent request ids), /metrics series, alert thresholds and detectable drop per window size",
)


# ----------------------------------------------------------------------------- scalability


@dataclass(frozen=True)
class ScalabilityOptions:
    """A bounded load test: request count and time limit per run, concurrency levels, batch sizes, latency budget."""

    requests: int = 200
    time_limit: float = 1.0
    concurrency: int = 8
    max_batch: int = 32
    max_wait_ms: float = 2.0
    batch_sizes: tuple[int, ...] = (1, 8, 32, 128)
    warn_p99_ms: float = 250.0


def _throughput(predict: Any, x: np.ndarray, batch: int, budget: float) -> float:
    """Rows per second of ``predict`` at this batch size within about ``budget`` seconds."""
    xb = np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])).astype(np.float32))
    for _ in range(3):  # warm-up: allocator, thread pool, lazy kernels
        predict(xb)
    rows = 0
    t0 = time.perf_counter()
    while True:
        predict(xb)
        rows += batch
        elapsed = time.perf_counter() - t0
        if elapsed > budget or rows >= 20000:
            return rows / elapsed


def run_scalability(case: Case, evidence: Evidence, options: ScalabilityOptions) -> CheckResult:
    """Throughput and p99 with and without dynamic batching, and throughput per batch size."""
    from dlclinic.serve.backends import make_backend
    from dlclinic.serve.batching import run_load

    split = case.splits["test"] if case.get("test") is not None else case.train
    x = split.x[: max(256, max(options.batch_sizes))]
    backend, desc = make_backend(case.model, case.input_shape, case.n_classes)
    from concurrent.futures import ThreadPoolExecutor

    # measured on a worker thread, as the server runs the model (torch's intra-op threading
    # behaves differently on the main thread: batch-1 calls were 20× slower there on a busy machine)
    with ThreadPoolExecutor(max_workers=1) as pool:
        per_batch = {b: pool.submit(_throughput, backend.predict, x, b, 0.25).result() for b in options.batch_sizes}
    runs = [
        run_load(
            backend.predict, x, concurrency=1, max_batch=1, requests=options.requests, time_limit=options.time_limit
        ),
        run_load(
            backend.predict,
            x,
            concurrency=options.concurrency,
            max_batch=1,
            requests=options.requests,
            time_limit=options.time_limit,
        ),
        run_load(
            backend.predict,
            x,
            concurrency=options.concurrency,
            max_batch=options.max_batch,
            max_wait=options.max_wait_ms / 1000,
            requests=options.requests,
            time_limit=options.time_limit,
        ),
    ]
    single, unbatched, batched = runs
    speedup = batched["rows_per_s"] / unbatched["rows_per_s"] if unbatched["rows_per_s"] > 0 else float("nan")
    sizes = sorted(per_batch)
    growth = per_batch[sizes[-1]] / per_batch[sizes[0]] if per_batch[sizes[0]] > 0 else float("nan")
    metrics: dict[str, float | int | bool | None] = {
        "rows_per_s_c1": single["rows_per_s"],
        "p99_ms_c1": single["p99_ms"],
        f"rows_per_s_c{options.concurrency}_unbatched": unbatched["rows_per_s"],
        f"p99_ms_c{options.concurrency}_unbatched": unbatched["p99_ms"],
        f"rows_per_s_c{options.concurrency}_batched": batched["rows_per_s"],
        f"p99_ms_c{options.concurrency}_batched": batched["p99_ms"],
        "mean_batch_rows": batched["mean_batch_rows"],
        "batching_speedup": speedup,
        "throughput_growth_batch": growth,
    }
    for b in sizes:
        metrics[f"model_rows_per_s_batch{b}"] = per_batch[b]
    p99 = batched["p99_ms"]
    status: Status = "warn" if p99 > options.warn_p99_ms else "ok"
    findings = []
    if status == "warn":
        findings.append(
            Finding(
                "latency",
                f"p99 latency {p99:.0f} ms at {options.concurrency} concurrent clients with dynamic batching exceeds the {options.warn_p99_ms:.0f} ms budget",
            )
        )
    summary = (
        f"At {options.concurrency} concurrent clients dynamic batching serves {batched['rows_per_s']:.0f} rows/s (p99 {p99:.1f} ms) vs {unbatched['rows_per_s']:.0f} rows/s unbatched ({speedup:.1f}×); "
        f"model throughput grows {growth:.1f}× from batch {sizes[0]} to {sizes[-1]}."
    )
    table = {
        "title": "Load test (in-process, bounded)",
        "columns": ["clients", "max batch", "requests", "rows/s", "p50 ms", "p95 ms", "p99 ms", "mean batch"],
        "rows": [
            [
                r["concurrency"],
                r["max_batch"],
                r["requests"],
                f"{r['rows_per_s']:.0f}",
                f"{r['p50_ms']:.2f}",
                f"{r['p95_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                f"{r['mean_batch_rows']:.1f}",
            ]
            for r in runs
        ],
    }
    return CheckResult(
        id="deployment.scalability",
        status=status,
        summary=summary,
        metrics=metrics,
        thresholds={"p99_ms.warn": options.warn_p99_ms},
        findings=tuple(findings),
        remedy=Remedy(
            command="dlclinic serve --model MODEL --test TEST --workers 2 --max-batch 32",
            description="serve with dynamic batching and several worker processes (each loads the model; size workers to cores / torch threads); timings depend on the machine and its load",
        ),
        details={
            "plots": [
                {
                    "kind": "line",
                    "title": "Model throughput per batch size",
                    "xlabel": "batch size",
                    "ylabel": "rows/s",
                    "xscale": "log",
                    "series": [{"label": desc, "x": sizes, "y": [per_batch[b] for b in sizes]}],
                }
            ],
            "tables": [table],
            "note": "Multi-worker serving (uvicorn --workers) runs separate processes and is not measured in the checkup.",
        },
    )


SCALABILITY = CheckSpec(
    id="deployment.scalability",
    requires=(),
    options=ScalabilityOptions,
    run=run_scalability,
    description="bounded in-process load test of the dynamic batcher (throughput, p50/p95/p99 at 1 and N clients, batching on/off) and throughput per batch size",
)
