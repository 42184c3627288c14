"""Serving load test over loopback: throughput and p50/p95/p99 latency of `dlclinic serve`.

For each server configuration (dynamic batching on/off × number of workers) a real
`dlclinic serve --demo` process is started on 127.0.0.1, and closed-loop clients (each
sends one single-sample request, waits for the answer, sends the next) run at each
concurrency level with a fixed request count and a time limit. Prints one row per
(configuration, concurrency) and the ratio that matters: batched vs batch-size-1 serving
throughput at the highest concurrency. Loopback only; nothing leaves the machine.

    python bench/bench_serve.py [--requests 400] [--time-limit 15] [--concurrency 1,8,32] [--workers 1,2]

``--log-modes durable,async`` measures the cost of durability instead: the same small MLP the
crash test serves (bench/crash_serve.py, so the prediction log, not the model, is the bottleneck),
logging to SQLite (or ``--store URL``) with ``--log-mode durable`` (the default: answered after the
group commit is on disk) and ``async`` (answered before the commit).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(max_batch: int, workers: int, out: Path) -> tuple[subprocess.Popen[bytes], int]:
    import httpx

    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "dlclinic.cli",
        "serve",
        "--demo",
        "--no-store",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--max-batch",
        str(max_batch),
        "--max-wait-ms",
        "2",
        "--max-queue",
        "100000",
        "--out",
        str(out),
    ]
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "serve.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}: {(out / 'serve.log').read_text()[-2000:]}")
            try:
                if client.get(f"http://127.0.0.1:{port}/ready").status_code == 200:
                    return proc, port
            except httpx.TransportError:
                pass
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server did not become ready in 180 s")


async def _load(port: int, x: np.ndarray, concurrency: int, requests: int, time_limit: float) -> dict[str, float]:
    import httpx

    bodies = [{"inputs": x[i : i + 1].tolist()} for i in range(len(x))]
    latencies: list[float] = []
    errors = 0
    sent = 0
    deadline = time.perf_counter() + time_limit
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30, limits=limits) as client:

        async def worker() -> None:
            nonlocal sent, errors
            while sent < requests and time.perf_counter() < deadline:
                body = bodies[sent % len(bodies)]
                sent += 1
                t0 = time.perf_counter()
                r = await client.post("/predict", json=body)
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        await client.post("/predict", json=bodies[0])  # warm connection and model
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    return {
        "requests": len(lat),
        "errors": errors,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--time-limit", type=float, default=15.0)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--log-modes", default=None, help="e.g. durable,async: measure the cost of durability")
    parser.add_argument("--store", default=None, help="with --log-modes: a log URL (default SQLite in a temp folder)")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    if args.log_modes:
        log_modes(args.log_modes.split(","), levels, args.requests, args.time_limit, args.store)
        return
    worker_counts = [int(w) for w in args.workers.split(",")]
    from dlclinic.demo import build_demo

    case, _ = build_demo()
    x = case.splits["test"].x[:256]
    print(
        f"{'workers':>7} {'max_batch':>9} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6}"
    )
    results: dict[tuple[int, int, int], dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in worker_counts:
            for max_batch in (1, args.max_batch):
                proc, port = _start(max_batch, workers, Path(tmp) / f"w{workers}b{max_batch}")
                try:
                    for c in levels:
                        r = asyncio.run(_load(port, x, c, args.requests, args.time_limit))
                        results[(workers, max_batch, c)] = r
                        print(
                            f"{workers:>7} {max_batch:>9} {c:>7} {r['rps']:>8.1f} {r['p50']:>8.2f} {r['p95']:>8.2f} {r['p99']:>8.2f} {r['errors']:>6.0f}",
                            flush=True,
                        )
                finally:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(60)
    top = max(levels)
    for workers in worker_counts:
        a, b = results[(workers, args.max_batch, top)], results[(workers, 1, top)]
        print(
            f"workers={workers}: dynamic batching (max {args.max_batch}) vs batch-size-1 at {top} clients: {a['rps'] / b['rps']:.2f}x throughput, p99 {a['p99']:.1f} vs {b['p99']:.1f} ms"
        )
    if len(worker_counts) > 1:
        w0, w1 = worker_counts[0], worker_counts[-1]
        print(
            f"batched, {top} clients: {w1} workers vs {w0}: {results[(w1, args.max_batch, top)]['rps'] / results[(w0, args.max_batch, top)]['rps']:.2f}x throughput"
        )


if __name__ == "__main__":
    main()
