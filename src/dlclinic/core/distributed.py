"""Running under ``torchrun``: the process group, which rows are this rank's, and gathering them back.

``torchrun --nproc-per-node N -m dlclinic.cli …`` (or ``dlclinic treat … --nproc N``, which
launches it) starts N copies of the same program. They run *the same steps in the same order*
(SPMD), so that every collective call lines up:

* :func:`dlclinic.core.recipe.fit` trains with ``DistributedDataParallel``: each rank takes its
  share of every global mini-batch, the gradients are averaged, every rank ends with the same
  weights;
* the evidence pass scores each rank's contiguous run of batches and :func:`gather_rows` puts
  the arrays back in row order on every rank (a remedy running on every rank reads them);
* the K folds of out-of-fold probabilities are split over the ranks (fold ``k`` on rank
  ``k mod N``; the first ``FOLD_PROBES`` before the others: :func:`dlclinic.core.evidence.train_folds`)
  and gathered;
* the checks and the report run on rank 0 only, inside :func:`local`; the results are
  :func:`broadcast` so the ranks continue in step.

Everything here is a no-op without torchrun (``WORLD_SIZE`` unset or 1): one process behaves
exactly as before. The group is joined lazily, the first time :func:`active` is asked, by the
process that imported this module; a process forked from it (``dlclinic.core.workers``) never
takes part, it is always "single".
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as _dt
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from dlclinic.core.errors import ConfigError

__all__ = [
    "active",
    "agree",
    "all_sum",
    "backend",
    "broadcast",
    "broadcast_buffers",
    "broadcast_weights",
    "gather_objects",
    "gather_rows",
    "info",
    "is_main",
    "launched",
    "local",
    "per_rank",
    "rank",
    "shard_bounds",
    "world_size",
]

_OWNER = os.getpid()  # only this process joins the group; forked workers stay single
_local_depth = 0  # > 0 inside `local()`: this process works alone for now
_TIMEOUT = _dt.timedelta(hours=12)  # ranks > 0 wait at a broadcast while rank 0 runs the checks


def launched() -> int:
    """The world size torchrun announced in ``WORLD_SIZE`` (1 without torchrun); a bad value is a one-line error."""
    text = os.environ.get("WORLD_SIZE", "").strip()
    if not text:
        return 1
    try:
        size = int(text)
    except ValueError:
        raise ConfigError(f"WORLD_SIZE must be a whole number >= 1, but got {text!r}") from None
    if size < 1:
        raise ConfigError(f"WORLD_SIZE must be a whole number >= 1, but got {size}")
    return size


def backend() -> str:
    """``gloo`` on CPU; ``cpu:gloo,cuda:nccl`` with CUDA, so CPU tensors (fit, the gathers) still use gloo."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def _join() -> None:
    """Join the process group torchrun set up (``MASTER_ADDR``/``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``)."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if torch.cuda.is_available() and local_rank < torch.cuda.device_count():  # more ranks than GPUs: CPU work only
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend(), timeout=_TIMEOUT)
    atexit.register(_leave)


def _leave() -> None:
    """At exit: wait for the other ranks, then leave the group. A rank that tore its gloo
    connections down while the other was still sending aborted now and then ("terminate called
    without an active exception", exit code -6) although all its work was done."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if os.getpid() == _OWNER:  # not in a forked worker, which never joined
        try:
            dist.barrier()
        except Exception:  # a rank already gone: leave anyway
            pass
    dist.destroy_process_group()


def active() -> bool:
    """Whether collective calls are due now: under torchrun with more than one process, in the
    process that joined (not a forked worker), outside :func:`local`. Joins the group on first use."""
    if _local_depth or os.getpid() != _OWNER or launched() <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        _join()
    return True


def world_size() -> int:
    """Processes taking part in collective calls now (1 when not :func:`active`)."""
    return dist.get_world_size() if active() else 1


def rank() -> int:
    """This process's rank (0 when not :func:`active`)."""
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """Whether this process writes files and reports: rank 0, or any process outside torchrun.

    Unlike :func:`rank`, it stays false on ranks > 0 inside :func:`local` and in their forked workers.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return launched() <= 1 or int(os.environ.get("RANK", "0") or 0) == 0


@contextlib.contextmanager
def local() -> Iterator[None]:
    """For the duration, this process works alone: :func:`active` is false, ``fit`` trains without DDP.

    Used for work that only some ranks do (the checks on rank 0, one fold of the K-fold) or that
    each rank repeats on its own (tasks on forked workers)."""
    global _local_depth
    _local_depth += 1
    try:
        yield
    finally:
        _local_depth -= 1


def info() -> dict[str, Any]:
    """What the report records: ``world_size`` and, under torchrun, the ``distributed_backend``."""
    if not active():
        return {"world_size": 1}
    return {"world_size": dist.get_world_size(), "distributed_backend": str(dist.get_backend())}


def shard_bounds(n: int) -> tuple[int, int]:
    """This rank's contiguous ``[lo, hi)`` of ``n`` items: the first ``n mod world`` ranks take one more.

    Deterministic (it depends on ``n``, the rank and the world size only); ``(0, n)`` when single.
    """
    size, r = world_size(), rank()
    base, extra = divmod(n, size)
    lo = r * base + min(r, extra)
    return lo, lo + base + (1 if r < extra else 0)


def gather_rows(part: np.ndarray) -> np.ndarray:
    """Every rank's ``part`` (its rows, in rank order) concatenated, on every rank; ``part`` itself when single.

    Padded tensors through ``all_gather`` (one copy of the data, no pickling). Parts may differ in
    length; a rank without rows may pass any empty array (the others give the row shape and dtype).
    """
    if not active():
        return part
    metas = gather_objects((len(part), part.shape[1:], part.dtype.str))
    filled = [m for m in metas if m[0] > 0]
    if not filled:
        return part
    _, tail, dtype = filled[0]
    longest = max(m[0] for m in metas)
    padded = np.zeros((longest, *tail), dtype=np.dtype(dtype))
    if len(part):
        padded[: len(part)] = part
    parts = [torch.empty_like(torch.from_numpy(padded)) for _ in metas]
    dist.all_gather(parts, torch.from_numpy(padded))
    return np.concatenate([p.numpy()[:n] for p, (n, _, _) in zip(parts, metas)])


def per_rank(workers: int) -> int:
    """Worker processes for each rank when the ranks of one node share its CPUs (``LOCAL_WORLD_SIZE``)."""
    if not active():
        return workers
    return max(1, workers // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)))


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable, small), in rank order, on every rank; ``[obj]`` when single."""
    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled); ``obj`` itself when single."""
    if not active():
        return obj
    box = [obj if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def agree(flag: bool) -> bool:
    """Whether ``flag`` holds on every rank (``flag`` when single).

    A decision that leads to collective work (a cache hit skips a sharded pass) must be the same
    on every rank: a cache that only some ranks see (one node's disk) is treated as a miss.
    """
    if not active():
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int64)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def all_sum(values: list[float]) -> list[float]:
    """The element-wise sum of ``values`` over the ranks, on every rank (``values`` when single)."""
    if not active():
        return values
    total = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(total)
    return [float(v) for v in total]


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) copied into ``module`` on every rank, in place.

    DDP copies them from rank 0 at the start of each forward pass, then each rank updates its own
    with its share of the batch: before a model is evaluated or kept, rank 0's are made everyone's.
    """
    if active():
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)


def broadcast_weights(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers copied into ``module`` on every rank, in place.

    For a model each rank trained alone (DP-SGD): the sharded evidence pass needs the same
    weights on every rank.
    """
    if active():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)
