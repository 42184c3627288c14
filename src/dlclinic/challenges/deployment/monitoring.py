"""deployment.monitoring — is every served prediction logged once, exposed and watched closely enough?

The prediction log (SQLite, one writer) is written through the server with retried request
ids and read back; ``/metrics`` must expose the series; the alert thresholds a window of
this size needs are computed (bootstrap from the reference), including the smallest
accuracy drop such windows can detect.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dlclinic.core.case import Case
from dlclinic.core.evidence import Evidence
from dlclinic.core.registry import CheckSpec
from dlclinic.core.results import CheckResult, Finding, Remedy, Status, worst
from dlclinic.monitoring import Reference, alert_thresholds
from dlclinic.monitoring.windows import AlertThresholds
from dlclinic.providers.deployment import deployment_reference, missing_reference
from dlclinic.serve.app import ServeConfig, create_app, in_process_client
from dlclinic.serve.backends import make_backend
from dlclinic.serve.store import PredictionStore

__all__ = ["CHECK", "REMEDY", "MonitoringOptions", "run_monitoring"]

_SERVE_HINT = "pip install 'dlclinic[serve]'"


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


@dataclass
class _Exercise:
    """What serving ``n`` test rows through the app with a log showed."""

    codes: list[int]
    retries: list[int]
    feedback_code: int
    served: list[np.ndarray]
    metrics_text: str
    windows: list[Any]
    rows: int
    integrity: dict[str, Any]
    logged: Any


def _drive(app: Any, case: Case, x: np.ndarray, step: int, ids: list[str]) -> tuple[Any, ...]:
    """Predict in requests of ``step`` rows, retry two of them, feed labels back, read /metrics and /monitor."""
    test = case.splits["test"]
    n = len(x)
    codes: list[int] = []
    served: list[np.ndarray] = []
    with in_process_client(app) as client:
        for j, start in enumerate(range(0, n, step)):
            r = client.post("/predict", json={"inputs": x[start : start + step].tolist(), "request_id": ids[j]})
            codes.append(r.status_code)
            if r.status_code == 200:
                served.append(np.asarray(r.json()["probabilities"]))
        retries = [
            client.post("/predict", json={"inputs": x[start : start + step].tolist(), "request_id": ids[j]}).status_code
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
    return codes, retries, fb.status_code, served, metrics_text, windows


def _exercise(case: Case, ref: Reference, x: np.ndarray, options: MonitoringOptions) -> _Exercise:
    """Serve ``x`` with a prediction log in a scratch directory, then read the log back through a new store."""
    n = len(x)
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
        codes, retries, fb_code, served, metrics_text, windows = _drive(app, case, x, step, ids)
        # the lifespan's shutdown flushed and closed the store; read it back through a new one
        reader = PredictionStore(Path(tmpdir) / "predictions.db")
        try:
            rows = reader.count()
            integrity = reader.integrity_check()
            logged = reader.read()
        finally:
            reader.close()
    return _Exercise(codes, retries, fb_code, served, metrics_text, windows, rows, integrity, logged)


def _roundtrip(ex: _Exercise, n_classes: int) -> float:
    """Max |Δp| between the served probabilities and the logged ones, in request order (inf on a count mismatch)."""
    logged = ex.logged
    served_all = np.concatenate(ex.served) if ex.served else np.zeros((0, n_classes))
    order = (
        np.lexsort((logged.row, np.array([int(r.split("-")[1]) for r in logged.request_id])))
        if len(logged)
        else np.zeros(0, dtype=np.int64)
    )
    return (
        float(np.max(np.abs(logged.probs[order] - served_all)))
        if len(logged) == len(served_all) and len(served_all)
        else float("inf")
    )


def _findings(
    ex: _Exercise,
    n: int,
    roundtrip: float,
    missing_series: list[str],
    thr: AlertThresholds,
    n_test: int,
    options: MonitoringOptions,
) -> tuple[list[Status], list[Finding]]:
    statuses: list[Status] = []
    findings: list[Finding] = []
    if (
        ex.rows != n
        or not ex.integrity["ok"]
        or roundtrip > 1e-6
        or any(c != 200 for c in ex.codes + ex.retries)
        or ex.feedback_code != 200
    ):
        statuses.append("fail")
        findings.append(
            Finding(
                "log",
                f"prediction log: {ex.rows} rows for {n} predictions (+{len(ex.retries)} retried requests), integrity {ex.integrity}, round-trip max |Δp| {roundtrip:.1e}",
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
                f"windows of {options.window} predictions against a reference of {n_test} rows can only detect accuracy drops above {thr.min_detectable_drop:.1%} (80 % power, α={options.alpha}); use larger windows or a larger reference",
            )
        )
    return statuses, findings


def _thresholds_table(thr: AlertThresholds, options: MonitoringOptions) -> dict[str, Any]:
    return {
        "title": "No-drift quantiles for one window (bootstrap from the reference)",
        "columns": ["statistic", f"{1 - options.alpha:.0%} quantile"],
        "rows": [
            ["PSI of predicted classes", f"{thr.psi:.4f}"],
            ["estimated-accuracy drop", f"{thr.estimated_drop:.4f}"],
            ["mean-confidence drop", f"{thr.confidence_drop:.4f}"],
            ["minimum detectable accuracy drop (80 % power)", f"{thr.min_detectable_drop:.4f}"],
        ],
    }


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
    missing = missing_reference(case)
    if missing:
        return CheckResult(id="deployment.monitoring", status="not_examined", summary=f"Needs {missing}.")
    ref = deployment_reference(case, evidence)
    test = case.splits["test"]
    n = min(options.rows, len(test))
    ex = _exercise(case, ref, test.x[:n], options)
    roundtrip = _roundtrip(ex, case.n_classes)
    missing_series = [s for s in _SERIES if s not in ex.metrics_text]
    thr = alert_thresholds(ref, options.window, alpha=options.alpha, resamples=options.resamples, seed=0)
    metrics: dict[str, float | int | bool | None] = {
        "requests": len(ex.codes),
        "requests_ok": sum(c == 200 for c in ex.codes),
        "retried_requests": len(ex.retries),
        "logged_rows": ex.rows,
        "expected_rows": n,
        "duplicate_rows": max(0, ex.rows - n),
        "corrupt_rows": ex.integrity["corrupt_rows"],
        "log_roundtrip_max_abs_diff": roundtrip,
        "feedback_labels_joined": int((ex.logged.labels >= 0).sum()),
        "metrics_series_missing": len(missing_series),
        "live_windows": len(ex.windows),
        "psi_no_drift_quantile": thr.psi,
        "estimated_drop_no_drift_quantile": thr.estimated_drop,
        "min_detectable_accuracy_drop": thr.min_detectable_drop,
    }
    statuses, findings = _findings(ex, n, roundtrip, missing_series, thr, len(test), options)
    status = worst(statuses) if statuses else "ok"
    if status == "ok":
        summary = f"Every prediction is logged once ({ex.rows} rows, {len(ex.retries)} retried ids not duplicated), read back exactly and /metrics exposes the drift series; windows of {options.window} can detect an accuracy drop of {thr.min_detectable_drop:.1%} (PSI no-drift {1 - options.alpha:.0%} quantile {thr.psi:.3f})."
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
            command="dlclinic monitor --store serve/predictions.db --reference serve/reference.npz --out monitor/",
            description="serve with the log (`dlclinic serve --store ...`), feed labels back (POST /feedback), run `dlclinic monitor` from cron: it exits 1 when a window alerts; /dashboard shows the windows",
        ),
        details={"alert_thresholds": thr.to_dict(), "tables": [_thresholds_table(thr, options)]},
    )


CHECK = CheckSpec(
    id="deployment.monitoring",
    requires=(("logits", "test"), ("embeddings", "test")),
    options=MonitoringOptions,
    run=run_monitoring,
    description="prediction-log round trip (SQLite, idempotent request ids), /metrics series, alert thresholds and detectable drop per window size",
)

REMEDY = None
