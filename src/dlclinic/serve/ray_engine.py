"""Serving on Ray Serve: ``dlclinic serve --engine ray --replicas N`` (``pip install 'dlclinic[ray]'``).

Why a second engine: the embedded server (:func:`dlclinic.serve.create_app` under uvicorn) is
one process on one machine; Ray Serve adds replicas that Ray places, health-checks and restarts,
on one machine or a cluster, behind its own HTTP proxy. Rather than a second API, every replica
builds the *same* FastAPI app (Ray Serve's late-bound ingress, ``__serve_build_asgi_app__``):
the same endpoints and bodies, request ids and idempotency, token, limits, metrics and
prediction log. Only the batcher differs: :class:`RayBatcher` hands rows to Ray Serve's
``@serve.batch`` (``max_batch_size`` counted in rows through ``batch_size_fn``,
``batch_wait_timeout_s`` = ``max_wait_ms``) instead of :class:`~dlclinic.serve.batching.DynamicBatcher`.

Each replica is a process with its own model copy, log writer and live monitor (``/metrics``
and ``/dashboard`` show the replica that answered). The prediction log must take several
writers: SQLite (WAL, a busy timeout; one machine only, the file must be local) or PostgreSQL
(any number of machines). Ray runs locally (``ray.init`` without the dashboard or usage stats;
``$RAY_ADDRESS`` joins an existing cluster instead).

Example:
    >>> run_ray(functools.partial(build_app, spec), replicas=2, config=cfg, port=8000)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from dlclinic.core.errors import ConfigError, MissingDependencyError
from dlclinic.serve.batching import BatcherFactory, BatchResult, Draining, Predict, QueueFull

__all__ = ["RayBatcher", "deploy", "require_ray", "run_ray"]

# builds one replica's ASGI app with the batcher it is given (e.g. functools.partial(build, spec))
AppBuilder = Callable[[BatcherFactory], Any]


def require_ray() -> tuple[Any, Any]:
    """``(ray, ray.serve)``, or a one-line :class:`MissingDependencyError` naming the extra."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise MissingDependencyError("ray[serve]", "ray") from None
    return ray, serve


def _rows(items: list[np.ndarray]) -> int:
    """Ray Serve's ``batch_size_fn``: a batch's size is its rows, not its requests."""
    return sum(len(x) for x in items)


class RayBatcher:
    """The :class:`~dlclinic.serve.batching.Batcher` of a Ray Serve replica: ``@serve.batch`` over rows.

    The model runs on one dedicated thread (the replica's event loop keeps taking requests);
    a request of more than ``max_batch`` rows runs alone, as with the embedded batcher; more
    than ``max_queue`` rows waiting → :class:`QueueFull` (503).
    """

    def __init__(self, predict: Predict, config: Any, on_batch: Callable[[int, float], None]) -> None:
        _, serve = require_ray()
        self.predict = predict
        self.on_batch = on_batch
        self.max_batch = int(config.max_batch)
        self.max_queue = int(config.max_queue)
        self.pending_rows = 0
        self._closing = False
        self._executor: ThreadPoolExecutor | None = None
        self._batched = serve.batch(
            max_batch_size=self.max_batch,
            batch_wait_timeout_s=float(config.max_wait_ms) / 1000.0,
            batch_size_fn=_rows,
        )(self._run_batch)

    async def start(self) -> None:
        self._closing = False
        self._model_thread()

    def _model_thread(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dlclinic-model")
        return self._executor

    async def submit(self, x: np.ndarray) -> BatchResult:
        if self._closing:
            raise Draining("the replica is shutting down")
        n = len(x)
        if self.pending_rows + n > self.max_queue and self.pending_rows > 0:
            raise QueueFull(f"{self.pending_rows} rows queued, limit {self.max_queue}")
        self.pending_rows += n
        arrived = time.perf_counter()
        try:
            if n > self.max_batch:
                return (await self._run_batch([x], [arrived]))[0]
            result: BatchResult = await self._batched(x, arrived)
            return result
        finally:
            self.pending_rows -= n

    async def _run_batch(self, xs: list[np.ndarray], arrived: list[float]) -> list[BatchResult]:
        x = xs[0] if len(xs) == 1 else np.concatenate(xs)
        started = time.perf_counter()
        probs, emb = await asyncio.get_running_loop().run_in_executor(self._model_thread(), self.predict, x)
        seconds = time.perf_counter() - started
        self.on_batch(len(x), seconds)
        out, offset = [], 0
        for xi, t in zip(xs, arrived, strict=True):
            k = len(xi)
            part = None if emb is None else emb[offset : offset + k]
            out.append(BatchResult(probs[offset : offset + k], part, len(x), started - t, seconds))
            offset += k
        return out

    async def drain(self, timeout: float = 30.0) -> bool:
        self._closing = True
        deadline = time.monotonic() + timeout
        while self.pending_rows > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        return self.pending_rows == 0


class _Replica:
    """One Ray Serve replica: sets its torch threads, then builds the dlclinic app around :class:`RayBatcher`."""

    def __init__(self, build: AppBuilder, threads: int) -> None:
        torch.set_num_threads(threads)  # replicas share the cores instead of oversubscribing them
        self._build = build

    def __serve_build_asgi_app__(self) -> Any:
        app = self._build(RayBatcher)
        app.state.dlclinic.proxy_sets_request_id = True  # Ray's proxy adds X-Request-ID when the client sends none
        return app


def _start_ray(replicas: int) -> Any:
    """Start (or join, with ``$RAY_ADDRESS``) Ray: no dashboard, no usage stats, quiet workers."""
    ray, _ = require_ray()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray starts its workers (the replicas, the proxy) at niceness 15; a server then loses the CPU
    # to any batch job on the machine (the embedded server runs at 0, and so do these replicas).
    os.environ.setdefault("RAY_worker_niceness", "0")
    if not ray.is_initialized():
        cpus = None if os.environ.get("RAY_ADDRESS") else max(os.cpu_count() or 1, replicas)
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    return ray


def deploy(
    build: AppBuilder,
    *,
    replicas: int,
    config: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    threads: int | None = None,
) -> Callable[[], None]:
    """Start Ray, deploy ``replicas`` copies of the app on ``host:port``; returns the function that stops them.

    Args:
        build: picklable ``make_batcher -> ASGI app`` (each replica calls it once).
        replicas: Ray Serve ``num_replicas``.
        config: the :class:`~dlclinic.serve.app.ServeConfig` (``max_batch``, ``max_queue``).
        threads: torch threads per replica (default: the CPUs shared out, ``cpu_count // replicas``).
    """
    if replicas < 1:
        raise ConfigError(f"`replicas >= 1` must hold, but got replicas={replicas}")
    ray = _start_ray(replicas)
    _, serve = require_ray()
    cpus = max(os.cpu_count() or 1, replicas)
    serve.start(http_options={"host": host, "port": port})
    ongoing = max(2 * int(config.max_batch), 64)  # Ray's default of 5 in flight per replica would cap every batch at 5
    deployment = serve.deployment(
        serve.ingress()(_Replica),
        name="dlclinic",
        num_replicas=replicas,
        max_ongoing_requests=ongoing,
        ray_actor_options={"num_cpus": 1},
    )
    threads = threads or max(1, cpus // replicas)
    serve.run(deployment.bind(build, threads), name="dlclinic", route_prefix="/", blocking=False)

    def stop() -> None:
        # Bounded: when a signal to the whole process group (Ctrl-C, systemd) has already ended Ray's own
        # processes, serve.shutdown() waits for them forever; Ray is then stopped without it.
        waiter = threading.Thread(target=serve.shutdown, daemon=True, name="dlclinic-serve-shutdown")
        waiter.start()
        waiter.join(float(config.drain_timeout_s) + 10.0)
        if waiter.is_alive():
            warnings.warn(
                "Ray Serve did not shut down in time (Ray's processes already stopped?); stopping Ray", stacklevel=2
            )
        ray.shutdown()

    return stop


def run_ray(
    build: AppBuilder,
    *,
    replicas: int,
    config: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    threads: int | None = None,
) -> None:
    """:func:`deploy`, then serve until SIGTERM or SIGINT; replicas drain (lifespan shutdown) and Ray stops."""
    stop = deploy(build, replicas=replicas, config=config, host=host, port=port, threads=threads)
    done = threading.Event()
    previous = {s: signal.signal(s, lambda *_: done.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        done.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        stop()
