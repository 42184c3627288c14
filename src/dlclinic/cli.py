"""The ``dlclinic`` command line: parse, call the library, render — nothing more.

Exit codes: 0 success; 1 the report crossed ``--fail-on``; 2 bad input or options
(one line on stderr, no traceback, no partial files).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from dlclinic.core.errors import ConfigError, DlclinicError, InputError

app = typer.Typer(
    name="dlclinic",
    help="Measure, treat and verify the 31 classic challenges of deep learning on your own model and data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
demo_app = typer.Typer(help="The embedded demo case (5,000 MNIST digits with planted defects).", no_args_is_help=True)
app.add_typer(demo_app, name="demo")


class FailOn(str, Enum):
    warn = "warn"
    fail = "fail"
    never = "never"


class OofMethod(str, Enum):
    auto = "auto"
    embeddings = "embeddings"
    kfold = "kfold"


class CleanMode(str, Enum):
    drop = "drop"
    relabel = "relabel"


# -- progress and output ---------------------------------------------------------------------
def _no_advance(n: int = 1) -> None:
    """Progress sink that ignores its input."""


class RichProgress:
    """Rich progress bars on stderr for every long step (the library's Progress protocol)."""

    def __init__(self, enabled: bool = True) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.enabled = enabled and self.console.is_terminal

    @contextmanager
    def step(self, description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
        if not self.enabled:
            yield _no_advance
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        ) as bar:
            task = bar.add_task(description, total=total)

            def advance(n: int = 1) -> None:
                bar.advance(task, n)

            yield advance


def _check_writable(out: Path, option: str = "--out") -> None:
    """Fail early (before any long work, creating nothing) when ``out`` cannot become a writable folder."""
    probe = out.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{option} {out}: expected a folder, found a file")
    if not probe.is_dir():
        raise ConfigError(f"{option} {out}: expected a writable folder, found that {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {out}: expected a writable folder, found {probe} not writable")


# -- case from options -------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DataOptions:
    demo: bool
    clean_demo: bool
    train: Path | None
    test: Path | None
    deploy: Path | None
    label_col: str | None
    group_col: str | None
    id_col: str | None
    model: str | None
    weights: Path | None
    allow_pickle: bool = False

    def cli_args(self) -> str:
        if self.demo or self.clean_demo:
            return "--demo" if self.demo else "--clean-demo"
        parts = []
        for flag, value in (
            ("--train", self.train),
            ("--test", self.test),
            ("--deploy", self.deploy),
            ("--label-col", self.label_col),
            ("--group-col", self.group_col),
            ("--id-col", self.id_col),
            ("--model", self.model),
            ("--weights", self.weights),
        ):
            if value is not None:
                parts.append(f"{flag} {value}")
        return " ".join(parts)


def _load_case(opts: DataOptions) -> Any:
    if (opts.demo or opts.clean_demo) and opts.train is not None:
        raise ConfigError("--demo and --train are exclusive: expected the demo case or your own data, found both")
    if opts.demo or opts.clean_demo:
        if any(v is not None for v in (opts.test, opts.deploy, opts.label_col, opts.group_col, opts.id_col)):
            raise ConfigError("--demo brings its own splits: expected no --test/--deploy/--*-col with it")
        from dlclinic.demo import build_demo

        case, _ = build_demo(clean=opts.clean_demo)
    else:
        if opts.train is None:
            raise ConfigError("no data given: expected --train FILE (and usually --test FILE), or --demo")
        from dlclinic.io import load_case

        case = load_case(
            opts.train, opts.test, opts.deploy, label_col=opts.label_col, group_col=opts.group_col, id_col=opts.id_col
        )
    if opts.weights is not None and opts.model is None:
        raise ConfigError("--weights needs --model file.py:factory to load them into")
    if opts.model is not None:
        from dlclinic.io import load_factory, load_model

        model, source = load_model(opts.model, weights=opts.weights, allow_pickle=opts.allow_pickle)
        case = dataclasses.replace(case, model=model, model_source=source, model_factory=load_factory(opts.model))
    meta = dict(case.metadata)
    meta["cli_args"] = opts.cli_args()
    if opts.weights is not None or (opts.model is not None and ":" not in opts.model):
        meta["model_path"] = str(opts.weights or opts.model)  # ethics.security scans the file (never loads pickles)
    return dataclasses.replace(case, metadata=meta)


DemoOpt = Annotated[
    bool, typer.Option("--demo", help="Use the embedded demo case (MNIST digits with planted defects).")
]
CleanDemoOpt = Annotated[
    bool, typer.Option("--clean-demo", help="The demo images with no planted defects (a control case).")
]
TrainOpt = Annotated[
    Path | None,
    typer.Option("--train", help="Training data: .npz, .csv, .parquet or an image folder root/<class>/*.png."),
]
TestOpt = Annotated[Path | None, typer.Option("--test", help="Held-out labelled data, same format as --train.")]
DeployOpt = Annotated[Path | None, typer.Option("--deploy", help="Data seen after deployment (labels optional).")]
LabelOpt = Annotated[str | None, typer.Option("--label-col", help="Label column (CSV/Parquet) or npz key.")]
GroupOpt = Annotated[str | None, typer.Option("--group-col", help="Sensitive-attribute column.")]
IdOpt = Annotated[str | None, typer.Option("--id-col", help="Sample-id column.")]
ModelOpt = Annotated[
    str | None,
    typer.Option("--model", help="file.py:factory, model.pt2 or model.onnx. Without it dlclinic trains a baseline."),
]
AllowPickleOpt = Annotated[
    bool,
    typer.Option(
        "--allow-pickle",
        help="Load a whole pickled --model file you trust (scanned first; files that would run OS/network/interpreter code are refused anyway).",
    ),
]
WeightsOpt = Annotated[
    Path | None,
    typer.Option(
        "--weights",
        help="Weights for --model file.py:factory: .safetensors or a state_dict .pt (loaded with weights_only=True).",
    ),
]
OutOpt = Annotated[Path, typer.Option("--out", help="Folder for report.html and report.json.")]
CacheOpt = Annotated[
    Path | None, typer.Option("--cache-dir", help="Evidence cache (default ~/.cache/dlclinic or $DLCLINIC_CACHE).")
]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Recompute everything; read and write no cache.")]
OofOpt = Annotated[
    OofMethod,
    typer.Option(
        "--oof",
        help="Out-of-fold probabilities: auto, embeddings (cross-validated head on cached embeddings) or kfold (full retraining).",
    ),
]
LayerOpt = Annotated[
    str | None,
    typer.Option(
        "--embedding-layer", help="Module name whose output is the embedding (default: input of the last Linear)."
    ),
]
EpochsOpt = Annotated[
    int, typer.Option("--epochs", min=1, help="Epochs of the training recipe (baseline and retraining).")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of training and sampling.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No terminal summary, no progress bars.")]


# named flags that are shorthands for --option CHALLENGE.ID.OPTION=VALUE (one flag may set several checks)
_TRAINING_RUN = (
    "model.gradients",
    "optimization.convergence",
    "model.overfitting",
    "compute.training_cost",
    "compute.energy",
)
_CHECK_FLAGS: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "ood": ("--ood", (("data.generalization", "ood"), ("research.open_ended", "ood"))),
    "target_accuracy": ("--target-accuracy", (("data.quantity", "target_accuracy"),)),
    "suspect_region": ("--suspect-region", (("model.interpretability", "suspect_region"),)),
    "suspect_feature": ("--suspect-feature", (("model.interpretability", "suspect_feature"),)),
    "max_size_mb": ("--max-size-mb", (("compute.edge", "max_size_mb"),)),
    "max_memory_mb": ("--max-memory-mb", (("compute.edge", "max_memory_mb"),)),
    "latency_budget_ms": (
        "--latency-budget-ms",
        (("compute.realtime", "latency_budget_ms"), ("deployment.scalability", "warn_p99_ms")),
    ),
    "compile_model": ("--compile", (("compute.realtime", "compile"),)),
    "train_steps": ("--train-steps", tuple((cid, "steps") for cid in _TRAINING_RUN)),
    "tdp_watts": ("--tdp-watts", (("compute.energy", "tdp_watts"),)),
    "carbon_intensity": ("--carbon-intensity", (("compute.energy", "carbon_intensity"),)),
    "budget_hours": ("--budget-hours", (("compute.training_cost", "budget_hours"),)),
    "deploy_window": ("--deploy-window", (("deployment.drift", "window"),)),
    "compare": ("--compare", (("research.benchmark_saturation", "compare"),)),
    "compare_weights": ("--compare-weights", (("research.benchmark_saturation", "compare_weights"),)),
    "unknown_classes": ("--unknown-classes", (("research.open_ended", "unknown_classes"),)),
    "repro_seeds": ("--repro-seeds", (("research.reproducibility", "seeds"),)),
    "tasks": ("--tasks", (("optimization.forgetting", "tasks"),)),
    "positive_class": ("--positive-class", (("ethics.fairness", "positive_class"),)),
    "epsilon": ("--epsilon", (("ethics.security", "epsilon"),)),
    "card": ("--card", (("ethics.misuse", "card_config"), ("ethics.compliance", "card_config"))),
    "audit_log": ("--audit-log", (("ethics.compliance", "audit_log"),)),
    "scan_model": ("--scan-model", (("ethics.security", "model_files"),)),
    "pii": ("--pii", (("data.privacy", "pii_files"), ("ethics.compliance", "pii_files"))),
}

# named flags of `treat`: parameter name and the remedies that take it
_TREAT_FLAGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "pool": ("--pool", ("data.labeling_cost",)),
    "budget": ("--budget", ("data.labeling_cost",)),
    "max_accuracy_drop": ("--max-accuracy-drop", ("model.compression",)),
    "objective": ("--objective", ("model.compression",)),
    "storage": ("--storage", ("model.hyperparameters", "model.architecture")),
    "n_trials": ("--n-trials", ("model.hyperparameters", "model.architecture")),
    "suspect_region": ("--suspect-region", ("model.interpretability",)),
    "suspect_feature": ("--suspect-feature", ("model.interpretability",)),
    "forget": ("--forget", ("ethics.compliance",)),
    "target_epsilon": ("--target-epsilon", ("data.privacy",)),
    "key_file": ("--key-file", ("ethics.misuse", "ethics.compliance")),
}


def _merge_check_flags(options: dict[str, Any], values: dict[str, Any]) -> None:
    """Add the named checkup flags that were given to the ``--option`` mapping."""
    for key, value in values.items():
        if value is None or value is False:
            continue
        flag, targets = _CHECK_FLAGS[key]
        if isinstance(value, Path) and not value.exists():
            raise InputError(f"{flag} {value}: file not found")
        for cid, name in targets:
            options.setdefault(cid, {})[name] = str(value)


def _merge_treat_flags(params: dict[str, Any], challenge: str, values: dict[str, Any]) -> None:
    """Add the named treat flags that were given to the remedy parameters."""
    for key, value in values.items():
        if value is None:
            continue
        flag, cids = _TREAT_FLAGS[key]
        if challenge not in cids:
            raise ConfigError(f"{flag} applies to {', '.join(cids)}, found it with {challenge}")
        if isinstance(value, Path) and not value.exists():
            raise InputError(f"{flag} {value}: file not found")
        params[key] = str(value)


def _configs(epochs: int, seed: int, oof: OofMethod, layer: str | None, no_cache: bool) -> tuple[Any, Any]:
    from dlclinic.core.evidence import EvidenceConfig
    from dlclinic.core.recipe import FitConfig

    return FitConfig(epochs=epochs, seed=seed), EvidenceConfig(
        oof=oof.value, embedding_layer=layer, seed=seed, cache=not no_cache
    )


# -- commands ---------------------------------------------------------------------------------
@app.command()
def checkup(
    demo: DemoOpt = False,
    clean_demo: CleanDemoOpt = False,
    train: TrainOpt = None,
    test: TestOpt = None,
    deploy: DeployOpt = None,
    label_col: LabelOpt = None,
    group_col: GroupOpt = None,
    id_col: IdOpt = None,
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    allow_pickle: AllowPickleOpt = False,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="Challenge ids or categories to examine (repeat or comma-separate)."),
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            "-o",
            help="A check option CHALLENGE.ID.OPTION=VALUE (repeatable), e.g. data.quality.warn_label_issue_fraction=0.05; `dlclinic challenges --check ID` lists them.",
        ),
    ] = None,
    ood: Annotated[
        Path | None,
        typer.Option(
            "--ood",
            help="data.generalization: inputs the model should flag as out-of-distribution (same format as --train); reports OOD AUROC.",
        ),
    ] = None,
    target_accuracy: Annotated[
        float | None,
        typer.Option(
            "--target-accuracy", help="data.quantity: accuracy to reach; reports the training samples predicted for it."
        ),
    ] = None,
    suspect_region: Annotated[
        str | None,
        typer.Option(
            "--suspect-region",
            help="model.interpretability: image region suspected of being a shortcut, rows r0:r1,cols c0:c1 (e.g. 0:4,0:4).",
        ),
    ] = None,
    suspect_feature: Annotated[
        str | None,
        typer.Option("--suspect-feature", help="model.interpretability: table column suspected of being a shortcut."),
    ] = None,
    max_size_mb: Annotated[
        float | None, typer.Option("--max-size-mb", help="compute.edge: model size budget on disk.")
    ] = None,
    max_memory_mb: Annotated[
        float | None, typer.Option("--max-memory-mb", help="compute.edge: peak inference memory budget.")
    ] = None,
    latency_budget_ms: Annotated[
        float | None,
        typer.Option(
            "--latency-budget-ms",
            help="compute.realtime and deployment.scalability: latency budget (p99 under load for the server).",
        ),
    ] = None,
    compile_model: Annotated[
        bool, typer.Option("--compile", help="compute.realtime: also time torch.compile (slow to compile on CPU).")
    ] = False,
    train_steps: Annotated[
        int | None,
        typer.Option(
            "--train-steps", min=10, help="Steps of the short monitored training run shared by the training checks."
        ),
    ] = None,
    tdp_watts: Annotated[
        float | None,
        typer.Option("--tdp-watts", help="compute.energy: CPU package TDP used when no energy counter exists."),
    ] = None,
    carbon_intensity: Annotated[
        float | None, typer.Option("--carbon-intensity", help="compute.energy: grid carbon intensity in gCO2e/kWh.")
    ] = None,
    budget_hours: Annotated[
        float | None,
        typer.Option(
            "--budget-hours", help="compute.training_cost: warn when a full training run is projected above this."
        ),
    ] = None,
    deploy_window: Annotated[
        int | None,
        typer.Option("--deploy-window", min=10, help="deployment.drift: rows per window of the deploy split."),
    ] = None,
    compare: Annotated[
        str | None,
        typer.Option(
            "--compare",
            help="research.benchmark_saturation: another model (file.py:factory, .pt2, .onnx, or saved test predictions .npy/.npz) to test against (McNemar, paired bootstrap).",
        ),
    ] = None,
    compare_weights: Annotated[
        Path | None, typer.Option("--compare-weights", help="Weights for --compare file.py:factory.")
    ] = None,
    unknown_classes: Annotated[
        str | None,
        typer.Option("--unknown-classes", help="research.open_ended: class indices to hold out as unknown, e.g. 8,9."),
    ] = None,
    repro_seeds: Annotated[
        int | None,
        typer.Option("--repro-seeds", min=1, help="research.reproducibility: training seeds for the metric spread."),
    ] = None,
    tasks: Annotated[
        str | None,
        typer.Option(
            "--tasks", help="optimization.forgetting: task sequence from 'classes' (split classes) or 'groups'."
        ),
    ] = None,
    positive_class: Annotated[
        int | None,
        typer.Option(
            "--positive-class",
            help="ethics.fairness: the favourable class for selection rate, TPR and FPR (default: one-vs-rest over classes).",
        ),
    ] = None,
    epsilon: Annotated[
        float | None,
        typer.Option("--epsilon", help="ethics.security: the attack budget of interest (L-inf, in input units)."),
    ] = None,
    card: Annotated[
        Path | None,
        typer.Option(
            "--card",
            help="ethics.misuse / ethics.compliance: model-card facts (intended use, out-of-scope uses, data provenance, ...) as JSON/TOML/YAML.",
        ),
    ] = None,
    audit_log: Annotated[
        Path | None,
        typer.Option(
            "--audit-log",
            help="ethics.compliance: the hash-chained audit trail to append to (default under the cache folder).",
        ),
    ] = None,
    scan_model: Annotated[
        Path | None,
        typer.Option(
            "--scan-model",
            help="ethics.security: a pickle-based model file to scan for code it would run (never loaded).",
        ),
    ] = None,
    pii: Annotated[
        Path | None,
        typer.Option(
            "--pii",
            help="data.privacy / ethics.compliance: a CSV/Parquet file (e.g. the raw table) to scan for personal data; counts only.",
        ),
    ] = None,
    out: OutOpt = Path("dlclinic-report"),
    fail_on: Annotated[
        FailOn, typer.Option("--fail-on", help="Exit 1 when any challenge is at this level or worse (for CI).")
    ] = FailOn.never,
    cache_dir: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    oof: OofOpt = OofMethod.auto,
    embedding_layer: LayerOpt = None,
    epochs: EpochsOpt = 15,
    seed: SeedOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Examine a model and its data for all 31 challenges; write report.html and report.json."""
    from dlclinic.api import checkup as run_checkup
    from dlclinic.challenges import CHECKS
    from dlclinic.core.registry import build_options, parse_assignments
    from dlclinic.report import render_terminal, write_report
    from dlclinic.taxonomy import resolve_ids

    selected = resolve_ids(only) if only else None  # unknown ids fail before any work
    options = parse_assignments(option or [], scoped=True)
    _merge_check_flags(
        options,
        {
            "ood": ood,
            "target_accuracy": target_accuracy,
            "suspect_region": suspect_region,
            "suspect_feature": suspect_feature,
            "max_size_mb": max_size_mb,
            "max_memory_mb": max_memory_mb,
            "latency_budget_ms": latency_budget_ms,
            "compile_model": compile_model,
            "train_steps": train_steps,
            "tdp_watts": tdp_watts,
            "carbon_intensity": carbon_intensity,
            "budget_hours": budget_hours,
            "deploy_window": deploy_window,
            "compare": compare,
            "compare_weights": compare_weights,
            "unknown_classes": unknown_classes,
            "repro_seeds": repro_seeds,
            "tasks": tasks,
            "positive_class": positive_class,
            "epsilon": epsilon,
            "card": card,
            "audit_log": audit_log,
            "scan_model": scan_model,
            "pii": pii,
        },
    )
    for cid, given in options.items():
        if cid not in CHECKS:
            raise ConfigError(
                f"--option for {cid}, which has no check; expected ids among: {', '.join(sorted(CHECKS))}"
            )
        build_options(CHECKS[cid], given)  # bad options fail before any work
    _check_writable(out)
    fit_cfg, ev_cfg = _configs(epochs, seed, oof, embedding_layer, no_cache)
    progress = RichProgress(enabled=not quiet)
    case = _load_case(
        DataOptions(demo, clean_demo, train, test, deploy, label_col, group_col, id_col, model, weights, allow_pickle)
    )
    report = run_checkup(
        case,
        only=selected,
        options=options,
        evidence_config=ev_cfg,
        fit_config=fit_cfg,
        cache_dir=cache_dir,
        progress=progress,
    )
    paths = write_report(report, out, case=case)
    if not quiet:
        render_terminal(report)
        typer.echo(f"report: {paths['html']}  json: {paths['json']}", err=True)
    worst = report.worst_status
    if (fail_on is FailOn.warn and worst in ("warn", "fail", "error")) or (
        fail_on is FailOn.fail and worst in ("fail", "error")
    ):
        raise typer.Exit(1)


@app.command()
def treat(
    challenge: Annotated[str, typer.Argument(help="The challenge to treat, e.g. data.quality.")],
    demo: DemoOpt = False,
    clean_demo: CleanDemoOpt = False,
    train: TrainOpt = None,
    test: TestOpt = None,
    deploy: DeployOpt = None,
    label_col: LabelOpt = None,
    group_col: GroupOpt = None,
    id_col: IdOpt = None,
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    allow_pickle: AllowPickleOpt = False,
    mode: Annotated[
        CleanMode | None,
        typer.Option(
            "--mode", help="data.quality: drop flagged label issues (default) or relabel them with the likely label."
        ),
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            "-o",
            help="A remedy parameter KEY=VALUE (repeatable); `dlclinic challenges --remedy ID` lists them.",
        ),
    ] = None,
    pool: Annotated[
        Path | None,
        typer.Option("--pool", help="data.labeling_cost: unlabelled inputs to rank (same format as --train)."),
    ] = None,
    budget: Annotated[
        int | None, typer.Option("--budget", min=1, help="data.labeling_cost: how many samples to pick for labelling.")
    ] = None,
    max_accuracy_drop: Annotated[
        float | None,
        typer.Option(
            "--max-accuracy-drop",
            help="model.compression: largest accuracy loss accepted for the smaller/faster model.",
        ),
    ] = None,
    objective: Annotated[str | None, typer.Option("--objective", help="model.compression: size or latency.")] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            "--storage",
            help="model.hyperparameters / model.architecture: Optuna storage URL (SQLite file by default; postgresql://... for many workers).",
        ),
    ] = None,
    n_trials: Annotated[
        int | None, typer.Option("--n-trials", min=1, help="model.hyperparameters / model.architecture: Optuna trials.")
    ] = None,
    suspect_region: Annotated[
        str | None,
        typer.Option("--suspect-region", help="model.interpretability: the shortcut region to remove (r0:r1,c0:c1)."),
    ] = None,
    suspect_feature: Annotated[
        str | None, typer.Option("--suspect-feature", help="model.interpretability: the shortcut column to remove.")
    ] = None,
    forget: Annotated[
        Path | None,
        typer.Option(
            "--forget",
            help="ethics.compliance: file of sample ids (or row numbers) to erase; retrains without them and audits them.",
        ),
    ] = None,
    target_epsilon: Annotated[
        float | None,
        typer.Option(
            "--target-epsilon", help="data.privacy: DP-SGD privacy budget epsilon (delta stated in the report)."
        ),
    ] = None,
    key_file: Annotated[
        Path | None,
        typer.Option("--key-file", help="ethics.misuse / ethics.compliance: HMAC key to sign the hash bundle."),
    ] = None,
    out: OutOpt = Path("dlclinic-treatment"),
    cache_dir: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    oof: OofOpt = OofMethod.auto,
    embedding_layer: LayerOpt = None,
    epochs: EpochsOpt = 15,
    seed: SeedOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Apply the remedy of one challenge, retrain, and measure again (before/after in the report)."""
    from dlclinic.api import treat as run_treat
    from dlclinic.challenges import get_remedy
    from dlclinic.core.registry import build_options, parse_assignments
    from dlclinic.report import write_report

    spec = get_remedy(challenge)
    params = parse_assignments(option or [], scoped=False)
    if mode is not None:
        if challenge != "data.quality":
            raise ConfigError(f"--mode applies to data.quality only, found it with {challenge}")
        params["mode"] = mode.value
    _merge_treat_flags(
        params,
        challenge,
        {
            "pool": pool,
            "budget": budget,
            "max_accuracy_drop": max_accuracy_drop,
            "objective": objective,
            "storage": storage,
            "n_trials": n_trials,
            "suspect_region": suspect_region,
            "suspect_feature": suspect_feature,
            "forget": forget,
            "target_epsilon": target_epsilon,
            "key_file": key_file,
        },
    )
    build_options(spec, params)  # bad parameters fail before any work
    _check_writable(out)
    fit_cfg, ev_cfg = _configs(epochs, seed, oof, embedding_layer, no_cache)
    progress = RichProgress(enabled=not quiet)
    case = _load_case(
        DataOptions(demo, clean_demo, train, test, deploy, label_col, group_col, id_col, model, weights, allow_pickle)
    )
    treatment, before, after = run_treat(
        case,
        challenge,
        out_dir=out,
        params=params,
        fit_config=fit_cfg,
        evidence_config=ev_cfg,
        cache_dir=cache_dir,
        progress=progress,
    )
    report = dataclasses.replace(after, treatments=(treatment,))
    paths = write_report(report, out, case=None)
    if not quiet:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"treat {challenge}: {treatment.action}")
        table.add_column("metric")
        table.add_column("before", justify="right")
        table.add_column("after", justify="right")
        for key in treatment.before:
            b, a = treatment.before[key], treatment.after.get(key)
            table.add_row(
                key, f"{b:.4g}" if isinstance(b, float) else str(b), f"{a:.4g}" if isinstance(a, float) else str(a)
            )
        table.add_row("status", treatment.before_status, treatment.after_status)
        console = Console()
        console.print(table)
        for note in treatment.notes:
            console.print(f"[dim]{note}[/dim]")
        typer.echo(f"report: {paths['html']}  json: {paths['json']}", err=True)


@app.command()
def challenges(
    check: Annotated[
        str | None, typer.Option("--check", help="List the options of this challenge's check (for --option).")
    ] = None,
    remedy: Annotated[
        str | None,
        typer.Option("--remedy", help="List the parameters of this challenge's remedy (for treat --option)."),
    ] = None,
) -> None:
    """List the 31 challenges and which of them this version examines and treats."""
    from rich.console import Console
    from rich.table import Table

    from dlclinic.challenges import CHECKS, REMEDIES, get_remedy
    from dlclinic.taxonomy import CHALLENGES, get_challenge

    console = Console()
    if check is not None or remedy is not None:
        for cid, kind in ((check, "check"), (remedy, "remedy")):
            if cid is None:
                continue
            get_challenge(cid)
            if kind == "check":
                if cid not in CHECKS:
                    raise ConfigError(f"no check for {cid!r} in this version; expected one of: {', '.join(CHECKS)}")
                cls = CHECKS[cid].options
            else:
                cls = get_remedy(cid).params
            table = Table(
                title=f"{kind} options of {cid}"
                + (" (--option ID.NAME=VALUE)" if kind == "check" else " (treat --option NAME=VALUE)")
            )
            for col in ("name", "type", "default"):
                table.add_column(col)
            for f in dataclasses.fields(cls):
                default = (
                    f.default
                    if f.default is not dataclasses.MISSING
                    else (f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)")
                )
                table.add_row(f.name, str(f.type), repr(default))
            console.print(table)
        return
    table = Table(title="dlclinic: the 31 challenges")
    for col in ("id", "title", "check", "remedy"):
        table.add_column(col)
    for c in CHALLENGES:
        table.add_row(c.id, c.title, "yes" if c.id in CHECKS else "—", "yes" if c.id in REMEDIES else "—")
    console.print(table)


@demo_app.command("export")
def demo_export(
    directory: Annotated[
        Path, typer.Argument(help="Folder to write train.npz, test.npz, deploy.npz and truth.npz into.")
    ],
    clean: Annotated[bool, typer.Option("--clean", help="Export the control copy without planted defects.")] = False,
) -> None:
    """Write the demo case as npz files, with its ground truth (planted defects)."""
    import numpy as np

    from dlclinic.demo import build_demo

    _check_writable(directory, "DIRECTORY")
    case, truth = build_demo(clean=clean)
    directory.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[str, Path]] = []
    try:
        for name, split in case.splits.items():
            fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                arrays = {"x": split.x, "class_names": np.array(case.class_names)}
                if split.y is not None:
                    arrays["y"] = split.y
                if split.groups is not None:
                    arrays["group"] = split.groups.astype(str)
                np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]
            staged.append((f"{name}.npz", Path(tmp)))
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            np.savez(
                fh,
                flipped=truth.flipped,
                original_labels=truth.original_labels,
                duplicate_pairs=truth.duplicate_pairs,
                leak_pairs=truth.leak_pairs,
                rare_class=np.array(truth.rare_class),
            )
        staged.append(("truth.npz", Path(tmp)))
        for name, tmp_path in staged:
            os.replace(tmp_path, directory / name)
    except BaseException:
        for _, tmp_path in staged:
            tmp_path.unlink(missing_ok=True)
        raise
    typer.echo(f"wrote {', '.join(n for n, _ in staged)} to {directory}")


# Commands that live next to their feature (serve, monitor, replay, ...): each module
# defines ``register(app: typer.Typer) -> None`` and imports its heavy libraries inside
# the command bodies only.
_COMMAND_MODULES: tuple[str, ...] = (
    "dlclinic.commands.deploy",
    "dlclinic.commands.governance",
    "dlclinic.commands.research",
    "dlclinic.commands.model",
)


def _register_commands() -> None:
    import importlib

    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(app)


_register_commands()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning every expected error into one line and exit code 2."""
    try:  # typer >= 0.20 vendors click; older versions use the click package
        from typer._click import exceptions as click_exc
    except ImportError:  # pragma: no cover
        from click import exceptions as click_exc  # type: ignore[no-redef]

    try:
        # without standalone mode, click returns the code of a typer.Exit instead of raising it
        rc = app(args=argv, standalone_mode=False, prog_name="dlclinic")
        if isinstance(rc, int) and rc:
            return rc
    except DlclinicError as exc:
        typer.echo(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", err=True)
        return 2
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        return 130
    except click_exc.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        typer.echo(f"error: {exc.format_message().splitlines()[0]}{hint}", err=True)
        return 2
    except click_exc.ClickException as exc:
        typer.echo(f"error: {exc.format_message().splitlines()[0]}", err=True)
        return 2
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
