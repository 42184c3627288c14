"""The Ray Serve engine (``dlclinic serve --engine ray``): a real local Ray cluster serving the dlclinic app.

CI installs the ``ray`` extra (``.ci/run``), so the engine test runs there; without Ray it is skipped
with the reason, and the missing-Ray error is tested by hiding the module.
"""

from __future__ import annotations

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


def test_missing_ray_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'dlclinic\[ray\]'") as info:
        require_ray()
    assert "\n" not in str(info.value)
    assert main(["serve", "--demo", "--engine", "ray", "--out", "unused-out", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dlclinic[ray]" in err[0], err


def test_engine_options_that_do_not_go_together_are_refused(tmp_path: Path, capsys: Any) -> None:
    assert main(["serve", "--demo", "--replicas", "2", "--out", str(tmp_path), "--dry-run"]) == 2
    assert "--replicas 2 needs --engine ray" in capsys.readouterr().err


def test_ray_engine_serves_with_request_ids_batches_and_logs(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray", reason="the Ray Serve engine needs `pip install 'dlclinic[ray]'`")
    import httpx
    from ray import cloudpickle

    from dlclinic.serve.ray_engine import deploy

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # replicas cannot import this test module
    store, port = str(tmp_path / "log.db"), _free_port()
    started = time.perf_counter()
    stop = deploy(functools.partial(build_app, store), replicas=1, config=ServeConfig(max_batch=8), port=port)
    x = np.random.default_rng(0).normal(size=(3, D)).astype(np.float32)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            assert client.get("/ready").json()["ready"] is True
            r = client.post("/predict", json={"inputs": x[:2].tolist()}, headers={"X-Request-ID": "ray-1"})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["request_id"] == "ray-1" and len(body["predictions"]) == 2
            again = client.post("/predict", json={"inputs": x[:2].tolist(), "request_id": "ray-1"})
            assert (
                again.headers.get("Idempotent-Replayed") == "true"
                and again.json()["probabilities"] == body["probabilities"]
            )
            assert client.post("/predict", json={"inputs": x[2:].tolist(), "request_id": "ray-1"}).status_code == 409
            fresh = client.post("/predict", json={"inputs": x[2:].tolist()})
            assert fresh.status_code == 200 and fresh.json()["request_id"] == fresh.headers["x-request-id"]
            assert client.post("/predict", json={"inputs": [[1.0] * (D + 1)]}).status_code == 422
            assert "dlclinic_batch_rows" in client.get("/metrics").text
    finally:
        stop()
    assert not ray.is_initialized()
    logged = PredictionStore(store).read()
    rows = {(rid, int(row)): h for rid, row, h in zip(logged.request_id, logged.row, logged.input_hash, strict=True)}
    assert rows[("ray-1", 0)] == hash_input(x[0]) and rows[("ray-1", 1)] == hash_input(x[1])
    assert len(rows) == 3  # the replay and the refused requests logged nothing new
    assert time.perf_counter() - started < 90
