"""``dlclinic treat``: apply the remedy of one challenge, retrain, and measure again."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from dlclinic.api import remedy_params
from dlclinic.api import treat as run_treat
from dlclinic.challenges import get_remedy
from dlclinic.cli import launch
from dlclinic.cli.flags import (
    TREAT_FLAGS,
    CategoricalOpt,
    DeviceOpt,
    InputsOpt,
    MaxLengthOpt,
    ModalityOpt,
    NprocOpt,
    NumericOpt,
    PrecisionOpt,
    TextColOpt,
    TokenizerOpt,
    check_placement,
    expand_flags,
    treat_flag_params,
)
from dlclinic.cli.options import (
    AllowPickleOpt,
    CacheOpt,
    CleanDemoOpt,
    CleanMode,
    DataOptions,
    DemoOpt,
    DeployOpt,
    EpochsOpt,
    GroupOpt,
    IdOpt,
    LabelOpt,
    LayerOpt,
    ModelOpt,
    NoCacheOpt,
    OofMethod,
    OofOpt,
    OutOpt,
    QuietOpt,
    SeedOpt,
    TestOpt,
    TrainOpt,
    WeightsOpt,
    check_writable,
    configs,
    load_case,
)
from dlclinic.cli.progress import progress_for
from dlclinic.core import distributed
from dlclinic.core.errors import ConfigError
from dlclinic.core.registry import parse_assignments
from dlclinic.report import write_report

__all__ = ["treat"]


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _print_treatment(challenge: str, treatment: Any) -> None:
    """The before/after table of the treated challenge, then the remedy's notes."""
    table = Table(title=f"treat {challenge}: {treatment.action}")
    table.add_column("metric")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for key in treatment.before:
        table.add_row(key, _cell(treatment.before[key]), _cell(treatment.after.get(key)))
    table.add_row("status", treatment.before_status, treatment.after_status)
    console = Console()
    console.print(table)
    for note in treatment.notes:
        console.print(f"[dim]{note}[/dim]")


def _launch(challenge: str, nproc: int, quiet: bool) -> None:
    """``--nproc``: refuse the remedies that distribute otherwise, say what stays single, run again under torchrun."""
    several = nproc > 1 or distributed.launched() > 1
    if several and challenge in launch.NO_NPROC:
        raise ConfigError(
            f"--nproc does not apply to {challenge}: {launch.NO_NPROC[challenge]}; run it without --nproc"
        )
    if nproc > 1 and challenge == "data.privacy" and not quiet:
        typer.echo("note: DP-SGD (opacus) trains in one process; --nproc shares the evidence passes", err=True)
    launch.relaunch(nproc)


# long: one Typer parameter per option; the body is short
@expand_flags(TREAT_FLAGS)
def treat(
    challenge: Annotated[str, typer.Argument(help="The challenge to treat, e.g. data.quality.")],
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
    flags: dict[str, Any] | None = None,  # one parameter per flag of TREAT_FLAGS
    out: OutOpt = Path("dlclinic-treatment"),
    cache_dir: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    oof: OofOpt = OofMethod.auto,
    embedding_layer: LayerOpt = None,
    epochs: EpochsOpt = 15,
    seed: SeedOpt = 0,
    nproc: NprocOpt = 1,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Apply the remedy of one challenge, retrain, and measure again (before/after in the report)."""
    get_remedy(challenge)  # an unknown challenge, or one without a remedy, fails first
    params = parse_assignments(option or [], scoped=False)
    if mode is not None:
        if challenge != "data.quality":
            raise ConfigError(f"--mode applies to data.quality only, found it with {challenge}")
        params["mode"] = mode.value
    treat_flag_params(params, challenge, flags or {})
    built = remedy_params(challenge, params)  # bad parameters fail before any work
    check_writable(out)
    check_placement(device, precision)  # a device this machine lacks fails before any work
    fit_cfg, ev_cfg = configs(epochs, seed, oof, embedding_layer, no_cache)
    case = load_case(
        DataOptions(
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
            allow_pickle,
            categorical=categorical,
            numeric=numeric,
            modality=modality,
            text_col=text_col,
            tokenizer=tokenizer,
            max_length=max_length,
            inputs=inputs,
        )
    )
    # --nproc N: the command again under torchrun, once the data have loaded (bad files fail here, in one line)
    _launch(challenge, nproc, quiet)
    quiet = quiet or not distributed.is_main()  # ranks > 0 draw and write nothing
    treatment, before, after = run_treat(
        case,
        challenge,
        out_dir=out,
        params=built,
        fit_config=fit_cfg,
        evidence_config=ev_cfg,
        cache_dir=cache_dir,
        progress=progress_for(quiet),
        device=device,
        precision=precision,
    )
    if not distributed.is_main():
        return
    paths = write_report(dataclasses.replace(after, treatments=(treatment,)), out, case=None)
    if not quiet:
        _print_treatment(challenge, treatment)
        typer.echo(f"report: {paths['html']}  json: {paths['json']}", err=True)
