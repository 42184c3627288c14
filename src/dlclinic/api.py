"""The checkup: prepare the model, compute shared evidence once, run the checks, assemble the report."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import importlib
import logging
import os
import platform
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from dlclinic.challenges import CHECKS, PENDING, get_remedy
from dlclinic.core.atomic import atomic_path
from dlclinic.core.baselines import baseline_for
from dlclinic.core.case import Case
from dlclinic.core.errors import ConfigError, DlclinicError, missing_extra
from dlclinic.core.evidence import Evidence, EvidenceConfig, default_cache_dir
from dlclinic.core.fingerprint import fingerprint_array, fingerprint_model, fingerprint_params
from dlclinic.core.progress import NullProgress, Progress, note
from dlclinic.core.recipe import FitConfig, fit, seed_everything
from dlclinic.core.registry import CheckSpec, RemedySpec, TreatContext, build_options
from dlclinic.core.results import CheckResult, Report, not_examined, sequence_of_results, with_case_args
from dlclinic.core.version import __version__
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
        return lambda: baseline_for(case.input_shape, case.n_classes, case.modality)
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
) -> Case:
    """Return the case with a model: the user's, or a baseline trained (and cached) by dlclinic."""
    if case.model is not None:
        return case
    cfg = fit_config or FitConfig()
    progress = progress or NullProgress()
    factory = _factory_for(case)
    if factory is None:  # pragma: no cover - _factory_for always has one without a model
        raise ConfigError("no model and no factory to train one")
    seed_everything(cfg.seed)
    model = factory()
    key = fingerprint_params(
        {"data": fingerprint_array(case.train.x, case.train.y), "arch": repr(model), "fit": cfg.to_dict(), "v": 1}
    )
    path = (cache_dir or default_cache_dir()) / "models" / f"{key}.safetensors"
    source = f"baseline trained by dlclinic ({type(model).__name__}, {sum(p.numel() for p in model.parameters()):,} parameters)"
    if use_cache and path.exists() and _load_cached(model, path):
        return _with_baseline(case, model, source + ", from cache", factory)
    with progress.step("training the baseline model", total=cfg.epochs) as advance:
        result = fit(model, np.nan_to_num(case.train.x), case.train.y, cfg, progress=lambda e, n: advance(1))  # type: ignore[arg-type]
    if use_cache:
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
    """The spec's options object: ``given`` itself when already built (validated), else built from the mapping."""
    cls = spec.options if isinstance(spec, CheckSpec) else spec.params
    return given if isinstance(given, cls) else build_options(spec, given)


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
        return params
    given = dict(params or {})
    if mode is not None:
        given.setdefault("mode", mode)
    return build_options(spec, given)


def _run_checks(
    case: Case, evidence: Evidence, selected: Sequence[str], built: Mapping[str, Any], progress: Progress
) -> list[CheckResult]:
    """One result per challenge, in taxonomy order; a line per finished check goes to ``progress.note``."""
    case_args = case.metadata.get("cli_args") if isinstance(case.metadata.get("cli_args"), str) else None
    results: list[CheckResult] = []
    with progress.step("running checks", total=len(CHALLENGES)) as advance:
        for challenge in CHALLENGES:
            cid = challenge.id
            if cid not in selected:
                results.append(not_examined(cid, "Not selected for this checkup (--only)."))
                advance(1)
                continue
            if cid in CHECKS:
                result = with_case_args(_run_one(CHECKS[cid], case, evidence, built[cid]), case_args)
            else:
                result = not_examined(cid, PENDING[cid])
            results.append(result)
            advance(1)
            done = sum(1 for r in results if r.id in selected)
            note(progress, f"[{done}/{len(selected)}] {cid} {result.status} {result.seconds:.1f} s")
    return results


def _case_summary(case: Case, evidence: Evidence) -> dict[str, Any]:
    summary = case.summary()
    summary["model"] = {"source": case.model_source, **_model_facts(case.model)}
    summary["fingerprints"] = evidence.fingerprints()
    summary["evidence"] = evidence.describe()
    if evidence.nonfinite_rows:
        summary["evidence"]["nonfinite_input_rows"] = dict(evidence.nonfinite_rows)
    if case.metadata:
        summary["metadata"] = {k: v for k, v in case.metadata.items() if isinstance(v, (str, int, float, bool))}
    return summary


def checkup(
    case: Case,
    *,
    only: Sequence[str] | None = None,
    options: Mapping[str, Any] | None = None,
    evidence_config: EvidenceConfig | None = None,
    fit_config: Any = None,
    cache_dir: str | Path | None = None,
    progress: Progress | None = None,
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

    Example:
        >>> from dlclinic.demo import build_demo       # doctest: +SKIP
        >>> report = checkup(build_demo()[0])          # doctest: +SKIP
        >>> report["data.quality"].status              # doctest: +SKIP
        'fail'
    """
    t0 = time.perf_counter()
    selected = resolve_ids(list(only) if only else None)
    options = dict(options or {})
    unknown = sorted(set(options) - set(CHECKS))
    if unknown:
        raise ConfigError(
            f"options given for {', '.join(unknown)}, which have no check; expected ids among: {', '.join(sorted(CHECKS))}"
        )
    built = {cid: _build(CHECKS[cid], options.get(cid)) for cid in selected if cid in CHECKS}
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    ev_cfg = evidence_config or EvidenceConfig()
    progress = progress or NullProgress()
    timings: dict[str, float] = {}

    t = time.perf_counter()
    # K-fold retraining is cheap (and the default) only for the small baseline dlclinic trains itself
    baseline = case.model is None or bool(case.metadata.get("dlclinic_baseline"))
    case = prepare_model(case, fit_config=fit_config, cache_dir=cache, progress=progress, use_cache=ev_cfg.cache)
    timings["model"] = time.perf_counter() - t
    retrain, recipe = retrainer(case, fit_config)
    evidence = Evidence(
        case,
        ev_cfg,
        retrain=retrain,
        recipe=recipe,
        cheap_retrain=baseline,
        cache_dir=cache,
        progress=progress,
        fit_config=fit_config or FitConfig(),
    )
    t = time.perf_counter()
    evidence.ensure([need for cid in built for need in CHECKS[cid].requires])
    timings["evidence"] = time.perf_counter() - t
    t = time.perf_counter()
    results = _run_checks(case, evidence, selected, built, progress)
    timings["checks"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    return Report(
        dlclinic_version=__version__,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        case=_case_summary(case, evidence),
        challenges=sequence_of_results(results),
        environment=environment_info(),
        timings=timings,
    )


def _model_facts(model: Any) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    if hasattr(model, "parameters"):
        facts["parameters"] = int(sum(p.numel() for p in model.parameters()))
    facts["sha256"] = fingerprint_model(model)
    return facts


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
) -> tuple[Any, Report, Report]:
    """Apply the remedy of ``challenge_id``, then measure the same check again.

    Returns ``(treatment, report_before, report_after)``; the user's case and model are
    never modified, new artifacts (cleaned row lists, retrained weights, model files) go
    to ``out_dir``. ``params`` are the remedy's parameters (see ``dlclinic challenges``
    and the remedy's ``params`` dataclass; or the object :func:`remedy_params` built);
    strings are converted to the declared types.
    ``mode`` is the older spelling of ``params={"mode": ...}`` for data.quality.

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
    cfg = fit_config or FitConfig()
    case = prepare_model(case, fit_config=cfg, cache_dir=cache, progress=progress, use_cache=ev_cfg.cache)
    retrain, recipe = retrainer(case, cfg)

    def measure(c: Case, *, options: Mapping[str, Any] | None = None, only: Sequence[str] | None = None) -> Report:
        return checkup(
            c,
            only=list(only) if only else [challenge_id],
            options={challenge_id: dict(options)} if options else None,
            evidence_config=ev_cfg,
            fit_config=cfg,
            cache_dir=cache,
            progress=progress,
        )

    ctx = TreatContext(
        challenge_id=challenge_id,
        case=case,
        fit_config=cfg,
        evidence_config=ev_cfg,
        cache_dir=cache,
        out_dir=Path(out_dir) if out_dir is not None else None,
        progress=progress,
        retrain=retrain,
        recipe=recipe,
        measure=measure,
    )
    outcome = spec.run(ctx, built)
    return outcome.treatment, outcome.before, outcome.after
