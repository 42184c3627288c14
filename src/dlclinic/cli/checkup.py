"""``dlclinic checkup``: examine a model and its data for all 31 challenges; write the report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from dlclinic.api import check_options
from dlclinic.api import checkup as run_checkup
from dlclinic.cli import launch
from dlclinic.cli.flags import (
    CHECKUP_FLAGS,
    BudgetOpt,
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
    check_flag_options,
    check_placement,
    expand_flags,
)
from dlclinic.cli.options import (
    AllowPickleOpt,
    CacheOpt,
    CleanDemoOpt,
    DataOptions,
    DemoOpt,
    DeployOpt,
    EpochsOpt,
    FailOn,
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
    fails,
    load_case,
    record_recipe,
)
from dlclinic.cli.progress import progress_for
from dlclinic.core import distributed
from dlclinic.core.budget import parse_budget
from dlclinic.core.registry import parse_assignments
from dlclinic.report import render_terminal, write_report
from dlclinic.taxonomy import resolve_ids

__all__ = ["checkup"]


# long: one Typer parameter per option; the body is short
@expand_flags(CHECKUP_FLAGS)
def checkup(
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
    flags: dict[str, Any] | None = None,  # one parameter per flag of CHECKUP_FLAGS
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
    nproc: NprocOpt = 1,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    budget: BudgetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Examine a model and its data for all 31 challenges; write report.html and report.json."""
    started = time.perf_counter()
    budget_s = parse_budget(budget) if budget is not None else None  # a bad duration fails before any work
    selected = resolve_ids(only) if only else None  # unknown ids fail before any work
    options = parse_assignments(option or [], scoped=True)
    check_flag_options(options, flags or {})
    built = check_options(options)  # bad options fail before any work
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
    launch.relaunch(nproc)
    quiet = quiet or not distributed.is_main()  # ranks > 0 draw and write nothing
    case = record_recipe(case, epochs, seed, oof, embedding_layer, device, precision)
    report = run_checkup(
        case,
        only=selected,
        options=built,
        evidence_config=ev_cfg,
        fit_config=fit_cfg,
        cache_dir=cache_dir,
        progress=progress_for(quiet),
        device=device,
        precision=precision,
        budget=None if budget_s is None else max(budget_s - (time.perf_counter() - started), 1.0),
    )
    if not distributed.is_main():
        return
    paths = write_report(report, out, case=case)
    if not quiet:
        render_terminal(report)
        typer.echo(f"report: {paths['html']}  json: {paths['json']}", err=True)
    if fails(fail_on, report.worst_status):
        raise typer.Exit(1)
