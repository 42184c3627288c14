"""Crash-and-hostility test of the prediction server: kill -9 cycles under concurrent load, then an audit of the log.

Each cycle starts a server on 127.0.0.1 (a small seeded MLP behind ``dlclinic.serve.create_app``
with the default settings, logging to ``--store``), runs ``--clients`` closed-loop clients that send
at most ``--requests`` requests (1–3 rows each, ids chosen by the client) with hostile requests
mixed in (inputs of 3.4e38, a wrong shape, a malformed ``X-Request-ID``, an acknowledged id reused
with other inputs, an acknowledged request replayed), kills the server with SIGKILL after a random
share of the requests, and starts the next cycle on the same log. Then it audits the log:
integrity (database, duplicate keys, corrupt rows, mixed requests), every acknowledged request
logged with exactly its inputs' hashes, no row of a refused request, and each hostile request
answered as documented (422, 409, or the original answer again). Exit 0 when all hold, 1 when any
acknowledged row is lost or anything else is off (one line per problem). Loopback only, fixed
request counts, and a time limit: it stops by itself.

    python bench/crash_serve.py --cycles 5                 # the bench: SQLite in a temporary folder
    python bench/crash_serve.py --cycles 5 --store "$DLCLINIC_TEST_POSTGRES"
    python bench/crash_serve.py --cycles 3 --log-mode async   # the opt-out: expect acknowledged rows lost
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

D, K = 8, 3
HOSTILE = ("huge", "shape", "bad_header", "reuse_other", "replay")


@dataclass
class Ledger:
    """What the clients saw: acknowledged payloads and answers, refused ids, problems."""

    acknowledged: dict[str, list[list[float]]] = field(default_factory=dict)
    answers: dict[str, list[list[float]]] = field(default_factory=dict)
    refused: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    hostile: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(port: int, store_url: str, log_mode: str) -> None:
    """The server of one cycle (run in a child process): default settings but the log mode."""
    import torch
    import uvicorn

    from dlclinic.serve.app import ServeConfig, create_app
    from dlclinic.serve.backends import TorchBackend
    from dlclinic.serve.store import PredictionStore

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = torch.nn.Sequential(torch.nn.Linear(D, 32), torch.nn.ReLU(), torch.nn.Linear(32, K))
    store = PredictionStore(store_url, durable=log_mode == "durable")
    app = create_app(TorchBackend(model, (D,), K), store=store, config=ServeConfig(log_mode=log_mode))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error")


def _start(store_url: str, log_mode: str, deadline: float) -> tuple[subprocess.Popen[bytes], int]:
    import httpx

    port = _free_port()
    cmd = [sys.executable, __file__, "--serve", str(port), "--store", store_url, "--log-mode", log_mode]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=2) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode} before it was ready")
            try:
                if client.get("/ready").status_code == 200:
                    return proc, port
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server was not ready before the time limit")


def _inputs(seed: int, rows: int) -> list[list[float]]:
    return np.random.default_rng(seed).normal(size=(rows, D)).round(5).tolist()


def _hostile(kind: str, i: int, tag: str, ledger: Ledger) -> tuple[dict[str, Any], dict[str, str], tuple[int, ...]]:
    """``(body, headers, accepted codes)`` of one hostile request."""
    with ledger.lock:
        known = sorted(ledger.acknowledged)
    if kind == "huge":
        return {"inputs": [[3.4e38] * D], "request_id": f"{tag}-huge-{i}"}, {}, (422,)
    if kind == "shape":
        return {"inputs": [[1.0] * (D + 1)], "request_id": f"{tag}-shape-{i}"}, {}, (422,)
    if kind == "bad_header":
        return {"inputs": _inputs(i, 1)}, {"X-Request-ID": "../../x;DROP TABLE predictions"}, (422,)
    if not known:
        return {"inputs": _inputs(i, 1), "request_id": f"{tag}-{i}"}, {}, (200, 503)
    rid = known[i % len(known)]
    if kind == "reuse_other":
        return {"inputs": _inputs(10_000_000 + i, 2), "request_id": rid}, {}, (409,)
    with ledger.lock:
        return {"inputs": ledger.acknowledged[rid], "request_id": rid}, {}, (200,)


def _record(ledger: Ledger, kind: str, body: dict[str, Any], accepted: tuple[int, ...], r: Any) -> None:
    rid = body.get("request_id")
    ok = r.status_code in accepted and (r.status_code == 200 or "\n" not in str(r.json().get("detail", "")))
    with ledger.lock:
        if kind != "good":
            ledger.hostile[kind] = ledger.hostile.get(kind, 0) + 1
        if not ok:
            ledger.problems.append(f"{kind} request {rid}: answered {r.status_code} {r.text[:160]}")
            return
        if r.status_code != 200:
            if kind in ("good", "huge", "shape"):
                ledger.refused.add(str(rid))
            return
        probs = r.json()["probabilities"]
        if kind == "replay" and probs != ledger.answers.get(str(rid)):
            ledger.problems.append(f"replay of {rid}: a different answer than the original")
        if kind == "good":
            ledger.acknowledged[str(rid)] = body["inputs"]
            ledger.answers[str(rid)] = probs


def _client(port: int, jobs: list[int], tag: str, hostile_every: int, ledger: Ledger, stop: threading.Event) -> None:
    import httpx

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        while not stop.is_set():
            with ledger.lock:
                if not jobs:
                    return
                i = jobs.pop()
            kind = HOSTILE[(i // hostile_every) % len(HOSTILE)] if i % hostile_every == hostile_every - 1 else "good"
            if kind == "good":
                body, headers, accepted = {"inputs": _inputs(i, 1 + i % 3), "request_id": f"{tag}-{i}"}, {}, (200, 503)
            else:
                body, headers, accepted = _hostile(kind, i, tag, ledger)
            try:
                r = client.post("/predict", json=body, headers=headers)
            except httpx.TransportError:
                continue  # the server is gone (or going): this request's fate is unknown, nothing is claimed
            _record(ledger, kind, body, accepted, r)


def run_cycle(cycle: int, args: argparse.Namespace, ledger: Ledger, rng: random.Random, deadline: float) -> int:
    """One kill -9 cycle; returns how many requests were answered before the kill."""
    proc, port = _start(args.store, args.log_mode, deadline)
    tag = f"{args.run}-c{cycle}"
    jobs = list(range(args.requests))[::-1]
    stop = threading.Event()
    threads = [
        threading.Thread(target=_client, args=(port, jobs, tag, args.hostile_every, ledger, stop), daemon=True)
        for _ in range(args.clients)
    ]
    for t in threads:
        t.start()
    kill_after = int(args.requests * rng.uniform(0.3, 0.8))
    try:
        while len(jobs) > args.requests - kill_after and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        sent = args.requests - len(jobs)
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # mid-load: no shutdown, no flush
        proc.wait(30)
        stop.set()
        for t in threads:
            t.join(30)
    return sent


def audit(store_url: str, ledger: Ledger) -> list[str]:
    """The log against what the clients were told: losses, duplicates, refused rows, integrity."""
    from dlclinic.serve.store import PredictionStore, hash_input, payload_hash

    store = PredictionStore(store_url)
    try:
        integrity = store.integrity_check()
        found = {rid: store.find_request(rid) for rid in sorted(set(ledger.acknowledged) | ledger.refused)}
    finally:
        store.close()
    problems = [] if integrity["ok"] else [f"integrity check failed: {integrity}"]
    lost = sorted(rid for rid in ledger.acknowledged if found[rid] is None)
    if lost:
        problems.append(f"{len(lost)} acknowledged request(s) missing from the log, e.g. {lost[:5]}")
    for rid, inputs in ledger.acknowledged.items():
        logged = found[rid]
        expected = payload_hash([hash_input(np.asarray(row, dtype=np.float32)) for row in inputs])
        if logged is not None and (logged.payload_hash != expected or len(logged.probs) != len(inputs)):
            problems.append(f"request {rid}: the logged rows are not the acknowledged inputs")
    refused_logged = sorted(rid for rid in ledger.refused if found[rid] is not None)
    if refused_logged:
        problems.append(f"{len(refused_logged)} refused request(s) logged anyway, e.g. {refused_logged[:5]}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=5, help="kill -9 cycles")
    parser.add_argument("--requests", type=int, default=300, help="most requests per cycle")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--hostile-every", type=int, default=8, help="one request in this many is hostile")
    parser.add_argument("--store", default=None, help="log URL or path (default: SQLite in a temporary folder)")
    parser.add_argument("--log-mode", default="durable", choices=("durable", "async"))
    parser.add_argument("--time-limit", type=float, default=600.0, help="seconds before the run gives up")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(args.serve, args.store, args.log_mode)
        return 0
    with tempfile.TemporaryDirectory(prefix="dlclinic-crash-") as tmp:
        args.store = args.store or str(Path(tmp) / "predictions.db")
        args.run = f"r{uuid.uuid4().hex[:8]}"
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    ledger, rng = Ledger(), random.Random(args.seed)
    deadline = time.monotonic() + args.time_limit
    started = time.monotonic()
    for cycle in range(args.cycles):
        sent = run_cycle(cycle, args, ledger, rng, deadline)
        print(
            f"cycle {cycle + 1}/{args.cycles}: kill -9 after {sent} requests; {len(ledger.acknowledged)} acknowledged so far",
            flush=True,
        )
        if time.monotonic() > deadline:
            ledger.problems.append(f"time limit of {args.time_limit:.0f} s reached after {cycle + 1} cycle(s)")
            break
    problems = ledger.problems + audit(args.store, ledger)
    hostile = ", ".join(f"{k} {v}" for k, v in sorted(ledger.hostile.items()) if k != "good")
    print(
        f"{args.cycles} kill -9 cycles ({args.log_mode} log, {args.store.split('@')[-1]}): "
        f"{len(ledger.acknowledged)} requests acknowledged, {len(problems)} problem(s); hostile requests sent: {hostile}; "
        f"{time.monotonic() - started:.0f} s"
    )
    for p in problems:
        print(f"  problem: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
