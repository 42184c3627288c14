"""A small continual-learning harness: task sequences, the accuracy matrix, BWT, forgetting.

A *task sequence* is a list of tasks, each a set of train rows and test rows (classes
split into groups — split-MNIST style — or user-given task ids). A model is trained on
the tasks one after the other with a strategy, and after each task its accuracy is
measured on the test rows of every task: ``R[i, j]`` = accuracy on task ``j`` after
training through task ``i``. From it (Lopez-Paz & Ranzato, NeurIPS 2017; Chaudhry et
al., ECCV 2018):

* average accuracy = mean of the last row;
* backward transfer BWT = mean over ``j < T−1`` of ``R[T−1, j] − R[j, j]`` (negative = forgetting);
* forgetting = mean over ``j < T−1`` of ``max_{l<T−1} R[l, j] − R[T−1, j]``.

Strategies: ``naive`` fine-tuning; ``replay`` (experience replay from a reservoir
buffer of ``memory`` samples, Chaudhry et al. 2019 "Tiny episodic memories"); ``ewc``
(online elastic weight consolidation with a diagonal empirical Fisher, Kirkpatrick et
al., PNAS 2017; Schwarz et al. 2018); ``lwf`` (learning without forgetting:
distillation of the previous model's outputs on the new data, Li & Hoiem, TPAMI 2017).

Scenarios (van de Ven & Tolias 2019): ``class`` (one head over all classes, the
realistic case for a single classifier, where regularisation methods are known to
fail and replay works) and ``task`` (the task's classes are known at test time: logits
masked to them).

Written here rather than with Avalanche: dlclinic needs only these four strategies on
in-memory arrays, and Avalanche would add a heavy dependency with its own training loop.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from dlclinic.core import budget
from dlclinic.core.case import usable_inputs
from dlclinic.core.errors import ConfigError, InputError
from dlclinic.core.inference import inference_batch, input_tensor, model_device
from dlclinic.core.recipe import channels_last, seed_everything

__all__ = [
    "ContinualConfig",
    "ContinualResult",
    "STRATEGIES",
    "TaskSequence",
    "continual_metrics",
    "run_task_sequence",
    "split_classes",
    "tasks_from_classes",
    "tasks_from_ids",
]

STRATEGIES = ("naive", "replay", "ewc", "lwf")


def split_classes(classes: Sequence[int], n_tasks: int) -> list[np.ndarray]:
    """Split the class ids (in the given order) into ``n_tasks`` nearly equal consecutive groups.

    Example:
        >>> [g.tolist() for g in split_classes(range(10), 5)]
        [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    """
    cls = np.asarray(list(classes), dtype=np.int64)
    if not 2 <= n_tasks <= len(cls):
        raise ConfigError(
            f"`2 <= n_tasks <= number of classes` must hold, but got n_tasks={n_tasks} with {len(cls)} classes"
        )
    return [g for g in np.array_split(cls, n_tasks)]


@dataclass(frozen=True)
class TaskSequence:
    """Train and test rows of each task; ``classes[t]`` are the classes of task ``t`` (task-incremental masks)."""

    train_rows: tuple[np.ndarray, ...]
    test_rows: tuple[np.ndarray, ...]
    classes: tuple[np.ndarray, ...]
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.train_rows)


def tasks_from_classes(y_train: np.ndarray, y_test: np.ndarray, groups: Sequence[np.ndarray]) -> TaskSequence:
    """One task per class group (split-class sequence)."""
    names = tuple("classes " + ",".join(str(int(c)) for c in g) for g in groups)
    tr = tuple(np.flatnonzero(np.isin(y_train, g)) for g in groups)
    te = tuple(np.flatnonzero(np.isin(y_test, g)) for g in groups)
    for name, a, b in zip(names, tr, te):
        if len(a) == 0 or len(b) == 0:
            raise InputError(f"task {name}: expected train and test rows, found {len(a)} train and {len(b)} test")
    return TaskSequence(tr, te, tuple(np.asarray(g, dtype=np.int64) for g in groups), names)


def tasks_from_ids(train_ids: np.ndarray, test_ids: np.ndarray, y_train: np.ndarray) -> TaskSequence:
    """One task per distinct id (sorted), e.g. user-given task ids or groups (domain-incremental)."""
    order = sorted(set(np.unique(train_ids).tolist()) & set(np.unique(test_ids).tolist()), key=str)
    if len(order) < 2:
        raise InputError(
            f"a task sequence needs at least 2 task ids present in both train and test, found {len(order)}"
        )
    tr = tuple(np.flatnonzero(train_ids == t) for t in order)
    te = tuple(np.flatnonzero(test_ids == t) for t in order)
    classes = tuple(np.unique(y_train[r]) for r in tr)
    return TaskSequence(tr, te, classes, tuple(f"task {t}" for t in order))


@dataclass(frozen=True)
class ContinualConfig:
    """How the sequence is trained. ``memory`` is the replay buffer size in samples."""

    strategy: str = "naive"
    scenario: str = "class"
    epochs: int = 3
    batch_size: int = 64
    lr: float = 0.01
    optimizer: str = "sgd"
    memory: int = 200
    ewc_lambda: float = 100.0
    fisher_samples: int = 200
    lwf_alpha: float = 1.0
    lwf_temperature: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, but got {self.strategy!r}")
        if self.scenario not in ("class", "task"):
            raise ConfigError(f"scenario must be 'class' or 'task', but got {self.scenario!r}")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ConfigError(
                f"expected epochs >= 1, batch_size >= 1, lr > 0, but got {self.epochs}, {self.batch_size}, {self.lr}"
            )
        if self.memory < 0:
            raise ConfigError(f"`memory >= 0` must hold, but got memory={self.memory}")


@dataclass(frozen=True)
class ContinualResult:
    """The accuracy matrix of one run, the per-row correctness behind it, and its summary numbers."""

    matrix: np.ndarray
    average_accuracy: float
    bwt: float
    forgetting: float
    correct: tuple[tuple[np.ndarray, ...], ...] = field(repr=False, default=())

    def bwt_interval(self, *, n_boot: int = 500, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
        """Percentile bootstrap interval of BWT over the test rows of each task (same rows across stages)."""
        t = self.matrix.shape[0]
        if t < 2 or not self.correct:
            return (math.nan, math.nan)
        rng = np.random.default_rng(seed)
        stacks = [
            np.stack([self.correct[i][j] for i in range(t)]).astype(np.float64) for j in range(t)
        ]  # T × n_j per task j
        boots = np.empty(n_boot)
        for b in range(n_boot):
            m = np.empty((t, t))
            for j, s in enumerate(stacks):
                idx = rng.integers(0, s.shape[1], s.shape[1])
                m[:, j] = s[:, idx].mean(1)
            boots[b] = continual_metrics(m)[1]
        low, high = np.percentile(boots, [100 * alpha / 2, 100 * (1 - alpha / 2)])
        return float(low), float(high)


def continual_metrics(matrix: np.ndarray) -> tuple[float, float, float]:
    """``(average accuracy, BWT, forgetting)`` of a T×T accuracy matrix.

    Example:
        >>> continual_metrics(np.array([[0.9, 0.1], [0.5, 0.8]]))
        (0.65, -0.4, 0.4)
    """
    r = np.asarray(matrix, dtype=np.float64)
    t = r.shape[0]
    avg = float(r[-1].mean())
    if t < 2:
        return avg, 0.0, 0.0
    bwt = float(np.mean([r[-1, j] - r[j, j] for j in range(t - 1)]))
    forgetting = float(np.mean([r[: t - 1, j].max() - r[-1, j] for j in range(t - 1)]))
    return round(avg, 12), round(bwt, 12), round(forgetting, 12)


def _masked(logits: Any, classes: np.ndarray | None) -> Any:
    if classes is None:
        return logits
    mask = torch.full_like(logits, float("-inf"))
    mask[:, torch.as_tensor(classes, device=logits.device)] = 0.0
    return logits + mask


def _fisher(model: Any, x: Any, y: Any, classes: np.ndarray | None) -> dict[str, Any]:
    """Diagonal empirical Fisher: mean of squared per-sample log-likelihood gradients (eval mode)."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    was = model.training
    model.eval()
    for i in range(len(x)):
        model.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(_masked(model(x[i : i + 1]), classes), y[i : i + 1])
        loss.backward()
        for n, p in params.items():
            if p.grad is not None:
                fisher[n] += p.grad.detach() ** 2
    model.train(was)
    model.zero_grad(set_to_none=True)
    return {n: f / max(len(x), 1) for n, f in fisher.items()}


def _accuracy_rows(model: Any, x: Any, y: Any, classes: np.ndarray | None) -> np.ndarray:
    model.eval()
    out = []
    step = inference_batch(x.device)
    with torch.no_grad():
        for i in range(0, len(x), step):
            out.append((_masked(model(x[i : i + step]), classes).argmax(1) == y[i : i + step]).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, bool)


@dataclass
class _Run:
    """What carries over from task to task: the model, the data, the generators, the replay buffer, EWC and LwF anchors."""

    model: Any
    cfg: ContinualConfig
    tasks: TaskSequence
    xt: Any
    yt: Any
    task_index: np.ndarray
    rng: np.random.Generator
    gen: Any
    buffer: list[int] = field(default_factory=list)
    seen: int = 0
    fisher: dict[str, Any] | None = None
    anchor: dict[str, Any] | None = None
    old_model: Any = None
    old_classes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def _replay_loss(run: _Run) -> Any:
    """Cross-entropy on a batch drawn from the replay buffer."""
    cfg, model, xt, yt = run.cfg, run.model, run.xt, run.yt
    buffer = run.buffer
    ridx = torch.as_tensor(np.asarray(buffer)[run.rng.integers(0, len(buffer), min(cfg.batch_size, len(buffer)))])
    if cfg.scenario == "task":
        # each replayed row is scored within its own task's classes
        rl = model(xt[ridx])
        task_of = run.task_index[ridx.numpy()]
        parts = [
            nn.functional.cross_entropy(
                _masked(rl[task_of == k], run.tasks.classes[k]), yt[ridx][task_of == k], reduction="sum"
            )
            for k in np.unique(task_of)
        ]
        return sum(parts) / len(ridx)
    return nn.functional.cross_entropy(model(xt[ridx]), yt[ridx])


def _distillation(run: _Run, idx: Any, logits: Any) -> Any:
    """LwF: KL divergence between the previous model's and this model's outputs on the old classes."""
    cfg = run.cfg
    with torch.no_grad():
        old = run.old_model(run.xt[idx])[:, torch.as_tensor(run.old_classes, device=logits.device)]
    new = logits[:, torch.as_tensor(run.old_classes, device=logits.device)]
    temp = cfg.lwf_temperature
    return (
        nn.functional.kl_div(
            nn.functional.log_softmax(new / temp, 1),
            nn.functional.softmax(old / temp, 1),
            reduction="batchmean",
        )
        * temp
        * temp
    )


def _batch_loss(run: _Run, idx: Any, classes: np.ndarray | None) -> Any:
    """The loss of one batch under the strategy: cross-entropy plus replay, EWC or LwF terms."""
    cfg, model = run.cfg, run.model
    logits = model(run.xt[idx])
    loss = nn.functional.cross_entropy(_masked(logits, classes), run.yt[idx])
    if cfg.strategy == "replay" and run.buffer:
        loss = loss + _replay_loss(run)
    if cfg.strategy == "ewc" and run.fisher is not None and run.anchor is not None:
        fisher, anchor = run.fisher, run.anchor
        penalty = sum((fisher[n] * (p - anchor[n]) ** 2).sum() for n, p in model.named_parameters() if n in fisher)
        loss = loss + cfg.ewc_lambda / 2 * penalty
    if cfg.strategy == "lwf" and run.old_model is not None and len(run.old_classes):
        loss = loss + cfg.lwf_alpha * _distillation(run, idx, logits)
    return loss


def _reservoir(run: _Run, rows: np.ndarray) -> None:
    """Reservoir sampling of the task's rows into the replay buffer."""
    for r in rows[run.rng.permutation(len(rows))]:  # reservoir sampling over the stream of samples
        run.seen += 1
        if len(run.buffer) < run.cfg.memory:
            run.buffer.append(int(r))
        else:
            j = int(run.rng.integers(0, run.seen))
            if j < run.cfg.memory:
                run.buffer[j] = int(r)


def _train_task(run: _Run, t: int) -> None:
    """Train through task ``t``, then update the EWC / LwF anchors."""
    cfg, model = run.cfg, run.model
    rows = run.tasks.train_rows[t]
    classes = run.tasks.classes[t] if cfg.scenario == "task" else None
    model.train()
    # a fresh optimizer per task, as in the CL literature; SGD, because Adam's normalised steps
    # kill most ReLU units of the embedding on the large first loss of a new class-incremental task
    opt: Any = (
        torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9)
        if cfg.optimizer == "sgd"
        else torch.optim.Adam(model.parameters(), lr=cfg.lr)
    )
    for epoch in range(cfg.epochs):
        if epoch and budget.expired():  # a time budget: the task trains at least one epoch
            budget.cut(f"continual learning: task {t + 1} trained {epoch} of {cfg.epochs} epochs (time budget)")
            break
        perm = torch.from_numpy(rows)[torch.randperm(len(rows), generator=run.gen)].to(run.xt.device)
        for i in range(0, len(perm), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            if len(idx) < 2:
                continue
            loss = _batch_loss(run, idx, classes)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if epoch == 0 and cfg.strategy == "replay" and cfg.memory > 0:
            _reservoir(run, rows)
    if cfg.strategy == "ewc":
        pick = rows[run.rng.permutation(len(rows))[: cfg.fisher_samples]]
        new_f = _fisher(model, run.xt[torch.from_numpy(pick)], run.yt[torch.from_numpy(pick)], classes)
        run.fisher = new_f if run.fisher is None else {n: run.fisher[n] + new_f[n] for n in new_f}
        run.anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    if cfg.strategy == "lwf":
        run.old_model = copy.deepcopy(model).eval()
        run.old_classes = np.union1d(run.old_classes, run.tasks.classes[t])


def run_task_sequence(
    make_model: Callable[[], Any],
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    tasks: TaskSequence,
    config: ContinualConfig | None = None,
    *,
    progress: Callable[[int], None] | None = None,
) -> ContinualResult:
    """Train a fresh model on the tasks in order with ``config.strategy``; return the accuracy matrix.

    Args:
        make_model: returns a fresh ``nn.Module`` (called once, after seeding).
        x_train, y_train, x_test, y_test: the arrays the task rows index into.
        tasks: the task sequence.
        config: strategy, scenario and budget.
        progress: called with 1 after each task.
    """
    cfg = config or ContinualConfig()
    if len(tasks) < 2:
        raise ConfigError(f"a task sequence needs at least 2 tasks, found {len(tasks)}")
    seed_everything(cfg.seed)
    model = make_model()
    channels_last(model)  # faster convolutions on a CPU; the model is this run's own
    setter = getattr(model, "set_input_stats", None)
    first = usable_inputs(x_train[tasks.train_rows[0]]).reshape(len(tasks.train_rows[0]), -1)
    if callable(setter):
        setter(torch.from_numpy(first.mean(0)), torch.from_numpy(first.std(0)))
    device = model_device(model)  # the data follow the model
    xe = input_tensor(usable_inputs(x_test), device=device)
    ye = torch.from_numpy(np.asarray(y_test, dtype=np.int64)).to(device)
    task_index = np.zeros(len(x_train), dtype=np.int64)
    for k, r in enumerate(tasks.train_rows):
        task_index[r] = k
    run = _Run(
        model=model,
        cfg=cfg,
        tasks=tasks,
        xt=input_tensor(usable_inputs(x_train), device=device),
        yt=torch.from_numpy(np.asarray(y_train, dtype=np.int64)).to(device),
        task_index=task_index,
        rng=np.random.default_rng(cfg.seed),
        gen=torch.Generator().manual_seed(cfg.seed),
    )
    t_count = len(tasks)
    correct: list[list[np.ndarray]] = []
    for t in range(t_count):
        _train_task(run, t)
        stage = []
        for j in range(t_count):
            te = torch.from_numpy(tasks.test_rows[j])
            stage.append(_accuracy_rows(model, xe[te], ye[te], tasks.classes[j] if cfg.scenario == "task" else None))
        correct.append(stage)
        if progress is not None:
            progress(1)
    matrix = np.array([[float(c.mean()) for c in stage] for stage in correct])
    avg, bwt, forgetting = continual_metrics(matrix)
    return ContinualResult(matrix, avg, bwt, forgetting, tuple(tuple(s) for s in correct))
