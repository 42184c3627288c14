"""Issue 18: an acknowledged prediction is never lost, and hostile input stops at the boundary.

Each test here failed before its fix: a 1e38 input answered 200 with ``null`` probabilities and
took the whole write batch (other clients' rows) down with it; the default log answered before
its commit; a reused request id with other inputs got 200 (and mixed rows of two payloads); the
``X-Request-ID`` header skipped the id pattern; ``--workers`` left orphans after a kill -9.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")
httpx = pytest.importorskip("httpx")

import sqlalchemy as sa  # noqa: E402
import torch  # noqa: E402

from dlclinic.serve.app import ServeConfig, check_request_id, create_app, in_process_client  # noqa: E402
from dlclinic.serve.backends import TorchBackend  # noqa: E402
from dlclinic.serve.store import (  # noqa: E402
    PredictionRecord,
    PredictionStore,
    RequestConflict,
    hash_input,
)

D, K = 8, 3
ROOT = Path(__file__).resolve().parents[1]


def _build() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(D, 16), torch.nn.ReLU(), torch.nn.Linear(16, K))


@pytest.fixture(scope="module")
def backend() -> TorchBackend:
    return TorchBackend(_build(), (D,), K)


def _rows(n: int, seed: int) -> list[list[float]]:
    return np.random.default_rng(seed).normal(size=(n, D)).round(4).tolist()


async def _concurrently(app: Any, bodies: list[dict[str, Any]]) -> list[Any]:
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app):  # startup and shutdown on this loop, as uvicorn runs them
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
            return await asyncio.gather(*(client.post("/predict", json=b) for b in bodies))


def _served(app: Any, bodies: list[dict[str, Any]]) -> list[Any]:
    """Send ``bodies`` concurrently (the batcher mixes them into shared batches); the app shuts down after."""
    return asyncio.run(_concurrently(app, bodies))


# -- 1. validation before acknowledgement ------------------------------------------------------


def test_huge_input_is_refused_and_other_clients_rows_are_all_logged(log_url: str, backend: TorchBackend) -> None:
    store = PredictionStore(log_url)
    app = create_app(backend, store=store, config=ServeConfig(max_batch=64, max_wait_ms=30))
    good = [{"inputs": _rows(2, i), "request_id": f"good-{i}"} for i in range(30)]
    hostile = [{"inputs": [[3.4e38] * D], "request_id": f"huge-{i}"} for i in range(3)]
    bodies = good[:10] + hostile[:1] + good[10:20] + hostile[1:] + good[20:]
    responses = _served(app, bodies)
    for body, r in zip(bodies, responses, strict=True):
        if body["request_id"].startswith("huge"):
            assert r.status_code == 422, r.text
            assert "non-finite outputs" in r.json()["detail"] and "\n" not in r.json()["detail"]
        else:
            assert r.status_code == 200, r.text
            assert np.isfinite(r.json()["probabilities"]).all()
    reader = PredictionStore(log_url)
    logged = reader.read()
    assert len(logged) == 60 and not any(str(rid).startswith("huge") for rid in logged.request_id)
    assert reader.integrity_check()["ok"]
    reader.close()


@pytest.mark.filterwarnings("ignore:prediction log:RuntimeWarning")
def test_a_row_the_database_refuses_fails_alone_with_a_clear_answer(log_url: str, backend: TorchBackend) -> None:
    store = PredictionStore(log_url, max_delay=0.05)
    real_insert = store._insert

    def insert(conn: Any, table: Any, rows: list[dict[str, Any]], keys: list[str]) -> None:
        if any(r.get("request_id") == "poison" for r in rows) and table is store.predictions:
            raise sa.exc.IntegrityError("INSERT INTO predictions", {}, Exception("CHECK constraint failed"))
        real_insert(conn, table, rows, keys)

    store._insert = insert  # type: ignore[method-assign]
    app = create_app(backend, store=store, config=ServeConfig(max_wait_ms=20))
    bodies = [{"inputs": _rows(1, i), "request_id": f"ok-{i}"} for i in range(12)]
    bodies.insert(6, {"inputs": _rows(1, 99), "request_id": "poison"})
    responses = _served(app, bodies)
    codes = {b["request_id"]: r.status_code for b, r in zip(bodies, responses, strict=True)}
    poison = responses[6]
    assert codes.pop("poison") == 500 and set(codes.values()) == {200}
    assert "could not be logged (IntegrityError" in poison.json()["detail"] and "\n" not in poison.json()["detail"]
    reader = PredictionStore(log_url)
    assert sorted(reader.read().request_id.tolist()) == sorted(codes)
    reader.close()


@pytest.mark.filterwarnings("ignore:prediction log:RuntimeWarning")
def test_store_commits_each_job_alone_when_the_group_fails(log_url: str) -> None:
    store = PredictionStore(log_url, max_delay=0.3)
    p = np.array([0.2, 0.5, 0.3], dtype=np.float32)
    rec = {"created": 1.0, "model_version": "v", "latency_ms": 1.0, "probs": p}
    good = [store.submit([PredictionRecord(f"g{i}", 0, input_hash=hash_input(np.full(3, i)), **rec)]) for i in range(5)]
    bad = store.submit([PredictionRecord("bad", 2**70, input_hash="h", **rec)])  # a row number no INTEGER holds
    assert [f.result(10) for f in good] == [1] * 5
    with pytest.raises((OverflowError, sa.exc.DBAPIError)):
        bad.result(10)
    with pytest.raises(Exception, match="expected finite probabilities"):
        store.submit([PredictionRecord("nan", 0, input_hash="h", **{**rec, "probs": np.array([np.nan, 1.0])})])
    assert store.count() == 5 and store.errors == 1
    store.close()


# -- 2. durable by default, group commit ---------------------------------------------------------


def test_acknowledged_means_committed_and_on_disk_by_default(log_url: str, backend: TorchBackend) -> None:
    assert ServeConfig().log_mode == "durable"
    store = PredictionStore(log_url, max_delay=0.5)  # a long window: an answer before the commit would show
    app = create_app(backend, store=store)
    with in_process_client(app) as client:
        r = client.post("/predict", json={"inputs": _rows(3, 0), "request_id": "now"})
        assert r.status_code == 200
        reader = PredictionStore(log_url)
        assert reader.count() == 3  # before any flush or shutdown
        reader.close()
        assert _sync_setting(store) in (2, "on")  # SQLite FULL / PostgreSQL on: each commit is flushed to disk
    fast = PredictionStore(log_url, durable=False)
    assert _sync_setting(fast) in (1, "off")
    fast.close()
    with pytest.raises(ValueError, match="log_mode"):
        ServeConfig(log_mode="sometimes")


def _sync_setting(store: PredictionStore) -> Any:
    query = "PRAGMA synchronous" if store.dialect == "sqlite" else "SHOW synchronous_commit"
    with store.engine.connect() as conn:
        return conn.exec_driver_sql(query).scalar_one()


def test_concurrent_requests_share_commits(log_url: str, backend: TorchBackend) -> None:
    store = PredictionStore(log_url)
    commits = {"n": 0}
    real = store._transaction

    def counted(jobs: list[Any]) -> list[Any]:
        commits["n"] += 1
        return real(jobs)

    store._transaction = counted  # type: ignore[method-assign]
    app = create_app(backend, store=store, config=ServeConfig(max_wait_ms=10))
    responses = _served(app, [{"inputs": _rows(1, i), "request_id": f"c{i}"} for i in range(48)])
    assert all(r.status_code == 200 for r in responses)
    assert store.written == 48 and commits["n"] < 48 / 2, commits  # group commit: far fewer transactions than rows


# -- 3. idempotency ------------------------------------------------------------------------------


def test_reused_request_id_replays_or_conflicts(log_url: str, backend: TorchBackend) -> None:
    store = PredictionStore(log_url)
    app = create_app(backend, store=store)
    one, three = _rows(1, 0), _rows(3, 1)
    with in_process_client(app) as client:
        first = client.post("/predict", json={"inputs": one, "request_id": "pay-1"})
        again = client.post("/predict", json={"inputs": one}, headers={"X-Request-ID": "pay-1"})
        other = client.post("/predict", json={"inputs": three, "request_id": "pay-1"})
        same_rows_other_values = client.post("/predict", json={"inputs": _rows(1, 5), "request_id": "pay-1"})
    assert first.status_code == 200 and again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert again.json()["probabilities"] == first.json()["probabilities"]
    assert again.json()["latency_ms"] == first.json()["latency_ms"]  # the original answer, not a new one
    for r in (other, same_rows_other_values):
        assert r.status_code == 409, r.text
        assert "already used for a different payload" in r.json()["detail"] and r.json()["request_id"] == "pay-1"
    reader = PredictionStore(log_url)
    data = reader.read()
    assert data.request_id.tolist() == ["pay-1"] and data.input_hash[0] == hash_input(np.array(one[0]))
    assert reader.integrity_check()["ok"]
    reader.close()


def test_concurrent_reuse_of_an_id_logs_one_payload(log_url: str) -> None:
    store = PredictionStore(log_url, max_delay=0.3)  # both jobs land in one group
    p = np.array([0.5, 0.5], dtype=np.float32)

    def rec(row: int, seed: int) -> PredictionRecord:
        return PredictionRecord("dup", row, 1.0, "v", 1.0, p, hash_input(np.full(2, seed)))

    a = store.submit([rec(0, 1)])
    b = store.submit([rec(0, 2), rec(1, 3), rec(2, 4)])
    same = store.submit([rec(0, 1)])
    assert a.result(10) == 1 and same.result(10) == 1
    with pytest.raises(RequestConflict, match="'dup'"):
        b.result(10)
    assert store.count() == 1 and store.integrity_check()["mixed_requests"] == 0
    store.close()


def test_header_and_body_ids_share_one_validation(log_url: str, backend: TorchBackend) -> None:
    app = create_app(backend, store=PredictionStore(log_url))
    hostile = "../../x;DROP TABLE predictions"
    with in_process_client(app) as client:
        by_header = client.post("/predict", json={"inputs": _rows(1, 0)}, headers={"X-Request-ID": hostile})
        by_body = client.post("/predict", json={"inputs": _rows(1, 0), "request_id": hostile})
        too_long = client.post("/predict", json={"inputs": _rows(1, 0)}, headers={"X-Request-ID": "a" * 65})
        differ = client.post("/predict", json={"inputs": _rows(1, 0), "request_id": "a"}, headers={"X-Request-ID": "b"})
    for r, where in ((by_header, "X-Request-ID"), (by_body, "request_id"), (too_long, "X-Request-ID")):
        assert r.status_code == 422, r.text
        assert r.json()["detail"] == check_request_id(r.request.headers.get("x-request-id") or hostile, where)
    assert differ.status_code == 422 and "differ" in differ.json()["detail"]
    assert check_request_id("req-1.a:b_c") is None
    reader = PredictionStore(log_url)
    assert reader.count() == 0
    reader.close()


# -- 4. supervised workers -----------------------------------------------------------------------


def _children(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (from /proc)."""
    out: set[int] = set()
    frontier = [pid]
    while frontier:
        p = frontier.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            kids = (task / "children").read_text().split() if (task / "children").exists() else []
            for k in map(int, kids):
                if k not in out:
                    out.add(k)
                    frontier.append(k)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads the process tree from /proc (Linux)")
def test_workers_restart_when_they_die_and_exit_with_their_master(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    (tmp_path / "net.py").write_text(
        "import torch\n\ndef build():\n    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))\n"
    )
    save_file({k: v.contiguous() for k, v in _build().state_dict().items()}, str(tmp_path / "net.safetensors"))
    x = np.random.default_rng(0).normal(size=(60, D)).astype(np.float32)
    np.savez(tmp_path / "train.npz", x=x, y=np.arange(60) % K)
    port = _free_port()
    cmd = [sys.executable, "-m", "dlclinic.cli", "serve", "--train", str(tmp_path / "train.npz")]
    cmd += ["--model", f"{tmp_path / 'net.py'}:build", "--weights", str(tmp_path / "net.safetensors")]
    cmd += ["--out", str(tmp_path / "srv"), "--port", str(port), "--workers", "2"]
    master = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    family: set[int] = set()
    try:
        _wait_ready(master, port)
        workers = _workers(master.pid, 2)
        family |= workers | _children(master.pid)
        victim = sorted(workers)[0]
        os.kill(victim, signal.SIGKILL)  # a worker dies: the master starts another
        deadline = time.monotonic() + 60
        while not ((now := _workers(master.pid, 2)) and victim not in now):
            assert time.monotonic() < deadline, "the master did not restart the dead worker"
            time.sleep(0.3)
        family |= now | _children(master.pid)
        _wait_ready(master, port)
        os.kill(master.pid, signal.SIGKILL)  # the master dies: its workers must not serve on as orphans
        master.wait(10)
        deadline = time.monotonic() + 45
        while [p for p in family if _alive(p)]:
            assert time.monotonic() < deadline, f"orphans still running: {[p for p in family if _alive(p)]}"
            time.sleep(0.3)
    finally:
        for p in [master.pid, *family]:
            if _alive(p):
                os.kill(p, signal.SIGKILL)


def _workers(master: int, n: int) -> set[int]:
    """The master's worker processes (its children running the server), once there are ``n`` of them."""
    kids = {p for p in _children(master) if "resource_tracker" not in Path(f"/proc/{p}/cmdline").read_text()}
    return kids if len(kids) >= n else set()


def _wait_ready(proc: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + 120
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=2) as client:
        while True:
            assert proc.poll() is None, f"server exited with {proc.returncode}"
            try:
                if client.get("/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.3)


# -- 5. the crash-and-hostility run (bench/crash_serve.py; a larger N is the bench) ---------------


def test_kill_9_cycles_with_hostile_requests_lose_no_acknowledged_row(log_url: str) -> None:
    cmd = [sys.executable, str(ROOT / "bench" / "crash_serve.py"), "--cycles", "2", "--requests", "100"]
    cmd += ["--clients", "4", "--hostile-every", "6", "--store", log_url, "--time-limit", "150"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=200, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert ", 0 problem(s);" in done.stdout and "huge" in done.stdout and "reuse_other" in done.stdout
