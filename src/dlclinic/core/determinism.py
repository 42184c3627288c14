"""Deterministic mode, seeded data loading, and tools to find where nondeterminism comes from.

* :func:`deterministic_mode` — a context manager that turns on
  ``torch.use_deterministic_algorithms``, ``cudnn.deterministic`` (and off
  ``cudnn.benchmark``), sets ``CUBLAS_WORKSPACE_CONFIG`` (required by cuBLAS for
  deterministic GEMMs on CUDA ≥ 10.2) and optionally seeds every RNG; on exit it restores
  all of it — flags, environment variable and RNG states — as it found them.
* :func:`seed_worker` / :func:`loader_kwargs` — the PyTorch "Reproducibility" recipe for
  ``DataLoader``: a seeded ``generator`` for shuffling and a ``worker_init_fn`` that seeds
  numpy and ``random`` in each worker from its torch seed.
* :func:`compare_state_dicts` — bit-level comparison of two trained models: the first
  differing tensor, how many differ, the largest difference.
* :func:`trace_unseeded_generators` — records every call that creates or reseeds a
  random generator from OS entropy (``np.random.default_rng()``, ``random.Random()``,
  ``np.random.seed()``, ``torch.seed()`` …) with its call site, so a nondeterministic
  recipe can be pointed at the line that causes it.

Seeding itself is :func:`dlclinic.core.recipe.seed_everything`.
"""

from __future__ import annotations

import os
import random
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dlclinic.core.recipe import seed_everything

__all__ = [
    "StateDiff",
    "UnseededCall",
    "compare_state_dicts",
    "determinism_state",
    "deterministic_mode",
    "loader_kwargs",
    "seed_worker",
    "trace_unseeded_generators",
]

CUBLAS_VALUE = ":4096:8"


def determinism_state() -> dict[str, Any]:
    """The flags a result's reproducibility depends on (for manifests and reports)."""
    return {
        "deterministic_algorithms": bool(torch.are_deterministic_algorithms_enabled()),
        "deterministic_warn_only": bool(torch.is_deterministic_algorithms_warn_only_enabled()),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED"),
        "torch_threads": int(torch.get_num_threads()),
    }


@contextmanager
def deterministic_mode(seed: int | None = None, *, warn_only: bool = False) -> Iterator[None]:
    """Run the block with deterministic algorithms (and seeded RNGs when ``seed`` is given).

    Everything is restored on exit, also after an exception: the deterministic flags,
    the cuDNN flags, ``CUBLAS_WORKSPACE_CONFIG`` and — when ``seed`` is given — the states
    of Python's ``random``, numpy's global RNG and torch's CPU/CUDA generators.

    Example:
        >>> import torch
        >>> with deterministic_mode(0):
        ...     a = torch.rand(2)
        >>> torch.are_deterministic_algorithms_enabled()
        False
    """
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    saved_env = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    rng_states: tuple[Any, ...] | None = None
    if seed is not None:
        rng_states = (
            random.getstate(),
            np.random.get_state(),
            torch.get_rng_state(),
            torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        )
    try:
        if saved_env is None:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_VALUE
        torch.use_deterministic_algorithms(True, warn_only=warn_only)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        if seed is not None:
            seed_everything(seed)
            if torch.cuda.is_available():
                torch.cuda.manual_seed_all(seed)
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic = saved[2]
        torch.backends.cudnn.benchmark = saved[3]
        if saved_env is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved_env
        if rng_states is not None:
            random.setstate(rng_states[0])
            np.random.set_state(rng_states[1])
            torch.set_rng_state(rng_states[2])
            if rng_states[3] is not None:
                torch.cuda.set_rng_state_all(rng_states[3])


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` for ``DataLoader``: seed numpy and ``random`` from the worker's torch seed."""
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def loader_kwargs(seed: int) -> dict[str, Any]:
    """``DataLoader(..., **loader_kwargs(seed))``: a seeded shuffling generator and seeded workers."""
    return {"generator": torch.Generator().manual_seed(int(seed)), "worker_init_fn": seed_worker}


@dataclass(frozen=True)
class StateDiff:
    """Bit-level comparison of two state dicts (``first``: the first differing tensor in order)."""

    identical: bool
    n_tensors: int
    n_differing: int
    first: str | None
    max_abs_diff: float
    differing: tuple[str, ...] = field(default=())
    missing: tuple[str, ...] = field(default=())


def compare_state_dicts(a: Mapping[str, Any], b: Mapping[str, Any]) -> StateDiff:
    """Compare two ``state_dict()`` mappings bit for bit (dtype, shape and bytes), in ``a``'s order.

    Example:
        >>> import torch
        >>> compare_state_dicts({"w": torch.ones(2)}, {"w": torch.tensor([1.0, 1.5])}).first
        'w'
    """
    differing: list[str] = []
    missing = tuple(sorted(set(a) ^ set(b)))
    max_diff = 0.0
    for name, ta in a.items():
        if name not in b:
            continue
        tb = b[name]
        ta_, tb_ = ta.detach().cpu(), tb.detach().cpu()
        if ta_.dtype != tb_.dtype or ta_.shape != tb_.shape:
            differing.append(name)
            max_diff = float("inf")
            continue
        if ta_.numel() == 0:
            continue
        if not torch.equal(ta_.contiguous().view(-1).view(torch.uint8), tb_.contiguous().view(-1).view(torch.uint8)):
            differing.append(name)
            if ta_.is_floating_point():
                max_diff = max(max_diff, float((ta_.double() - tb_.double()).abs().max()))
            else:
                max_diff = max(max_diff, float((ta_.long() - tb_.long()).abs().max()))
    return StateDiff(
        not differing and not missing,
        len(a),
        len(differing),
        differing[0] if differing else (missing[0] if missing else None),
        max_diff,
        tuple(differing),
        missing,
    )


@dataclass(frozen=True)
class UnseededCall:
    """A generator created or reseeded from OS entropy, and where (``file:line in function``)."""

    what: str
    site: str


def _call_site() -> str:
    """The first stack frame outside this module, numpy, torch and the standard library."""
    here = os.path.abspath(__file__)
    skip = (here, os.sep + "numpy" + os.sep, os.sep + "torch" + os.sep, os.path.dirname(os.__file__))
    for frame in reversed(traceback.extract_stack()[:-2]):
        path = os.path.abspath(frame.filename)
        if not any(s in path for s in skip[1:]) and path != here:
            return f"{frame.filename}:{frame.lineno} in {frame.name}"
    return "unknown"


@contextmanager
def trace_unseeded_generators() -> Iterator[list[UnseededCall]]:
    """Record, for the block, each random generator created or reseeded without a seed.

    Wraps ``numpy.random.default_rng``, ``numpy.random.RandomState``,
    ``numpy.random.seed``, ``random.Random``, ``random.seed``, ``torch.seed`` and
    ``torch.Generator.seed`` for the duration of the block (restored afterwards, also on
    error); calls with an explicit seed pass through unrecorded. Code that bound these
    names before the block (``from numpy.random import default_rng``) is not seen.

    Example:
        >>> with trace_unseeded_generators() as calls:
        ...     _ = np.random.default_rng()
        >>> calls[0].what
        'numpy.random.default_rng()'
    """
    calls: list[UnseededCall] = []
    patches: list[tuple[Any, str, Any]] = []

    def patch(owner: Any, name: str, label: str, unseeded: Any) -> None:
        original = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if unseeded(args, kwargs):
                calls.append(UnseededCall(label, _call_site()))
            return original(*args, **kwargs)

        patches.append((owner, name, original))
        setattr(owner, name, wrapper)

    def no_seed(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        value = args[0] if args else kwargs.get("seed", kwargs.get("a"))
        return value is None

    class _TracedGenerator(torch.Generator):
        def seed(self) -> int:  # type: ignore[override]
            calls.append(UnseededCall("torch.Generator().seed()", _call_site()))
            return super().seed()

    class _TracedRandomState(np.random.RandomState):
        def __init__(self, seed: Any = None) -> None:
            if seed is None:
                calls.append(UnseededCall("numpy.random.RandomState()", _call_site()))
            super().__init__(seed)

    class _TracedRandom(random.Random):
        def __init__(self, x: Any = None) -> None:
            if x is None:
                calls.append(UnseededCall("random.Random()", _call_site()))
            super().__init__(x)

    try:
        patch(np.random, "default_rng", "numpy.random.default_rng()", no_seed)
        patch(np.random, "seed", "numpy.random.seed()", no_seed)
        patch(random, "seed", "random.seed()", no_seed)
        patches.append((np.random, "RandomState", np.random.RandomState))
        np.random.RandomState = _TracedRandomState  # type: ignore[misc]
        patches.append((random, "Random", random.Random))
        random.Random = _TracedRandom  # type: ignore[misc]
        patch(torch, "seed", "torch.seed()", lambda a, k: True)
        patches.append((torch, "Generator", torch.Generator))
        torch.Generator = _TracedGenerator  # type: ignore[misc]
        yield calls
    finally:
        for owner, name, original in reversed(patches):
            setattr(owner, name, original)
