"""The FastAPI application that serves a classifier: :func:`create_app`.

Endpoints (JSON unless stated):

* ``POST /predict`` — ``{"inputs": [...N samples...], "request_id": "optional"}`` →
  classes, predicted class per row, probabilities, model version, latency. Samples have
  the model's input shape (or are flat rows of the same size). Wrong shape, dtype or
  non-finite values → 422 with the expected shape; inputs the model turns into non-finite
  outputs (e.g. 1e38) → 422, nothing logged; bodies over ``max_body_bytes`` or more than
  ``max_rows`` rows → 413; a full queue → 503 with ``Retry-After``; a shutting-down server
  → 503. The request id (body, or the ``X-Request-ID`` header; one pattern for both) is an
  idempotency key: the same id with the same inputs answers the logged answer again
  (header ``Idempotent-Replayed: true``) and logs nothing new; the same id with other inputs
  → 409. By default (``log_mode="durable"``) a 200 is sent only once its rows are committed
  and on disk (group commit); a row that cannot be logged → 503 (database busy or down,
  ``Retry-After``) or 500, never a 200.
* ``POST /feedback`` — ``{"items": [{"request_id": ..., "row": 0, "label": 3}]}``: true
  labels fed back, for observed accuracy in ``dlclinic monitor``.
* ``GET /health`` (liveness, always 200), ``GET /ready`` (200 once warmed up, 503 while
  starting or draining), ``GET /metrics`` (Prometheus text: requests, latency histogram,
  batch sizes, queue, drift and estimated-accuracy gauges; one registry per app),
  ``GET /monitor`` (live windows as JSON), ``GET /dashboard`` (one self-contained HTML page,
  inline SVG, no external assets), ``/openapi.json`` and ``/docs``.

With ``token`` set every endpoint except ``/health``, ``/ready``, ``/openapi.json`` and
``/docs`` needs ``Authorization: Bearer <token>`` (401 otherwise). Shutdown (the ASGI
lifespan, e.g. uvicorn on SIGTERM): ``/ready`` turns 503 and new predictions are refused,
queued ones finish, the prediction log is flushed and closed.
"""

import asyncio
import contextlib
import hmac
import html
import json
import math
import re
import threading
import time
import uuid
import warnings
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from dlclinic.core.errors import ConfigError
from dlclinic.monitoring.reference import Reference
from dlclinic.monitoring.stats import estimate_accuracy_cbpe
from dlclinic.monitoring.windows import MonitorConfig, evaluate_window
from dlclinic.serve.backends import Backend
from dlclinic.serve.batching import Batcher, BatcherFactory, Draining, DynamicBatcher, Predict, QueueFull
from dlclinic.serve.store import (
    PredictionRecord,
    PredictionStore,
    RequestConflict,
    hash_input,
    is_transient_error,
    payload_hash,
)

__all__ = [
    "LOG_MODES",
    "REQUEST_ID_PATTERN",
    "ServeConfig",
    "ServeState",
    "check_request_id",
    "create_app",
    "in_process_client",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOG_MODES = ("durable", "async")
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"

_OPEN_PATHS = ("/health", "/ready", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")


@dataclass(frozen=True)
class ServeConfig:
    """Serving limits and behaviour (the ``dlclinic serve`` options).

    Attributes:
        max_batch: most rows per model call (1 disables dynamic batching).
        max_wait_ms: how long the oldest request waits for a batch to fill.
        max_queue: most rows waiting for the model; more → 503 with ``Retry-After``.
        max_rows: most rows in one request (413 beyond).
        max_body_bytes: largest request body (413 beyond).
        token: bearer token required on data endpoints (``None`` = no authentication).
        model_version: recorded with every logged prediction.
        store_inputs: log the inputs themselves, not only their SHA-256.
        log_mode: ``"durable"`` (answer only after the log rows are committed and on disk: no
            acknowledged-but-lost rows) or ``"async"`` (answer first, commit soon after: faster,
            and a crash loses the rows still queued).
        window: predictions per live drift window (``/metrics`` gauges, ``/dashboard``).
        retry_after_s: the ``Retry-After`` of a 503.
        drain_timeout_s: how long shutdown waits for queued requests.
    """

    max_batch: int = 64
    max_wait_ms: float = 5.0
    max_queue: int = 2048
    max_rows: int = 1024
    max_body_bytes: int = 16 * 1024 * 1024
    token: str | None = None
    model_version: str = "unversioned"
    store_inputs: bool = False
    log_mode: str = "durable"
    window: int = 200
    retry_after_s: int = 1
    drain_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "max_rows", "max_body_bytes", "window"):
            if getattr(self, name) < 1:
                raise ConfigError(f"`{name} >= 1` must hold, but got {name}={getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ConfigError(f"`max_wait_ms >= 0` must hold, but got max_wait_ms={self.max_wait_ms}")
        if self.log_mode not in LOG_MODES:
            raise ConfigError(f"log_mode: expected one of {list(LOG_MODES)}, found {self.log_mode!r}")


class _Metrics:
    """Prometheus series in a registry of their own (several apps can live in one process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "dlclinic_requests", "HTTP requests by endpoint and status code", ["endpoint", "code"], registry=r
        )
        self.latency = Histogram(
            "dlclinic_request_latency_seconds",
            "Request latency by endpoint",
            ["endpoint"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.batch_rows = Histogram(
            "dlclinic_batch_rows",
            "Rows per model call (dynamic batching)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=r,
        )
        self.model_seconds = Histogram("dlclinic_model_seconds", "Seconds per model call", registry=r)
        self.predictions = Counter("dlclinic_predictions", "Rows predicted", registry=r)
        self.queue_rows = Gauge("dlclinic_queue_rows", "Rows waiting for the model", registry=r)
        self.rejected = Counter("dlclinic_rejected", "Requests refused, by reason", ["reason"], registry=r)
        self.log_errors = Counter("dlclinic_log_errors", "Prediction-log rows that could not be written", registry=r)
        self.conflicts = Counter(
            "dlclinic_request_id_conflicts", "Request ids reused for a different payload (409)", registry=r
        )
        self.replays = Counter("dlclinic_replays", "Retried requests answered from the log", registry=r)
        self.drift_mmd2 = Gauge(
            "dlclinic_drift_mmd2", "Embedding MMD² of the last complete window vs the reference", registry=r
        )
        self.drift_mmd_p = Gauge("dlclinic_drift_mmd_p_value", "MMD permutation p-value of the last window", registry=r)
        self.drift_psi = Gauge(
            "dlclinic_drift_psi", "PSI of predicted classes, last window vs the reference", registry=r
        )
        self.confidence = Gauge("dlclinic_confidence_mean", "Mean top-1 confidence of the last window", registry=r)
        self.est_accuracy = Gauge(
            "dlclinic_estimated_accuracy", "Accuracy estimated without labels (CBPE) on the last window", registry=r
        )
        self.alert = Gauge("dlclinic_drift_alert", "Alert level of the last window: 0 ok, 1 warn, 2 fail", registry=r)
        self.windows = Counter("dlclinic_windows", "Monitoring windows evaluated, by status", ["status"], registry=r)


class _LiveMonitor:
    """Accumulates served rows; each full window is compared with the reference in a background thread."""

    def __init__(self, reference: Reference | None, window: int, metrics: _Metrics) -> None:
        self.reference = reference
        self.window = window
        self.metrics = metrics
        self.config = MonitorConfig(window=window, permutations=500)
        self._probs: list[np.ndarray] = []
        self._emb: list[np.ndarray | None] = []
        self._lat: list[np.ndarray] = []
        self._rows = 0
        self.history: deque[dict[str, Any]] = deque(maxlen=500)
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dlclinic-monitor")
        self._index = 0
        self._jobs: list[Any] = []

    def add(self, probs: np.ndarray, emb: np.ndarray | None, latency_ms: float) -> None:
        self._probs.append(probs)
        self._emb.append(emb)
        self._lat.append(np.full(len(probs), latency_ms))
        self._rows += len(probs)
        while self._rows >= self.window:
            p = np.concatenate(self._probs)
            lat = np.concatenate(self._lat)
            e = None if any(v is None for v in self._emb) else np.concatenate([v for v in self._emb if v is not None])
            head_p, self._probs = p[: self.window], [p[self.window :]]
            head_l, self._lat = lat[: self.window], [lat[self.window :]]
            head_e = None if e is None else e[: self.window]
            self._emb = [None if e is None else e[self.window :]]
            self._rows -= self.window
            index = self._index
            self._index += 1
            self._jobs = [j for j in self._jobs if not j.done()]
            self._jobs.append(self._executor.submit(self._evaluate, index, head_p, head_e, head_l, time.time()))

    def _evaluate(
        self, index: int, probs: np.ndarray, emb: np.ndarray | None, latency_ms: np.ndarray, now: float
    ) -> None:
        entry: dict[str, Any] = {
            "index": index,
            "time": now,
            "n": len(probs),
            "p50_ms": float(np.percentile(latency_ms, 50)),
            "p99_ms": float(np.percentile(latency_ms, 99)),
            "confidence_mean": float(probs.max(1).mean()),
        }
        if self.reference is not None:
            ref_emb = self.reference.embeddings
            use_emb = emb if (ref_emb is not None and emb is not None and ref_emb.shape[1] == emb.shape[1]) else None
            w = evaluate_window(self.reference, probs, embeddings=use_emb, config=self.config)
            entry.update(
                {
                    "status": w.status,
                    "mmd2": w.mmd2,
                    "mmd_p": w.mmd_p,
                    "psi": w.psi,
                    "chi2_p": w.chi2_p,
                    "confidence_p": w.confidence_p,
                    "estimated_accuracy": w.estimated_accuracy,
                    "estimated_drop": w.estimated_drop,
                    "reasons": list(w.reasons),
                }
            )
            m = self.metrics
            if w.mmd2 is not None:
                m.drift_mmd2.set(w.mmd2)
                m.drift_mmd_p.set(w.mmd_p if w.mmd_p is not None else float("nan"))
            m.drift_psi.set(w.psi)
            m.est_accuracy.set(w.estimated_accuracy)
            m.alert.set({"ok": 0, "warn": 1, "fail": 2}[w.status])
            m.windows.labels(status=w.status).inc()
        else:
            entry["status"] = "no reference"
        self.metrics.confidence.set(entry["confidence_mean"])
        with self._lock:
            self.history.append(entry)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.history)

    def wait(self, timeout: float = 30.0) -> None:
        """Wait for the windows already handed to the background thread (tests, shutdown)."""
        for job in list(self._jobs):
            with contextlib.suppress(Exception):
                job.result(timeout)

    def close(self) -> None:
        self._executor.shutdown(wait=True)


class ServeState:
    """Everything one app holds: backend, batcher, log, metrics, live monitor, readiness."""

    def __init__(
        self,
        backend: Backend,
        *,
        reference: Reference | None,
        store: PredictionStore | None,
        config: ServeConfig,
        class_names: tuple[str, ...],
        make_batcher: BatcherFactory | None = None,
    ) -> None:
        self.backend = backend
        self.reference = reference
        self.store = store
        self.config = config
        self.class_names = class_names
        self.metrics = _Metrics()
        self.batcher: Batcher = (make_batcher or _dynamic_batcher)(backend.predict, config, self._on_batch)
        self.monitor = _LiveMonitor(reference, config.window, self.metrics)
        self.ready = False
        self.draining = False
        self.started = time.time()
        # True behind a proxy that sets X-Request-ID on every request (Ray Serve's): a request id in
        # the body then wins over the header instead of conflicting with it (422)
        self.proxy_sets_request_id = False

    def _on_batch(self, rows: int, seconds: float) -> None:
        self.metrics.batch_rows.observe(rows)
        self.metrics.model_seconds.observe(seconds)

    async def startup(self) -> None:
        loop = asyncio.get_running_loop()
        warm = np.zeros((1, *self.backend.input_shape), dtype=np.float32)
        await loop.run_in_executor(None, self.backend.predict, warm)  # first call pays lazy init, not a client
        await self.batcher.start()
        self.ready = True

    async def shutdown(self) -> None:
        self.ready = False
        self.draining = True
        await self.batcher.drain(self.config.drain_timeout_s)
        self.monitor.wait()
        self.monitor.close()
        if self.store is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.store.close)


def _dynamic_batcher(predict: Predict, config: ServeConfig, on_batch: Callable[[int, float], None]) -> Batcher:
    """The embedded server's batcher: :class:`DynamicBatcher` on the app's own event loop."""
    return DynamicBatcher(
        predict,
        max_batch=config.max_batch,
        max_wait=config.max_wait_ms / 1000.0,
        max_queue=config.max_queue,
        on_batch=on_batch,
    )


_ENDPOINTS = (
    "/predict",
    "/feedback",
    "/health",
    "/ready",
    "/metrics",
    "/dashboard",
    "/monitor",
    "/openapi.json",
    "/docs",
)


def _authorised(headers: dict[str, str], token: str) -> bool:
    """Whether the ``Authorization`` header carries ``Bearer <token>`` (constant-time comparison)."""
    scheme, _, value = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


class _Guard:
    """Pure ASGI middleware: body-size limit (413), bearer token (401), request metrics."""

    def __init__(self, app: ASGIApp, state: ServeState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in _ENDPOINTS else "other"
        started = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self._guarded(scope, receive, send_wrapper, path)
        finally:
            m = self.state.metrics
            m.requests.labels(endpoint=endpoint, code=str(status["code"])).inc()
            m.latency.labels(endpoint=endpoint).observe(time.perf_counter() - started)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        """Refuse a wrong token (401) or a too-large body (413); pass everything else on, POST bodies buffered."""
        cfg = self.state.config
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if cfg.token is not None and path not in _OPEN_PATHS and not _authorised(headers, cfg.token):
            await _send_json(
                send,
                401,
                {"detail": "missing or wrong bearer token: expected the header 'Authorization: Bearer <token>'"},
                {"www-authenticate": "Bearer"},
            )
            return
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > cfg.max_body_bytes:
            self.state.metrics.rejected.labels(reason="body_too_large").inc()
            await _send_json(
                send,
                413,
                {
                    "detail": f"request body of {int(length)} bytes: expected at most {cfg.max_body_bytes} bytes (send fewer rows per request)"
                },
            )
            return
        if scope.get("method") in ("POST", "PUT", "PATCH"):
            await self._buffered(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _buffered(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Buffer the body up to the limit (chunked bodies have no content-length), then replay it to the app."""
        cfg = self.state.config
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > cfg.max_body_bytes:
                self.state.metrics.rejected.labels(reason="body_too_large").inc()
                await _send_json(
                    send,
                    413,
                    {
                        "detail": f"request body over {cfg.max_body_bytes} bytes: expected at most that (send fewer rows per request)"
                    },
                )
                return
            chunks.append(chunk)
            more = bool(message.get("more_body", False))
        body = b"".join(chunks)
        replayed = {"done": False}

        async def replay() -> Message:
            if not replayed["done"]:
                replayed["done"] = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _send_json(send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


def _expected_shape(shape: tuple[int, ...]) -> list[Any]:
    return ["N", *shape]


def _schemas(shape: tuple[int, ...], n_classes: int) -> tuple[Any, Any, Any]:
    """The request/response models of ``/predict`` and ``/feedback`` for this input shape and class count."""
    from pydantic import BaseModel, Field

    flat = int(np.prod(shape)) if shape else 1

    class PredictRequest(BaseModel):
        inputs: list[Any] = Field(
            ...,
            description=f"A batch of samples, each shaped {list(shape)} (or a flat row of {flat} numbers).",
            examples=[[np.zeros(shape).tolist()]],
        )
        request_id: str | None = Field(
            None,
            description="Idempotency key (or the X-Request-ID header): the same id and inputs answer the logged"
            " answer again; the same id with other inputs is refused (409).",
            json_schema_extra={"pattern": REQUEST_ID_PATTERN, "maxLength": 64},
        )

    class PredictResponse(BaseModel):
        request_id: str
        model_version: str
        classes: list[str]
        predictions: list[int]
        labels: list[str]
        probabilities: list[list[float]]
        latency_ms: float

    class FeedbackItem(BaseModel):
        request_id: str = Field(..., max_length=64, pattern=REQUEST_ID_PATTERN)
        row: int = Field(0, ge=0)
        label: int = Field(..., ge=0, lt=n_classes)

    class FeedbackRequest(BaseModel):
        items: list[FeedbackItem] = Field(..., min_length=1, max_length=100_000)

    return PredictRequest, PredictResponse, FeedbackRequest


def _error(status: int, detail: str, **extra: Any) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status, content={"detail": detail, **extra})


def _busy(detail: str, retry_after_s: int) -> Any:
    """A 503 with ``Retry-After``."""
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=503, content={"detail": detail}, headers={"Retry-After": str(retry_after_s)})


def _parse_inputs(inputs: list[Any], shape: tuple[int, ...], cfg: ServeConfig, metrics: _Metrics) -> Any:
    """The request's samples as a float32 ``N×shape`` array, or the 413/422 response that refuses them."""
    flat = int(np.prod(shape)) if shape else 1
    n = len(inputs)
    if n == 0:
        return _error(
            422, "inputs: expected at least one sample, found an empty list", expected_shape=_expected_shape(shape)
        )
    if n > cfg.max_rows:
        metrics.rejected.labels(reason="too_many_rows").inc()
        return _error(
            413, f"inputs: expected at most {cfg.max_rows} samples per request, found {n}", max_rows=cfg.max_rows
        )
    try:
        x = np.asarray(inputs, dtype=np.float32)
    except (ValueError, TypeError):
        return _error(
            422,
            f"inputs: expected a rectangular array of numbers shaped {_expected_shape(shape)}, found ragged lists or non-numbers",
            expected_shape=_expected_shape(shape),
        )
    if x.shape[1:] != shape:
        if x.ndim == 2 and x.shape[1] == flat:
            x = x.reshape((n, *shape))
        else:
            return _error(
                422,
                f"inputs: expected shape {_expected_shape(shape)} (or N×{flat}), found {list(x.shape)}",
                expected_shape=_expected_shape(shape),
                found_shape=list(x.shape),
            )
    if not np.all(np.isfinite(x)):
        bad = int(np.flatnonzero(~np.isfinite(x.reshape(n, -1)).all(1))[0])
        return _error(
            422,
            f"inputs: expected finite numbers, found NaN or infinity in sample {bad}",
            expected_shape=_expected_shape(shape),
        )
    return x


def check_request_id(value: str, where: str = "request_id") -> str | None:
    """The one check of a client's request id (body or ``X-Request-ID``): ``None`` if valid, else the reason."""
    if re.fullmatch(REQUEST_ID_PATTERN, value):
        return None
    shown = value if len(value) <= 70 else value[:67] + "..."
    return f"{where}: expected 1 to 64 characters from A-Z a-z 0-9 . _ : -, found {shown!r}"


def _request_id(body_id: str | None, header_id: str | None, proxy_header: bool = False) -> tuple[str, bool] | Any:
    """``(id, given by the client)``, or the 422 response that refuses the id.

    ``proxy_header``: the header may be the proxy's own id, so a body id takes precedence over it.
    """
    if proxy_header and body_id is not None:
        header_id = None
    for value, where in ((body_id, "request_id"), (header_id, "X-Request-ID")):
        if value is not None and (problem := check_request_id(value, where)) is not None:
            return _error(422, problem)
    if body_id is not None and header_id is not None and body_id != header_id:
        return _error(
            422, f"request_id {body_id!r} and X-Request-ID {header_id!r} differ; expected one id (or both equal)"
        )
    given = body_id or header_id
    return (given, True) if given else (uuid.uuid4().hex, False)


def _check_outputs(result: Any, x: np.ndarray, n_classes: int) -> Any:
    """``None`` when the model's outputs are finite and shaped ``N×K``; else the response that refuses them."""
    n = len(x)
    if result.probs.shape != (n, n_classes):
        return _error(
            500,
            f"the model returned probabilities shaped {list(result.probs.shape)}, expected {[n, n_classes]}; nothing was logged",
        )
    bad = ~np.isfinite(result.probs).all(1)
    if result.embeddings is not None:
        bad |= ~np.isfinite(np.asarray(result.embeddings).reshape(n, -1)).all(1)
    if not bad.any():
        return None
    i = int(np.flatnonzero(bad)[0])
    return _error(
        422,
        f"inputs: sample {i} drives the model to non-finite outputs (NaN or infinity; largest |input| "
        f"{float(np.abs(x[i]).max()):.3g}); expected inputs in the range the model was trained on; nothing was logged",
        sample=i,
    )


def _answer(
    rid: str, model_version: str, names: tuple[str, ...], probs: np.ndarray, latency_ms: float
) -> dict[str, Any]:
    pred = probs.argmax(1)
    return {
        "request_id": rid,
        "model_version": model_version,
        "classes": list(names),
        "predictions": pred.tolist(),
        "labels": [names[i] for i in pred],
        "probabilities": probs.astype(float).tolist(),
        "latency_ms": latency_ms,
    }


async def _replay(state: ServeState, rid: str, hashes: list[str]) -> Any:
    """For a request id already logged: its logged answer (same inputs) or a 409 (other inputs); else ``None``."""
    if state.store is None:
        return None
    from fastapi.responses import JSONResponse

    prior = await asyncio.get_running_loop().run_in_executor(None, state.store.find_request, rid)
    if prior is None:
        return None
    if prior.payload_hash != payload_hash(hashes):
        state.metrics.conflicts.inc()
        return _error(409, str(RequestConflict(rid)), request_id=rid)
    state.metrics.replays.inc()
    body = _answer(rid, prior.model_version, state.class_names, prior.probs, prior.latency_ms)
    return JSONResponse(content=body, headers={"Idempotent-Replayed": "true"})


def _log_failure(state: ServeState, rid: str, n: int, exc: BaseException) -> Any:
    """The response for rows the log refused: 409 (id taken), 503 (database busy or down) or 500."""
    if isinstance(exc, RequestConflict):
        state.metrics.conflicts.inc()
        return _error(409, str(exc), request_id=rid)
    state.metrics.log_errors.inc(n)
    reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
    if is_transient_error(exc):
        return _busy(
            f"the prediction could not be logged ({reason}); nothing was acknowledged, retry with the same request_id",
            state.config.retry_after_s,
        )
    return _error(500, f"the prediction could not be logged ({reason}); nothing was acknowledged", request_id=rid)


async def _log_predictions(
    state: ServeState, rid: str, x: np.ndarray, hashes: list[str], result: Any, latency_ms: float
) -> Any:
    """Hand the rows to the prediction log; when durable wait for the commit. ``None``, or the refusing response."""
    store, cfg, n = state.store, state.config, len(x)
    if store is None:
        return None
    now = time.time()
    records = [
        PredictionRecord(
            request_id=rid,
            row=i,
            created=now,
            model_version=cfg.model_version,
            latency_ms=latency_ms,
            probs=result.probs[i],
            input_hash=hashes[i],
            inputs=x[i] if cfg.store_inputs else None,
            embedding=None if result.embeddings is None else result.embeddings[i],
        )
        for i in range(n)
    ]
    try:
        fut = store.submit(records)
        if cfg.log_mode == "durable":
            await asyncio.wrap_future(fut)
    except Exception as exc:
        return _log_failure(state, rid, n, exc)
    if cfg.log_mode != "durable":
        fut.add_done_callback(lambda f: None if f.exception() is None else _log_failure(state, rid, n, f.exception()))  # type: ignore[arg-type]
    return None


def _add_predict(app: Any, state: ServeState, request_model: Any, response_model: Any) -> None:
    """``POST /predict``: validate, replay or refuse a reused id, batch, check the outputs, log, watch, answer."""
    from fastapi import Header

    cfg, names, shape = state.config, state.class_names, tuple(state.backend.input_shape)

    @app.post(
        "/predict",
        response_model=response_model,
        responses={
            409: {"description": "The request id was already used for other inputs"},
            413: {"description": "Body or batch too large"},
            422: {"description": "Wrong shape, dtype, non-finite values or outputs, or a malformed request id"},
            500: {"description": "The prediction could not be logged (nothing acknowledged)"},
            503: {"description": "Queue full or log unavailable (Retry-After), or shutting down"},
        },
    )
    async def predict(body: request_model, x_request_id: str | None = Header(None)) -> Any:  # type: ignore[valid-type]
        started = time.perf_counter()
        if state.draining:
            state.metrics.rejected.labels(reason="draining").inc()
            return _error(503, "the server is shutting down; retry on another instance", retry_after=cfg.retry_after_s)
        ident = _request_id(body.request_id, x_request_id, state.proxy_sets_request_id)
        if not isinstance(ident, tuple):
            return ident
        rid, given = ident
        x = _parse_inputs(body.inputs, shape, cfg, state.metrics)
        if not isinstance(x, np.ndarray):
            return x
        hashes = [hash_input(row) for row in x] if state.store is not None else []
        if given and (replayed := await _replay(state, rid, hashes)) is not None:
            return replayed
        try:
            result = await state.batcher.submit(x)
        except QueueFull:
            state.metrics.rejected.labels(reason="queue_full").inc()
            return _busy(
                f"the queue is full ({cfg.max_queue} rows); retry after {cfg.retry_after_s} s", cfg.retry_after_s
            )
        except Draining:
            state.metrics.rejected.labels(reason="draining").inc()
            return _busy("the server is shutting down", cfg.retry_after_s)
        state.metrics.queue_rows.set(state.batcher.pending_rows)
        if (bad := _check_outputs(result, x, len(names))) is not None:
            state.metrics.rejected.labels(reason="non_finite_output").inc()
            return bad
        latency_ms = (time.perf_counter() - started) * 1000.0
        state.metrics.predictions.inc(len(x))
        refused = await _log_predictions(state, rid, x, hashes, result, latency_ms)
        if refused is not None:
            return refused
        state.monitor.add(result.probs, result.embeddings, latency_ms)
        return _answer(rid, cfg.model_version, names, result.probs, latency_ms)


def _add_feedback_and_status(app: Any, state: ServeState, feedback_model: Any, title: str) -> None:
    """``/feedback``, ``/health``, ``/ready``, ``/metrics``, ``/monitor`` and ``/dashboard``."""
    from fastapi.responses import HTMLResponse, Response

    cfg, store, backend, reference = state.config, state.store, state.backend, state.reference

    @app.post("/feedback", responses={503: {"description": "No prediction log configured"}})
    async def feedback(body: feedback_model) -> Any:  # type: ignore[valid-type]
        if store is None:
            return _error(
                503, "this server keeps no prediction log (start it with --store) so labels cannot be recorded"
            )
        fut = store.submit_feedback([(it.request_id, it.row, it.label) for it in body.items])
        await asyncio.wrap_future(fut)
        return {"recorded": len(body.items)}

    @app.get("/health")
    async def health() -> Any:
        return {"status": "ok", "uptime_s": time.time() - state.started}

    @app.get("/ready")
    async def ready() -> Any:
        if state.ready and not state.draining:
            return {"ready": True, "backend": backend.name, "model_version": cfg.model_version}
        return _error(503, "starting up" if not state.draining else "shutting down", ready=False)

    @app.get("/metrics")
    async def metrics() -> Any:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        state.metrics.queue_rows.set(state.batcher.pending_rows)
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/monitor")
    async def monitor() -> Any:
        return {
            "window": cfg.window,
            "reference": reference is not None,
            "windows": _jsonable(state.monitor.snapshot()),
            "config": asdict(cfg) | {"token": None},
        }

    @app.get("/dashboard", response_class=HTMLResponse)
    async def dashboard() -> Any:
        return HTMLResponse(
            render_dashboard(
                state.monitor.snapshot(),
                title=title,
                model_version=cfg.model_version,
                backend=backend.name,
                reference=reference,
            )
        )


def create_app(
    backend: Backend,
    *,
    reference: Reference | None = None,
    store: PredictionStore | None = None,
    config: ServeConfig | None = None,
    class_names: tuple[str, ...] | None = None,
    title: str = "dlclinic model server",
    make_batcher: BatcherFactory | None = None,
) -> Any:
    """Build the FastAPI app serving ``backend`` (see the module docstring for the endpoints).

    Args:
        backend: a :class:`~dlclinic.serve.backends.Backend` (``make_backend(model, ...)``).
        reference: held-out reference for the live drift windows (``None``: no drift gauges).
        store: the prediction log (``None``: predictions are not logged).
        config: limits, token, model version, window size.
        class_names: K names (default ``"0"``…).
        make_batcher: ``(predict, config, on_batch) -> Batcher``; default :class:`DynamicBatcher` (the
            Ray Serve engine passes its ``@serve.batch`` adapter, :mod:`dlclinic.serve.ray_engine`).

    Example:
        >>> backend, _ = make_backend(model, (1, 28, 28), 10)                # doctest: +SKIP
        >>> app = create_app(backend, store=PredictionStore("log.db"))        # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)                     # doctest: +SKIP
    """
    from fastapi import FastAPI

    cfg = config or ServeConfig()
    names = tuple(class_names) if class_names is not None else tuple(str(i) for i in range(backend.n_classes))
    if len(names) != backend.n_classes:
        raise ConfigError(f"class_names: expected {backend.n_classes} names, found {len(names)}")
    state = ServeState(
        backend, reference=reference, store=store, config=cfg, class_names=names, make_batcher=make_batcher
    )
    predict_request, predict_response, feedback_request = _schemas(tuple(backend.input_shape), backend.n_classes)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        await state.startup()
        try:
            yield
        finally:
            await state.shutdown()

    app = FastAPI(
        title=title,
        version=cfg.model_version,
        description="Predictions from a model examined by dlclinic, with a prediction log and drift monitoring.",
        lifespan=lifespan,
    )
    app.state.dlclinic = state
    app.router.route_class = _route_class()
    _add_predict(app, state, predict_request, predict_response)
    _add_feedback_and_status(app, state, feedback_request, title)
    app.add_middleware(_Guard, state=state)
    return app


def _route_class() -> Any:
    """FastAPI's route class, parsing JSON bodies with pydantic-core's parser instead of the standard library's.

    A /predict body of one 784-float row took 360 µs in ``json.loads``, the largest single cost
    on the event loop at 32 clients (py-spy); ``pydantic_core.from_json`` takes about a fifth of
    that. Malformed JSON still gets FastAPI's 422 ``json_invalid`` (it catches ``JSONDecodeError``).
    """
    from fastapi import Request
    from fastapi.routing import APIRoute
    from pydantic_core import from_json

    class FastJSONRequest(Request):
        async def json(self) -> Any:
            if not hasattr(self, "_json"):
                body = await self.body()
                try:
                    self._json = from_json(body)
                except ValueError as exc:
                    raise json.JSONDecodeError(str(exc), body.decode("utf-8", "replace"), 0) from None
            return self._json

    class FastJSONRoute(APIRoute):
        def get_route_handler(self) -> Any:
            handler = super().get_route_handler()

            async def handle(request: Any) -> Any:
                return await handler(FastJSONRequest(request.scope, request.receive))

            return handle

    return FastJSONRoute


def in_process_client(app: Any) -> Any:
    """FastAPI's in-process ``TestClient`` for ``app``, without the deprecation chatter of its httpx backend."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # StarletteDeprecationWarning about its httpx backend
        from fastapi.testclient import TestClient
    return TestClient(app)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item"):
        return _jsonable(obj.item())
    return obj


def _svg_line(
    values: list[float | None],
    *,
    title: str,
    ymin: float | None = None,
    ymax: float | None = None,
    marks: list[str] | None = None,
    threshold: float | None = None,
    empty: str = "no complete window yet",
) -> str:
    """A small inline SVG line chart (no scripts, no external assets)."""
    w, h, pad = 560, 160, 34
    pts = [(i, v) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    if not pts:
        return (
            f"<figure><figcaption>{html.escape(title)}</figcaption><p class='empty'>{html.escape(empty)}</p></figure>"
        )
    ys = [v for _, v in pts] + ([threshold] if threshold is not None else [])
    lo = min(ys) if ymin is None else ymin
    hi = max(ys) if ymax is None else ymax
    if hi - lo < 1e-9:
        hi = lo + 1.0
    n = max(len(values) - 1, 1)

    def sx(i: float) -> float:
        return pad + (w - 2 * pad) * (i / n)

    def sy(v: float) -> float:
        return h - pad + (pad * 2 - h) * ((v - lo) / (hi - lo))

    path = " ".join(f"{sx(i):.1f},{sy(v):.1f}" for i, v in pts)
    dots = "".join(
        f"<circle cx='{sx(i):.1f}' cy='{sy(v):.1f}' r='3' class='{(marks or ['ok'] * len(values))[i]}'><title>window {i}: {v:.4g}</title></circle>"
        for i, v in pts
    )
    thr = (
        f"<line x1='{pad}' x2='{w - pad}' y1='{sy(threshold):.1f}' y2='{sy(threshold):.1f}' class='thr'/>"
        if threshold is not None
        else ""
    )
    axes = f"<text x='4' y='{sy(hi) + 4:.1f}'>{hi:.3g}</text><text x='4' y='{sy(lo) + 4:.1f}'>{lo:.3g}</text><text x='{w / 2:.0f}' y='{h - 6}'>window</text>"
    return f"<figure><figcaption>{html.escape(title)}</figcaption><svg viewBox='0 0 {w} {h}' width='{w}' height='{h}' role='img' aria-label='{html.escape(title)}'>{axes}{thr}<polyline points='{path}' class='line'/>{dots}</svg></figure>"


def render_dashboard(
    windows: list[dict[str, Any]], *, title: str, model_version: str, backend: str, reference: Reference | None
) -> str:
    """The ``/dashboard`` page: drift and estimated accuracy per window, latency; one HTML string."""
    marks = [str(w.get("status", "ok")).replace(" ", "-") for w in windows]
    est = [w.get("estimated_accuracy") for w in windows]
    psi_v = [w.get("psi") for w in windows]
    mmd = [w.get("mmd2") for w in windows]
    p99 = [w.get("p99_ms") for w in windows]
    ref_est = None
    if reference is not None:
        ref_est = estimate_accuracy_cbpe(reference.probs).accuracy
    rows = "".join(
        "<tr class='{cls}'><td>{i}</td><td>{t}</td><td>{n}</td><td>{st}</td><td>{est}</td><td>{mmd}</td><td>{psi}</td><td>{p99}</td><td>{why}</td></tr>".format(
            cls=html.escape(m),
            i=w.get("index"),
            t=time.strftime("%H:%M:%S", time.localtime(w.get("time", 0))),
            n=w.get("n"),
            st=html.escape(str(w.get("status"))),
            est="" if w.get("estimated_accuracy") is None else f"{w['estimated_accuracy']:.3f}",
            mmd="" if w.get("mmd2") is None else f"{w['mmd2']:.3g} (p {w.get('mmd_p', float('nan')):.2g})",
            psi="" if w.get("psi") is None else f"{w['psi']:.3f}",
            p99=f"{w.get('p99_ms', float('nan')):.1f}",
            why=html.escape("; ".join(w.get("reasons", []))),
        )
        for w, m in zip(windows, marks, strict=True)
    )
    alerts = sum(1 for m in marks if m in ("warn", "fail"))
    charts = (
        _svg_line(
            est,
            title="estimated accuracy (CBPE) per window; line = reference",
            ymin=0.0,
            ymax=1.0,
            marks=marks,
            threshold=ref_est,
        )
        + _svg_line(
            mmd,
            title="embedding MMD² vs reference",
            marks=marks,
            empty="not measured: this backend gives no embeddings" if windows else "no complete window yet",
        )
        + _svg_line(psi_v, title="PSI of predicted classes", marks=marks)
        + _svg_line(p99, title="p99 latency per window (ms)", marks=marks)
    )
    style = "body{font:14px system-ui,sans-serif;margin:24px;color:#222}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}tr.warn{background:#fff4d6}tr.fail{background:#fde0dc}figure{display:inline-block;margin:8px}svg text{font-size:11px;fill:#555}.line{fill:none;stroke:#2a6fdb;stroke-width:2}.thr{stroke:#999;stroke-dasharray:4 3}circle.ok{fill:#2a6fdb}circle.warn{fill:#e0a100}circle.fail{fill:#d0342c}.empty{color:#777}"
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><meta http-equiv='refresh' content='15'>"
        f"<title>{html.escape(title)}</title><style>{style}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>model version <b>{html.escape(model_version)}</b>, backend {html.escape(backend)}; {len(windows)} window(s), {alerts} with an alert."
        f" {'No reference: drift is not measured.' if reference is None else ''} CBPE needs calibrated confidences and misses concept shift; feed labels back (POST /feedback) and run <code>dlclinic monitor</code> for observed accuracy.</p>"
        f"<div id='charts'>{charts}</div>"
        "<table id='windows'><thead><tr><th>window</th><th>end</th><th>rows</th><th>status</th><th>est. accuracy</th><th>MMD²</th><th>PSI</th><th>p99 ms</th><th>why</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></body></html>"
    )
