"""Serving load test over loopback: the embedded server batched and unbatched, and Ray Serve, one model, one run.

One bench model (a seeded MLP 784→4096→4096→10 whose batch-32 throughput is several times its
batch-1 throughput on a CPU; measured and printed first) is served by, in turn: the embedded
server (``dlclinic.serve.create_app`` under uvicorn) with batching off (``max_batch=1``) and on,
and the Ray Serve engine (``dlclinic.serve.ray_engine``, ``@serve.batch``) with 1 and 2 replicas.
Every server logs to a durable SQLite prediction log (the ``dlclinic serve`` default; ``--store
none`` turns it off) and runs each model copy on ``--threads`` torch threads. Closed-loop clients
(each sends a one-row request, waits for the answer, sends the next) run at each concurrency level
for ``--seconds``; the client is a minimal keep-alive HTTP/1.1 writer on asyncio with pre-encoded
bodies, so that the load generator, which shares the machine, costs as little CPU as possible.
Prints one table and the ratios that matter. Loopback only; nothing leaves the machine.

    python bench/bench_serve.py [--seconds 8] [--concurrency 1,8,32] [--engines embedded,ray] [--replicas 1,2]

``--log-modes durable,async`` measures the cost of durability instead: the same small MLP the
crash test serves (bench/crash_serve.py, so the prediction log, not the model, is the bottleneck),
logging to SQLite (or ``--store URL``) with ``--log-mode durable`` (the default: answered after the
group commit is on disk) and ``async`` (answered before the commit).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

D_IN, HIDDEN, K = 784, 4096, 10


def bench_model() -> Any:
    """The bench model: seeded, so every server process holds the same weights."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(D_IN, HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, K),
    ).eval()


def model_throughput(threads: int, seconds: float = 2.0) -> dict[int, float]:
    """Rows/s of the bench model in-process (the serving backend's predict) at batch 1 and 32."""
    import torch

    from dlclinic.serve.backends import TorchBackend

    torch.set_num_threads(threads)
    backend = TorchBackend(bench_model(), (D_IN,), K)
    x = np.random.default_rng(1).normal(size=(32, D_IN)).astype(np.float32)
    out = {}
    for bs in (1, 32):
        backend.predict(x[:bs])
        calls, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            backend.predict(x[:bs])
            calls += 1
        out[bs] = calls * bs / (time.perf_counter() - t0)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bench_app(store: str | None, config: dict[str, Any], make_batcher: Any = None) -> Any:
    """One server's app: the bench model behind ``create_app`` (also what each Ray replica builds)."""
    from dlclinic.serve.app import ServeConfig, create_app
    from dlclinic.serve.backends import TorchBackend
    from dlclinic.serve.store import PredictionStore

    log = PredictionStore(store) if store else None
    backend = TorchBackend(bench_model(), (D_IN,), K)
    return create_app(backend, store=log, config=ServeConfig(**config), make_batcher=make_batcher)


def serve_child(engine: str, port: int, n: int, store: str | None, max_wait_ms: float, threads: int) -> None:
    """The server process: embedded with max_batch ``n``, or Ray Serve with ``n`` replicas (max_batch 32)."""
    import torch
    import uvicorn

    from dlclinic.serve.app import ServeConfig
    from dlclinic.serve.ray_engine import run_ray

    max_batch = n if engine == "embedded" else 32
    config = {"max_batch": max_batch, "max_wait_ms": max_wait_ms, "max_queue": 100_000}
    if engine == "embedded":
        torch.set_num_threads(threads)
        uvicorn.run(_bench_app(store, config), host="127.0.0.1", port=port, log_level="error")
    else:
        build = functools.partial(_bench_app, store, config)
        run_ray(build, replicas=n, config=ServeConfig(**config), port=port, threads=threads)


def _start(
    engine: str, n: int, store: str | None, args: argparse.Namespace, log: Path
) -> tuple[subprocess.Popen[bytes], int]:
    import httpx

    port = _free_port()
    cmd = [
        sys.executable,
        __file__,
        "--serve",
        engine,
        "--port",
        str(port),
        "--n",
        str(n),
        "--max-wait-ms",
        str(args.max_wait_ms),
        "--threads",
        str(args.threads),
        "--store",
        store or "none",
    ]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 240
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if client.get(f"http://127.0.0.1:{port}/ready").status_code == 200:
                    return proc, port
            except httpx.TransportError:
                pass
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server did not become ready in 240 s")


def _request(body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    return (
        b"POST /predict HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % len(data) + data
    )


async def _client(port: int, requests: list[bytes], stop: float, first: int, step: int, out: dict[str, Any]) -> None:
    """One closed-loop client on one keep-alive connection: send, read the whole answer, repeat until ``stop``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = first
    try:
        while time.perf_counter() < stop and out["sent"] < out["limit"]:
            out["sent"] += 1
            t0 = time.perf_counter()
            writer.write(requests[i % len(requests)])
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(v) for k, _, v in (h.partition(b":") for h in head.split(b"\r\n")) if k.lower() == b"content-length"
            )
            await reader.readexactly(length)
            if head.startswith(b"HTTP/1.1 200"):
                out["latencies"].append(time.perf_counter() - t0)
            else:
                out["errors"] += 1
            i += step
    finally:
        writer.close()


async def _load(port: int, x: np.ndarray, concurrency: int, requests: int, time_limit: float) -> dict[str, float]:
    """``concurrency`` closed-loop clients for at most ``requests`` requests or ``time_limit`` seconds."""
    encoded = [_request({"inputs": x[i : i + 1].tolist()}) for i in range(len(x))]
    warm: dict[str, Any] = {"sent": 0, "limit": 2 * concurrency, "latencies": [], "errors": 0}
    await asyncio.gather(
        *(_client(port, encoded, time.perf_counter() + 30, c, concurrency, warm) for c in range(concurrency))
    )
    out: dict[str, Any] = {"sent": 0, "limit": requests, "latencies": [], "errors": 0}
    start = time.perf_counter()
    await asyncio.gather(*(_client(port, encoded, start + time_limit, c, concurrency, out) for c in range(concurrency)))
    elapsed = time.perf_counter() - start
    lat = np.array(out["latencies"]) * 1000
    return {
        "requests": len(lat),
        "errors": out["errors"],
        "rps": len(lat) / elapsed,
        "p50": float(np.percentile(lat, 50)),
        "p95": float(np.percentile(lat, 95)),
        "p99": float(np.percentile(lat, 99)),
    }


def _start_logged(log_mode: str, store: str) -> tuple[subprocess.Popen[bytes], int]:
    """The crash test's server (a small MLP, default settings) logging to ``store`` in ``log_mode``."""
    import httpx

    port = _free_port()
    script = Path(__file__).with_name("crash_serve.py")
    cmd = [sys.executable, str(script), "--serve", str(port), "--store", store, "--log-mode", log_mode]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline:
            try:
                if client.get(f"http://127.0.0.1:{port}/ready").status_code == 200:
                    return proc, port
            except httpx.TransportError:
                pass
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("server did not become ready in 120 s")


def log_modes(modes: list[str], levels: list[int], requests: int, time_limit: float, store: str | None) -> None:
    """Throughput and latency of the durable log vs the asynchronous one, same server otherwise."""
    x = np.random.default_rng(0).normal(size=(256, 8)).astype(np.float32)
    print(f"{'log mode':>9} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6}")
    results: dict[tuple[str, int], dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in modes:
            proc, port = _start_logged(mode, store or str(Path(tmp) / f"{mode}.db"))
            try:
                for c in levels:
                    r = results[(mode, c)] = asyncio.run(_load(port, x, c, requests, time_limit))
                    print(
                        f"{mode:>9} {c:>7} {r['rps']:>8.1f} {r['p50']:>8.2f} {r['p95']:>8.2f} {r['p99']:>8.2f} {r['errors']:>6.0f}",
                        flush=True,
                    )
            finally:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(60)
    if "durable" in modes and "async" in modes:
        for c in levels:
            ratio = results[("durable", c)]["rps"] / results[("async", c)]["rps"]
            print(f"{c} clients: durable log at {ratio:.2f}x the throughput of the asynchronous one")


def _load_avg() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def engines_table(args: argparse.Namespace) -> None:
    """Embedded unbatched/batched and Ray Serve with each replica count, the same model, one after another."""
    levels = [int(c) for c in args.concurrency.split(",")]
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average at start {_load_avg()}", flush=True)
    ratio = model_throughput(args.threads)
    print(
        f"bench model MLP {D_IN}-{HIDDEN}-{HIDDEN}-{K}, {args.threads} torch thread(s) per model copy, {os.cpu_count()} CPUs:"
        f" {ratio[1]:.0f} rows/s at batch 1, {ratio[32]:.0f} rows/s at batch 32 ({ratio[32] / ratio[1]:.1f}x)",
        flush=True,
    )
    x = np.random.default_rng(0).normal(size=(256, D_IN)).astype(np.float32)
    configs = [("embedded", 1), ("embedded", args.max_batch)] if "embedded" in args.engines else []
    configs += [("ray", int(r)) for r in args.replicas.split(",")] if "ray" in args.engines else []
    print(
        f"{'engine':>8} {'setting':>14} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6}"
    )
    results: dict[tuple[str, int, int], dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for engine, n in configs:
            store = None if args.store == "none" else str(Path(tmp) / f"{engine}{n}.db")
            proc, port = _start(engine, n, store, args, Path(tmp) / f"{engine}{n}.log")
            setting = f"max_batch {n}" if engine == "embedded" else f"{n} replica" + "s" * (n > 1)
            try:
                for c in levels:
                    r = results[(engine, n, c)] = asyncio.run(_load(port, x, c, args.requests, args.seconds))
                    print(
                        f"{engine:>8} {setting:>14} {c:>7} {r['rps']:>8.1f} {r['p50']:>8.2f} {r['p95']:>8.2f} {r['p99']:>8.2f} {r['errors']:>6.0f}",
                        flush=True,
                    )
            finally:
                proc.send_signal(signal.SIGTERM)  # the server only: Ray's own processes are stopped by it
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(90)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # anything left in its session
    print(f"load average at end {_load_avg()}")
    top = max(levels)
    base = results.get(("embedded", 1, top))
    for (engine, n, c), r in results.items():
        if c == top and base is not None and (engine, n) != ("embedded", 1):
            label = f"embedded max_batch {n}" if engine == "embedded" else f"ray {n} replica(s)"
            print(f"{top} clients: {label} at {r['rps'] / base['rps']:.2f}x the unbatched embedded throughput")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per concurrency level")
    parser.add_argument("--requests", type=int, default=100_000, help="most requests per level")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--engines", default="embedded,ray")
    parser.add_argument("--replicas", default="1,2")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per model copy")
    parser.add_argument(
        "--store",
        default="sqlite",
        help="sqlite (a durable log per server, the default), none; with --log-modes: a URL",
    )
    parser.add_argument("--log-modes", default=None, help="e.g. durable,async: measure the cost of durability")
    parser.add_argument("--serve", choices=("embedded", "ray"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_child(
            args.serve, args.port, args.n, None if args.store == "none" else args.store, args.max_wait_ms, args.threads
        )
    elif args.log_modes:
        levels = [int(c) for c in args.concurrency.split(",")]
        store = None if args.store in ("sqlite", "none") else args.store
        log_modes(args.log_modes.split(","), levels, args.requests, args.seconds, store)
    else:
        engines_table(args)


if __name__ == "__main__":
    main()
