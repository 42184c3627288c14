"""Dynamic batching with a bounded queue, on asyncio.

Concurrent requests are queued; one worker takes the oldest ones, waits at most
``max_wait`` seconds (from the oldest request's arrival) for the batch to reach
``max_batch`` rows, runs the model once on the concatenated rows in a single worker
thread (the event loop keeps accepting requests meanwhile) and hands each request its
slice. A request larger than ``max_batch`` runs as its own batch. When queued rows would
exceed ``max_queue`` the request is refused at once with :class:`QueueFull` (the server
answers 503 with ``Retry-After``) instead of letting latency grow without bound.
``max_batch=1`` is plain one-request-at-a-time serving (the baseline of the load test).

Written here for the embedded server, which needs no serving framework: ~100 lines inside
the same FastAPI process. ``dlclinic serve --engine ray`` swaps it for Ray Serve's
``@serve.batch`` through the :class:`Batcher` protocol (:mod:`dlclinic.serve.ray_engine`), the
rest of the app unchanged. Over HTTP, batching pays off when the model dominates a request's
cost: with a model whose batch-32 throughput is 6.4× its batch-1 throughput, 32 clients got
3.7× the unbatched throughput on the 2-core VM (``bench/bench_serve.py``, docs/benchmarks.md);
with the demo CNN (~2×) the HTTP and JSON work per request dominates and batching wins little.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from dlclinic.core.errors import ConfigError

__all__ = ["BatchResult", "Batcher", "BatcherFactory", "Draining", "DynamicBatcher", "Predict", "QueueFull", "run_load"]

Predict = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]


class QueueFull(Exception):
    """The bounded queue has no room for this request (answer 503 with Retry-After)."""


class Draining(Exception):
    """The batcher is shutting down and accepts no new requests."""


@dataclass(frozen=True)
class BatchResult:
    """One request's share of a batch: probabilities, embeddings, and the batch it ran in."""

    probs: np.ndarray
    embeddings: np.ndarray | None
    batch_rows: int
    queue_seconds: float
    model_seconds: float


class Batcher(Protocol):
    """What the server needs from a batcher: :class:`DynamicBatcher`, or Ray Serve's ``@serve.batch`` adapter."""

    pending_rows: int

    async def start(self) -> None:
        """Get ready on the running loop (idempotent)."""
        ...

    async def submit(self, x: np.ndarray) -> BatchResult:
        """Predict ``x`` (N rows) in some batch; :class:`QueueFull` or :class:`Draining` when refused."""
        ...

    async def drain(self, timeout: float = 30.0) -> bool:
        """Refuse new requests and finish the queued ones; ``True`` if all finished within ``timeout`` s."""
        ...


# (predict, the server's config, on_batch(rows, model_seconds)) -> a batcher; config is a ServeConfig.
BatcherFactory = Callable[[Predict, Any, Callable[[int, float], None]], Batcher]


@dataclass
class _Item:
    x: np.ndarray
    future: asyncio.Future[BatchResult]
    arrived: float


class DynamicBatcher:
    """Collects concurrent requests into batches for ``predict``.

    Args:
        predict: ``x -> (probs, embeddings or None)`` on a float32 batch.
        max_batch: most rows per model call (1 = no batching).
        max_wait: seconds the oldest request may wait for a batch to fill.
        max_queue: most rows waiting; beyond it :meth:`submit` raises :class:`QueueFull`.
        on_batch: called with ``(rows, model_seconds)`` after each model call (metrics).

    Example:
        >>> batcher = DynamicBatcher(backend.predict, max_batch=32, max_wait=0.005)  # doctest: +SKIP
        >>> result = await batcher.submit(x)                                          # doctest: +SKIP
    """

    def __init__(
        self,
        predict: Predict,
        *,
        max_batch: int = 64,
        max_wait: float = 0.005,
        max_queue: int = 1024,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ConfigError(f"`max_batch >= 1` must hold, but got max_batch={max_batch}")
        if max_wait < 0:
            raise ConfigError(f"`max_wait >= 0` must hold, but got max_wait={max_wait}")
        if max_queue < 1:
            raise ConfigError(f"`max_queue >= 1` must hold, but got max_queue={max_queue}")
        self.predict = predict
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait)
        self.max_queue = int(max_queue)
        self.on_batch = on_batch
        self._pending: deque[_Item] = deque()
        self.pending_rows = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self._busy = False
        self.batches = 0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start the worker on the running loop (idempotent)."""
        if self.running:
            return
        self._closing = False
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dlclinic-model")
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def submit(self, x: np.ndarray) -> BatchResult:
        """Queue ``x`` (N rows) and wait for its predictions."""
        if self._closing:
            raise Draining("the server is shutting down")
        if not self.running:
            await self.start()
        n = len(x)
        if self.pending_rows + n > self.max_queue and self.pending_rows > 0:
            raise QueueFull(f"{self.pending_rows} rows queued, limit {self.max_queue}")
        fut: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        self._pending.append(_Item(x, fut, time.perf_counter()))
        self.pending_rows += n
        assert self._wake is not None
        self._wake.set()
        return await fut

    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            oldest = self._pending[0].arrived
            while self._queued_rows_fit() and not self._closing:
                remaining = oldest + self.max_wait - time.perf_counter()
                if remaining <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            items = [self._pending.popleft()]
            rows = len(items[0].x)
            while self._pending and rows + len(self._pending[0].x) <= self.max_batch:
                item = self._pending.popleft()
                items.append(item)
                rows += len(item.x)
            self.pending_rows -= rows
            x = items[0].x if len(items) == 1 else np.concatenate([it.x for it in items])
            started = time.perf_counter()
            self._busy = True
            try:
                probs, emb = await loop.run_in_executor(self._executor, self.predict, x)
            except Exception as exc:
                for it in items:
                    if not it.future.done():
                        it.future.set_exception(exc)
                continue
            finally:
                self._busy = False
            seconds = time.perf_counter() - started
            self.batches += 1
            if self.on_batch is not None:
                self.on_batch(rows, seconds)
            offset = 0
            for it in items:
                k = len(it.x)
                if not it.future.done():
                    it.future.set_result(
                        BatchResult(
                            probs[offset : offset + k],
                            None if emb is None else emb[offset : offset + k],
                            rows,
                            started - it.arrived,
                            seconds,
                        )
                    )
                offset += k

    def _queued_rows_fit(self) -> bool:
        """Whether the queue holds fewer rows than one full batch (worth waiting for more)."""
        return self.pending_rows < self.max_batch

    async def drain(self, timeout: float = 30.0) -> bool:
        """Refuse new requests, finish the queued ones, stop the worker; ``True`` if all finished in time."""
        self._closing = True
        if self._wake is not None:
            self._wake.set()
        done = True
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except asyncio.TimeoutError:
                done = False
                self._task.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        for it in list(self._pending):
            if not it.future.done():
                it.future.set_exception(Draining("the server shut down before this request ran"))
        self._pending.clear()
        self.pending_rows = 0
        return done


def run_load(
    predict: Predict,
    x: np.ndarray,
    *,
    concurrency: int,
    max_batch: int,
    max_wait: float = 0.002,
    requests: int = 200,
    rows_per_request: int = 1,
    time_limit: float = 2.0,
) -> dict[str, Any]:
    """An in-process load test of the batcher: ``concurrency`` clients, fixed request count and time limit.

    Each client sends ``rows_per_request`` rows taken in turn from ``x`` and waits for the
    answer before sending the next. Returns throughput (rows/s and requests/s), latency
    quantiles (ms), mean batch rows and how many requests were sent.
    """

    async def main() -> dict[str, Any]:
        batcher = DynamicBatcher(
            predict, max_batch=max_batch, max_wait=max_wait, max_queue=max(1024, concurrency * rows_per_request * 2)
        )
        await batcher.start()
        latencies: list[float] = []
        sent = 0
        rows_done = 0
        batch_rows: list[int] = []
        deadline = time.perf_counter() + time_limit
        lock = asyncio.Lock()

        async def client(cid: int) -> None:
            nonlocal sent, rows_done
            i = cid
            while True:
                async with lock:
                    if sent >= requests or time.perf_counter() > deadline:
                        return
                    sent += 1
                start = (i * rows_per_request) % max(1, len(x) - rows_per_request + 1)
                xb = x[start : start + rows_per_request]
                t0 = time.perf_counter()
                res = await batcher.submit(xb)
                latencies.append(time.perf_counter() - t0)
                batch_rows.append(res.batch_rows)
                rows_done += len(xb)
                i += concurrency

        t_start = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(concurrency)))
        elapsed = time.perf_counter() - t_start
        await batcher.drain()
        lat = np.array(latencies) * 1000.0
        return {
            "concurrency": concurrency,
            "max_batch": max_batch,
            "requests": len(latencies),
            "rows": rows_done,
            "seconds": elapsed,
            "rows_per_s": rows_done / elapsed if elapsed > 0 else float("nan"),
            "requests_per_s": len(latencies) / elapsed if elapsed > 0 else float("nan"),
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "p95_ms": float(np.percentile(lat, 95)) if len(lat) else float("nan"),
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
            "mean_batch_rows": float(np.mean(batch_rows)) if batch_rows else float("nan"),
        }

    return asyncio.run(main())
