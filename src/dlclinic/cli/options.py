"""Option plumbing shared by the commands: the data options, the enums, the case they load, ``--out`` checks."""

from __future__ import annotations

import dataclasses
import os
import shlex
import tempfile
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from dlclinic.cli.flags import column_list
from dlclinic.core.case import Case, infer_modality
from dlclinic.core.errors import ConfigError
from dlclinic.core.evidence import EvidenceConfig
from dlclinic.core.inference import check_label_range
from dlclinic.core.inputs import parts_from_metadata, wrap_factory, wrap_model
from dlclinic.core.recipe import FitConfig
from dlclinic.core.threads import native_threads, torch_threads
from dlclinic.demo import DEMO_KINDS, demo_case
from dlclinic.io import load_case as load_files
from dlclinic.io import load_factory, load_model

__all__ = [
    "CleanMode",
    "DataOptions",
    "DemoArgsGroup",
    "DemoKind",
    "FailOn",
    "OofMethod",
    "check_writable",
    "configs",
    "fails",
    "load_case",
    "redact_url",
]


class FailOn(str, Enum):
    """The ``--fail-on`` level of ``checkup`` and ``monitor``."""

    warn = "warn"
    fail = "fail"
    never = "never"


def fails(fail_on: FailOn | str, worst: str) -> bool:
    """Whether a worst status ``worst`` crosses the ``--fail-on`` level (``error`` counts as a failure)."""
    level = FailOn(fail_on)
    return (level is FailOn.warn and worst in ("warn", "fail", "error")) or (
        level is FailOn.fail and worst in ("fail", "error")
    )


class OofMethod(str, Enum):
    auto = "auto"
    embeddings = "embeddings"
    kfold = "kfold"


class CleanMode(str, Enum):
    drop = "drop"
    relabel = "relabel"


def check_writable(out: Path, option: str = "--out") -> None:
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
    try:  # permission bits do not tell it all (root, read-only mounts, /proc): create and remove a file
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".dlclinic-write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"{option} {out}: expected a writable folder, found {probe} not writable ({exc.strerror or type(exc).__name__})"
        ) from None


@dataclasses.dataclass(frozen=True)
class DataOptions:
    """The data and model options of a command (``--demo``, ``--train`` ... ``--weights``)."""

    demo: str | None  # the demo's kind (image, text, sequence); True/False (older serve specs) read as image/None
    clean_demo: str | None
    train: Path | None
    test: Path | None
    deploy: Path | None
    label_col: str | None
    group_col: str | None
    id_col: str | None
    model: str | None
    weights: Path | None
    allow_pickle: bool = False
    categorical: str | None = None
    numeric: str | None = None
    modality: str | None = None
    text_col: str | None = None
    tokenizer: str | None = None
    max_length: int | None = None
    inputs: str | None = None

    def __post_init__(self) -> None:
        for name in ("demo", "clean_demo"):  # a DemoKind, a kind's name, or a bool of a serve spec written before kinds
            value = getattr(self, name)
            kind = "image" if value is True else None if value is False or value is None else DemoKind(value).value
            object.__setattr__(self, name, kind)

    def cli_args(self) -> str:
        if self.demo or self.clean_demo:
            flag, kind = ("--clean-demo", self.clean_demo) if self.clean_demo else ("--demo", self.demo)
            return flag if kind == "image" else f"{flag} {kind}"
        parts = []
        for flag, value in (
            ("--train", self.train),
            ("--test", self.test),
            ("--deploy", self.deploy),
            ("--label-col", self.label_col),
            ("--group-col", self.group_col),
            ("--id-col", self.id_col),
            ("--categorical", self.categorical),
            ("--numeric", self.numeric),
            ("--modality", self.modality),
            ("--text-col", self.text_col),
            ("--tokenizer", self.tokenizer),
            ("--max-length", self.max_length),
            ("--inputs", self.inputs),
            ("--model", self.model),
            ("--weights", self.weights),
        ):
            if value is not None:
                parts.append(f"{flag} {shlex.quote(str(value))}")
        if self.allow_pickle:
            parts.append("--allow-pickle")
        return " ".join(parts)


def _data_case(opts: DataOptions) -> Case:
    """The demo case or the user's files, before the model options."""
    if (opts.demo or opts.clean_demo) and opts.train is not None:
        raise ConfigError("--demo and --train are exclusive: expected the demo case or your own data, found both")
    if opts.demo or opts.clean_demo:
        given = (
            opts.test,
            opts.deploy,
            opts.label_col,
            opts.group_col,
            opts.id_col,
            opts.categorical,
            opts.numeric,
            opts.text_col,
            opts.tokenizer,
            opts.inputs,
        )
        if any(v is not None for v in given):
            raise ConfigError("--demo brings its own splits: expected no --test/--deploy/--*-col with it")
        return demo_case(str(opts.clean_demo or opts.demo), clean=bool(opts.clean_demo))[0]
    if opts.train is None:
        raise ConfigError("no data given: expected --train FILE (and usually --test FILE), or --demo")
    return load_files(
        opts.train,
        opts.test,
        opts.deploy,
        label_col=opts.label_col,
        group_col=opts.group_col,
        id_col=opts.id_col,
        categorical=column_list(opts.categorical),
        numeric=column_list(opts.numeric),
        modality=opts.modality,
        text_col=opts.text_col,
        tokenizer=opts.tokenizer,
        max_length=opts.max_length,
        inputs=column_list(opts.inputs),
    )


def load_case(opts: DataOptions) -> Case:
    """The case the data options describe, with the user's model when ``--model`` is given.

    Loaded on one thread: torch or scikit-learn run here on several would start an OpenMP pool
    in this process, and the checkup's forked processes could then use one thread only
    (:func:`dlclinic.core.workers.threads_survive_fork`).
    """
    with torch_threads(1), native_threads(1):
        return _load_case(opts)


def _load_case(opts: DataOptions) -> Case:
    case = _data_case(opts)
    if opts.weights is not None and opts.model is None:
        raise ConfigError("--weights needs --model file.py:factory to load them into")
    if opts.model is not None:
        model, source = load_model(opts.model, weights=opts.weights, allow_pickle=opts.allow_pickle)
        parts = parts_from_metadata(case.metadata)  # several named inputs: the model unpacks the packed rows
        factory = wrap_factory(load_factory(opts.model), parts)
        case = dataclasses.replace(case, model=wrap_model(model, parts), model_source=source, model_factory=factory)
        if opts.modality is None and case.modality != "table":  # the model's layers tell token ids from features
            case = case.with_modality(infer_modality(case.train.x, model))
        check_label_range(case)
    meta = dict(case.metadata)
    meta["cli_args"] = opts.cli_args()
    if opts.weights is not None or (opts.model is not None and ":" not in opts.model):
        meta["model_path"] = str(opts.weights or opts.model)  # ethics.security scans the file (never loads pickles)
    return dataclasses.replace(case, metadata=meta)


def record_recipe(
    case: Case,
    epochs: int,
    seed: int,
    oof: OofMethod,
    layer: str | None,
    device: str | None = None,
    precision: str | None = None,
) -> Case:
    """Add the recipe options that differ from the defaults to the case's recorded arguments.

    The printed remedy commands carry them (:func:`dlclinic.core.results.remedy_command`), so
    a treatment retrains with the same recipe (and on the same ``--device`` / ``--precision``)
    as the checkup that recommended it.
    """
    extra = [
        f"{flag} {shlex.quote(str(value))}"
        for flag, value, default in (
            ("--epochs", epochs, 15),
            ("--seed", seed, 0),
            ("--oof", oof.value, OofMethod.auto.value),
            ("--embedding-layer", layer, None),
            ("--device", device, None),
            ("--precision", precision, None),
        )
        if value != default
    ]
    args = " ".join([str(case.metadata.get("cli_args", "")), *extra]).strip()
    return dataclasses.replace(case, metadata={**case.metadata, "cli_args": args})


def configs(
    epochs: int, seed: int, oof: OofMethod, layer: str | None, no_cache: bool
) -> tuple[FitConfig, EvidenceConfig]:
    """The training recipe and the evidence settings of ``checkup`` and ``treat``."""
    return FitConfig(epochs=epochs, seed=seed), EvidenceConfig(
        oof=oof.value, embedding_layer=layer, seed=seed, cache=not no_cache
    )


class DemoKind(str, Enum):
    """The embedded demo cases (``--demo`` alone is ``image``)."""

    image = "image"
    text = "text"
    sequence = "sequence"


def demo_argv(args: list[str]) -> list[str]:
    """``--demo``/``--clean-demo`` not followed by a demo kind get ``image``: ``--demo`` alone keeps meaning the image demo.

    Typer has no option with an optional value, so the command line is completed before parsing.

    Example:
        >>> demo_argv(["checkup", "--demo", "--out", "o"]), demo_argv(["checkup", "--demo", "text"])
        (['checkup', '--demo', 'image', '--out', 'o'], ['checkup', '--demo', 'text'])
    """
    out: list[str] = []
    for i, arg in enumerate(args):
        if arg == "--":
            return out + args[i:]
        out.append(arg)
        if arg in ("--demo", "--clean-demo") and (i + 1 == len(args) or args[i + 1] not in DEMO_KINDS):
            out.append(DemoKind.image.value)
    return out


class DemoArgsGroup(TyperGroup):
    """The ``dlclinic`` group: completes ``--demo``/``--clean-demo`` with no kind (:func:`demo_argv`) before parsing."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # ctx: the click Context typer vendors
        return super().parse_args(ctx, demo_argv(args))


DemoOpt = Annotated[
    DemoKind | None,
    typer.Option(
        "--demo",
        help="Use an embedded demo case with planted defects: image (MNIST digits; the default when no kind follows), text (fortunes quotes, an LSTM; needs `apt-get install fortunes`) or sequence (MNIST-1D, a GRU).",
    ),
]
CleanDemoOpt = Annotated[
    DemoKind | None,
    typer.Option(
        "--clean-demo", help="The same demo data with no planted defects (a control case); kind as for --demo."
    ),
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


def redact_url(url: str) -> str:
    """A store URL without its password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':')[0]}:***@{host}"
    return url
