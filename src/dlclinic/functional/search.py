"""Optuna helpers: short training runs as trials, hyperparameter and width/depth studies, model summaries.

Optuna does the searching (TPE, multi-objective TPE/NSGA-II, median / Hyperband pruning,
SQLite or any SQLAlchemy storage, fANOVA importances). What is written here is the trial:
a seeded AdamW training loop that reports validation accuracy each epoch so pruners can
stop bad trials early (the shared ``remedies.fit`` loop has no per-epoch hook for that).

Narrower versions of *any* prunable architecture come from
:func:`dlclinic.functional.compression.channel_prune` applied to a freshly built
(untrained) model: the same layers with fewer channels, trained from scratch.

Example:
    >>> study = hyperparameter_study(factory, x_tr, y_tr, x_va, y_va, n_trials=8)  # doctest: +SKIP
    >>> study.best_params  # doctest: +SKIP
    {'lr': 0.0031, 'weight_decay': 1.2e-05, 'batch_size': 64}
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dlclinic.core import budget
from dlclinic.core.case import usable_inputs
from dlclinic.core.database import with_driver
from dlclinic.core.inference import eval_mode, first_output, input_tensor, model_input_spec, predict_logits
from dlclinic.core.recipe import channels_last, contiguous, seed_everything
from dlclinic.core.workers import run_tasks
from dlclinic.functional.compression import channel_prune

__all__ = [
    "DEFAULT_SPACE",
    "StudyResult",
    "TrialOutcome",
    "hyperparameter_study",
    "make_study",
    "model_summary",
    "narrower",
    "redundancy",
    "train_eval",
]

#: name → (kind, low, high[, choices]): the default search space over the recipe.
DEFAULT_SPACE: dict[str, tuple[Any, ...]] = {
    "lr": ("float_log", 1e-4, 3e-2),
    "weight_decay": ("float_log", 1e-6, 1e-1),
    "batch_size": ("categorical", (32, 64, 128, 256)),
}


@dataclass(frozen=True)
class TrialOutcome:
    """Validation accuracy of one short training run and the per-row correctness."""

    accuracy: float
    correct: np.ndarray
    epochs_run: int
    seconds: float


def train_eval(
    model: Any,
    x_tr: np.ndarray,
    y_tr: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 64,
    epochs: int = 3,
    seed: int = 0,
    trial: Any = None,
    max_seconds: float | None = None,
    schedule: str = "cosine",
    label_smoothing: float = 0.0,
) -> TrialOutcome:
    """Train ``model`` in place (AdamW, ``schedule`` "cosine" or "constant", cross-entropy with
    ``label_smoothing``, as :func:`dlclinic.core.recipe.fit`) and return its validation accuracy.

    With an Optuna ``trial``, the validation accuracy is reported after every epoch and
    ``optuna.TrialPruned`` is raised when the pruner says so.
    """
    torch.manual_seed(seed)
    setter = getattr(model, "set_input_stats", None)
    if callable(setter):
        flat = torch.from_numpy(usable_inputs(x_tr.reshape(len(x_tr), -1)))
        setter(flat.mean(0), flat.std(0))
    device = model_input_spec(model)[1]
    xt = input_tensor(x_tr, device=device)
    yt = torch.from_numpy(np.asarray(y_tr, dtype=np.int64)).to(device)
    channels_last(model)  # faster on CPU; put back below
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, foreach=True)
    steps = max(1, epochs * math.ceil(len(x_tr) / batch_size))
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', but got {schedule!r}")
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        if schedule == "cosine"
        else torch.optim.lr_scheduler.LambdaLR(opt, lambda _s: 1.0)
    )
    gen = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    correct = np.zeros(len(y_val), dtype=bool)
    run = 0
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x_tr), generator=gen).to(device)
        for i in range(0, len(perm), batch_size):
            idx = perm[i : i + batch_size]
            if len(idx) < 2:
                continue
            loss = F.cross_entropy(model(xt[idx]), yt[idx], label_smoothing=label_smoothing)
            if not torch.isfinite(loss):
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        run = epoch + 1
        over = (max_seconds is not None and time.perf_counter() - started > max_seconds) or budget.expired()
        if trial is None and run < epochs and not over:
            continue  # nothing to report to: only the final weights are scored
        correct = predict_logits(model, x_val).argmax(1) == y_val
        if trial is not None:
            trial.report(float(correct.mean()), epoch)
            if trial.should_prune():
                import optuna

                raise optuna.TrialPruned()
        if max_seconds is not None and time.perf_counter() - started > max_seconds:
            break
        if budget.expired():
            budget.cut(f"a search trial stopped by the time budget after {run} of {epochs} epochs")
            break
    contiguous(model)
    return TrialOutcome(float(correct.mean()), correct, run, time.perf_counter() - started)


def make_study(
    *,
    storage: str | None = None,
    study_name: str | None = None,
    directions: Sequence[str] = ("maximize",),
    pruner: str = "median",
    seed: int = 0,
    load_if_exists: bool = True,
) -> Any:
    """An Optuna study: TPE (multi-objective TPE for several directions) and the named pruner.

    Args:
        storage: ``None`` (in memory), ``sqlite:///path.db`` or any SQLAlchemy URL
            (``postgresql://user@host/db`` for many workers).
        pruner: ``"median"``, ``"hyperband"`` or ``"none"``.
        load_if_exists: Resume the study of the same name in ``storage``.
    """
    import optuna

    storage = with_driver(storage) if storage else storage
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruners = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3),
        "none": optuna.pruners.NopPruner,
    }
    if pruner not in pruners:
        raise ValueError(f"pruner={pruner!r}: expected one of {sorted(pruners)}")
    sampler = (
        optuna.samplers.TPESampler(seed=seed, multivariate=True)
        if len(directions) == 1
        else optuna.samplers.TPESampler(seed=seed)
    )
    return optuna.create_study(
        storage=storage,
        study_name=study_name,
        directions=list(directions),  # type: ignore[arg-type]
        sampler=sampler,
        pruner=pruners[pruner](),
        load_if_exists=load_if_exists,
    )  # type: ignore[arg-type]


def _suggest(trial: Any, space: Mapping[str, tuple[Any, ...]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, spec in space.items():
        kind = spec[0]
        if kind == "float_log":
            out[name] = trial.suggest_float(name, float(spec[1]), float(spec[2]), log=True)
        elif kind == "float":
            out[name] = trial.suggest_float(name, float(spec[1]), float(spec[2]))
        elif kind == "int":
            out[name] = trial.suggest_int(name, int(spec[1]), int(spec[2]))
        elif kind == "categorical":
            out[name] = trial.suggest_categorical(name, list(spec[1]))
        else:
            raise ValueError(f"search space {name!r}: kind {kind!r}; expected float_log, float, int or categorical")
    return out


def _including(space: dict[str, tuple[Any, ...]], base: Mapping[str, Any]) -> dict[str, tuple[Any, ...]]:
    """Widen the space so the current recipe's values lie inside it (its trial is enqueued first)."""
    out = dict(space)
    for name, spec in space.items():
        if name not in base:
            continue
        value = base[name]
        if spec[0] in ("float_log", "float", "int"):
            out[name] = (spec[0], min(spec[1], value), max(spec[2], value))
        elif spec[0] == "categorical" and value not in spec[1]:
            out[name] = (spec[0], tuple(sorted((*spec[1], value))))
    return out


@dataclass(frozen=True)
class StudyResult:
    """What a hyperparameter study found, with the current recipe's trial as reference."""

    best_params: dict[str, Any]
    best_accuracy: float
    baseline_params: dict[str, Any]
    baseline_accuracy: float
    gain: float
    gain_ci: tuple[float, float]
    importances: dict[str, float]
    n_trials: int
    n_pruned: int
    trials: list[dict[str, Any]] = field(default_factory=list)
    study_name: str = ""
    storage: str | None = None
    discordant: tuple[int, int] | None = (
        None  # validation rows only the best / only the current recipe gets right; None when resumed
    )


def _paired_gain(best: np.ndarray, base: np.ndarray) -> tuple[float, tuple[float, float]]:
    d = best.astype(np.float64) - base.astype(np.float64)
    mean = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0
    return mean, (mean - 1.96 * se, mean + 1.96 * se)


def _compare(
    best: Any, base_trial: Any, outcomes: Mapping[int, np.ndarray]
) -> tuple[float, tuple[float, float], tuple[int, int] | None]:
    """Gain of the best trial over the current recipe's, its paired 95 % CI and the discordant row counts.

    A resumed study has no per-row outcomes for its old trials: the gain is then the
    difference of the accuracies, with no CI and no discordant counts.
    """
    if best.number in outcomes and base_trial.number in outcomes:
        gain, ci = _paired_gain(outcomes[best.number], outcomes[base_trial.number])
        b, a = outcomes[best.number].astype(bool), outcomes[base_trial.number].astype(bool)
        return gain, ci, (int(np.sum(b & ~a)), int(np.sum(a & ~b)))
    return float(best.value - base_trial.value), (float("nan"), float("nan")), None


def _importances(study: Any, n_done: int, seed: int) -> dict[str, float]:
    """fANOVA parameter importances (empty under 3 completed trials or when fANOVA fails)."""
    import optuna

    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
        return (
            {k: float(v) for k, v in optuna.importance.get_param_importances(study, evaluator=evaluator).items()}
            if n_done >= 3
            else {}
        )
    except Exception:
        return {}


def _study_result(
    study: Any,
    outcomes: Mapping[int, np.ndarray],
    base_params: dict[str, Any],
    *,
    seed: int,
    study_name: str,
    storage: str | None,
) -> StudyResult:
    """The best completed trial against the current recipe's trial, with importances and every trial."""
    import optuna

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise RuntimeError("no trial completed within the budget; raise n_trials/timeout")
    best = max(done, key=lambda t: t.value)
    base_trial = next((t for t in done if t.params == base_params), done[0])
    gain, ci, discordant = _compare(best, base_trial, outcomes)
    importances = _importances(study, len(done), seed)
    trials = [{"number": t.number, "state": t.state.name, "value": t.value, **t.params} for t in study.trials]
    return StudyResult(
        best_params=dict(best.params),
        best_accuracy=float(best.value),
        baseline_params=base_params,
        baseline_accuracy=float(base_trial.value),
        gain=gain,
        gain_ci=ci,
        importances=importances,
        n_trials=len(study.trials),
        n_pruned=sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
        trials=trials,
        study_name=study_name,
        storage=storage,
        discordant=discordant,
    )


def _add_trial(
    study: Any,
    space: Mapping[str, tuple[Any, ...]],
    params: Mapping[str, Any],
    outcome: TrialOutcome,
    outcomes: dict[int, np.ndarray],
) -> int:
    """Add a run measured outside the study as a completed trial; 1."""
    import optuna

    dists: dict[str, Any] = {}
    for name, spec in space.items():
        if name not in params:
            continue
        if spec[0] == "categorical":
            dists[name] = optuna.distributions.CategoricalDistribution(list(spec[1]))
        elif spec[0] == "int":
            dists[name] = optuna.distributions.IntDistribution(int(spec[1]), int(spec[2]))
        else:
            dists[name] = optuna.distributions.FloatDistribution(
                float(spec[1]), float(spec[2]), log=spec[0] == "float_log"
            )
    study.add_trial(optuna.trial.create_trial(params=dict(params), distributions=dists, value=outcome.accuracy))
    outcomes[study.trials[-1].number] = outcome.correct
    return 1


def _shares(n_trials: int, workers: int) -> list[tuple[int, int]]:
    """``(worker, trials)`` for each worker with at least one trial: the budget split as evenly as it goes."""
    return [(w, n_trials // workers + (w < n_trials % workers)) for w in range(workers) if w < n_trials]


def _run_trials(
    study: Any,
    objective: Callable[[Any], tuple[float, np.ndarray]],
    n_trials: int,
    timeout: float | None,
    report: Callable[[int], None] | None,
) -> dict[int, np.ndarray]:
    """``n_trials`` of ``objective`` on ``study`` in this process; each trial's per-row outcome by number."""
    mine: dict[int, np.ndarray] = {}

    def run(trial: Any) -> float:
        accuracy, mine[trial.number] = objective(trial)
        if report is not None:
            report(trial.number)
        return accuracy

    study.optimize(run, n_trials=n_trials, timeout=timeout, catch=(RuntimeError, ValueError))
    return mine


def _optimize(
    study: Any,
    reopen: Callable[[int], Any],
    objective: Callable[[Any], tuple[float, np.ndarray]],
    n_trials: int,
    *,
    workers: int,
    timeout: float | None,
    progress: Callable[[int], None] | None,
    outcomes: dict[int, np.ndarray],
) -> None:
    """Run ``n_trials`` of ``objective`` on ``study`` here, or split over ``workers`` processes that each
    ``reopen(worker)`` the study from its shared storage; the per-row outcomes land in ``outcomes``.

    This is Optuna's distributed optimisation (one study, one storage, many workers) on forked
    processes (:func:`dlclinic.core.workers.run_tasks`); each worker's sampler is seeded
    ``seed + worker`` (by ``reopen``) so that the workers do not propose the same recipe.
    """
    if workers <= 1:
        outcomes.update(_run_trials(study, objective, n_trials, timeout, progress))
        return
    if n_trials > 0 and any(t.state.name == "WAITING" for t in study.trials):
        # the enqueued current recipe runs here first: SQLite cannot stop two workers popping one waiting trial
        outcomes.update(_run_trials(study, objective, 1, timeout, progress))
        n_trials -= 1

    def arrived(_i: int, mine: dict[int, np.ndarray]) -> None:
        outcomes.update(mine)
        if progress is not None:
            for number in mine:
                progress(number)

    threads = max(1, torch.get_num_threads() // workers)
    run_tasks(
        _shares(max(n_trials, 0), workers),
        lambda task: _run_trials(reopen(task[0]), objective, task[1], timeout, None),  # no drawing from a fork
        workers=workers,
        on_result=arrived,
        setup=lambda: torch.set_num_threads(threads),
    )


def hyperparameter_study(
    factory: Callable[[], Any],
    x_tr: np.ndarray,
    y_tr: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    baseline: Mapping[str, Any] | None = None,
    space: Mapping[str, tuple[Any, ...]] | None = None,
    n_trials: int = 20,
    timeout: float | None = None,
    trial_seconds: float | None = None,
    epochs: int = 3,
    schedule: str = "cosine",
    label_smoothing: float = 0.0,
    storage: str | None = None,
    study_name: str = "dlclinic-hyperparameters",
    pruner: str = "median",
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    baseline_outcome: TrialOutcome | None = None,
    workers: int = 1,
) -> StudyResult:
    """Tune the recipe of ``factory()`` models on a validation split with Optuna.

    The first trial is the current recipe (``baseline``: lr, weight_decay, batch_size), so
    the gain is measured against it on the same validation rows (paired 95 % CI). The
    study resumes when ``storage`` already holds ``study_name``. ``timeout`` bounds the
    study (checked between trials), ``trial_seconds`` each trial's training. Every trial
    starts from the same initial weights (``factory()`` after seeding with ``seed``), so
    trials differ by their recipe only; ``baseline_outcome``, the current recipe's run
    measured elsewhere on the same rows from the same start, is added as that trial.

    ``workers > 1``: processes that share the study in ``storage`` (SQLite file or
    ``postgresql://…``), see :func:`_optimize`; each trial records its ``worker_pid``.
    """
    if workers > 1 and not storage:
        raise ValueError(f"workers={workers}: expected a shared storage (sqlite:///… or postgresql://…), found none")
    base = {"lr": 2e-3, "weight_decay": 1e-4, "batch_size": 64, **dict(baseline or {})}
    space = _including(dict(space or DEFAULT_SPACE), base)
    study = make_study(storage=storage, study_name=study_name, pruner=pruner, seed=seed)
    base_params = {k: base[k] for k in space if k in base}
    outcomes: dict[int, np.ndarray] = {}
    if not any(t.params == base_params for t in study.trials):
        if baseline_outcome is not None:
            n_trials -= _add_trial(study, space, base_params, baseline_outcome, outcomes)
        else:
            study.enqueue_trial(base_params, skip_if_exists=True)

    def objective(trial: Any) -> tuple[float, np.ndarray]:
        params = {**base, **_suggest(trial, space)}
        trial.set_user_attr("worker_pid", os.getpid())
        seed_everything(seed)  # the same initial weights in every trial
        out = train_eval(
            factory(),
            x_tr,
            y_tr,
            x_val,
            y_val,
            lr=float(params["lr"]),
            weight_decay=float(params["weight_decay"]),
            batch_size=int(params["batch_size"]),
            epochs=int(params.get("epochs", epochs)),
            seed=seed,
            trial=trial,
            max_seconds=trial_seconds,
            schedule=schedule,
            label_smoothing=label_smoothing,
        )
        return out.accuracy, out.correct

    def reopen(worker: int) -> Any:
        return make_study(storage=storage, study_name=study_name, pruner=pruner, seed=seed + worker)

    _optimize(
        study, reopen, objective, n_trials, workers=workers, timeout=timeout, progress=progress, outcomes=outcomes
    )
    if workers > 1:  # the trials of every worker, as the storage holds them
        study = make_study(storage=storage, study_name=study_name, pruner=pruner, seed=seed)
    return _study_result(study, outcomes, base_params, seed=seed, study_name=study_name, storage=storage)


def narrower(factory: Callable[[], Any], keep_ratio: float, sample_x: np.ndarray) -> Any:
    """A fresh, untrained model of the factory's architecture at ``keep_ratio`` of its channels."""
    model = factory()
    if keep_ratio >= 1.0:
        return model
    pruned, _ = channel_prune(model, keep_ratio, sample_x)
    for module in pruned.modules():  # re-draw weights: a narrower net trained from scratch
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    return pruned.train()


def model_summary(model: Any, sample_x: np.ndarray) -> dict[str, Any]:
    """Layers (leaf modules with parameters and output shapes), parameter count and FLOPs per sample.

    FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (matmul/conv counted as
    2 FLOPs per multiply-add) on one input.
    """
    from torch.utils.flop_counter import FlopCounterMode

    dtype, _ = model_input_spec(model)
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, module in model.named_modules():
        if name and not list(module.children()):
            handles.append(
                module.register_forward_hook(
                    lambda _m, _i, out, name=name: (
                        shapes.__setitem__(name, tuple(out.shape)) if isinstance(out, torch.Tensor) else None
                    )
                )
            )
    xb = input_tensor(sample_x[:1], dtype, model_input_spec(model)[1])
    try:
        with eval_mode(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
            first_output(model(xb))
        flops = int(counter.get_total_flops())
    finally:
        for h in handles:
            h.remove()
    layers = []
    for name, module in model.named_modules():
        if name and not list(module.children()):
            n = sum(p.numel() for p in module.parameters(recurse=False))
            layers.append(
                {"name": name, "type": type(module).__name__, "params": int(n), "output": list(shapes.get(name, ()))}
            )
    total = int(sum(p.numel() for p in model.parameters()))
    return {
        "layers": layers,
        "n_params": total,
        "flops": flops,
        "n_layers_with_params": sum(1 for layer in layers if layer["params"] > 0),
    }


def redundancy(model: Any, x: np.ndarray) -> list[dict[str, Any]]:
    """Per layer: effective rank of the weights and the share of dead activation channels.

    * Effective rank (Roy & Vetterli, 2007): ``exp(entropy(σ / Σσ))`` of the singular
      values of the weight matrix (``out × in·k·k``), relative to ``min(out, in·k·k)``; a
      low ratio means the layer could be factorised or narrowed.
    * Dead channels: output channels of each ReLU-family activation that are zero for
      every one of the inputs ``x`` (channels = dim 1).
    """
    rows: list[dict[str, Any]] = []
    for name, module in model.named_modules():
        w = getattr(module, "weight", None)
        if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear)) and w is not None:
            mat = w.detach().float().reshape(w.shape[0], -1)
            sv = torch.linalg.svdvals(mat)
            p = sv / sv.sum() if float(sv.sum()) > 0 else sv
            p = p[p > 0]
            erank = float(torch.exp(-(p * p.log()).sum())) if len(p) else 0.0
            rows.append(
                {"layer": name, "kind": "weights", "effective_rank": erank, "rank_ratio": erank / min(mat.shape)}
            )
    dead: dict[str, Any] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.ReLU, torch.nn.ReLU6, torch.nn.Hardtanh)):

            def hook(_m: Any, _i: Any, out: Any, name: str = name) -> None:
                if isinstance(out, torch.Tensor) and out.dim() >= 2:
                    alive = (out.detach().reshape(out.shape[0], out.shape[1], -1) > 0).any(2).any(0)
                    dead[name] = alive if name not in dead else (dead[name] | alive)

            handles.append(module.register_forward_hook(hook))
    dtype, device = model_input_spec(model)
    try:
        with eval_mode(model), torch.no_grad():
            model(input_tensor(x, dtype, device))
    finally:
        for h in handles:
            h.remove()
    for name, alive in dead.items():
        rows.append(
            {
                "layer": name,
                "kind": "activations",
                "dead_fraction": float(1 - alive.float().mean()),
                "channels": int(alive.numel()),
            }
        )
    return rows
