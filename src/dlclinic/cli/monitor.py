"""``dlclinic monitor``: compare windows of the prediction log with the reference; exit 1 on an alert.

The log written by ``dlclinic serve`` is cut into windows (by count or time), each window is
compared with the reference, and ``report.json``/``report.html`` hold the ``deployment.*`` rows
(for cron/CI).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from dlclinic.challenges.deployment.drift import drift_result
from dlclinic.cli.options import FailOn, OutOpt, QuietOpt, check_writable, redact_url
from dlclinic.core.errors import InputError
from dlclinic.core.results import CheckResult, Finding, Report
from dlclinic.core.version import __version__
from dlclinic.monitoring import MonitorConfig, Reference, evaluate_stream
from dlclinic.report import render_terminal, write_report
from dlclinic.serve.store import PredictionStore, store_url
from dlclinic.taxonomy import CHALLENGES

__all__ = ["monitor", "run_monitor"]


def _drift(ref: Reference, data: Any, cfg: MonitorConfig, seconds_windows: bool) -> CheckResult:
    """The ``deployment.drift`` row: the log's windows against the reference."""
    if len(data) and data.probs.shape[1] != ref.n_classes:
        raise InputError(
            f"the log holds {data.probs.shape[1]}-class predictions but the reference has {ref.n_classes} classes; expected the reference of the served model"
        )
    if len(data) == 0:
        return CheckResult(
            id="deployment.drift",
            status="not_examined",
            summary="The prediction log holds no prediction (for this model version / time range).",
        )
    same_width = (
        data.embeddings is not None
        and ref.embeddings is not None
        and data.embeddings.shape[1] == ref.embeddings.shape[1]
    )
    emb = data.embeddings if same_width else None
    labels = data.labels if bool(np.any(data.labels >= 0)) else None
    source = f"the prediction log ({len(data)} predictions" + (
        f", {int((data.labels >= 0).sum())} with fed-back labels)" if labels is not None else ")"
    )
    res = evaluate_stream(ref, data.probs, embeddings=emb, labels=labels, times=data.created, config=cfg)
    return drift_result(res, source=source, labels_known=labels is not None, seconds_windows=seconds_windows)


def _monitoring(integrity: dict[str, Any], data: Any) -> CheckResult:
    """The ``deployment.monitoring`` row: the log's integrity and latency."""
    lat = data.latency_ms
    if not integrity["ok"]:
        summary = f"Log integrity: {integrity}."
    elif len(lat):
        summary = f"The log holds {integrity['rows']} rows, none duplicated or corrupt; p50/p99 latency {np.percentile(lat, 50):.1f}/{np.percentile(lat, 99):.1f} ms."
    else:
        summary = "The log is intact and empty."
    return CheckResult(
        id="deployment.monitoring",
        status="ok" if integrity["ok"] else "fail",
        summary=summary,
        metrics={
            "rows": integrity["rows"],
            "duplicate_keys": integrity["duplicate_keys"],
            "corrupt_rows": integrity["corrupt_rows"],
            "analysed_rows": len(data),
            "labelled_rows": int((data.labels >= 0).sum()),
            "latency_p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
            "latency_p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
            "first_time": float(data.created.min()) if len(data) else None,
            "last_time": float(data.created.max()) if len(data) else None,
        },
        findings=() if integrity["ok"] else (Finding("integrity", f"log integrity check: {integrity}"),),
    )


def _report(
    rows: dict[str, CheckResult], ref: Reference, store: str, reference: Path, model_version: str | None
) -> Report:
    """A report with the deployment rows; every other challenge is ``not_examined``."""
    challenges = tuple(
        rows.get(c.id)
        or CheckResult(
            id=c.id,
            status="not_examined",
            summary="`dlclinic monitor` reports the deployment rows only; run `dlclinic checkup` for the others.",
        )
        for c in CHALLENGES
    )
    return Report(
        dlclinic_version=__version__,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        case={
            "name": "prediction log",
            "task": "classification",
            "n_classes": ref.n_classes,
            "class_names": list(ref.class_names),
            "store": redact_url(str(store)),
            "reference": str(reference),
            "model_version": model_version,
        },
        challenges=challenges,
    )


def _check_store_exists(store: str) -> None:
    """A SQLite log must exist: monitoring reads a log, and opening a mistyped path would create an empty one."""
    url = store_url(store)
    if not url.startswith("sqlite") or url in ("sqlite://", "sqlite:///:memory:"):
        return
    path = Path(url.split("///", 1)[1].split("?", 1)[0])
    if not path.is_file():
        raise InputError(
            f"--store {store}: expected the prediction log written by `dlclinic serve`, found no file at {path}"
        )


def run_monitor(
    *,
    store: str,
    reference: Path,
    out: Path,
    window: int = 200,
    window_seconds: float | None = None,
    since: float | None = None,
    model_version: str | None = None,
    alpha: float = 0.01,
    warn_drop: float = 0.05,
    fail_drop: float = 0.10,
    fail_on: str = "warn",
    quiet: bool = True,
) -> int:
    """The ``monitor`` command as a function: returns the exit code (0, or 1 on an alert at ``fail_on``)."""
    check_writable(out)
    _check_store_exists(store)
    ref = Reference.load(reference)
    log = PredictionStore(store)
    try:
        integrity = log.integrity_check()
        data = log.read(model_version=model_version, since=since)
    finally:
        log.close()
    cfg = MonitorConfig(
        window=window,
        window_seconds=window_seconds,
        min_window=max(2, min(window, 30)),
        alpha=alpha,
        warn_accuracy_drop=warn_drop,
        fail_accuracy_drop=fail_drop,
    )
    drift = _drift(ref, data, cfg, window_seconds is not None)
    mon = _monitoring(integrity, data)
    report = _report({"deployment.drift": drift, "deployment.monitoring": mon}, ref, store, reference, model_version)
    paths = write_report(report, out)
    if not quiet:
        render_terminal(report)
    typer.echo(f"{drift.summary}\nreport: {paths['html']}  json: {paths['json']}", err=True)
    worst = drift.status if mon.status == "ok" else "fail"
    # the monitor alerts on warn and fail (not on a drift row that could not be examined)
    return int((fail_on == "warn" and worst in ("warn", "fail")) or (fail_on == "fail" and worst == "fail"))


def monitor(
    store: Annotated[
        str, typer.Option("--store", help="The prediction log written by `dlclinic serve` (path or URL).")
    ],
    reference: Annotated[Path, typer.Option("--reference", help="reference.npz written by `dlclinic serve`.")],
    out: OutOpt = Path("dlclinic-monitor"),
    window: Annotated[int, typer.Option("--window", min=2, help="Predictions per window.")] = 200,
    window_seconds: Annotated[
        float | None, typer.Option("--window-seconds", help="Windows of this many seconds instead of a count.")
    ] = None,
    since: Annotated[float | None, typer.Option("--since", help="Only predictions at or after this Unix time.")] = None,
    model_version: Annotated[
        str | None, typer.Option("--model-version", help="Only predictions of this model version.")
    ] = None,
    alpha: Annotated[
        float, typer.Option("--alpha", help="Family-wise false-alarm level over all windows and tests.")
    ] = 0.01,
    warn_drop: Annotated[
        float,
        typer.Option("--warn-drop", help="Accuracy drop (estimated or observed) that warns when significant."),
    ] = 0.05,
    fail_drop: Annotated[float, typer.Option("--fail-drop", help="... and that fails.")] = 0.10,
    fail_on: Annotated[
        FailOn, typer.Option("--fail-on", help="Exit 1 when a window is at this level or worse.")
    ] = FailOn.warn,
    quiet: QuietOpt = False,
) -> None:
    """Compare windows of the prediction log with the reference; write the deployment report; exit 1 on an alert."""
    code = run_monitor(
        store=store,
        reference=reference,
        out=out,
        window=window,
        window_seconds=window_seconds,
        since=since,
        model_version=model_version,
        alpha=alpha,
        warn_drop=warn_drop,
        fail_drop=fail_drop,
        fail_on=fail_on.value,
        quiet=quiet,
    )
    if code:
        # SystemExit, not typer.Exit: `dlclinic.cli.main` drops the code typer returns under standalone_mode=False
        raise SystemExit(code)
