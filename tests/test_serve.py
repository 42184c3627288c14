"""dlclinic.serve: served = offline predictions, 4xx on bad requests, 503 on a full queue, an idempotent log, a real HTTP server."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import blobs

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from dlclinic.core.inference import predict_logits  # noqa: E402
from dlclinic.monitoring import Reference, softmax  # noqa: E402
from dlclinic.serve.app import ServeConfig, create_app  # noqa: E402
from dlclinic.serve.backends import TorchBackend, make_backend  # noqa: E402
from dlclinic.serve.batching import DynamicBatcher, QueueFull, run_load  # noqa: E402
from dlclinic.serve.scoring import score_file  # noqa: E402
from dlclinic.serve.store import PredictionRecord, PredictionStore, hash_input  # noqa: E402

D, K = 8, 3


@pytest.fixture(scope="module")
def trained() -> dict[str, Any]:
    from dlclinic.core.baselines import MLP
    from dlclinic.core.recipe import FitConfig, fit

    x, y = blobs(450, d=D, k=K, seed=0)
    xt, yt = blobs(240, d=D, k=K, seed=1)
    model = fit(MLP(D, K, hidden=(32, 16)), x, y, FitConfig(epochs=3, batch_size=64)).model
    backend = TorchBackend(model, (D,), K)
    _, emb = backend.predict(xt)
    ref = Reference.build(predict_logits(model, xt), yt, emb)
    return {"model": model, "backend": backend, "x": xt, "y": yt, "reference": ref}


def _client(trained: dict[str, Any], **kw: Any) -> tuple[Any, TestClient]:
    store = kw.pop("store", None)
    app = create_app(
        trained["backend"], reference=kw.pop("reference", trained["reference"]), store=store, config=ServeConfig(**kw)
    )
    return app, TestClient(app)


def test_served_predictions_equal_offline_ones(trained: dict[str, Any]) -> None:
    x = trained["x"][:40]
    offline = softmax(predict_logits(trained["model"], x))
    app, client = _client(trained)
    with client:
        r = client.post("/predict", json={"inputs": x.tolist()})
        flat = client.post("/predict", json={"inputs": x[:3].reshape(3, -1).tolist()})
    assert r.status_code == 200
    body = r.json()
    assert body["classes"] == ["0", "1", "2"] and len(body["request_id"]) == 32
    np.testing.assert_allclose(np.array(body["probabilities"]), offline, atol=1e-6)
    assert body["predictions"] == offline.argmax(1).tolist()
    assert flat.status_code == 200


def test_bad_requests_get_clear_4xx_and_the_server_keeps_serving(trained: dict[str, Any]) -> None:
    good = {"inputs": trained["x"][:2].tolist()}
    app, client = _client(trained, max_body_bytes=20_000, max_rows=50)
    bad_bodies: list[tuple[dict[str, Any], int, str]] = [
        ({"json": {"inputs": [[1.0, 2.0]]}}, 422, "expected shape"),
        ({"json": {"inputs": [[1.0] * D, [1.0] * 3]}}, 422, "rectangular"),
        ({"json": {"inputs": [["a"] * D]}}, 422, "rectangular"),
        ({"json": {"inputs": []}}, 422, "at least one"),
        (
            {"content": b'{"inputs": [[NaN, 1, 1, 1, 1, 1, 1, 1]]}', "headers": {"content-type": "application/json"}},
            422,
            "finite",
        ),
        ({"content": b'{"inputs": [[1, 2', "headers": {"content-type": "application/json"}}, 422, "JSON decode error"),
        ({"json": {"nope": 1}}, 422, ""),
        ({"json": {"inputs": np.zeros((60, D)).tolist()}}, 413, "at most 50"),
        ({"content": b"[" + b"0," * 20_000 + b"0]", "headers": {"content-type": "application/json"}}, 413, "bytes"),
        ({"json": {"inputs": [[1.0] * D], "request_id": "has spaces"}}, 422, ""),
    ]
    with client:
        for kwargs, code, text in bad_bodies:
            r = client.post("/predict", **kwargs)
            assert r.status_code == code, (kwargs, r.text)
            assert text in str(r.json()["detail"])
            if code == 422 and "expected shape" in text:
                assert r.json()["expected_shape"] == ["N", D]
            assert client.post("/predict", json=good).status_code == 200  # still serving
        # a chunked body (no content-length) over the limit is refused too
        chunked = client.post(
            "/predict", content=(b"0" * 5000 for _ in range(10)), headers={"content-type": "application/json"}
        )
        assert chunked.status_code == 413
        metrics = client.get("/metrics").text
    assert 'dlclinic_rejected_total{reason="body_too_large"} 2.0' in metrics
    assert 'dlclinic_requests_total{code="422",endpoint="/predict"}' in metrics


def test_bearer_token_is_required_except_on_probes(trained: dict[str, Any]) -> None:
    app, client = _client(trained, token="s3cret")
    body = {"inputs": trained["x"][:1].tolist()}
    with client:
        assert client.post("/predict", json=body).status_code == 401
        wrong = client.post("/predict", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        assert client.get("/metrics").status_code == 401
        assert client.post("/predict", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/health").status_code == 200 and client.get("/ready").json()["ready"] is True
        assert client.get("/openapi.json").status_code == 200


class _Slow:
    name = "slow"
    input_shape = (D,)
    n_classes = K

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, None]:
        time.sleep(0.05)
        return np.full((len(x), K), 1.0 / K, dtype=np.float32), None


def test_full_queue_answers_503_with_retry_after() -> None:
    app = create_app(_Slow(), config=ServeConfig(max_batch=1, max_wait_ms=0, max_queue=2, retry_after_s=3))

    async def burst() -> list[Any]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=10) as client:
            return await asyncio.gather(*(client.post("/predict", json={"inputs": [[0.0] * D]}) for _ in range(12)))

    responses = asyncio.run(burst())
    codes = [r.status_code for r in responses]
    assert codes.count(200) >= 2 and codes.count(503) >= 1, codes
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers["retry-after"] == "3" and "queue is full" in refused.json()["detail"]


def test_batcher_groups_concurrent_requests_and_bounds_its_queue() -> None:
    calls: list[int] = []

    def predict(x: np.ndarray) -> tuple[np.ndarray, None]:
        calls.append(len(x))
        time.sleep(0.002)
        return np.tile(x[:, :1], (1, K)).astype(np.float32), None

    x = np.arange(64, dtype=np.float32).reshape(64, 1)
    batched = run_load(predict, x, concurrency=8, max_batch=8, max_wait=0.01, requests=64, time_limit=10)
    assert batched["requests"] == 64 and batched["mean_batch_rows"] > 2
    single = run_load(predict, x, concurrency=8, max_batch=1, requests=16, time_limit=10)
    assert single["mean_batch_rows"] == 1
    assert max(calls) <= 8

    async def overflow() -> None:
        batcher = DynamicBatcher(predict, max_batch=1, max_wait=0.0, max_queue=2)
        await batcher.start()
        tasks = [asyncio.ensure_future(batcher.submit(x[i : i + 1])) for i in range(4)]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        refused = [r for r in results if isinstance(r, QueueFull)]
        served = [(i, r) for i, r in enumerate(results) if not isinstance(r, BaseException)]
        assert refused and len(served) >= 2
        assert all(float(r.probs[0, 0]) == float(i) for i, r in served)  # each request gets its own rows back
        assert await batcher.drain()

    asyncio.run(overflow())


def _record(rid: str, row: int, p: np.ndarray, t: float = 0.0) -> PredictionRecord:
    return PredictionRecord(
        request_id=rid,
        row=row,
        created=t,
        model_version="v1",
        latency_ms=1.0,
        probs=p,
        input_hash=hash_input(np.zeros(3)),
    )


def test_store_is_idempotent_on_request_ids_and_joins_feedback(tmp_path: Path) -> None:
    store = PredictionStore(tmp_path / "log.db")
    p = np.array([0.2, 0.5, 0.3], dtype=np.float32)
    store.write([_record("a", 0, p, 1.0), _record("a", 1, p, 1.0)])
    store.write([_record("a", 0, p, 1.0), _record("a", 1, p, 1.0), _record("b", 0, p, 2.0)])  # a retry of "a"
    store.submit_feedback([("a", 1, 2), ("a", 1, 0)]).result(10)  # the first label given wins
    store.flush()
    assert store.count() == 3
    data = store.read()
    assert data.request_id.tolist() == ["a", "a", "b"] and data.labels.tolist() == [-1, 2, -1]
    np.testing.assert_array_equal(data.probs[2], p)
    assert store.integrity_check() == {
        "database": "ok",
        "rows": 3,
        "duplicate_keys": 0,
        "corrupt_rows": 0,
        "mixed_requests": 0,
        "ok": True,
    }
    store.close()
    with store.engine.connect() as conn:  # WAL journal on
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"


def test_store_on_postgresql_when_reachable(tmp_path: Path) -> None:
    import os

    url = os.environ.get("DLCLINIC_TEST_POSTGRES")
    if not url:
        pytest.skip("set DLCLINIC_TEST_POSTGRES=postgresql://user@host/db to run the store tests on PostgreSQL")
    pytest.importorskip("psycopg")
    store = PredictionStore(url)
    rid = f"pg-{time.time_ns()}"
    p = np.array([0.5, 0.5], dtype=np.float32)
    store.write([_record(rid, 0, p), _record(rid, 0, p)])
    logged = store.find_request(rid)  # the database may hold other runs' rows: look at this request only
    assert logged is not None and len(logged.probs) == 1 and store.integrity_check()["duplicate_keys"] == 0
    store.close()


def test_app_logs_each_request_once_and_exposes_drift_metrics(tmp_path: Path, trained: dict[str, Any]) -> None:
    store = PredictionStore(tmp_path / "log.db")
    app, client = _client(trained, store=store, window=40, model_version="m-7")
    x = trained["x"]
    with client:
        for i in range(0, 120, 20):
            assert (
                client.post("/predict", json={"inputs": x[i : i + 20].tolist(), "request_id": f"req-{i}"}).status_code
                == 200
            )
        retry = client.post("/predict", json={"inputs": x[:20].tolist()}, headers={"X-Request-ID": "req-0"})
        assert retry.json()["request_id"] == "req-0"
        assert client.post(
            "/feedback", json={"items": [{"request_id": "req-0", "row": 3, "label": int(trained["y"][3])}]}
        ).json() == {"recorded": 1}
        assert (
            client.post("/feedback", json={"items": [{"request_id": "req-0", "row": 3, "label": 99}]}).status_code
            == 422
        )
        app.state.dlclinic.monitor.wait()
        metrics = client.get("/metrics").text
        windows = client.get("/monitor").json()["windows"]
        page = client.get("/dashboard").text
    reader = PredictionStore(tmp_path / "log.db")
    data = reader.read()
    assert len(data) == 120 and set(data.model_version) == {"m-7"} and int((data.labels >= 0).sum()) == 1
    assert data.embeddings is not None and data.embeddings.shape == (120, 16)
    reader.close()
    for series in (
        "dlclinic_requests_total",
        "dlclinic_request_latency_seconds_bucket",
        "dlclinic_batch_rows_bucket",
        "dlclinic_drift_psi",
        "dlclinic_estimated_accuracy",
        "dlclinic_drift_alert",
        "dlclinic_queue_rows",
    ):
        assert series in metrics
    assert len(windows) == 3 and all(w["status"] == "ok" for w in windows)
    assert "<svg" in page and page.count("<tr class='ok'>") == 3
    assert "http://" not in page and "https://" not in page and "<script" not in page  # self-contained


def test_two_apps_in_one_process_keep_separate_metrics(trained: dict[str, Any]) -> None:
    _, a = _client(trained)
    _, b = _client(trained)
    with a, b:
        a.post("/predict", json={"inputs": trained["x"][:1].tolist()})
        assert "dlclinic_predictions_total 1.0" in a.get("/metrics").text
        assert "dlclinic_predictions_total 0.0" in b.get("/metrics").text


def test_openapi_describes_predict(trained: dict[str, Any]) -> None:
    app, client = _client(trained)
    with client:
        schema = client.get("/openapi.json").json()
        assert client.get("/docs").status_code == 200
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].endswith("PredictRequest")
    assert "422" in schema["paths"]["/predict"]["post"]["responses"]


def test_onnx_backend_agrees_with_torch(tmp_path: Path, trained: dict[str, Any]) -> None:
    pytest.importorskip("onnxruntime")
    x = trained["x"][:32]
    backend, desc = make_backend(
        trained["model"], (D,), K, kind="onnx", sample_x=x, export_path=tmp_path / "m.onnx", exporter="torchscript"
    )
    assert backend.name == "onnx" and "onnxruntime" in desc
    probs, emb = backend.predict(x)
    assert emb is None
    np.testing.assert_allclose(probs, trained["backend"].predict(x)[0], atol=1e-5)


def test_score_file_streams_csv_parquet_and_npz(tmp_path: Path, trained: dict[str, Any]) -> None:
    import pandas as pd

    x = trained["x"][:50]
    expected = trained["backend"].predict(x)[0]
    df = pd.DataFrame(x, columns=[f"f{i}" for i in range(D)])
    df.insert(0, "key", [f"k{i}" for i in range(50)])
    df.to_csv(tmp_path / "in.csv", index=False)
    np.savez(tmp_path / "in.npz", x=x)
    for src, kw in ((tmp_path / "in.csv", {"id_col": "key"}), (tmp_path / "in.npz", {})):
        n = score_file(trained["backend"], src, tmp_path / "out.csv", class_names=["a", "b", "c"], batch_size=7, **kw)
        out = pd.read_csv(tmp_path / "out.csv")
        assert n == 50 and out["row"].tolist() == list(range(50))
        np.testing.assert_allclose(out[["p_a", "p_b", "p_c"]].to_numpy(), expected, atol=1e-5)
    assert out.columns[:3].tolist() == ["row", "predicted", "confidence"]
    pytest.importorskip("pyarrow")
    df.to_parquet(tmp_path / "in.parquet")
    score_file(
        trained["backend"],
        tmp_path / "in.parquet",
        tmp_path / "out.parquet",
        class_names=["a", "b", "c"],
        batch_size=16,
        id_col="key",
    )
    assert pd.read_parquet(tmp_path / "out.parquet")["id"].tolist()[:2] == ["k0", "k1"]
    bad = df.copy()
    bad.loc[30, "f1"] = np.nan
    bad.to_csv(tmp_path / "bad.csv", index=False)
    from dlclinic.core.errors import InputError

    with pytest.raises(InputError, match="row 30"):
        score_file(
            trained["backend"],
            tmp_path / "bad.csv",
            tmp_path / "never.csv",
            class_names=["a", "b", "c"],
            batch_size=16,
            id_col="key",
        )
    assert not (tmp_path / "never.csv").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_real_http_server_round_trip_and_graceful_shutdown(tmp_path: Path, trained: dict[str, Any]) -> None:
    import uvicorn

    store = PredictionStore(tmp_path / "log.db", max_delay=0.2)
    app = create_app(trained["backend"], reference=trained["reference"], store=store, config=ServeConfig(window=50))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            assert client.get("/ready").json()["ready"] is True
            for i in range(5):
                r = client.post(
                    "/predict", json={"inputs": trained["x"][i * 10 : (i + 1) * 10].tolist(), "request_id": f"h{i}"}
                )
                assert r.status_code == 200
            assert client.post("/predict", json={"inputs": [[0.0]]}).status_code == 422
    finally:
        server.should_exit = True
        thread.join(15)
    assert not thread.is_alive()
    # shutdown drained the queue and flushed the log: every acknowledged prediction is there
    reader = PredictionStore(tmp_path / "log.db")
    assert reader.count() == 50 and reader.integrity_check()["ok"]
    reader.close()
