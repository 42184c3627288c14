"""``dlclinic serve``, ``dlclinic monitor`` and ``dlclinic predict``.

* ``serve`` — load the model (or train/cache the baseline) and its data, compute the
  reference from the labelled test split (``reference.npz`` in ``--out``), and serve it
  with uvicorn on 127.0.0.1 by default; ``--workers N`` runs N processes (each loads the
  model; the log's one writer thread is per process, SQLite's WAL serialises them).
* ``monitor`` — read the prediction log, cut it into windows (by count or time), compare
  each with the reference, write ``report.json``/``report.html`` with the ``deployment.*``
  rows and exit 1 when a window alerts (for cron/CI).
* ``predict`` — score CSV/Parquet/npz/npy files in bounded chunks to CSV or Parquet.

Heavy libraries are imported inside the command bodies only.
"""

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["register"]

_SPEC_ENV = "DLCLINIC_SERVE_SPEC"
_TOKEN_ENV = "DLCLINIC_SERVE_TOKEN"


def _redact(url: str) -> str:
    """A store URL without its password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':')[0]}:***@{host}"
    return url


def _build_server(spec: dict[str, Any]) -> Any:
    """The ASGI app described by a serve spec (also what each ``--workers`` process runs)."""
    from dlclinic import cli as _cli
    from dlclinic.api import prepare_model
    from dlclinic.core.recipe import FitConfig
    from dlclinic.monitoring import Reference
    from dlclinic.serve.app import ServeConfig, create_app
    from dlclinic.serve.backends import make_backend
    from dlclinic.serve.store import PredictionStore

    workers = int(spec.get("workers", 1))
    if workers > 1:  # share the cores between the worker processes instead of oversubscribing them
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    d = spec["data"]

    def path(key: str) -> Path | None:
        return None if d[key] is None else Path(d[key])

    opts = _cli.DataOptions(
        demo=d["demo"],
        clean_demo=d["clean_demo"],
        train=path("train"),
        test=path("test"),
        deploy=path("deploy"),
        label_col=d["label_col"],
        group_col=d["group_col"],
        id_col=d["id_col"],
        model=d["model"],
        weights=path("weights"),
    )
    case = _cli._load_case(opts)
    case = prepare_model(
        case,
        fit_config=FitConfig(epochs=spec["epochs"], seed=spec["seed"]),
        cache_dir=None if spec["cache_dir"] is None else Path(spec["cache_dir"]),
    )
    sample = case.splits["test"].x[:64] if case.get("test") is not None else case.train.x[:64]
    backend, desc = make_backend(
        case.model,
        case.input_shape,
        case.n_classes,
        kind=spec["backend"],
        sample_x=sample,
        export_path=Path(spec["out"]) / "model.onnx",
    )
    reference = Reference.load(spec["reference"]) if spec.get("reference") else None
    store = PredictionStore(spec["store"]) if spec.get("store") else None
    cfg = ServeConfig(**{**spec["config"], "token": os.environ.get(_TOKEN_ENV) or None})
    return create_app(
        backend,
        reference=reference,
        store=store,
        config=cfg,
        class_names=case.class_names,
        title=f"dlclinic: {case.name} ({desc})",
    )


def app_from_env() -> Any:
    """uvicorn factory for ``--workers``: the spec file named by ``$DLCLINIC_SERVE_SPEC``."""
    path = os.environ.get(_SPEC_ENV)
    if not path:
        from dlclinic.core.errors import ConfigError

        raise ConfigError(f"${_SPEC_ENV} is not set; expected the serve spec written by `dlclinic serve`")
    return _build_server(json.loads(Path(path).read_text()))


def register(app: Any) -> None:
    """Add ``serve``, ``monitor`` and ``predict`` to the ``dlclinic`` Typer app."""
    from enum import Enum
    from typing import Annotated

    import typer

    from dlclinic import cli as _cli
    from dlclinic.core.errors import ConfigError

    class BackendKind(str, Enum):
        auto = "auto"
        torch = "torch"
        onnx = "onnx"

    class FailOn(str, Enum):
        warn = "warn"
        fail = "fail"
        never = "never"

    StoreOpt = Annotated[
        str | None,
        typer.Option(
            "--store",
            help="Prediction log: a file path (SQLite, WAL) or a URL sqlite:///log.db / postgresql://user@host/db (needs dlclinic[postgres]).",
        ),
    ]

    @app.command()
    def serve(
        demo: _cli.DemoOpt = False,
        clean_demo: _cli.CleanDemoOpt = False,
        train: _cli.TrainOpt = None,
        test: _cli.TestOpt = None,
        deploy: _cli.DeployOpt = None,
        label_col: _cli.LabelOpt = None,
        group_col: _cli.GroupOpt = None,
        id_col: _cli.IdOpt = None,
        model: _cli.ModelOpt = None,
        weights: _cli.WeightsOpt = None,
        out: Annotated[
            Path,
            typer.Option("--out", help="Folder for reference.npz, the serve spec and (by default) the prediction log."),
        ] = Path("dlclinic-serve"),
        store: StoreOpt = None,
        no_store: Annotated[bool, typer.Option("--no-store", help="Do not log predictions.")] = False,
        host: Annotated[
            str, typer.Option("--host", help="Interface to listen on (127.0.0.1: this machine only).")
        ] = "127.0.0.1",
        port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8000,
        workers: Annotated[int, typer.Option("--workers", min=1, help="Worker processes (each loads the model).")] = 1,
        backend: Annotated[
            BackendKind,
            typer.Option("--backend", help="torch (eager), onnx (verified ONNX export run by onnxruntime) or auto."),
        ] = BackendKind.auto,
        max_batch: Annotated[
            int, typer.Option("--max-batch", min=1, help="Most rows per model call (1 = no dynamic batching).")
        ] = 64,
        max_wait_ms: Annotated[
            float, typer.Option("--max-wait-ms", min=0, help="How long a request waits for its batch to fill.")
        ] = 5.0,
        max_queue: Annotated[
            int, typer.Option("--max-queue", min=1, help="Most queued rows; beyond, 503 with Retry-After.")
        ] = 2048,
        max_rows: Annotated[int, typer.Option("--max-rows", min=1, help="Most rows per request (413 beyond).")] = 1024,
        max_body_mb: Annotated[
            float, typer.Option("--max-body-mb", min=0.001, help="Largest request body in MB (413 beyond).")
        ] = 16.0,
        token: Annotated[
            str | None,
            typer.Option(
                "--token",
                help=f"Bearer token required on data endpoints (prefer ${_TOKEN_ENV}: command lines are visible to other users).",
            ),
        ] = None,
        model_version: Annotated[
            str | None,
            typer.Option(
                "--model-version", help="Recorded with every logged prediction (default: the model's fingerprint)."
            ),
        ] = None,
        store_inputs: Annotated[
            bool, typer.Option("--store-inputs", help="Log the inputs themselves, not only their SHA-256.")
        ] = False,
        sync_log: Annotated[
            bool, typer.Option("--sync-log", help="Answer only after the log row is committed.")
        ] = False,
        window: Annotated[
            int, typer.Option("--window", min=2, help="Predictions per live drift window (/metrics, /dashboard).")
        ] = 200,
        cache_dir: _cli.CacheOpt = None,
        epochs: _cli.EpochsOpt = 15,
        seed: _cli.SeedOpt = 0,
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Prepare model, reference and spec, then exit without serving.")
        ] = False,
    ) -> None:
        """Serve the model over HTTP: /predict, /feedback, /health, /ready, /metrics, /dashboard, /docs."""
        from dlclinic.api import prepare_model
        from dlclinic.core.evidence import Evidence, EvidenceConfig
        from dlclinic.core.fingerprint import fingerprint_model
        from dlclinic.core.recipe import FitConfig
        from dlclinic.monitoring import Reference
        from dlclinic.serve.app import ServeConfig

        _cli._check_writable(out)
        token = token or os.environ.get(_TOKEN_ENV) or None
        if host not in ("127.0.0.1", "localhost", "::1") and token is None:
            typer.echo(
                f"warning: listening on {host} without a bearer token: anyone who can reach this port can query the model (set ${_TOKEN_ENV})",
                err=True,
            )
        opts = _cli.DataOptions(demo, clean_demo, train, test, deploy, label_col, group_col, id_col, model, weights)
        case = _cli._load_case(opts)
        fit_cfg = FitConfig(epochs=epochs, seed=seed)
        case = prepare_model(case, fit_config=fit_cfg, cache_dir=cache_dir, progress=_cli.RichProgress())
        out.mkdir(parents=True, exist_ok=True)
        reference_path = None
        if case.get("test") is not None and case.splits["test"].labelled:
            ev = Evidence(case, EvidenceConfig(), cache_dir=cache_dir)
            emb = ev.get("embeddings", "test") if ev.embedding_source != "input-pca" else None
            ref = Reference.build(
                ev.get("logits", "test"),
                case.splits["test"].y,
                emb,
                case.class_names,
                meta={"split": "test", "model": case.model_source},
            )
            reference_path = str(ref.save(out / "reference.npz"))
        else:
            typer.echo(
                "warning: no labelled --test split: no reference, so drift and estimated accuracy are not measured",
                err=True,
            )
        version = model_version or fingerprint_model(case.model)[:12]
        store_url = None if no_store else (store or str(out / "predictions.db"))
        config = ServeConfig(
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            max_queue=max_queue,
            max_rows=max_rows,
            max_body_bytes=int(max_body_mb * 1024 * 1024),
            model_version=version,
            store_inputs=store_inputs,
            sync_log=sync_log,
            window=window,
        )
        from dataclasses import asdict

        spec = {
            "data": {
                "demo": demo,
                "clean_demo": clean_demo,
                "train": None if train is None else str(train.absolute()),
                "test": None if test is None else str(test.absolute()),
                "deploy": None if deploy is None else str(deploy.absolute()),
                "label_col": label_col,
                "group_col": group_col,
                "id_col": id_col,
                "model": model,
                "weights": None if weights is None else str(weights.absolute()),
            },
            "epochs": epochs,
            "seed": seed,
            "cache_dir": None if cache_dir is None else str(cache_dir.absolute()),
            "backend": backend.value,
            "out": str(out.absolute()),
            "reference": reference_path,
            "store": store_url,
            "workers": workers,
            "config": {k: v for k, v in asdict(config).items() if k != "token"},
        }
        spec_path = out / "serve-spec.json"
        from dlclinic.core.atomic import atomic_path

        with atomic_path(spec_path) as tmp:
            tmp.write_text(json.dumps(spec, indent=2))
        typer.echo(
            f"reference: {reference_path or 'none'}; log: {_redact(store_url) if store_url else 'off'}; model version {version}",
            err=True,
        )
        if dry_run:
            return
        import uvicorn

        if token:
            os.environ[_TOKEN_ENV] = token
        typer.echo(f"serving on http://{host}:{port}  (docs /docs, dashboard /dashboard, metrics /metrics)", err=True)
        if workers > 1:
            os.environ[_SPEC_ENV] = str(spec_path.absolute())
            uvicorn.run(
                "dlclinic.commands.deploy:app_from_env",
                factory=True,
                host=host,
                port=port,
                workers=workers,
                log_level="warning",
                timeout_graceful_shutdown=int(config.drain_timeout_s),
            )
        else:
            uvicorn.run(
                _build_server(spec),
                host=host,
                port=port,
                log_level="warning",
                timeout_graceful_shutdown=int(config.drain_timeout_s),
            )

    @app.command()
    def monitor(
        store: Annotated[
            str, typer.Option("--store", help="The prediction log written by `dlclinic serve` (path or URL).")
        ],
        reference: Annotated[Path, typer.Option("--reference", help="reference.npz written by `dlclinic serve`.")],
        out: _cli.OutOpt = Path("dlclinic-monitor"),
        window: Annotated[int, typer.Option("--window", min=2, help="Predictions per window.")] = 200,
        window_seconds: Annotated[
            float | None, typer.Option("--window-seconds", help="Windows of this many seconds instead of a count.")
        ] = None,
        since: Annotated[
            float | None, typer.Option("--since", help="Only predictions at or after this Unix time.")
        ] = None,
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
        quiet: _cli.QuietOpt = False,
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

    @app.command()
    def predict(
        inputs: Annotated[list[Path], typer.Argument(help="Files to score: .npz (key --key), .npy, .csv or .parquet.")],
        out: Annotated[
            Path, typer.Option("--out", help="Output .csv/.parquet (one input) or a folder (several inputs).")
        ] = Path("predictions.csv"),
        demo: _cli.DemoOpt = False,
        model: _cli.ModelOpt = None,
        weights: _cli.WeightsOpt = None,
        input_shape: Annotated[
            str | None,
            typer.Option(
                "--input-shape", help="Per-sample shape, e.g. 1,28,28 (default: the ONNX graph's, or the first file's)."
            ),
        ] = None,
        class_names: Annotated[
            str | None, typer.Option("--class-names", help="Comma-separated class names (default 0..K-1).")
        ] = None,
        batch_size: Annotated[
            int, typer.Option("--batch-size", min=1, help="Rows per chunk (memory is bounded by one chunk).")
        ] = 1024,
        key: Annotated[str, typer.Option("--key", help="Array name in .npz files.")] = "x",
        id_col: _cli.IdOpt = None,
        drop_col: Annotated[
            list[str] | None, typer.Option("--drop-col", help="CSV/Parquet columns that are not features (repeatable).")
        ] = None,
        cache_dir: _cli.CacheOpt = None,
    ) -> None:
        """Score files in bounded chunks with the model; write class, confidence and probabilities per row."""
        import numpy as np

        from dlclinic.serve.backends import make_backend
        from dlclinic.serve.scoring import iter_batches, score_file

        if not inputs:
            raise ConfigError("no input files: expected one or more .npz/.npy/.csv/.parquet files")
        if len(inputs) > 1 and out.suffix:
            raise ConfigError(f"--out {out}: expected a folder for {len(inputs)} input files, found a file name")
        names: tuple[str, ...] | None = tuple(c.strip() for c in class_names.split(",")) if class_names else None
        shape: tuple[int, ...] | None = None
        if demo:
            if model is not None:
                raise ConfigError("--demo brings its own model: expected no --model with it")
            from dlclinic.api import prepare_model
            from dlclinic.demo import build_demo

            case = prepare_model(build_demo()[0], cache_dir=cache_dir)
            net, shape, names = case.model, case.input_shape, names or case.class_names
        else:
            if model is None:
                raise ConfigError(
                    "no model: expected --model file.py:factory (with --weights), model.pt2 or model.onnx, or --demo"
                )
            from dlclinic.io import load_model

            net, _ = load_model(model, weights=weights)
            if input_shape:
                try:
                    shape = tuple(int(s) for s in input_shape.split(","))
                except ValueError:
                    raise ConfigError(
                        f"--input-shape {input_shape!r}: expected comma-separated integers such as 1,28,28"
                    ) from None
            elif hasattr(net, "input_shape") and net.input_shape and all(s is not None for s in net.input_shape[1:]):
                shape = tuple(int(s) for s in net.input_shape[1:])
            if shape is None:
                _, first = next(
                    iter_batches(inputs[0], (), batch_size=2, key=key, id_col=id_col, drop_cols=drop_col or ())
                )
                shape = tuple(first.shape[1:])
        if shape is None:  # pragma: no cover - set above in every branch
            raise ConfigError(
                "--input-shape: could not infer the per-sample shape; pass it, e.g. --input-shape 1,28,28"
            )
        probe = np.zeros((1, *shape), dtype=np.float32)
        if names is None:
            from dlclinic.core.inference import predict_logits

            names = tuple(str(i) for i in range(predict_logits(net, probe).shape[1]))
        be, desc = make_backend(net, shape, len(names))
        for path in inputs:
            target = out if len(inputs) == 1 else out / f"{path.stem}.predictions.csv"
            n = score_file(
                be,
                path,
                target,
                class_names=names,
                batch_size=batch_size,
                key=key,
                id_col=id_col,
                drop_cols=drop_col or (),
            )
            typer.echo(f"{path}: {n} rows scored with {desc} -> {target}", err=True)


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
    import datetime as dt

    import numpy as np

    from dlclinic import __version__
    from dlclinic.checks.deployment import drift_result
    from dlclinic.cli import _check_writable
    from dlclinic.core.results import CheckResult, Finding, Report
    from dlclinic.monitoring import MonitorConfig, Reference, evaluate_stream
    from dlclinic.report import render_terminal, write_report
    from dlclinic.serve.store import PredictionStore
    from dlclinic.taxonomy import CHALLENGES

    _check_writable(out)
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
    if len(data) and data.probs.shape[1] != ref.n_classes:
        from dlclinic.core.errors import InputError

        raise InputError(
            f"the log holds {data.probs.shape[1]}-class predictions but the reference has {ref.n_classes} classes; expected the reference of the served model"
        )
    emb = (
        data.embeddings
        if (
            data.embeddings is not None
            and ref.embeddings is not None
            and data.embeddings.shape[1] == ref.embeddings.shape[1]
        )
        else None
    )
    labels = data.labels if bool(np.any(data.labels >= 0)) else None
    source = f"the prediction log ({len(data)} predictions" + (
        f", {int((data.labels >= 0).sum())} with fed-back labels)" if labels is not None else ")"
    )
    if len(data) == 0:
        drift = CheckResult(
            id="deployment.drift",
            status="not_examined",
            summary="The prediction log holds no prediction (for this model version / time range).",
        )
    else:
        res = evaluate_stream(ref, data.probs, embeddings=emb, labels=labels, times=data.created, config=cfg)
        drift = drift_result(
            res, source=source, labels_known=labels is not None, seconds_windows=window_seconds is not None
        )
    lat = data.latency_ms
    mon_status = "ok" if integrity["ok"] else "fail"
    mon = CheckResult(
        id="deployment.monitoring",
        status=mon_status,  # type: ignore[arg-type]
        summary=(
            f"The log holds {integrity['rows']} rows, none duplicated or corrupt; p50/p99 latency {np.percentile(lat, 50):.1f}/{np.percentile(lat, 99):.1f} ms."
            if len(lat) and integrity["ok"]
            else f"Log integrity: {integrity}."
            if not integrity["ok"]
            else "The log is intact and empty."
        ),
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
    by_id = {"deployment.drift": drift, "deployment.monitoring": mon}
    challenges = tuple(
        by_id.get(c.id)
        or CheckResult(
            id=c.id,
            status="not_examined",
            summary="`dlclinic monitor` reports the deployment rows only; run `dlclinic checkup` for the others.",
        )
        for c in CHALLENGES
    )
    report = Report(
        dlclinic_version=__version__,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        case={
            "name": "prediction log",
            "task": "classification",
            "n_classes": ref.n_classes,
            "class_names": list(ref.class_names),
            "store": _redact(str(store)),
            "reference": str(reference),
            "model_version": model_version,
        },
        challenges=challenges,
    )
    paths = write_report(report, out)
    if not quiet:
        render_terminal(report)
    import typer

    typer.echo(f"{drift.summary}\nreport: {paths['html']}  json: {paths['json']}", err=True)
    worst = drift.status if mon.status == "ok" else "fail"
    if (fail_on == "warn" and worst in ("warn", "fail")) or (fail_on == "fail" and worst == "fail"):
        return 1
    return 0
