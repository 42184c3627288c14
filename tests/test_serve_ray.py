"""The Ray Serve engine (``dlclinic serve --engine ray``): a real local Ray cluster serving the dlclinic app.

CI installs the ``ray`` extra (``.ci/run``), so the engine test runs there; without Ray it is skipped
with the reason, and the missing-Ray error is tested by hiding the module.
"""

from __future__ import annotations

import concurrent.futures
import functools
import socket
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dlclinic.cli import main
from dlclinic.core.errors import MissingDependencyError
from dlclinic.serve.app import ServeConfig, create_app
from dlclinic.serve.backends import TorchBackend
from dlclinic.serve.ray_engine import require_ray
from dlclinic.serve.store import PredictionStore, hash_input

D, K = 6, 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_app(store: str, make_batcher: Any) -> Any:
    """One replica's app: a seeded MLP behind the same ``create_app`` as the embedded server."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(D, 16), torch.nn.ReLU(), torch.nn.Linear(16, K))
    config = ServeConfig(max_batch=8, max_wait_ms=2.0)
    return create_app(
        TorchBackend(model, (D,), K), store=PredictionStore(store), config=config, make_batcher=make_batcher
    )


def test_missing_ray_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch, capsys: Any, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'dlclinic\[ray\]'") as info:
        require_ray()
    assert "\n" not in str(info.value)
    assert main(["serve", "--demo", "--engine", "ray", "--out", str(tmp_path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dlclinic[ray]" in err[0], err


def test_engine_options_that_do_not_go_together_are_refused(tmp_path: Path, capsys: Any) -> None:
    assert main(["serve", "--demo", "--replicas", "2", "--out", str(tmp_path), "--dry-run"]) == 2
    assert "--replicas 2 needs --engine ray" in capsys.readouterr().err


def test_ray_batcher_batches_rows_and_gives_each_request_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray", reason="the Ray Serve engine needs `pip install 'dlclinic[ray]'`")
    import asyncio

    from dlclinic.serve.batching import Draining, QueueFull
    from dlclinic.serve.ray_engine import RayBatcher

    # outside a replica, Ray's queue cannot read the replica's max_ongoing_requests for its warning
    monkeypatch.setattr(
        "ray.serve.batching._BatchQueue._warn_if_max_batch_size_exceeds_max_ongoing_requests", lambda self: None
    )
    calls: list[int] = []

    def predict(x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        calls.append(len(x))
        time.sleep(0.01)
        return np.repeat(x[:, :1], K, axis=1), x * 2  # each row's answer carries its own first value

    batches: list[int] = []
    batcher = RayBatcher(
        predict, ServeConfig(max_batch=4, max_wait_ms=20.0, max_queue=8), lambda n, _s: batches.append(n)
    )

    async def scenario() -> None:
        xs = [np.full((1, D), float(i), dtype=np.float32) for i in range(8)]
        results = await asyncio.gather(*(batcher.submit(x) for x in xs))
        for i, r in enumerate(results):
            assert r.probs.shape == (1, K) and float(r.probs[0, 0]) == i and float(r.embeddings[0, 0]) == 2 * i
        assert max(calls) <= 4 and sum(calls) == 8 and len(calls) < 8, calls  # batched, never over max_batch rows
        threes = await asyncio.gather(*(batcher.submit(np.full((3, D), 10.0 + i, np.float32)) for i in range(2)))
        assert [float(r.probs[0, 0]) for r in threes] == [10.0, 11.0] and max(calls) <= 4  # rows, not requests
        big = await batcher.submit(np.arange(6 * D, dtype=np.float32).reshape(6, D))  # over max_batch: alone
        assert big.batch_rows == 6 and big.probs.shape == (6, K)
        with pytest.raises(QueueFull):
            await asyncio.gather(*(batcher.submit(np.zeros((3, D), np.float32)) for _ in range(4)))
        assert await batcher.drain(5.0)
        with pytest.raises(Draining):
            await batcher.submit(xs[0])
        await batcher.start()  # serving again after a drain (a new model thread)
        assert float((await batcher.submit(xs[1])).probs[0, 0]) == 1.0

    asyncio.run(scenario())
    assert batches[: len(calls)] == calls


def test_ray_engine_serves_with_request_ids_batches_and_logs(log_url: str) -> None:
    """Two replicas, one log (SQLite file, or PostgreSQL in CI): ids, replays and conflicts hold across replicas."""
    ray = pytest.importorskip("ray", reason="the Ray Serve engine needs `pip install 'dlclinic[ray]'`")
    import httpx
    from ray import cloudpickle

    from dlclinic.serve.ray_engine import deploy

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # replicas cannot import this test module
    port, started = _free_port(), time.perf_counter()
    stop = deploy(functools.partial(build_app, log_url), replicas=2, config=ServeConfig(max_batch=8), port=port)
    x = np.random.default_rng(0).normal(size=(11, D)).astype(np.float32)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            assert client.get("/ready").json()["ready"] is True
            r = client.post("/predict", json={"inputs": x[:2].tolist()}, headers={"X-Request-ID": "ray-1"})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["request_id"] == "ray-1" and len(body["predictions"]) == 2
            for _ in range(4):  # whichever replica answers, the shared log knows the id
                again = client.post("/predict", json={"inputs": x[:2].tolist(), "request_id": "ray-1"})
                assert again.headers.get("Idempotent-Replayed") == "true"
                assert again.json()["probabilities"] == body["probabilities"]
                assert (
                    client.post("/predict", json={"inputs": x[2:3].tolist(), "request_id": "ray-1"}).status_code == 409
                )
            fresh = client.post("/predict", json={"inputs": x[2:3].tolist()})
            assert fresh.status_code == 200 and fresh.json()["request_id"] == fresh.headers["x-request-id"]
            assert client.post("/predict", json={"inputs": [[1.0] * (D + 1)]}).status_code == 422
            assert "dlclinic_batch_rows_count" in client.get("/metrics").text
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            with concurrent.futures.ThreadPoolExecutor(8) as pool:  # concurrent writers on both replicas
                codes = list(
                    pool.map(
                        lambda i: (
                            client.post(
                                "/predict", json={"inputs": x[3 + i : 4 + i].tolist(), "request_id": f"c-{i}"}
                            ).status_code
                        ),
                        range(8),
                    )
                )
            assert codes == [200] * 8
    finally:
        stop()
    assert not ray.is_initialized()
    logged = PredictionStore(log_url).read()
    rows = {(rid, int(row)): h for rid, row, h in zip(logged.request_id, logged.row, logged.input_hash, strict=True)}
    assert rows[("ray-1", 0)] == hash_input(x[0]) and rows[("ray-1", 1)] == hash_input(x[1])
    assert all(rows[(f"c-{i}", 0)] == hash_input(x[3 + i]) for i in range(8))
    assert len(rows) == 11  # replays and refused requests logged nothing new
    assert time.perf_counter() - started < 90
