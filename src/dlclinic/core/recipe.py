"""A plain, seeded training loop: the recipe every remedy uses to retrain.

Deliberately small (nanoGPT style): AdamW, a cosine or constant LR schedule, mini-batches,
early stopping on a held-out validation slice with best-checkpoint restore, optional
per-sample weights. It returns a new trained module and its per-epoch history; the
module given is never modified (it is deep-copied first).

Under ``torchrun`` with several processes (:mod:`dlclinic.core.distributed`) the same loop
runs with ``DistributedDataParallel``: every rank draws the same global mini-batches and
trains on its strided share of each, with the loss scaled so that the averaged gradient is
the single-process gradient of the whole batch; the step count, the LR schedule and early
stopping (on all-reduced validation sums) are those of one process. One process takes
exactly the single-process path (no wrapper, no extra draws).

``FitConfig.device`` puts the trained copy on that device (default: where the model given
already is) and ``FitConfig.precision`` trains under ``torch.autocast`` (``bf16``; ``fp16``
with a ``GradScaler`` on CUDA): :mod:`dlclinic.core.device`.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import math
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Protocol, TypeVar

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dlclinic.core import budget, distributed
from dlclinic.core.case import usable_inputs
from dlclinic.core.device import PRECISIONS, autocast, check_precision, resolve_device
from dlclinic.core.errors import ConfigError
from dlclinic.core.inference import channels_last, contiguous, inference_batch, input_tensor, model_input_spec

__all__ = [
    "FitConfig",
    "FitMonitor",
    "FitResult",
    "annealed_within",
    "channels_last",
    "contiguous",
    "epochs_recorded",
    "fit",
    "patience_at_most",
    "prepare_inputs",
    "seed_everything",
    "warm_up",
]


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA) RNGs."""

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@dataclass(frozen=True)
class FitConfig:
    """Training recipe. All fields are plain values so the recipe can be hashed and recorded."""

    epochs: int = 15
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # "cosine" | "constant"
    val_fraction: float = 0.1
    patience: int = 4
    seed: int = 0
    label_smoothing: float = 0.0
    device: str | None = None  # "cpu", "cuda:0", ...; None: where the model given to fit already is
    precision: str = "fp32"  # "fp32" | "bf16" | "fp16" (mixed precision, dlclinic.core.device)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"`epochs >= 1` must hold, but got epochs={self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"`batch_size >= 1` must hold, but got batch_size={self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"`lr > 0` must hold, but got lr={self.lr}")
        if not 0.0 <= self.val_fraction < 0.5:
            raise ConfigError(f"`0 <= val_fraction < 0.5` must hold, but got val_fraction={self.val_fraction}")
        if self.schedule not in ("cosine", "constant"):
            raise ConfigError(f"schedule must be 'cosine' or 'constant', but got {self.schedule!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, but got {self.precision!r}")

    def to_dict(self) -> dict[str, object]:
        """The recipe as plain values; ``device`` and ``precision`` only when not the defaults
        (so that recipe fingerprints, and the caches they key, are those of earlier versions)."""
        out = asdict(self)
        if self.device is None:
            del out["device"]
        if self.precision == "fp32":
            del out["precision"]
        return out


_V = TypeVar("_V")
_PATIENCE_CAP: contextvars.ContextVar[int | None] = contextvars.ContextVar("dlclinic_patience_cap", default=None)


@contextlib.contextmanager
def _set_within(var: contextvars.ContextVar[_V], value: _V) -> Iterator[None]:
    """``var`` set to ``value`` within, and back to what it was after (also when the body raises)."""
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


@contextlib.contextmanager
def patience_at_most(patience: int) -> Iterator[None]:
    """Within: every :func:`fit` stops after at most ``patience`` epochs without improvement.

    For trainings whose caller holds only an opaque ``retrain(x, y, seed)`` (the K-fold
    out-of-fold models that stop early: :func:`dlclinic.core.evidence.fold_result`), so it cannot hand
    :func:`fit` another recipe. Such a model keeps its best checkpoint anyway; a shorter
    wait only gives up later, rarer improvements for the epochs they cost.
    """
    if patience < 1:
        raise ConfigError(f"`patience >= 1` must hold, but got patience={patience}")
    with _set_within(_PATIENCE_CAP, patience):
        yield


_HORIZON: contextvars.ContextVar[int | None] = contextvars.ContextVar("dlclinic_horizon", default=None)
_EPOCHS_LOG: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("dlclinic_epochs_log", default=None)


@contextlib.contextmanager
def annealed_within(epochs: int) -> Iterator[None]:
    """Within: every :func:`fit` trains on all its rows for at most ``epochs`` epochs, with the
    LR annealed to zero over them (cosine), and keeps its last weights.

    No rows are held out and nothing stops early: the length of the run is known beforehand,
    and a schedule that ends at zero within the run it is given trains better in that run
    than the recipe's longer schedule cut short (Li, Yumer & Ramanan, "Budgeted Training",
    ICLR 2020). For trainings whose caller holds only an opaque ``retrain(x, y, seed)`` and has
    learnt the length from earlier ones (the K-fold models after the first
    ``FOLD_PROBES``: :func:`dlclinic.core.evidence.train_folds`).
    """
    if epochs < 1:
        raise ConfigError(f"`epochs >= 1` must hold, but got epochs={epochs}")
    with _set_within(_HORIZON, epochs):
        yield


@contextlib.contextmanager
def epochs_recorded() -> Iterator[list[int]]:
    """Within: every :func:`fit` appends the number of epochs it trained to the list yielded.

    Example:
        >>> from dlclinic.core.baselines import MLP
        >>> x = np.random.rand(64, 4).astype("float32"); y = (x[:, 0] > .5).astype(int)
        >>> with epochs_recorded() as ran:
        ...     _ = fit(MLP(4, 2), x, y, FitConfig(epochs=3))
        >>> ran
        [3]
    """
    log: list[int] = []
    with _set_within(_EPOCHS_LOG, log):
        yield log


class FitMonitor(Protocol):
    """What :func:`fit` calls on an optional monitor (``dlclinic.training.TrainingMonitor`` is one)."""

    def on_fit_start(self, model: nn.Module) -> None: ...

    def on_step(self, loss: torch.Tensor) -> None: ...

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> None: ...

    def on_fit_end(self) -> None: ...


@dataclass(frozen=True)
class FitResult:
    """A trained copy of the model and what happened during training."""

    model: nn.Module
    history: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int = 0
    stopped_early: bool = False


def prepare_inputs(model: nn.Module, x: np.ndarray) -> None:
    """Give models with ``set_input_stats`` (the baseline MLP) the training-set statistics."""
    setter = getattr(model, "set_input_stats", None)
    if callable(setter):
        flat = torch.from_numpy(usable_inputs(x.reshape(len(x), -1)).astype(np.float64))  # float32 sums overflow
        setter(flat.mean(0), flat.std(0))


def warm_up() -> None:
    """Build an optimizer once: torch imports its compiler stack (~2 s) at the first one.

    Called before worker processes fork, so they inherit it instead of each importing it again.
    """
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    batch_size = inference_batch(x.device)
    model.eval()
    total_loss, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            logits = model(x[i : i + batch_size])
            total_loss += float(nn.functional.cross_entropy(logits, y[i : i + batch_size], reduction="sum"))
            correct += int((logits.argmax(1) == y[i : i + batch_size]).sum())
    return total_loss / max(len(x), 1), correct / max(len(x), 1)


def fit(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    config: FitConfig | None = None,
    *,
    sample_weight: np.ndarray | None = None,
    progress: Callable[[int, int], None] | None = None,
    monitor: FitMonitor | None = None,
) -> FitResult:
    """Train a deep copy of ``model`` on ``(x, y)`` and return it with its history.

    Args:
        model: the architecture to train (left untouched; a copy is trained).
        x: inputs, N×… float32.
        y: integer labels, N.
        config: the recipe; defaults to :class:`FitConfig()`.
        sample_weight: optional per-sample loss weights (class weighting, reweighting).
        progress: called as ``progress(epoch, epochs)`` after each epoch.
        monitor: optional :class:`FitMonitor` (e.g. ``dlclinic.training.TrainingMonitor``):
            ``on_fit_start(net)`` with the copy being trained, ``on_step(loss)`` after each
            optimizer step, ``on_epoch_end(epoch, metrics)``, and ``on_fit_end()`` always,
            also when training raises.

    Example:
        >>> from dlclinic.core.baselines import MLP
        >>> x = np.random.rand(64, 4).astype("float32"); y = (x[:, 0] > .5).astype(int)
        >>> fit(MLP(4, 2), x, y, FitConfig(epochs=2)).history["train_loss"][0] > 0
        True
    """
    cfg = _as_the_context_says(config or FitConfig())
    if len(x) != len(y):
        raise ConfigError(f"x has {len(x)} rows but y has {len(y)}; expected equal lengths")
    seed_everything(cfg.seed)
    net = copy.deepcopy(model)
    prepare_inputs(net, x)
    if cfg.device is not None:
        net.to(resolve_device(cfg.device))
    device = model_input_spec(net)[1]
    check_precision(cfg.precision, device)
    channels_last(net)
    gen = np.random.default_rng(cfg.seed)
    n = len(x)
    order = gen.permutation(n)
    n_val = int(round(cfg.val_fraction * n)) if cfg.val_fraction > 0 and n >= 20 else 0
    val_idx, tr_idx = order[:n_val], order[n_val:]
    xt = input_tensor(x, device=device)
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64)).to(device)
    wt = torch.from_numpy(np.asarray(sample_weight, dtype=np.float32)).to(device) if sample_weight is not None else None
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    steps_per_epoch = max(1, math.ceil(len(tr_idx) / cfg.batch_size))
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        (lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
        if cfg.schedule == "cosine"
        else (lambda s: 1.0),
    )
    history: dict[str, list[float]] = {"train_loss": [], "train_acc": [], "val_loss": [], "val_acc": [], "lr": []}
    torch_gen = torch.Generator().manual_seed(cfg.seed)
    if monitor is not None:
        monitor.on_fit_start(net)
    # several processes: gradients averaged by DDP; `net` stays the module whose weights are saved
    train_net: nn.Module = DistributedDataParallel(net) if distributed.active() else net
    try:
        best_state, best_epoch, stopped = _train_epochs(
            train_net, net, cfg, opt, sched, (xt, yt, wt), tr_idx, val_idx, history, torch_gen, progress, monitor
        )
    finally:
        if monitor is not None:
            monitor.on_fit_end()
    if best_state is not None:
        net.load_state_dict(best_state)
    else:
        best_epoch = len(history["train_loss"]) - 1
    contiguous(net).eval()
    if (log := _EPOCHS_LOG.get()) is not None:  # inside epochs_recorded
        log.append(len(history["train_loss"]))
    return FitResult(model=net, history=history, best_epoch=best_epoch, stopped_early=stopped)


def _as_the_context_says(cfg: FitConfig) -> FitConfig:
    """The recipe, as an enclosing :func:`patience_at_most` or :func:`annealed_within` changes it."""
    cap = _PATIENCE_CAP.get()
    if cap is not None and cap < cfg.patience:
        cfg = replace(cfg, patience=cap)
    horizon = _HORIZON.get()
    if horizon is not None:
        cfg = replace(cfg, epochs=min(cfg.epochs, horizon), val_fraction=0.0, schedule="cosine")
    return cfg


def _batch_loss(
    losses: torch.Tensor, wt: torch.Tensor | None, idx: torch.Tensor, part: torch.Tensor, world: int
) -> torch.Tensor:
    """The loss of this rank's ``part`` of the global batch ``idx``.

    One process: the (weighted) mean over the batch, as always. Several: this rank's sum over
    the whole batch's weight (or size), times ``world`` — DDP averages the gradients over the
    ranks, so their mean is exactly the gradient of the single-process batch loss.
    """
    if world == 1:
        return (losses * wt[idx]).sum() / wt[idx].sum() if wt is not None else losses.mean()
    total = wt[idx].sum() if wt is not None else torch.tensor(float(len(idx)))
    mine = (losses * wt[part]).sum() if wt is not None else losses.sum()
    return mine / total * world


def _step(opt: torch.optim.Optimizer, loss: torch.Tensor, scaler: torch.amp.GradScaler | None) -> None:
    """Backward and one optimizer step; through ``scaler`` (fp16 mixed precision) when there is one."""
    opt.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        opt.step()
        return
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()


def _val_metrics(net: nn.Module, xt: torch.Tensor, yt: torch.Tensor, val_idx: np.ndarray) -> tuple[float, float]:
    """Validation loss and accuracy; with several processes each rank scores a strided share and the sums are all-reduced."""
    world = distributed.world_size()
    if world == 1:
        return _evaluate(net, xt[val_idx], yt[val_idx])
    part = val_idx[distributed.rank() :: world]
    loss, acc = _evaluate(net, xt[part], yt[part])
    loss_sum, correct = distributed.all_sum([loss * len(part), acc * len(part)])
    return loss_sum / len(val_idx), correct / len(val_idx)


# long: the epoch loop, kept whole so the order of the steps reads top to bottom
def _train_epochs(
    train_net: nn.Module,
    net: nn.Module,
    cfg: FitConfig,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    tr_idx: np.ndarray,
    val_idx: np.ndarray,
    history: dict[str, list[float]],
    torch_gen: torch.Generator,
    progress: Callable[[int, int], None] | None,
    monitor: FitMonitor | None,
) -> tuple[dict[str, torch.Tensor] | None, int, bool]:
    """The epoch loop of :func:`fit`: returns ``(best_state, best_epoch, stopped_early)``.

    ``train_net`` is ``net`` itself, or its ``DistributedDataParallel`` wrapper under torchrun.
    """
    xt, yt, wt = data
    world, rank = distributed.world_size(), distributed.rank()
    # fp16 gradients underflow without loss scaling; bf16 has float32's range and needs none
    scaler = torch.amp.GradScaler(xt.device.type) if cfg.precision == "fp16" else None
    best_state: dict[str, torch.Tensor] | None = None
    best_val, best_epoch, bad_epochs, stopped, steps = math.inf, 0, 0, False, 0
    for epoch in range(cfg.epochs):
        train_net.train()
        perm = torch.from_numpy(tr_idx)[torch.randperm(len(tr_idx), generator=torch_gen)].to(xt.device)
        loss_sum, correct, seen = 0.0, 0, 0
        out_of_time = False
        for i in range(0, len(perm), cfg.batch_size):
            # one process only (no rank may stop alone under torchrun); at least one batch, so the epoch has a history
            if world == 1 and seen and budget.stop_training(steps):
                out_of_time = True
                break
            steps += 1
            idx = perm[i : i + cfg.batch_size]
            if len(idx) < 2 * world and len(perm) > 2 * world:
                continue  # a batch of one (per rank) breaks BatchNorm
            part = idx[rank::world] if world > 1 else idx
            with autocast(cfg.precision, xt.device.type):
                logits = train_net(xt[part])
                losses = nn.functional.cross_entropy(
                    logits, yt[part], reduction="none", label_smoothing=cfg.label_smoothing
                )
            loss = _batch_loss(losses.float(), wt, idx, part, world)
            _step(opt, loss, scaler)
            sched.step()
            if monitor is not None:
                monitor.on_step(loss)
            loss_sum += float(losses.detach().sum())
            correct += int((logits.detach().argmax(1) == yt[part]).sum())
            seen += len(part)
        if world > 1:
            loss_sum, correct_sum, seen_sum = distributed.all_sum([loss_sum, correct, seen])
            correct, seen = int(correct_sum), int(seen_sum)
        history["train_loss"].append(loss_sum / max(seen, 1))
        history["train_acc"].append(correct / max(seen, 1))
        history["lr"].append(float(opt.param_groups[0]["lr"]))
        distributed.broadcast_buffers(net)  # several processes: rank 0's BatchNorm statistics for everyone
        if len(val_idx):
            with autocast(cfg.precision, xt.device.type):
                vl, va = _val_metrics(net, xt, yt, val_idx)
            history["val_loss"].append(vl)
            history["val_acc"].append(va)
            if vl < best_val - 1e-4:
                best_val, best_epoch, bad_epochs = vl, epoch, 0
                best_state = copy.deepcopy(net.state_dict())
            else:
                bad_epochs += 1
        if monitor is not None:
            monitor.on_epoch_end(epoch, {k: v[-1] for k, v in history.items() if v})
        if progress is not None:
            progress(epoch + 1, cfg.epochs)
        if out_of_time:
            budget.cut(f"training stopped by the time budget in epoch {epoch + 1} of {cfg.epochs}")
            budget.training_ended(steps, True)
            return best_state, best_epoch, True
        if len(val_idx) and bad_epochs >= cfg.patience:
            stopped = True
            break
    budget.training_ended(steps, False)
    return best_state, best_epoch, stopped
