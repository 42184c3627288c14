"""The checkup: prepare the model, compute shared evidence once, run the checks, assemble the report."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime as _dt
import functools
import importlib
import logging
import os
import platform
import tempfile
import time
import traceback
import typing
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from dlclinic.challenges import CHECKS, PENDING, get_remedy
from dlclinic.core import distributed
from dlclinic.core.atomic import atomic_path
from dlclinic.core.baselines import baseline_for
from dlclinic.core.budget import Scheduler, parse_budget
from dlclinic.core.budget import window as budget_window
from dlclinic.core.case import Case, usable_inputs
from dlclinic.core.device import check_precision, device_info, move_model, resolve_device, use_precision
from dlclinic.core.errors import ConfigError, DlclinicError, missing_extra
from dlclinic.core.evidence import (
    Evidence,
    EvidenceConfig,
    FoldResult,
    FoldTask,
    default_cache_dir,
    kfold_rows,
    train_folds,
)
from dlclinic.core.fingerprint import fingerprint_array, fingerprint_model, fingerprint_params
from dlclinic.core.inference import check_label_range, model_input_spec, predict_logits
from dlclinic.core.progress import NullProgress, Progress, note, relayed
from dlclinic.core.recipe import FitConfig, fit, seed_everything, warm_up
from dlclinic.core.registry import CheckSpec, RemedySpec, TreatContext, build_options
from dlclinic.core.results import CheckResult, Report, not_examined, sequence_of_results, with_case_args
from dlclinic.core.sampling import stratified_rows
from dlclinic.core.threads import native_threads, torch_threads
from dlclinic.core.version import __version__
from dlclinic.core.workers import (
    can_fork,
    default_workers,
    release_freed_memory,
    release_mapped_pages,
    run_tasks,
    threads_survive_fork,
)
from dlclinic.taxonomy import CHALLENGES, resolve_ids

__all__ = [
    "check_options",
    "checkup",
    "environment_info",
    "prepare_model",
    "remedy_params",
    "retrainer",
    "treat",
]

_R = TypeVar("_R")


def environment_info() -> dict[str, Any]:
    """Versions and hardware that a result depends on."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "cuda_available": bool(torch.cuda.is_available()),
    }
    for mod in ("sklearn", "scipy", "cleanlab"):
        try:
            info[mod] = importlib.import_module(mod).__version__
        except Exception:  # pragma: no cover - optional
            info[mod] = None
    return info


def _factory_for(case: Case) -> Callable[[], Any] | None:
    if case.model_factory is not None:
        return case.model_factory
    if case.model is None:
        return lambda: baseline_for(case.input_shape, case.n_classes, case.modality, case.vocab_size)
    return None


def retrainer(case: Case, fit_config: Any = None) -> tuple[Callable[[np.ndarray, np.ndarray, int], Any] | None, str]:
    """``(retrain, recipe_id)``: ``retrain(x, y, seed) -> model`` with the case's recipe, or ``None`` without a factory.

    ``recipe_id`` fingerprints the architecture and the fit config, for cache keys.
    """
    factory = _factory_for(case)
    if factory is None:
        return None, ""
    cfg = fit_config or FitConfig()

    def retrain(x: np.ndarray, y: np.ndarray, seed: int) -> Any:
        seed_everything(seed)  # the initial weights are part of the recipe
        return fit(factory(), x, y, dataclasses.replace(cfg, seed=seed)).model

    # the case's model is an instance of the factory's architecture: no need to build another one
    if hasattr(case.model, "state_dict"):
        arch = repr(case.model)
    else:
        seed_everything(cfg.seed)
        arch = repr(factory())
    recipe = fingerprint_params({"arch": arch, "fit": cfg.to_dict()})
    return retrain, recipe


def _with_baseline(case: Case, model: Any, source: str, factory: Callable[[], Any]) -> Case:
    return dataclasses.replace(
        case,
        model=model,
        model_source=source,
        model_factory=factory,
        metadata={**case.metadata, "dlclinic_baseline": True},
    )


def _load_cached(model: Any, path: Path) -> bool:
    """Load cached baseline weights into ``model``; a broken cache file is removed."""
    try:
        model.load_state_dict(load_file(str(path)))
        model.eval()
        return True
    except Exception:
        path.unlink(missing_ok=True)
        return False


def _save_cached(model: Any, path: Path) -> None:
    try:
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    except OSError:  # a read-only cache only costs speed
        pass


def prepare_model(
    case: Case,
    *,
    fit_config: Any = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    use_cache: bool = True,
    train: bool = True,
) -> Case:
    """Return the case with a model: the user's, or a baseline trained (and cached) by dlclinic.

    ``train=False`` only loads a cached baseline: without one the case comes back without a model.
    """
    if case.model is not None:
        check_label_range(case)  # a label beyond the model's outputs is the data's problem, named with its row
        return case
    cfg = fit_config or FitConfig()
    progress = progress or NullProgress()
    factory = _factory_for(case)
    if factory is None:  # pragma: no cover - _factory_for always has one without a model
        raise ConfigError("no model and no factory to train one")
    seed_everything(cfg.seed)
    model = factory()
    key = fingerprint_params(
        {"data": fingerprint_array(case.train.x, case.train.y), "arch": repr(model), "fit": cfg.to_dict(), "v": 2}
    )
    path = (cache_dir or default_cache_dir()) / "models" / f"{key}.safetensors"
    source = f"baseline trained by dlclinic ({type(model).__name__}, {sum(p.numel() for p in model.parameters()):,} parameters)"
    # several processes train together: the cache is used only when every rank sees it
    if distributed.agree(use_cache and path.exists()) and _load_cached(model, path):
        if cfg.device is not None:  # fit trains on the recipe's device; a cached baseline goes there too
            model.to(resolve_device(cfg.device))
        return _with_baseline(case, model, source + ", from cache", factory)
    if not train:
        return case
    with progress.step("training the baseline model", total=cfg.epochs) as advance:
        result = fit(model, usable_inputs(case.train.x), case.train.y, cfg, progress=lambda e, n: advance(1))  # type: ignore[arg-type]
    if use_cache and distributed.is_main():
        _save_cached(result.model, path)
    return _with_baseline(case, result.model, source, factory)


@contextlib.contextmanager
def _quiet_torch_logs() -> Iterator[None]:
    """Raise torch's loggers to ERROR for the duration (a failed ``torch.export`` of the user's
    model logs its whole traced graph as a warning; the check reports the failure itself)."""
    names = [n for n in list(logging.root.manager.loggerDict) if n == "torch" or n.startswith("torch.")]
    saved = {n: logging.getLogger(n).level for n in names}
    try:
        for n in names:
            logging.getLogger(n).setLevel(logging.ERROR)
        yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)


def _failed(challenge_id: str, exc: Exception) -> CheckResult:
    """The row of a check that raised: ``not_examined`` for a missing optional library, else ``error``."""
    advice = missing_extra(exc)
    if advice is not None:
        return not_examined(challenge_id, f"Not examined: this check {advice}.")
    if isinstance(exc, DlclinicError):
        return CheckResult(id=challenge_id, status="error", summary=f"The check could not run: {exc}")
    first = str(exc).splitlines()[0] if str(exc) else ""
    return CheckResult(id=challenge_id, status="error", summary=f"The check failed with {type(exc).__name__}: {first}")


def _run_one(spec: Any, case: Case, evidence: Evidence, opts: Any) -> CheckResult:
    start = time.perf_counter()
    try:
        with (
            warnings.catch_warnings(),
            _quiet_torch_logs(),
        ):  # library chatter (captum, sklearn, torch) is not the report's voice
            for category in (UserWarning, FutureWarning, DeprecationWarning, RuntimeWarning):
                warnings.simplefilter("ignore", category)
            result = spec.run(case, evidence, opts)
    except Exception as exc:  # a bug in one check must not lose the other 30
        result = _failed(spec.id, exc)
    return result.with_seconds(time.perf_counter() - start)


def _build(spec: CheckSpec | RemedySpec, given: Any) -> Any:
    """The spec's options object: ``given`` itself when already built (its bounds checked), else built from the mapping."""
    return build_options(spec, given)


def check_options(options: Mapping[str, Mapping[str, Any]], *, given_as: str = "--option") -> dict[str, Any]:
    """Validate per-check options before any work: ``{challenge_id: options object}`` for :func:`checkup`.

    Ids are checked in the order given; the first without a check is named (``given_as`` says how
    the options were given), and a bad value raises :class:`ConfigError` for its check.
    """
    built: dict[str, Any] = {}
    for cid, given in options.items():
        if cid not in CHECKS:
            raise ConfigError(
                f"{given_as} for {cid}, which has no check; expected ids among: {', '.join(sorted(CHECKS))}"
            )
        built[cid] = _build(CHECKS[cid], given)
    return built


def remedy_params(challenge_id: str, params: Any = None, *, mode: str | None = None) -> Any:
    """The remedy's params object of ``challenge_id``, built (and validated) from a mapping of strings or values."""
    spec = get_remedy(challenge_id)
    if isinstance(params, spec.params):
        return build_options(spec, params)  # its bounds checked
    given = dict(params or {})
    if mode is not None:
        given.setdefault("mode", mode)
    return build_options(spec, given)


# checks that share in-process work (``Evidence.memo``) run as one task, so that work is done once
_SHARED_WORK = (
    ("compute.training_cost", "compute.energy", "model.overfitting", "model.gradients", "optimization.convergence"),
    ("compute.edge", "compute.realtime", "model.compression"),
    ("model.architecture", "model.hyperparameters"),  # the current recipe's short run
)


def _tasks(ids: Sequence[str]) -> list[tuple[str, ...]]:
    """``ids`` (taxonomy order) grouped into tasks: the checks of one ``_SHARED_WORK`` group together."""
    tasks: list[tuple[str, ...]] = []
    for cid in ids:
        if any(cid in task for task in tasks):
            continue
        group = next((g for g in _SHARED_WORK if cid in g), (cid,))
        tasks.append(tuple(c for c in ids if c in group))
    return tasks


def _with_cuts(result: CheckResult, cuts: Sequence[str]) -> str:
    """The summary of a check the time budget cut, saying so: its verdict is a first look (a training
    cut short can look unconverged, fewer trials find less), not one to act on."""
    if not cuts or result.status in ("not_examined", "error"):
        return result.summary
    more = f" (and {len(cuts) - 1} more cut)" if len(cuts) > 1 else ""
    return f"{result.summary} Under the time budget: {cuts[0]}{more}; rerun without --budget before acting on it."


def _run_task(
    case: Case, evidence: Evidence, built: Mapping[str, Any], task: tuple[str, ...], scheduler: Scheduler | None
) -> list[Any]:
    """``(result, evidence changes, pid)`` per check of the task; the global RNGs are seeded per check,
    so a result does not depend on which checks ran before it (or in which worker). Under a time
    budget each check runs in its window of the budget and reports it (``CheckResult.budget``)."""
    out = []
    for cid in task:
        seed_everything(zlib.crc32(cid.encode()))
        mark = evidence.mark()
        if scheduler is None:
            result = _run_one(CHECKS[cid], case, evidence, built[cid])
        else:
            with budget_window(scheduler.share(cid)) as win:
                result = _run_one(CHECKS[cid], case, evidence, built[cid])
            result = dataclasses.replace(
                result, budget=win.report(result.seconds), summary=_with_cuts(result, win.cuts)
            )
        out.append((result, evidence.changes_since(mark), os.getpid()))
        _release_memory(case)
    evidence.forget_memos()  # the checks sharing a memo are this task's (_SHARED_WORK)
    release_freed_memory()
    return out


def _release_memory(case: Case) -> None:
    """Between checks: the C heap's free pages and the memory-mapped splits' pages go back to the system
    (:func:`~dlclinic.core.workers.release_freed_memory`, :func:`~dlclinic.core.workers.release_mapped_pages`):
    a check reads the rows it uses again, most read a sample."""
    release_freed_memory()
    release_mapped_pages(*(split.x for split in case.splits.values()))


def _isolation(workers: int, dev: torch.device) -> int | None:
    """Threads of the processes the evidence pass and each check task run in, each forked for it
    and gone when it ends; ``None``: they run in this process.

    With a model of the user's, one process used to run the evidence pass and then every check,
    and kept what each left: the libraries it imported, its caches, the C heap's fragments.
    At 60k Fashion-MNIST rows that took the heap from 282 MB after the evidence pass to 652 MB by
    the last check, and the peak, reached in a late check, from 1.3 to 1.8 GB between runs. In a
    process of its own, each check starts from what the evidence pass left (docs/benchmarks.md).
    Only on a CPU (CUDA cannot be used again in a forked child), in one process with ``fork``,
    where a forked child can run the native thread pools
    (:func:`~dlclinic.core.workers.threads_survive_fork`: not after this process ran OpenMP on
    several threads), unless ``DLCLINIC_ISOLATE=0``, and not while :func:`treat` measures. Several
    workers (the small baseline) already run the checks in forked processes.
    """
    if workers > 1 or dev.type != "cpu" or distributed.active() or not can_fork() or not _ISOLATE.get():
        return None
    if os.environ.get("DLCLINIC_ISOLATE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    threads = torch.get_num_threads()
    if not threads_survive_fork(threads):
        return None
    for name in _PRELOADED:  # imported once here rather than again in each process that needs them
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    return threads


_ISOLATE: contextvars.ContextVar[bool] = contextvars.ContextVar("dlclinic_isolate", default=True)
"""False while :func:`treat` measures: its one check runs in the process that trains the remedy."""

_PRELOADED = ("torch._dynamo", "onnx")
"""Modules several checks import and that take seconds, imported before the checks' processes are
forked (:func:`_isolation`). Any training imports ``torch._dynamo`` (1.3 s and 70 MB on the 2-core
machine, with torch.export and sympy): a dozen check processes each importing it again cost ~15 s
of a 60k checkup, and as many private copies. ``onnx`` (an extra: skipped when absent) serves the
export, latency and compression checks."""


def _in_child(isolated: int | None, fn: Callable[[], _R], setup: Callable[[], None] | None = None) -> _R:
    """``fn()``: here, or on ``isolated`` threads in a process forked for it (:func:`_isolation`);
    its exception is raised here, with the child's traceback as a note."""
    if isolated is None:
        return fn()
    out = run_tasks([fn], _outcome, workers=1, fresh=True, threads=isolated, setup=setup)[0]
    if isinstance(out, _Raised):
        out.error.add_note(out.trace)
        raise out.error
    return typing.cast(_R, out)


@dataclasses.dataclass
class _Raised:
    error: Exception
    trace: str


def _outcome(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as exc:  # raised again in the parent (_in_child)
        return _Raised(exc, traceback.format_exc())


def _evidence_pass(evidence: Evidence, needs: Sequence[tuple[str, str]], isolated: int | None) -> None:
    """``evidence.ensure(needs)``, here or in a forked child (:func:`_isolation`) whose arrays it takes."""
    if isolated is None:
        evidence.ensure(needs)
        return
    for split in evidence.case.splits.values():  # scanned here once: every child inherits that a mapped split is usable
        usable_inputs(split.x)
    _release_memory(evidence.case)  # what the fingerprints and that scan read here, the child reads again
    with relayed(evidence.progress) as relay:
        shown = evidence.progress

        def setup() -> None:
            evidence.progress = relay

        done = _in_child(isolated, functools.partial(_ensured, evidence, needs), setup)
        evidence.progress = shown
    evidence.adopt(done)


def _ensured(evidence: Evidence, needs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    evidence.ensure(needs)
    return evidence.computed_here()


def _run_checks(
    case: Case,
    evidence: Evidence,
    selected: Sequence[str],
    built: Mapping[str, Any],
    progress: Progress,
    workers: int,
    budget_s: float | None = None,
    isolated: int | None = None,
) -> list[CheckResult]:
    """One result per challenge, in taxonomy order; a line per finished check goes to ``progress.note``.

    The checks run as independent tasks on ``workers`` processes (:func:`dlclinic.core.workers.run_tasks`),
    or (``isolated`` threads) each task in a process forked for it (:func:`_isolation`).
    """
    case_args = case.metadata.get("cli_args") if isinstance(case.metadata.get("cli_args"), str) else None
    ids = [c.id for c in CHALLENGES if c.id in selected and c.id in CHECKS]
    ran: dict[str, CheckResult] = {}
    noted: list[str] = []
    _release_memory(case)  # the evidence pass read every row
    with progress.step("running checks", total=len(CHALLENGES)) as advance:
        advance(len(CHALLENGES) - len(ids))

        def finished(_i: int, out: list[Any]) -> None:
            for result, changes, pid in out:
                if pid != os.getpid():
                    evidence.absorb(changes)
                ran[result.id] = with_case_args(result, case_args)
                advance(1)
            while len(noted) < len(ids) and ids[len(noted)] in ran:  # the log lines keep the taxonomy order
                done = ran[ids[len(noted)]]
                noted.append(done.id)
                note(progress, f"[{len(noted)}/{len(selected)}] {done.id} {done.status} {done.seconds:.1f} s")

        if workers > 1 or isolated is not None:
            evidence.workdir()  # one scratch folder, made (and removed) by this process
        scheduler = Scheduler(budget_s, ids, workers) if budget_s is not None else None
        with relayed(progress if isolated is not None else NullProgress()) as relay:

            def setup() -> None:  # in each forked process: a worker on one torch thread draws nothing
                if isolated is None:
                    torch.set_num_threads(1)
                evidence.progress = relay

            run_tasks(
                _tasks(ids),
                lambda task: _run_task(case, evidence, built, task, scheduler),
                workers=workers,
                on_result=finished,
                setup=setup,
                fresh=isolated is not None,
                threads=isolated or 1,
            )
    return [
        ran[c.id]
        if c.id in ran
        else not_examined(c.id, PENDING[c.id] if c.id in selected else "Not selected for this checkup (--only).")
        for c in CHALLENGES
    ]


def _checks_on_rank0(run: Callable[[], list[CheckResult]]) -> list[CheckResult]:
    """``run()`` (:func:`_run_checks`); with several processes on rank 0 alone, its results then sent
    to every rank (a remedy runs on every rank and must take the same decisions there)."""
    results = None
    if distributed.rank() == 0:
        with distributed.local():
            results = run()
    return list(distributed.broadcast(results))


def _case_summary(
    case: Case, evidence: Evidence, sampled: Mapping[str, tuple[np.ndarray, int]] | None = None
) -> dict[str, Any]:
    summary = case.summary()
    if sampled:  # --budget examined a sample: finding indices are the user's rows, the counts here the sample's
        summary["sampled_by_budget"] = {n: {"rows": len(r), "of": total} for n, (r, total) in sampled.items()}
    summary["model"] = {"source": case.model_source, **_model_facts(case.model)}
    summary["fingerprints"] = evidence.fingerprints()
    summary["evidence"] = evidence.describe()
    if evidence.nonfinite_rows:
        summary["evidence"]["nonfinite_input_rows"] = dict(evidence.nonfinite_rows)
    if case.metadata:
        summary["metadata"] = {k: v for k, v in case.metadata.items() if isinstance(v, (str, int, float, bool))}
    io = case.metadata.get("io")
    if isinstance(io, Mapping) and io.get("columns"):  # categorical table columns: encoding and the rule that chose it
        summary["categorical_columns"] = {str(k): dict(v) for k, v in io["columns"].items()}
    return summary


def _model_and_evidence(
    case: Case,
    needs: Sequence[tuple[str, str]],
    fit_config: Any,
    ev_cfg: EvidenceConfig,
    cache: Path,
    progress: Progress,
    workers: int,
) -> tuple[Case, Evidence, float]:
    """The case with its model, the Evidence on it and the seconds the model took. A baseline to train
    trains here while the other workers train the K folds of the out-of-fold probabilities (they need
    the recipe, not the model), then its forward passes run while the last folds finish."""
    baseline = case.model is None or bool(case.metadata.get("dlclinic_baseline"))
    kfold = baseline and ev_cfg.oof in ("auto", "kfold") and any(kind == "oof_probs" for kind, _ in needs)

    def evidence_for(c: Case) -> Evidence:
        retrain, recipe = retrainer(c, fit_config)
        cfg = fit_config or FitConfig()
        return Evidence(
            c,
            ev_cfg,
            retrain=retrain,
            recipe=recipe,
            cheap_retrain=baseline,
            cache_dir=cache,
            progress=progress,
            fit_config=cfg,
            workers=workers,
        )

    prepare = functools.partial(
        prepare_model, fit_config=fit_config, cache_dir=cache, progress=progress, use_cache=ev_cfg.cache
    )
    t = time.perf_counter()
    # several processes: the folds are split over the ranks (Evidence._fold_results), not overlapped here
    case = prepare(case, train=not (kfold and workers > 1) or distributed.active())
    if case.model is not None:
        return case, evidence_for(case), time.perf_counter() - t
    # no cached baseline: train it here while the workers train the first folds; then its forward
    # passes while they train the others
    retrain, _ = retrainer(case, fit_config)
    rows = kfold_rows(case, ev_cfg)
    warm_up()
    made: list[Evidence] = []
    model_s: list[float] = []

    def train_baseline() -> None:
        made.append(evidence_for(prepare(case)))
        model_s.append(time.perf_counter() - t)

    def forward_passes() -> None:
        made[0].ensure([need for need in needs if need[0] != "oof_probs"])

    def run(tasks: list[FoldTask], one: Callable[[FoldTask], FoldResult], first: bool) -> list[FoldResult]:
        before = train_baseline if first else forward_passes
        return run_tasks(tasks, one, workers=workers, before=before, setup=lambda: torch.set_num_threads(1))

    results = train_folds(case, retrain, ev_cfg.seed, rows, run)
    made[0].put_kfold(rows, results)
    return made[0].case, made[0], model_s[0]


EVIDENCE_SHARE = 0.07
"""Under ``--budget``: the share of the budget one forward pass over the examined rows may take;
beyond it the splits are sampled. The checks' windows take the rest, and their trainings,
studies and sweeps stop at their windows' ends, but part of each check's work does not shrink
with its window (one epoch, a latency run, the attributions), and that part grows with the rows.
Measured on the issue-21 CNN at 60k rows with ``--budget 2m`` (docs/benchmarks.md): the forward
pass over the examined rows at 4 % / 14 % of the budget (7,541 / 19,715 rows) ended the checkup at
118 s / 130 s; at 35 % (the first rule) it overran 2.1×."""


def _seconds_per_row(model: Any, x: np.ndarray, batch_size: int) -> float:
    """Forward seconds per row: the median of three timed batches of ``x`` after an untimed one."""
    bs = max(1, min(batch_size, len(x) // 4 or 1))
    predict_logits(model, x[:bs], batch_size=bs)  # warm-up, untimed
    times = []
    for k in range(1, 4):
        batch = x[k * bs : (k + 1) * bs] if len(x) >= (k + 1) * bs else x[:bs]
        t = time.perf_counter()
        predict_logits(model, batch, batch_size=bs)
        times.append((time.perf_counter() - t) / len(batch))
    return float(np.median(times))


def _sampled_for_budget(
    case: Case, budget_s: float, batch_size: int, isolated: int | None = None
) -> tuple[Case, dict[str, np.ndarray]]:
    """The case with each split cut to a seeded (stratified) sample when one forward pass over every row
    would take more than :data:`EVIDENCE_SHARE` of the budget, and the rows kept per sampled split
    (at least 200 per split: below that the checks' windows cut deeper instead).

    The forward speed is the median of three timed batches of the train split after an untimed
    one (a single timing varied by ±25 % between runs). Only a given model is probed: a
    baseline dlclinic trains is sized by its training.
    """
    if case.model is None or not len(case.train):
        return case, {}
    # several processes: rank 0's timing on every rank, so that all of them sample the same rows
    model, x = case.model, case.train.x
    per_row = distributed.broadcast(_in_child(isolated, lambda: _seconds_per_row(model, x, batch_size)))
    total = sum(len(split) for split in case.splits.values())
    affordable = int(EVIDENCE_SHARE * budget_s / max(per_row, 1e-9))
    if total <= affordable:
        return case, {}
    share = max(affordable, 1) / total
    rows: dict[str, np.ndarray] = {}
    for name, split in case.splits.items():
        keep = max(min(len(split), 200), int(share * len(split)))
        if keep < len(split):
            rows[name] = (
                stratified_rows(split.y, keep, seed=0)
                if split.y is not None
                else np.sort(np.random.default_rng(0).choice(len(split), keep, replace=False))
            )
            case = case.with_split_rows(name, rows[name])
    return case, rows


def _budget_sample(
    case: Case, budget_s: float | None, batch_size: int, progress: Progress, isolated: int | None = None
) -> tuple[Case, dict[str, tuple[np.ndarray, int]]]:
    """:func:`_sampled_for_budget` under a budget (said on the progress log): the case and, per sampled
    split, the rows kept and the split's full length."""
    if budget_s is None:
        return case, {}
    full = {name: len(split) for name, split in case.splits.items()}
    case, rows = _sampled_for_budget(case, budget_s, batch_size, isolated)
    if rows:
        note(progress, "budget: examining " + ", ".join(f"{len(r):,} of {full[n]:,} {n} rows" for n, r in rows.items()))
    return case, {n: (r, full[n]) for n, r in rows.items()}


def _original_rows(results: list[CheckResult], sampled: Mapping[str, tuple[np.ndarray, int]]) -> list[CheckResult]:
    """Findings that name rows of a sampled split, renumbered to the rows of the user's split."""
    if not sampled:
        return results
    rows = {n: r for n, (r, _) in sampled.items()}
    out = []
    for r in results:
        findings = tuple(
            dataclasses.replace(f, indices=tuple(int(rows[f.split][i]) for i in f.indices))
            if f.split in rows and f.indices
            else f
            for f in r.findings
        )
        out.append(dataclasses.replace(r, findings=findings))
    return out


def _placed(case: Case, fit_config: Any, device: str | None, precision: str | None) -> tuple[Case, FitConfig, Any]:
    """``(case, fit_config, device)``: the case's model on ``device`` and the recipe training there in ``precision``.

    ``device=None`` keeps the model where it is (the CPU for a model dlclinic loaded or trains);
    the user's module is copied, never moved in place. The recipe names the device only when it
    is not the CPU, so CPU recipes (and their cache keys) are unchanged.

    Raises:
        ConfigError: the device is not on this machine, or does not support ``precision`` (one line).
    """
    cfg = fit_config or FitConfig()
    if device is None and cfg.device is None and hasattr(case.model, "parameters"):
        dev = model_input_spec(case.model)[1]
    else:
        dev = resolve_device(device if device is not None else (cfg.device or "cpu"))
    prec = check_precision(precision if precision is not None else cfg.precision, dev)
    cfg = dataclasses.replace(cfg, device=None if dev.type == "cpu" else str(dev), precision=prec)
    moved = move_model(case.model, dev)
    if moved is not case.model:
        case = dataclasses.replace(case, model=moved)
    return case, cfg, dev


def _checked_options(case: Case, selected: Sequence[str], options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The options object of every selected check; unknown ids and values that do not fit the data fail here."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(CHECKS))
    if unknown:
        raise ConfigError(
            f"options given for {', '.join(unknown)}, which have no check; expected ids among: {', '.join(sorted(CHECKS))}"
        )
    built = {cid: _build(CHECKS[cid], options.get(cid)) for cid in selected if cid in CHECKS}
    for cid, opts in built.items():  # option values that depend on the data fail before any work
        validate = CHECKS[cid].validate
        if validate is not None:
            validate(case, opts)
    return built


def checkup(
    case: Case,
    *,
    only: Sequence[str] | None = None,
    options: Mapping[str, Any] | None = None,
    evidence_config: EvidenceConfig | None = None,
    fit_config: Any = None,
    cache_dir: str | Path | None = None,
    progress: Progress | None = None,
    device: str | None = None,
    precision: str | None = None,
    budget: str | float | None = None,
) -> Report:
    """Examine a case for all 31 challenges and return the report.

    Args:
        case: the model and data (:meth:`Case.from_arrays`, ``dlclinic.io.load_case`` or the demo).
        only: challenge ids or category names to examine; the others are ``not_examined``.
        options: per-check options, e.g. ``{"data.quality": {"warn_label_issue_fraction": 0.05}}``
            (or the objects :func:`check_options` built).
        evidence_config: batch size, embedding layer, out-of-fold method, caching.
        fit_config: the training recipe for the baseline and for K-fold retraining.
        cache_dir: where evidence and baseline weights are cached (default ``~/.cache/dlclinic``).
        progress: a :class:`~dlclinic.core.progress.Progress` (the CLI passes a rich one).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``: where the model, the
            baseline and every retraining run (:func:`dlclinic.core.device.resolve_device`);
            ``None`` keeps the model's own device. A device that is not here is a ``ConfigError``.
        precision: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"``: mixed precision of the forward
            passes and training where the device supports it; recorded in ``report.environment``.
        budget: the whole checkup's time, e.g. ``"10m"``, ``"90s"`` or seconds
            (:mod:`dlclinic.core.budget`): the evidence pass first, then each check gets a share
            and reports what it sampled or skipped (``CheckResult.budget``). ``None``: the defaults.

    Example:
        >>> from dlclinic.demo import build_demo       # doctest: +SKIP
        >>> report = checkup(build_demo()[0])          # doctest: +SKIP
        >>> report["data.quality"].status              # doctest: +SKIP
        'fail'
    """
    t0 = time.perf_counter()
    budget_s = parse_budget(budget) if budget is not None else None
    selected = resolve_ids(list(only) if only else None)
    built = _checked_options(case, selected, options)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    ev_cfg = evidence_config or EvidenceConfig()
    progress = progress or NullProgress()
    timings: dict[str, float] = {}
    case, fit_config, dev = _placed(case, fit_config, device, precision)
    _one_model(case)
    # K-fold retraining is cheap (and the default) only for the small baseline dlclinic trains itself
    baseline = case.model is None or bool(case.metadata.get("dlclinic_baseline"))
    # the small baseline gains little from intra-op threads: one thread per process, the cores run independent work
    # (on a GPU one process: CUDA cannot be used again in a forked child)
    workers = default_workers() if baseline and dev.type == "cpu" else 1
    isolated = _isolation(workers, dev)  # asked before this process computes anything
    threads = 1 if workers > 1 or isolated is not None else None
    needs = [need for cid in built for need in CHECKS[cid].requires]
    with torch_threads(threads), native_threads(threads), use_precision(fit_config.precision):
        case, sampled = _budget_sample(case, budget_s, ev_cfg.batch_size, progress, isolated)
        t = time.perf_counter()
        case, evidence, timings["model"] = _model_and_evidence(
            case, needs, fit_config, ev_cfg, cache, progress, workers
        )
        _evidence_pass(evidence, needs, isolated)  # with a baseline trained here, it overlapped the training
        timings["evidence"] = time.perf_counter() - t - timings["model"]
        t = time.perf_counter()
        left = None if budget_s is None else budget_s - (time.perf_counter() - t0)
        run = functools.partial(_run_checks, case, evidence, selected, built, progress, workers, left, isolated)
        results = _original_rows(_checks_on_rank0(run), sampled)
        timings["checks"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    return Report(
        dlclinic_version=__version__,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        case=_case_summary(case, evidence, sampled),
        challenges=sequence_of_results(results),
        environment=_environment(dev, fit_config.precision, workers, threads, budget_s, isolated),
        timings=timings,
    )


def _environment(
    dev: torch.device,
    precision: str,
    workers: int,
    threads: int | None,
    budget_s: float | None,
    isolated: int | None,
) -> dict[str, Any]:
    """The report's ``environment``: machine, device and precision, processes, and the time budget if any."""
    return {
        **environment_info(),
        **device_info(dev, precision),
        "checkup_workers": workers,
        "checkup_torch_threads": isolated or threads or "default",
        "checkup_isolation": "a process per check" if isolated is not None else "in the checkup's process",
        **distributed.info(),
        **({"budget_s": budget_s} if budget_s is not None else {}),
    }


def _model_facts(model: Any) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    if hasattr(model, "parameters"):
        facts["parameters"] = int(sum(p.numel() for p in model.parameters()))
    facts["sha256"] = fingerprint_model(model)
    return facts


def _one_model(case: Case) -> None:
    """Several processes: rank 0's weights of the case's torch model on every rank (in place; a no-op on
    rank 0 and in one process). Each rank built the model itself: a factory without ``--weights``
    draws other initial weights on each, and the sharded evidence pass needs one model."""
    if isinstance(case.model, torch.nn.Module):
        distributed.broadcast_weights(case.model)


@contextlib.contextmanager
def _rank_out_dir(out_dir: str | Path | None) -> Iterator[Path | None]:
    """``out_dir`` on rank 0 (or in one process); a throw-away folder on ranks > 0, which run the
    remedy in step with rank 0 (so that it takes the same paths) but must leave no files behind."""
    if out_dir is None or distributed.is_main():
        yield Path(out_dir) if out_dir is not None else None
        return
    with tempfile.TemporaryDirectory(prefix="dlclinic-rank-") as scratch:
        yield Path(scratch)


def treat(
    case: Case,
    challenge_id: str,
    *,
    out_dir: str | Path | None = None,
    params: Any = None,
    mode: str | None = None,
    evidence_config: EvidenceConfig | None = None,
    fit_config: Any = None,
    cache_dir: str | Path | None = None,
    progress: Progress | None = None,
    device: str | None = None,
    precision: str | None = None,
) -> tuple[Any, Report, Report]:
    """Apply the remedy of ``challenge_id``, then measure the same check again.

    Returns ``(treatment, report_before, report_after)``; the user's case and model are
    never modified, new artifacts (cleaned row lists, retrained weights, model files) go
    to ``out_dir``. ``params`` are the remedy's parameters (see ``dlclinic challenges``
    and the remedy's ``params`` dataclass; or the object :func:`remedy_params` built);
    strings are converted to the declared types.
    ``mode`` is the older spelling of ``params={"mode": ...}`` for data.quality.
    ``device`` and ``precision`` are those of :func:`checkup`: the remedy's retraining and both
    measurements run there.

    Example:
        >>> treatment, before, after = treat(case, "data.quality", out_dir="treated/")  # doctest: +SKIP
        >>> treatment.before["test_accuracy"] < treatment.after["test_accuracy"]          # doctest: +SKIP
        True
    """
    spec = get_remedy(challenge_id)
    built = remedy_params(challenge_id, params, mode=mode)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    progress = progress or NullProgress()
    ev_cfg = evidence_config or EvidenceConfig()
    case, cfg, _ = _placed(case, fit_config, device, precision)
    case = prepare_model(case, fit_config=cfg, cache_dir=cache, progress=progress, use_cache=ev_cfg.cache)
    _one_model(case)
    retrain, recipe = retrainer(case, cfg)

    def measure(c: Case, *, options: Mapping[str, Any] | None = None, only: Sequence[str] | None = None) -> Report:
        # one check, in this process: the remedy trains here on every thread (no fork could use them after)
        token = _ISOLATE.set(False)
        try:
            return checkup(
                c,
                only=list(only) if only else [challenge_id],
                options={challenge_id: dict(options)} if options else None,
                evidence_config=ev_cfg,
                fit_config=cfg,
                cache_dir=cache,
                progress=progress,
            )
        finally:
            _ISOLATE.reset(token)

    with _rank_out_dir(out_dir) as out:
        ctx = TreatContext(
            challenge_id=challenge_id,
            case=case,
            fit_config=cfg,
            evidence_config=ev_cfg,
            cache_dir=cache,
            out_dir=out,
            progress=progress,
            retrain=retrain,
            recipe=recipe,
            measure=measure,
        )
        with use_precision(cfg.precision):
            outcome = spec.run(ctx, built)
    return outcome.treatment, outcome.before, outcome.after
