"""The checkup: prepare the model, compute shared evidence once, run the checks, assemble the report."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dlclinic.core.case import Case
from dlclinic.core.errors import ConfigError, DlclinicError
from dlclinic.core.evidence import Evidence, EvidenceConfig, default_cache_dir
from dlclinic.core.fingerprint import fingerprint_array, fingerprint_params
from dlclinic.core.progress import NullProgress, Progress
from dlclinic.core.registry import build_options
from dlclinic.core.results import CheckResult, Report, not_examined, sequence_of_results
from dlclinic.taxonomy import CHALLENGES, resolve_ids

__all__ = ["checkup", "environment_info", "prepare_model", "retrainer", "treat"]


def _version() -> str:
    from dlclinic import __version__

    return __version__


def environment_info() -> dict[str, Any]:
    """Versions and hardware that a result depends on."""
    import os

    import torch

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
            info[mod] = __import__(mod).__version__
        except Exception:  # pragma: no cover - optional
            info[mod] = None
    return info


def _factory_for(case: Case) -> Callable[[], Any] | None:
    if case.model_factory is not None:
        return case.model_factory
    if case.model is None:
        from dlclinic.remedies.baselines import baseline_for

        return lambda: baseline_for(case.input_shape, case.n_classes, case.modality)
    return None


def retrainer(case: Case, fit_config: Any = None) -> tuple[Callable[[np.ndarray, np.ndarray, int], Any] | None, str]:
    """``(retrain, recipe_id)``: ``retrain(x, y, seed) -> model`` with the case's recipe, or ``None`` without a factory.

    ``recipe_id`` fingerprints the architecture and the fit config, for cache keys.
    """
    from dlclinic.remedies.fit import FitConfig, fit, seed_everything

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


def prepare_model(case: Case, *, fit_config: Any = None, cache_dir: Path | None = None, progress: Progress | None = None, use_cache: bool = True) -> Case:
    """Return the case with a model: the user's, or a baseline trained (and cached) by dlclinic."""
    if case.model is not None:
        return case
    import torch

    from dlclinic.remedies.baselines import baseline_for
    from dlclinic.remedies.fit import FitConfig, fit, seed_everything

    cfg = fit_config or FitConfig()
    progress = progress or NullProgress()
    factory = _factory_for(case)
    if factory is None:  # pragma: no cover - _factory_for always has one without a model
        raise ConfigError("no model and no factory to train one")
    seed_everything(cfg.seed)
    model = factory()
    key = fingerprint_params({"data": fingerprint_array(case.train.x, case.train.y), "arch": repr(model), "fit": cfg.to_dict(), "v": 1})
    path = (cache_dir or default_cache_dir()) / "models" / f"{key}.safetensors"
    source = f"baseline trained by dlclinic ({type(model).__name__}, {sum(p.numel() for p in model.parameters()):,} parameters)"
    if use_cache and path.exists():
        try:
            from safetensors.torch import load_file

            model.load_state_dict(load_file(str(path)))
            model.eval()
            return dataclasses.replace(case, model=model, model_source=source + ", from cache", model_factory=factory, metadata={**case.metadata, "dlclinic_baseline": True})
        except Exception:
            path.unlink(missing_ok=True)
    with progress.step("training the baseline model", total=cfg.epochs) as advance:
        result = fit(model, np.nan_to_num(case.train.x), case.train.y, cfg, progress=lambda e, n: advance(1))  # type: ignore[arg-type]
    trained = result.model
    if use_cache:
        from safetensors.torch import save_file

        from dlclinic.core.atomic import atomic_path

        try:
            with atomic_path(path) as tmp:
                save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(tmp))
        except OSError:  # a read-only cache only costs speed
            pass
    del torch, baseline_for
    return dataclasses.replace(case, model=trained, model_source=source, model_factory=factory, metadata={**case.metadata, "dlclinic_baseline": True})


def _run_one(spec: Any, case: Case, evidence: Evidence, opts: Any) -> CheckResult:
    start = time.perf_counter()
    try:
        result = spec.run(case, evidence, opts)
    except DlclinicError as exc:
        result = CheckResult(id=spec.id, status="error", summary=f"The check could not run: {exc}")
    except Exception as exc:  # a bug in one check must not lose the other 30
        first = str(exc).splitlines()[0] if str(exc) else ""
        result = CheckResult(id=spec.id, status="error", summary=f"The check failed with {type(exc).__name__}: {first}")
    return result.with_seconds(time.perf_counter() - start)


def checkup(
    case: Case,
    *,
    only: Sequence[str] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    evidence_config: EvidenceConfig | None = None,
    fit_config: Any = None,
    cache_dir: str | Path | None = None,
    progress: Progress | None = None,
) -> Report:
    """Examine a case for all 31 challenges and return the report.

    Args:
        case: the model and data (:meth:`Case.from_arrays`, ``dlclinic.io.load_case`` or the demo).
        only: challenge ids or category names to examine; the others are ``not_examined``.
        options: per-check options, e.g. ``{"data.quality": {"warn_label_issue_fraction": 0.05}}``.
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
    from dlclinic.checks import CHECKS, PENDING

    t0 = time.perf_counter()
    selected = resolve_ids(list(only) if only else None)
    options = dict(options or {})
    unknown = sorted(set(options) - set(CHECKS))
    if unknown:
        raise ConfigError(f"options given for {', '.join(unknown)}, which have no check; expected ids among: {', '.join(sorted(CHECKS))}")
    built = {cid: build_options(CHECKS[cid], options.get(cid)) for cid in selected if cid in CHECKS}
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
    evidence = Evidence(case, ev_cfg, retrain=retrain, recipe=recipe, cheap_retrain=baseline, cache_dir=cache, progress=progress)

    t = time.perf_counter()
    needs = [need for cid in built for need in CHECKS[cid].requires]
    evidence.ensure(needs)
    timings["evidence"] = time.perf_counter() - t

    results: list[CheckResult] = []
    t = time.perf_counter()
    with progress.step("running checks", total=len(CHALLENGES)) as advance:
        for challenge in CHALLENGES:
            cid = challenge.id
            if cid not in selected:
                results.append(not_examined(cid, "Not selected for this checkup (--only)."))
            elif cid in CHECKS:
                results.append(_run_one(CHECKS[cid], case, evidence, built[cid]))
            else:
                results.append(not_examined(cid, PENDING[cid]))
            advance(1)
    timings["checks"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0

    summary = case.summary()
    summary["model"] = {"source": case.model_source, **_model_facts(case.model)}
    summary["fingerprints"] = evidence.fingerprints()
    summary["evidence"] = evidence.describe()
    if evidence.nonfinite_rows:
        summary["evidence"]["nonfinite_input_rows"] = dict(evidence.nonfinite_rows)
    if case.metadata:
        summary["metadata"] = {k: v for k, v in case.metadata.items() if isinstance(v, (str, int, float, bool))}
    return Report(
        dlclinic_version=_version(),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        case=summary,
        challenges=sequence_of_results(results),
        environment=environment_info(),
        timings=timings,
    )


def _model_facts(model: Any) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    if hasattr(model, "parameters"):
        facts["parameters"] = int(sum(p.numel() for p in model.parameters()))
    from dlclinic.core.fingerprint import fingerprint_model

    facts["sha256"] = fingerprint_model(model)
    return facts


def treat(
    case: Case,
    challenge_id: str,
    *,
    out_dir: str | Path | None = None,
    mode: str = "drop",
    evidence_config: EvidenceConfig | None = None,
    fit_config: Any = None,
    cache_dir: str | Path | None = None,
    progress: Progress | None = None,
) -> tuple[Any, Report, Report]:
    """Apply the remedy of ``challenge_id``, retrain, and measure again.

    Returns ``(treatment, report_before, report_after)``; the user's case and model are
    never modified, new artifacts (cleaned row lists, retrained weights) go to ``out_dir``.

    Example:
        >>> treatment, before, after = treat(case, "data.quality", out_dir="treated/")  # doctest: +SKIP
        >>> treatment.before["test_accuracy"] < treatment.after["test_accuracy"]          # doctest: +SKIP
        True
    """
    from dlclinic.remedies import REMEDIES
    from dlclinic.remedies.clean import paired_accuracy_ci, plan_cleaning, write_cleaning_artifacts
    from dlclinic.taxonomy import get_challenge

    get_challenge(challenge_id)
    if challenge_id not in REMEDIES:
        raise ConfigError(f"no remedy for {challenge_id!r} in this version; expected one of: {', '.join(REMEDIES)}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    progress = progress or NullProgress()
    test = case.get("test")
    if test is None or not test.labelled:
        raise ConfigError("treat data.quality needs a labelled test split to verify the treatment (pass --test)")
    from dlclinic.core.inference import predict_logits
    from dlclinic.core.results import Treatment
    from dlclinic.remedies.fit import FitConfig

    cfg = fit_config or FitConfig()
    case = prepare_model(case, fit_config=cfg, cache_dir=cache, progress=progress, use_cache=(evidence_config or EvidenceConfig()).cache)
    retrain, _ = retrainer(case, cfg)
    if retrain is None:
        raise ConfigError("treat data.quality retrains the model, so it needs the architecture: pass --model file.py:factory (a .pt2/.onnx file or a bare module cannot be retrained)")
    before = checkup(case, only=[challenge_id], evidence_config=evidence_config, fit_config=cfg, cache_dir=cache, progress=progress)
    res = before[challenge_id]
    plan = plan_cleaning(len(case.train), res, mode=mode, n_test=len(test))
    eval_rows = np.setdiff1d(np.arange(len(test)), plan.test_leaks)
    if len(eval_rows) < 30:
        raise ConfigError(f"treat data.quality: expected at least 30 test rows that did not leak from train to verify the treatment, found {len(eval_rows)} (of {len(test)}); use a test set collected separately from train")
    if len(plan.keep) < max(2 * case.n_classes, 10):
        raise ConfigError(f"treat data.quality: cleaning would leave {len(plan.keep)} train rows, expected at least {max(2 * case.n_classes, 10)}; inspect the findings before treating")
    x_eval, y_eval = test.x[eval_rows], test.y[eval_rows]  # type: ignore[index]
    cleaned = case.with_train(plan.keep, plan.relabel)
    if len(plan.test_leaks):
        cleaned = cleaned.with_split_rows("test", eval_rows)
    with progress.step("retraining on the cleaned data", total=2) as advance:
        # a controlled comparison: the same recipe and seed on the full and on the cleaned train split
        reference = case.model if case.metadata.get("dlclinic_baseline") else retrain(np.nan_to_num(case.train.x), case.train.y, cfg.seed)  # type: ignore[arg-type]
        advance(1)
        model = retrain(np.nan_to_num(cleaned.train.x), cleaned.train.y, cfg.seed)  # type: ignore[arg-type]
        advance(1)
    pred_before = predict_logits(reference, x_eval).argmax(1)
    pred_after = predict_logits(model, x_eval).argmax(1)
    acc_before, acc_after = float((pred_before == y_eval).mean()), float((pred_after == y_eval).mean())
    low, high = paired_accuracy_ci(pred_before == y_eval, pred_after == y_eval)
    treated = dataclasses.replace(cleaned, model=model, model_source=f"{case.model_source.replace(', from cache', '')}, retrained on cleaned data")
    after = checkup(treated, only=[challenge_id], evidence_config=evidence_config, fit_config=cfg, cache_dir=cache, progress=progress)
    artifacts = write_cleaning_artifacts(Path(out_dir), plan, cleaned.train.y, eval_rows, model) if out_dir is not None else {}  # type: ignore[arg-type]
    after_res = after[challenge_id]
    treatment = Treatment(
        challenge_id=challenge_id,
        action=f"{mode} {len(plan.relabel) or plan.dropped_label_issues} flagged label issue(s), drop {plan.dropped_duplicates} duplicate(s) and {plan.dropped_nonfinite} NaN/Inf row(s), retrain with the same recipe and seed",
        before={"test_accuracy": acc_before, "train_rows": len(case.train), "label_issue_fraction": res.metrics.get("label_issue_fraction"), "duplicate_fraction": res.metrics.get("duplicate_fraction")},
        after={"test_accuracy": acc_after, "train_rows": len(cleaned.train), "label_issue_fraction": after_res.metrics.get("label_issue_fraction"), "duplicate_fraction": after_res.metrics.get("duplicate_fraction"), "accuracy_gain_ci_low": low, "accuracy_gain_ci_high": high},
        before_status=res.status,
        after_status=after_res.status,
        artifacts=artifacts,
        notes=(
            f"both accuracies are measured on the {len(eval_rows)} test rows that did not leak from train ({len(plan.test_leaks)} leaked rows excluded), with models trained by the same recipe and seed",
            f"95 % paired-bootstrap interval of the accuracy gain over test rows: [{low:+.3f}, {high:+.3f}] (test-set sampling only, one training seed)",
            "leaked test rows are removed from the test split of the treated case (cleaned_test_rows.csv); remove them from your test data too",
        ),
    )
    return treatment, before, after
