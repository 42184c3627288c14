"""Named shorthand flags, each declared once: its Typer parameter and the options it sets.

A checkup flag such as ``--ood FILE`` is a shorthand for ``--option data.generalization.ood=FILE``
(one flag may set several checks); a treat flag such as ``--pool FILE`` sets the remedy parameter
of the same name for the remedies it names. :func:`expand_flags` turns a table into Typer
parameters, and :func:`check_flag_options` / :func:`treat_flag_params` map the given values.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from dlclinic.core.device import check_precision, resolve_device
from dlclinic.core.errors import ConfigError, InputError

__all__ = [
    "CHECKUP_FLAGS",
    "TREAT_FLAGS",
    "CategoricalOpt",
    "DeviceOpt",
    "Flag",
    "InputsOpt",
    "MaxLengthOpt",
    "ModalityOpt",
    "NprocOpt",
    "NumericOpt",
    "PrecisionOpt",
    "TextColOpt",
    "TokenizerOpt",
    "check_flag_options",
    "check_placement",
    "column_list",
    "expand_flags",
    "treat_flag_params",
]

# The column-kind flags of every command that reads tables (checkup, treat, export, serve): they
# change how the data is encoded, so they are data options (``DataOptions``), not check options.
CategoricalOpt = Annotated[
    str | None,
    typer.Option(
        "--categorical",
        help="Table columns to one-hot encode whatever their values, comma-separated (default: text columns, category dtypes and integer columns with 3..20 distinct values that are ≤ 5 % of the train rows).",
    ),
]
NumericOpt = Annotated[
    str | None,
    typer.Option(
        "--numeric",
        help="Table columns to keep as one numeric feature, comma-separated (overrides the integer-coded default).",
    ),
]

ModalityOpt = Annotated[
    str | None,
    typer.Option(
        "--modality",
        help="What a row is: image, table, vector, tokens (integer token ids for a model with an embedding layer; kept int64) or sequence (float time series). Default: read from the file type, shapes, dtype and the model's layers.",
    ),
]

TextColOpt = Annotated[
    str | None,
    typer.Option(
        "--text-col",
        help="CSV/Parquet column of raw text: encoded with --tokenizer into token ids (padding 0); the report shows the text of flagged rows.",
    ),
]
TokenizerOpt = Annotated[
    str | None,
    typer.Option(
        "--tokenizer",
        help="With --text-col: a Hugging Face tokenizers file (tokenizer.json, extra 'text') or file.py:function returning one text's ids (id 0 is padding).",
    ),
]
MaxLengthOpt = Annotated[
    int | None,
    typer.Option(
        "--max-length", min=1, help="With --text-col: tokens per row (padded/cut; default train's longest, ≤ 256)."
    ),
]

InputsOpt = Annotated[
    str | None,
    typer.Option(
        "--inputs",
        help="For a model whose forward takes several tensors: the .npz keys in its order, comma-separated (e.g. input_ids,attention_mask); passed by these names.",
    ),
]

NprocOpt = Annotated[
    int,
    typer.Option(
        "--nproc",
        min=1,
        help="Processes to train and score on (this machine): runs the command again under torchrun --standalone --nproc-per-node N; the trainings use DistributedDataParallel (gloo on CPU, NCCL on GPU), the evidence pass is sharded, rank 0 writes the report. Several machines: run torchrun yourself (docs/distributed.md).",
    ),
]

# Where the model runs, and in which precision (checkup, treat, serve, export): dlclinic.core.device
DeviceOpt = Annotated[
    str | None,
    typer.Option(
        "--device",
        help="Where the model, the baseline and every retraining run: auto (cuda, else mps, else cpu), cpu, cuda, cuda:N or mps. Default: cpu. A device this machine lacks is an error.",
    ),
]
PrecisionOpt = Annotated[
    str | None,
    typer.Option(
        "--precision",
        help="Mixed precision of forward passes and training (torch.autocast): fp32 (default), bf16 (cpu, cuda) or fp16 (cuda, mps); stated in the report's environment.",
    ),
]


BudgetOpt = Annotated[
    str | None,
    typer.Option(
        "--budget",
        help="Time for the whole checkup, e.g. 10m, 90s, 1h30m: the evidence pass first, then each check gets a share of what is left and the report says per check what it sampled or cut (dlclinic.core.budget). Default: none (every check at its defaults).",
    ),
]


def check_placement(device: str | None, precision: str | None) -> None:
    """Fail before any work when ``--device`` is not on this machine or does not support ``--precision`` (one line)."""
    check_precision(precision or "fp32", resolve_device(device or "cpu"))


def column_list(value: str | None) -> tuple[str, ...]:
    """``"a, b"`` → ``("a", "b")``; ``None`` → ``()``."""
    return tuple(c.strip() for c in (value or "").split(",") if c.strip())


@dataclasses.dataclass(frozen=True)
class Flag:
    """One shorthand flag: its parameter, type and help, and the ``CHALLENGE.ID.OPTION`` targets it sets."""

    param: str
    flag: str
    type: Any
    help: str
    targets: tuple[str, ...]
    min: int | None = None

    def split_targets(self) -> tuple[tuple[str, str], ...]:
        """``((challenge_id, option), ...)``."""
        return tuple((t.rpartition(".")[0], t.rpartition(".")[2]) for t in self.targets)

    def parameter(self) -> inspect.Parameter:
        """The Typer parameter of this flag (``False`` by default for a switch, else ``None``)."""
        option = (
            typer.Option(self.flag, help=self.help)
            if self.min is None
            else typer.Option(self.flag, min=self.min, help=self.help)
        )
        kind = self.type if self.type is bool else self.type | None
        return inspect.Parameter(
            self.param,
            inspect.Parameter.KEYWORD_ONLY,
            default=False if self.type is bool else None,
            annotation=Annotated[kind, option],
        )


_TRAINING_RUN = (
    "model.gradients",
    "optimization.convergence",
    "model.overfitting",
    "compute.training_cost",
    "compute.energy",
)

CHECKUP_FLAGS: tuple[Flag, ...] = (
    Flag("ood", "--ood", Path, "data.generalization: inputs the model should flag as out-of-distribution (same format as --train); reports OOD AUROC.", ("data.generalization.ood", "research.open_ended.ood")),
    Flag("target_accuracy", "--target-accuracy", float, "data.quantity: accuracy to reach; reports the training samples predicted for it.", ("data.quantity.target_accuracy",)),
    Flag("suspect_region", "--suspect-region", str, "model.interpretability: image region suspected of being a shortcut, rows r0:r1,cols c0:c1 (e.g. 0:4,0:4).", ("model.interpretability.suspect_region",)),
    Flag("suspect_feature", "--suspect-feature", str, "model.interpretability: table column suspected of being a shortcut.", ("model.interpretability.suspect_feature",)),
    Flag("max_size_mb", "--max-size-mb", float, "compute.edge: model size budget on disk.", ("compute.edge.max_size_mb",)),
    Flag("max_memory_mb", "--max-memory-mb", float, "compute.edge: peak inference memory budget.", ("compute.edge.max_memory_mb",)),
    Flag("latency_budget_ms", "--latency-budget-ms", float, "compute.realtime and deployment.scalability: latency budget (p99 under load for the server).", ("compute.realtime.latency_budget_ms", "deployment.scalability.warn_p99_ms")),
    Flag("compile_model", "--compile", bool, "compute.realtime: also time torch.compile (slow to compile on CPU).", ("compute.realtime.compile",)),
    Flag("train_steps", "--train-steps", int, "Steps of the short monitored training run shared by the training checks.", tuple(f"{cid}.steps" for cid in _TRAINING_RUN), min=10),
    Flag("tdp_watts", "--tdp-watts", float, "compute.energy: CPU package TDP used when no energy counter exists.", ("compute.energy.tdp_watts",)),
    Flag("carbon_intensity", "--carbon-intensity", float, "compute.energy: grid carbon intensity in gCO2e/kWh.", ("compute.energy.carbon_intensity",)),
    Flag("budget_hours", "--budget-hours", float, "compute.training_cost: warn when a full training run is projected above this.", ("compute.training_cost.budget_hours",)),
    Flag("deploy_window", "--deploy-window", int, "deployment.drift: rows per window of the deploy split.", ("deployment.drift.window",), min=10),
    Flag("compare", "--compare", str, "research.benchmark_saturation: another model (file.py:factory, .pt2, .onnx, or saved test predictions .npy/.npz) to test against (McNemar, paired bootstrap).", ("research.benchmark_saturation.compare",)),
    Flag("compare_weights", "--compare-weights", Path, "Weights for --compare file.py:factory.", ("research.benchmark_saturation.compare_weights",)),
    Flag("unknown_classes", "--unknown-classes", str, "research.open_ended: class indices to hold out as unknown, e.g. 8,9.", ("research.open_ended.unknown_classes",)),
    Flag("repro_seeds", "--repro-seeds", int, "research.reproducibility: training seeds for the metric spread.", ("research.reproducibility.seeds",), min=1),
    Flag("tasks", "--tasks", str, "optimization.forgetting: the model's declared task sequence, 'classes' (split classes) or 'groups' (--group-col holds task ids); without it the split-class sequence is a what-if, reported but not graded.", ("optimization.forgetting.tasks",)),
    Flag("positive_class", "--positive-class", int, "ethics.fairness: the favourable class for selection rate, TPR and FPR (default: one-vs-rest over classes).", ("ethics.fairness.positive_class",)),
    Flag("epsilon", "--epsilon", float, "ethics.security: the attack budget of interest (L-inf, in input units).", ("ethics.security.epsilon",)),
    Flag("card", "--card", Path, "ethics.misuse / ethics.compliance: model-card facts (intended use, out-of-scope uses, data provenance, ...) as JSON/TOML/YAML.", ("ethics.misuse.card_config", "ethics.compliance.card_config")),
    Flag("audit_log", "--audit-log", Path, "ethics.compliance: the hash-chained audit trail to append to (default under the cache folder).", ("ethics.compliance.audit_log",)),
    Flag("scan_model", "--scan-model", Path, "ethics.security: a pickle-based model file to scan for code it would run (never loaded).", ("ethics.security.model_files",)),
    Flag("pii", "--pii", Path, "data.privacy / ethics.compliance: a CSV/Parquet file (e.g. the raw table) to scan for personal data; counts only.", ("data.privacy.pii_files", "ethics.compliance.pii_files")),
)  # fmt: skip

TREAT_FLAGS: tuple[Flag, ...] = (
    Flag("pool", "--pool", Path, "data.labeling_cost: unlabelled inputs to rank (same format as --train).", ("data.labeling_cost.pool",)),
    Flag("budget", "--budget", int, "data.labeling_cost: how many samples to pick for labelling.", ("data.labeling_cost.budget",), min=1),
    Flag("max_accuracy_drop", "--max-accuracy-drop", float, "model.compression: largest accuracy loss accepted for the smaller/faster model.", ("model.compression.max_accuracy_drop",)),
    Flag("objective", "--objective", str, "model.compression: size or latency.", ("model.compression.objective",)),
    Flag("storage", "--storage", str, "model.hyperparameters / model.architecture: Optuna storage URL (SQLite file by default; postgresql://... for many workers).", ("model.hyperparameters.storage", "model.architecture.storage")),
    Flag("n_trials", "--n-trials", int, "model.hyperparameters / model.architecture: Optuna trials.", ("model.hyperparameters.n_trials", "model.architecture.n_trials"), min=1),
    Flag("n_workers", "--n-workers", int, "model.hyperparameters: processes sharing the Optuna study (more join from other machines with the same --storage postgresql://...).", ("model.hyperparameters.workers",), min=1),
    Flag("suspect_region", "--suspect-region", str, "model.interpretability: the shortcut region to remove (r0:r1,c0:c1).", ("model.interpretability.suspect_region",)),
    Flag("suspect_feature", "--suspect-feature", str, "model.interpretability: the shortcut column to remove.", ("model.interpretability.suspect_feature",)),
    Flag("forget", "--forget", Path, "ethics.compliance: file of sample ids (or row numbers) to erase; retrains without them and audits them.", ("ethics.compliance.forget",)),
    Flag("target_epsilon", "--target-epsilon", float, "data.privacy: DP-SGD privacy budget epsilon (delta stated in the report).", ("data.privacy.target_epsilon",)),
    Flag("key_file", "--key-file", Path, "ethics.misuse / ethics.compliance: HMAC key to sign the hash bundle.", ("ethics.misuse.key_file", "ethics.compliance.key_file")),
)  # fmt: skip


def expand_flags(table: tuple[Flag, ...], placeholder: str = "flags") -> Callable[[Callable[..., Any]], Any]:
    """Replace the ``placeholder`` parameter of a command by one Typer parameter per flag of ``table``.

    The command then receives the given values as one ``{param: value}`` mapping in ``placeholder``.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn, eval_str=True)
        params: list[inspect.Parameter] = []
        for p in signature.parameters.values():
            if p.name == placeholder:
                params.extend(flag.parameter() for flag in table)
            else:
                params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY))
        names = [flag.param for flag in table]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in names}
            return fn(**kwargs, **{placeholder: values})

        command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        return command

    return decorate


def _given(value: Any, flag: Flag) -> Any:
    """The value as an option string; a file that does not exist fails here."""
    if isinstance(value, Path) and not value.exists():
        raise InputError(f"{flag.flag} {value}: file not found")
    return str(value)


def check_flag_options(options: dict[str, Any], values: dict[str, Any]) -> None:
    """Add the checkup flags that were given to the ``--option`` mapping (``{challenge_id: {option: value}}``)."""
    for flag in CHECKUP_FLAGS:
        value = values[flag.param]
        if value is None or value is False:
            continue
        text = _given(value, flag)
        for cid, name in flag.split_targets():
            options.setdefault(cid, {})[name] = text


def treat_flag_params(params: dict[str, Any], challenge: str, values: dict[str, Any]) -> None:
    """Add the treat flags that were given to the remedy parameters of ``challenge``."""
    for flag in TREAT_FLAGS:
        value = values[flag.param]
        if value is None:
            continue
        targets = dict(flag.split_targets())
        if challenge not in targets:
            raise ConfigError(f"{flag.flag} applies to {', '.join(targets)}, found it with {challenge}")
        params[targets[challenge]] = _given(value, flag)
