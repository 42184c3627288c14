"""``dlclinic serve``: load the model (or train/cache the baseline) and serve it over HTTP.

The reference for drift is computed from the labelled test split (``reference.npz`` in
``--out``); uvicorn serves on 127.0.0.1 by default; ``--workers N`` runs N processes (each
loads the model; the log's one writer thread is per process, SQLite's WAL serialises them)
under uvicorn's supervisor, which restarts a worker that dies; a worker exits when the
supervisor dies (:mod:`dlclinic.serve.supervision`). ``--log-mode durable`` (the default)
answers only once the log rows are on disk; ``--log-mode async`` answers first.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from dlclinic.api import prepare_model
from dlclinic.cli.flags import (
    CategoricalOpt,
    DeviceOpt,
    InputsOpt,
    MaxLengthOpt,
    ModalityOpt,
    NumericOpt,
    PrecisionOpt,
    TextColOpt,
    TokenizerOpt,
    check_placement,
)
from dlclinic.cli.options import (
    CacheOpt,
    CleanDemoOpt,
    DataOptions,
    DemoOpt,
    DeployOpt,
    EpochsOpt,
    GroupOpt,
    IdOpt,
    LabelOpt,
    ModelOpt,
    SeedOpt,
    TestOpt,
    TrainOpt,
    WeightsOpt,
    check_writable,
    load_case,
    redact_url,
)
from dlclinic.cli.progress import RichProgress
from dlclinic.core.atomic import atomic_path
from dlclinic.core.case import Case
from dlclinic.core.errors import ConfigError
from dlclinic.core.evidence import Evidence, EvidenceConfig
from dlclinic.core.fingerprint import fingerprint_model
from dlclinic.core.recipe import FitConfig
from dlclinic.monitoring import Reference
from dlclinic.serve.app import ServeConfig, create_app
from dlclinic.serve.backends import make_backend
from dlclinic.serve.batching import BatcherFactory
from dlclinic.serve.ray_engine import require_ray, run_ray
from dlclinic.serve.store import PredictionStore
from dlclinic.serve.supervision import exit_with_parent

__all__ = ["app_from_env", "serve"]

_SPEC_ENV = "DLCLINIC_SERVE_SPEC"
_TOKEN_ENV = "DLCLINIC_SERVE_TOKEN"
_MASTER_ENV = "DLCLINIC_SERVE_MASTER_PID"


class LogMode(str, Enum):
    durable = "durable"
    async_ = "async"


class EngineKind(str, Enum):
    embedded = "embedded"
    ray = "ray"


class BackendKind(str, Enum):
    auto = "auto"
    torch = "torch"
    onnx = "onnx"


def _data_options(d: dict[str, Any]) -> DataOptions:
    """The data options recorded in a serve spec."""

    def path(key: str) -> Path | None:
        return None if d[key] is None else Path(d[key])

    return DataOptions(
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
        categorical=d.get("categorical"),
        numeric=d.get("numeric"),
        modality=d.get("modality"),
        text_col=d.get("text_col"),
        tokenizer=d.get("tokenizer"),
        max_length=d.get("max_length"),
        inputs=d.get("inputs"),
    )


def _data_spec(opts: DataOptions) -> dict[str, Any]:
    """The data options as a serve spec records them (absolute paths)."""

    def path(p: Path | None) -> str | None:
        return None if p is None else str(p.absolute())

    return {
        "demo": opts.demo,
        "clean_demo": opts.clean_demo,
        "train": path(opts.train),
        "test": path(opts.test),
        "deploy": path(opts.deploy),
        "label_col": opts.label_col,
        "group_col": opts.group_col,
        "id_col": opts.id_col,
        "model": opts.model,
        "weights": path(opts.weights),
        "categorical": opts.categorical,
        "numeric": opts.numeric,
        "modality": opts.modality,
        "text_col": opts.text_col,
        "tokenizer": opts.tokenizer,
        "max_length": opts.max_length,
        "inputs": opts.inputs,
    }


def _build_server(spec: dict[str, Any], make_batcher: BatcherFactory | None = None) -> Any:
    """The ASGI app described by a serve spec (what each ``--workers`` process and each Ray replica runs)."""
    workers = int(spec.get("workers", 1))
    if workers > 1:  # share the cores between the worker processes instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    case = prepare_model(
        load_case(_data_options(spec["data"])),
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
        device=spec.get("device"),
        precision=spec.get("precision") or "fp32",
    )
    reference = Reference.load(spec["reference"]) if spec.get("reference") else None
    cfg = ServeConfig(**{**spec["config"], "token": os.environ.get(_TOKEN_ENV) or None})
    store = PredictionStore(spec["store"], durable=cfg.log_mode == "durable") if spec.get("store") else None
    return create_app(
        backend,
        reference=reference,
        store=store,
        config=cfg,
        class_names=case.class_names,
        title=f"dlclinic: {case.name} ({desc})",
        make_batcher=make_batcher,
    )


def app_from_env() -> Any:
    """uvicorn factory for ``--workers``: the spec file named by ``$DLCLINIC_SERVE_SPEC``."""
    path = os.environ.get(_SPEC_ENV)
    if not path:
        raise ConfigError(f"${_SPEC_ENV} is not set; expected the serve spec written by `dlclinic serve`")
    if os.environ.get(_MASTER_ENV, "").isdigit():
        exit_with_parent(int(os.environ[_MASTER_ENV]))  # no orphan serving on after a kill -9 of the master
    return _build_server(json.loads(Path(path).read_text()))


def _reference(case: Case, out: Path, cache_dir: Path | None) -> str | None:
    """Save the drift reference of the labelled test split; ``None`` (with a warning) without one."""
    if case.get("test") is None or not case.splits["test"].labelled:
        typer.echo(
            "warning: no labelled --test split: no reference, so drift and estimated accuracy are not measured",
            err=True,
        )
        return None
    ev = Evidence(case, EvidenceConfig(), cache_dir=cache_dir)
    emb = ev.get("embeddings", "test") if ev.embedding_source != "input-pca" else None
    ref = Reference.build(
        ev.get("logits", "test"),
        case.splits["test"].y,
        emb,
        case.class_names,
        meta={"split": "test", "model": case.model_source},
    )
    return str(ref.save(out / "reference.npz"))


def _run(spec: dict[str, Any], spec_path: Path, host: str, port: int, token: str | None, drain_s: float) -> None:
    """Serve with uvicorn: the app itself, or ``--workers`` processes that each build it from the spec."""
    import uvicorn

    if token:
        os.environ[_TOKEN_ENV] = token
    typer.echo(f"serving on http://{host}:{port}  (docs /docs, dashboard /dashboard, metrics /metrics)", err=True)
    workers = int(spec["workers"])
    if spec.get("engine") == EngineKind.ray.value:
        cfg = ServeConfig(**spec["config"])
        run_ray(
            functools.partial(_build_server, spec), replicas=int(spec["replicas"]), config=cfg, host=host, port=port
        )
    elif workers > 1:
        os.environ[_SPEC_ENV] = str(spec_path.absolute())
        os.environ[_MASTER_ENV] = str(os.getpid())
        uvicorn.run(
            "dlclinic.cli.serve:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="warning",
            timeout_graceful_shutdown=int(drain_s),
        )
    else:
        uvicorn.run(
            _build_server(spec), host=host, port=port, log_level="warning", timeout_graceful_shutdown=int(drain_s)
        )


StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        help="Prediction log: a file path (SQLite, WAL) or a URL sqlite:///log.db / postgresql://user@host/db (needs dlclinic[postgres]).",
    ),
]
ServeOutOpt = Annotated[
    Path,
    typer.Option("--out", help="Folder for reference.npz, the serve spec and (by default) the prediction log."),
]
HostOpt = Annotated[str, typer.Option("--host", help="Interface to listen on (127.0.0.1: this machine only).")]
BackendOpt = Annotated[
    BackendKind,
    typer.Option("--backend", help="torch (eager), onnx (verified ONNX export run by onnxruntime) or auto."),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        help=f"Bearer token required on data endpoints (prefer ${_TOKEN_ENV}: command lines are visible to other users).",
    ),
]
VersionOpt = Annotated[
    str | None,
    typer.Option("--model-version", help="Recorded with every logged prediction (default: the model's fingerprint)."),
]


NoStoreOpt = Annotated[bool, typer.Option("--no-store", help="Do not log predictions.")]
PortOpt = Annotated[int, typer.Option("--port", min=0, max=65535)]
WorkersOpt = Annotated[int, typer.Option("--workers", min=1, help="Worker processes (each loads the model).")]
EngineOpt = Annotated[
    EngineKind,
    typer.Option(
        "--engine",
        help="embedded: uvicorn in this process (--workers N); ray: Ray Serve replicas (--replicas N, @serve.batch; needs dlclinic[ray]).",
    ),
]
ReplicasOpt = Annotated[
    int, typer.Option("--replicas", min=1, help="With --engine ray: Ray Serve replicas (each loads the model).")
]
MaxBatchOpt = Annotated[
    int, typer.Option("--max-batch", min=1, help="Most rows per model call (1 = no dynamic batching).")
]
MaxWaitOpt = Annotated[
    float, typer.Option("--max-wait-ms", min=0, help="How long a request waits for its batch to fill.")
]
MaxQueueOpt = Annotated[int, typer.Option("--max-queue", min=1, help="Most queued rows; beyond, 503 with Retry-After.")]
MaxRowsOpt = Annotated[int, typer.Option("--max-rows", min=1, help="Most rows per request (413 beyond).")]
MaxBodyOpt = Annotated[float, typer.Option("--max-body-mb", min=0.001, help="Largest request body in MB (413 beyond).")]
StoreInputsOpt = Annotated[
    bool, typer.Option("--store-inputs", help="Log the inputs themselves, not only their SHA-256.")
]
LogModeOpt = Annotated[
    LogMode,
    typer.Option(
        "--log-mode",
        help="durable: answer only once the log rows are committed and on disk (group commit); async: answer first (faster, a crash loses the last rows).",
    ),
]
SyncLogOpt = Annotated[
    bool, typer.Option("--sync-log", hidden=True, help="Kept for old scripts: durable logging is the default.")
]
WindowOpt = Annotated[
    int, typer.Option("--window", min=2, help="Predictions per live drift window (/metrics, /dashboard).")
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Prepare model, reference and spec, then exit without serving.")
]


def _bearer(token: str | None, host: str) -> str | None:
    """The bearer token (``--token`` or the environment); warns when serving beyond this machine without one."""
    token = token or os.environ.get(_TOKEN_ENV) or None
    if host not in ("127.0.0.1", "localhost", "::1") and token is None:
        typer.echo(
            f"warning: listening on {host} without a bearer token: anyone who can reach this port can query the model (set ${_TOKEN_ENV})",
            err=True,
        )
    return token


def _write_spec(spec: dict[str, Any], out: Path) -> Path:
    """Write ``serve-spec.json`` (what every worker process builds its server from) and say what it holds."""
    spec_path = out / "serve-spec.json"
    with atomic_path(spec_path) as tmp:
        tmp.write_text(json.dumps(spec, indent=2))
    store_url = spec["store"]
    typer.echo(
        f"reference: {spec['reference'] or 'none'}; log: {redact_url(store_url) if store_url else 'off'}; model version {spec['config']['model_version']}",
        err=True,
    )
    return spec_path


def _check_engine(engine: EngineKind, workers: int, replicas: int) -> None:
    """Refuse engine options that do not go together; with ``--engine ray``, fail now if Ray is missing."""
    if engine is EngineKind.ray:
        if workers > 1:
            raise ConfigError(f"--workers {workers} with --engine ray: expected --replicas {workers} instead")
        require_ray()  # one line naming dlclinic[ray], before the model is trained or loaded
    elif replicas > 1:
        raise ConfigError(f"--replicas {replicas} needs --engine ray; the embedded engine scales with --workers")


# long: one Typer parameter per option (34 of them); the body is a dozen lines
def serve(
    demo: DemoOpt = None,
    clean_demo: CleanDemoOpt = None,
    train: TrainOpt = None,
    test: TestOpt = None,
    deploy: DeployOpt = None,
    label_col: LabelOpt = None,
    group_col: GroupOpt = None,
    id_col: IdOpt = None,
    categorical: CategoricalOpt = None,
    numeric: NumericOpt = None,
    modality: ModalityOpt = None,
    text_col: TextColOpt = None,
    tokenizer: TokenizerOpt = None,
    max_length: MaxLengthOpt = None,
    inputs: InputsOpt = None,
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    out: ServeOutOpt = Path("dlclinic-serve"),
    store: StoreOpt = None,
    no_store: NoStoreOpt = False,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    workers: WorkersOpt = 1,
    engine: EngineOpt = EngineKind.embedded,
    replicas: ReplicasOpt = 1,
    backend: BackendOpt = BackendKind.auto,
    max_batch: MaxBatchOpt = 64,
    max_wait_ms: MaxWaitOpt = 5.0,
    max_queue: MaxQueueOpt = 2048,
    max_rows: MaxRowsOpt = 1024,
    max_body_mb: MaxBodyOpt = 16.0,
    token: TokenOpt = None,
    model_version: VersionOpt = None,
    store_inputs: StoreInputsOpt = False,
    log_mode: LogModeOpt = LogMode.durable,
    sync_log: SyncLogOpt = False,
    window: WindowOpt = 200,
    cache_dir: CacheOpt = None,
    epochs: EpochsOpt = 15,
    seed: SeedOpt = 0,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Serve the model over HTTP: /predict, /feedback, /health, /ready, /metrics, /dashboard, /docs."""
    check_writable(out)
    check_placement(device, precision)  # a device this machine lacks fails before any work
    _check_engine(engine, workers, replicas)
    if sync_log and log_mode is LogMode.async_:
        raise ConfigError("--sync-log and --log-mode async contradict each other; expected one of them")
    token = _bearer(token, host)
    opts = DataOptions(
        demo,
        clean_demo,
        train,
        test,
        deploy,
        label_col,
        group_col,
        id_col,
        model,
        weights,
        categorical=categorical,
        numeric=numeric,
        modality=modality,
        text_col=text_col,
        tokenizer=tokenizer,
        max_length=max_length,
        inputs=inputs,
    )
    fit_cfg = FitConfig(epochs=epochs, seed=seed)
    case = prepare_model(load_case(opts), fit_config=fit_cfg, cache_dir=cache_dir, progress=RichProgress())
    out.mkdir(parents=True, exist_ok=True)
    reference_path = _reference(case, out, cache_dir)
    config = ServeConfig(
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        max_rows=max_rows,
        max_body_bytes=int(max_body_mb * 1024 * 1024),
        model_version=model_version or fingerprint_model(case.model)[:12],
        store_inputs=store_inputs,
        log_mode=log_mode.value,
        window=window,
    )
    spec = {
        "data": _data_spec(opts),
        "epochs": epochs,
        "seed": seed,
        "device": device,
        "precision": precision,
        "cache_dir": None if cache_dir is None else str(cache_dir.absolute()),
        "backend": backend.value,
        "out": str(out.absolute()),
        "reference": reference_path,
        "store": None if no_store else (store or str(out / "predictions.db")),
        "workers": workers,
        "engine": engine.value,
        "replicas": replicas,
        "config": {k: v for k, v in dataclasses.asdict(config).items() if k != "token"},
    }
    spec_path = _write_spec(spec, out)
    if not dry_run:
        _run(spec, spec_path, host, port, token, config.drain_timeout_s)
