"""Inference latency, throughput and peak memory of a model on one backend.

Method (stated in every :class:`LatencyStats`): ``warmup`` untimed calls, then ``repeats``
timed calls of ``time.perf_counter`` around one forward pass of a fixed batch (of real
inputs), stopping early at ``max_seconds``. Percentiles are numpy's default linear
interpolation between order statistics (Hyndman–Fan type 7) of the per-call times; with
``n`` calls the p99 rests on the slowest ``n/100`` calls, so it is reported only with the
number of calls behind it, together with a distribution-free lower confidence bound
(:func:`quantile_lower_bound`: an order statistic chosen with the binomial distribution),
which is what a verdict "the p99 exceeds a budget" should rest on. Thread settings (torch intra-op threads, onnxruntime
intra-op threads) are recorded because they change latency more than most optimisations.

Backends are plain callables ``f(batch: np.ndarray) -> anything`` built by
:func:`torch_runner`, :func:`compiled_runner` and :func:`dlclinic.export.onnx_variants.onnx_runner`, so any runtime can be
measured the same way. Timing is hand-written (no library measures ONNX Runtime and torch
with one protocol); ``torch.utils.benchmark`` is torch-only.

Example:
    >>> stats = measure_latency(torch_runner(model), x[:1])  # doctest: +SKIP
    >>> stats.p50_ms, stats.p99_ms  # doctest: +SKIP
    (0.41, 0.73)
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import binom
from torch.profiler import ProfilerActivity, profile

from dlclinic.core.errors import brief
from dlclinic.core.inference import input_tensor, model_input_spec
from dlclinic.core.threads import thread_settings, torch_threads

try:  # per-thread rusage (context switches) exists on Linux only
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]

__all__ = [
    "LatencyStats",
    "PERCENTILE_METHOD",
    "ThroughputResult",
    "compiled_runner",
    "measure_interleaved",
    "measure_latency",
    "measure_throughput",
    "peak_inference_memory",
    "quantile_lower_bound",
    "thread_settings",
    "torch_runner",
    "torch_threads",
]

PERCENTILE_METHOD = "numpy linear interpolation of per-call wall times (Hyndman-Fan type 7), after warm-up"

Runner = Callable[[np.ndarray], Any]


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency of one backend at one batch size (milliseconds)."""

    backend: str
    batch_size: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    n_calls: int
    warmup: int
    threads: int
    cold_ms: float
    method: str = PERCENTILE_METHOD
    p99_low_ms: float = float("nan")  # lower 95 % confidence bound of the p99 (quantile_lower_bound)
    p99_all_ms: float = float("nan")  # p99 of every timed call, preempted ones included (measure_interleaved)
    preempted_share: float = float("nan")  # share of timed calls the OS preempted (NaN: not measurable here)

    @property
    def throughput(self) -> float:
        """Samples per second at the median latency."""
        return self.batch_size / (self.p50_ms / 1e3) if self.p50_ms > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["throughput"] = self.throughput
        return out


@dataclass(frozen=True)
class ThroughputResult:
    """Samples per second at each batch size tried, and the best one."""

    backend: str
    batch_sizes: tuple[int, ...]
    throughput: tuple[float, ...]
    best_batch_size: int
    best_throughput: float


def quantile_lower_bound(times: Sequence[float] | np.ndarray, q: float = 0.99, alpha: float = 0.05) -> float:
    """Distribution-free lower ``1 − alpha`` confidence bound of the ``q``-quantile of ``times``.

    It is the ``k``-th smallest value with ``k`` the largest rank such that
    ``P(Binomial(n, q) ≥ k) ≥ 1 − alpha`` (the number of calls at or below the true quantile
    is Binomial(n, q)), so ``bound > budget`` says "significantly more than ``1 − q`` of the
    calls were slower than the budget" with a false-alarm rate ≤ ``alpha`` for any latency
    distribution (independent calls). A p99 estimated from a few hundred calls rests on
    its two or three slowest calls, one scheduler preemption each on a shared machine.

    Example:
        >>> quantile_lower_bound(np.arange(1, 1001, dtype=float), 0.99)  # p99 ≈ 990
        985.0
    """
    x = np.sort(np.asarray(times, dtype=np.float64))
    n = len(x)
    if n == 0:
        return float("nan")
    ranks = np.arange(1, n + 1)
    ok = np.flatnonzero(binom.sf(ranks - 1, n, q) >= 1 - alpha)
    return float(x[ok[-1]]) if len(ok) else float(x[0])


def measure_latency(
    run: Runner,
    batch: np.ndarray,
    *,
    backend: str = "",
    warmup: int = 10,
    repeats: int = 100,
    max_seconds: float = 2.0,
    threads: int | None = None,
) -> LatencyStats:
    """Time ``repeats`` calls of ``run(batch)`` after ``warmup`` untimed ones.

    The first (cold) call is timed separately (``cold_ms``): it includes lazy
    initialisation, which a real-time service pays once per process or worker.

    Args:
        run: A backend callable (see :func:`torch_runner`, :func:`dlclinic.export.onnx_variants.onnx_runner`).
        batch: One batch of real inputs.
        warmup: Untimed calls before measuring (the cold call counts as one).
        repeats: Timed calls (fewer if ``max_seconds`` runs out, at least 5).
        max_seconds: Time budget of the timed calls.
        threads: Threads used by the backend, for the record (default: torch's).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"`repeats >= 1 and warmup >= 0` must hold, but got ({repeats=}, {warmup=})")
    t0 = time.perf_counter()
    run(batch)
    cold = (time.perf_counter() - t0) * 1e3
    for _ in range(max(warmup - 1, 0)):
        run(batch)
    times: list[float] = []
    deadline = time.perf_counter() + max_seconds
    for i in range(repeats):
        t = time.perf_counter()
        run(batch)
        times.append((time.perf_counter() - t) * 1e3)
        if i >= 2 and time.perf_counter() > deadline:
            break
    arr = np.asarray(times)
    p50, p95, p99 = (float(v) for v in np.percentile(arr, [50, 95, 99]))
    return LatencyStats(
        backend=backend,
        batch_size=int(len(batch)),
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        mean_ms=float(arr.mean()),
        min_ms=float(arr.min()),
        n_calls=int(len(arr)),
        warmup=int(warmup),
        threads=int(threads if threads is not None else thread_settings().get("torch_intra_op_threads", 1)),
        cold_ms=float(cold),
        p99_low_ms=quantile_lower_bound(arr, 0.99),
    )


def measure_interleaved(
    runners: dict[str, Runner],
    batch: np.ndarray,
    *,
    warmup: int = 5,
    rounds: int = 10,
    calls_per_round: int = 5,
    max_seconds: float = 3.0,
    threads: int | None = None,
    alpha: float = 0.05,
) -> dict[str, LatencyStats]:
    """Latency of several backends measured in interleaved rounds (round-robin).

    Background load on a shared machine drifts over seconds; timing backends one after
    the other would charge that drift to whichever ran during it. Interleaving spreads it
    evenly, so the comparison between backends stays fair. Each round runs one untimed
    call of every backend (the first call after switching backends runs on caches the
    other backend evicted: timing it put one cold call in every ``calls_per_round`` and
    raised the p95/p99 of a 0.1 ms model by a quarter) and then ``calls_per_round`` timed
    calls; rounds stop at ``max_seconds`` (at least 2 rounds). ``p99_low_ms`` is the
    lower ``1 − alpha`` confidence bound of each p99.

    Preemption: on Linux each timed call also reads the timing thread's involuntary
    context switches (``getrusage(RUSAGE_THREAD)``, outside the timed window). A call
    during which the OS switched the thread out for another process waited for that
    process's time slice (about 4 ms here), which says nothing about the model: with a
    few percent of such calls on a loaded machine the p99 jumped between 0.2 and 4.3 ms
    from one run to the next. The percentiles are therefore computed on the calls that
    were not preempted, as long as they are at least half of the calls (a model slower
    than a time slice is preempted in most calls; then every call counts);
    ``preempted_share`` and ``p99_all_ms`` (every call) report what was set aside.
    Preemptions of other threads (intra-op workers) are not seen.
    """
    names = list(runners)
    cold: dict[str, float] = {}
    for name in names:
        t0 = time.perf_counter()
        runners[name](batch)
        cold[name] = (time.perf_counter() - t0) * 1e3
        for _ in range(max(warmup - 1, 0)):
            runners[name](batch)
    times: dict[str, list[float]] = {n: [] for n in names}
    hit: dict[str, list[bool]] = {n: [] for n in names}
    switches = _involuntary_switches()
    deadline = time.perf_counter() + max_seconds
    for r in range(rounds):
        for name in names:
            run = runners[name]
            run(batch)  # untimed: re-warm this backend's caches after the previous backend
            for _ in range(calls_per_round):
                before = switches() if switches is not None else 0
                t = time.perf_counter()
                run(batch)
                times[name].append((time.perf_counter() - t) * 1e3)
                hit[name].append(switches is not None and switches() != before)
        if r >= 1 and time.perf_counter() > deadline:
            break
    n_threads = int(threads if threads is not None else thread_settings().get("torch_intra_op_threads", 1))
    return {
        name: _interleaved_stats(
            name,
            times[name],
            hit[name],
            int(len(batch)),
            int(warmup),
            n_threads,
            cold[name],
            alpha,
            switches is not None,
        )
        for name in names
    }


def _interleaved_stats(
    name: str,
    times: list[float],
    hit: list[bool],
    batch_size: int,
    warmup: int,
    n_threads: int,
    cold_ms: float,
    alpha: float,
    seen: bool,
) -> LatencyStats:
    """One backend's stats from :func:`measure_interleaved`: on the calls not preempted while they are at least half."""
    every = np.asarray(times)
    preempted = np.asarray(hit, dtype=bool)
    steady = every[~preempted]
    arr = steady if len(steady) >= max(20, 0.5 * len(every)) else every
    p50, p95, p99 = (float(v) for v in np.percentile(arr, [50, 95, 99]))
    how = "; backends interleaved round-robin, one untimed call per backend and round" + (
        "; calls preempted by the OS excluded" if arr is steady else ""
    )
    return LatencyStats(
        name,
        batch_size,
        p50,
        p95,
        p99,
        float(arr.mean()),
        float(arr.min()),
        int(len(arr)),
        warmup,
        n_threads,
        cold_ms,
        PERCENTILE_METHOD + how,
        p99_low_ms=quantile_lower_bound(arr, 0.99, alpha),
        p99_all_ms=float(np.percentile(every, 99)),
        preempted_share=float(preempted.mean()) if seen else float("nan"),
    )


def _involuntary_switches() -> Callable[[], int] | None:
    """A reader of the calling thread's involuntary context-switch count (Linux), or ``None``."""
    if resource is None:
        return None
    try:
        who = resource.RUSAGE_THREAD  # type: ignore[attr-defined]
        resource.getrusage(who)
    except (AttributeError, OSError, ValueError):
        return None
    return lambda: int(resource.getrusage(who).ru_nivcsw)


def measure_throughput(
    run: Runner,
    x: np.ndarray,
    *,
    backend: str = "",
    batch_sizes: Sequence[int] = (1, 8, 32, 128),
    warmup: int = 3,
    repeats: int = 20,
    max_seconds: float = 0.5,
    threads: int | None = None,
) -> tuple[ThroughputResult, list[LatencyStats]]:
    """Throughput (samples/s at the median latency) at each batch size; the best one.

    Batch sizes larger than ``len(x)`` are skipped, and so are the remaining ones once
    ``max_seconds`` × (number of sizes) is spent (the result lists only those measured).
    """
    sizes = [int(b) for b in batch_sizes if 1 <= int(b) <= len(x)] or [len(x)]
    end = time.perf_counter() + max_seconds * len(sizes)
    stats: list[LatencyStats] = []
    for b in sizes:  # later (larger) batch sizes are skipped once the whole budget is spent
        if stats and time.perf_counter() > end:
            break
        stats.append(
            measure_latency(
                run, x[:b], backend=backend, warmup=warmup, repeats=repeats, max_seconds=max_seconds, threads=threads
            )
        )
    sizes = sizes[: len(stats)]
    tput = [s.throughput for s in stats]
    best = int(np.argmax(tput))
    return ThroughputResult(backend, tuple(sizes), tuple(float(t) for t in tput), sizes[best], float(tput[best])), stats


def torch_runner(model: Any, *, dtype: Any = None) -> Runner:
    """A callable running ``model`` in eval mode under ``inference_mode`` on CPU numpy batches.

    Args:
        model: A ``torch.nn.Module``; its first floating parameter's dtype is used for the
            inputs unless ``dtype`` is given.
    """
    in_dtype = dtype or model_input_spec(model)[0]
    device = model_input_spec(model)[1]
    try:
        model.eval()
    except (NotImplementedError, AttributeError, RuntimeError):
        pass

    def run(batch: np.ndarray) -> Any:
        with torch.inference_mode():
            return model(input_tensor(batch, in_dtype, device))

    return run


def compiled_runner(model: Any, sample: np.ndarray, *, mode: str | None = None) -> tuple[Runner | None, str]:
    """``(runner, note)`` for ``torch.compile(model)``, or ``(None, reason)`` when unavailable.

    Compilation happens on the first call, here, on ``sample`` (a dynamic batch is not
    requested, so each new batch size recompiles: time the sizes you will serve).
    The note gives the compile time.
    """
    if not hasattr(torch, "compile"):
        return None, "torch.compile is not available in this torch build"
    if shutil.which("cc") is None and shutil.which("gcc") is None and shutil.which("clang") is None:
        return None, "torch.compile needs a C/C++ compiler (inductor) and none was found on PATH"
    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)
    logging.getLogger("torch._inductor").setLevel(logging.ERROR)
    try:
        compiled = torch.compile(copy.deepcopy(model).eval(), mode=mode)
        run = torch_runner(compiled, dtype=_dtype_of(model))
        t0 = time.perf_counter()
        run(sample)
        seconds = time.perf_counter() - t0
    except Exception as exc:
        return None, f"torch.compile failed ({brief(exc)})"
    return run, f"compiled in {seconds:.1f} s (inductor, mode={mode or 'default'})"


def _dtype_of(model: Any) -> Any:
    return model_input_spec(model)[0]


def peak_inference_memory(model: Any, batch: np.ndarray) -> dict[str, float]:
    """Peak memory of one forward pass on ``batch`` (bytes): weights + peak live activations.

    Activations are measured with the PyTorch profiler (``profile_memory=True``): every
    allocation and free of the forward pass in time order; their running sum's maximum is
    the peak of live activation memory. Weights are the parameter and buffer bytes.
    Returns ``{"weights_bytes", "activations_peak_bytes", "peak_bytes", "method"}`` (the
    method as a code: 1 = profiler, 0 = fallback from layer output sizes, when the
    profiler records nothing).
    """

    weights = float(
        sum(p.numel() * p.element_size() for p in model.parameters())
        + sum(b.numel() * b.element_size() for b in model.buffers())
    )
    run = torch_runner(model)
    peak = 0.0
    method = 1.0
    try:
        with _stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            run(batch)  # kineto prints profiler_start/stop lines on fd 2 from C++
        steps = []
        for event in prof.events():
            if event.name == "[memory]":
                steps.append((event.time_range.start, float(event.cpu_memory_usage)))
            elif event.self_cpu_memory_usage > 0:
                steps.append((event.time_range.start, float(event.self_cpu_memory_usage)))
        if steps:
            steps.sort(key=lambda s: s[0])
            peak = float(max(0.0, np.max(np.cumsum([s[1] for s in steps]))))
    except Exception:
        peak = 0.0
    if peak <= 0:
        method = 0.0
        peak = _activation_bytes_by_hooks(model, batch)
    return {"weights_bytes": weights, "activations_peak_bytes": peak, "peak_bytes": weights + peak, "method": method}


def _activation_bytes_by_hooks(model: Any, batch: np.ndarray) -> float:
    """Fallback: the two largest consecutive layer outputs (input + output alive at once)."""
    sizes: list[int] = []
    handles = []
    for module in model.modules():
        if not list(module.children()):
            handles.append(
                module.register_forward_hook(
                    lambda _m, _i, out: sizes.append(
                        out.numel() * out.element_size() if isinstance(out, torch.Tensor) else 0
                    )
                )
            )
    try:
        torch_runner(model)(batch)
    finally:
        for h in handles:
            h.remove()
    if not sizes:
        return 0.0
    pairs = [sizes[i] + sizes[i + 1] for i in range(len(sizes) - 1)] or sizes
    return float(max(pairs))


@contextmanager
def _stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for the block (C++ libraries print there directly)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (e.g. some notebook kernels): nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
