"""``dlclinic export``: write the model as a verified ONNX or ``torch.export`` ``.pt2`` file."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from dlclinic.api import prepare_model
from dlclinic.cli.flags import (
    CategoricalOpt,
    InputsOpt,
    MaxLengthOpt,
    ModalityOpt,
    NumericOpt,
    TextColOpt,
    TokenizerOpt,
)
from dlclinic.cli.options import (
    CacheOpt,
    CleanDemoOpt,
    DataOptions,
    DemoOpt,
    LabelOpt,
    ModelOpt,
    TestOpt,
    TrainOpt,
    WeightsOpt,
    check_writable,
    load_case,
)
from dlclinic.core.errors import ConfigError
from dlclinic.export import ExportResult, export_onnx, export_pt2, length_axis_for

__all__ = ["export"]


class Format(str, Enum):
    onnx = "onnx"
    pt2 = "pt2"


class Exporter(str, Enum):
    dynamo = "dynamo"
    torchscript = "torchscript"
    auto = "auto"


def export(
    out: Annotated[Path, typer.Option("--out", help="File to write (.onnx or .pt2).")],
    fmt: Annotated[Format, typer.Option("--format", help="onnx (onnxruntime) or pt2 (torch.export).")] = Format.onnx,
    exporter: Annotated[
        Exporter,
        typer.Option(
            "--exporter",
            help="ONNX exporter: dynamo = torch.onnx.export(dynamo=True) (recommended), torchscript = the legacy tracer, auto = dynamo then torchscript.",
        ),
    ] = Exporter.dynamo,
    static_batch: Annotated[
        bool, typer.Option("--static-batch", help="Fix the batch dimension instead of making it dynamic.")
    ] = False,
    demo: DemoOpt = None,
    clean_demo: CleanDemoOpt = None,
    train: TrainOpt = None,
    test: TestOpt = None,
    label_col: LabelOpt = None,
    categorical: CategoricalOpt = None,
    numeric: NumericOpt = None,
    modality: ModalityOpt = None,
    text_col: TextColOpt = None,
    tokenizer: TokenizerOpt = None,
    max_length: MaxLengthOpt = None,
    inputs: InputsOpt = None,
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    cache_dir: CacheOpt = None,
) -> None:
    """Export the model and verify it against eager PyTorch on real inputs (test, else train)."""
    if out.is_dir():
        raise ConfigError(f"--out {out}: expected a .{fmt.value} file name, found an existing folder")
    check_writable(out.parent, "--out's folder")
    case = load_case(
        DataOptions(
            demo,
            clean_demo,
            train,
            test,
            None,
            label_col,
            None,
            None,
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
    )
    case = prepare_model(case, cache_dir=cache_dir)
    if not hasattr(case.model, "state_dict"):
        raise ConfigError(
            "export: expected a PyTorch model (file.py:factory or .pt2), found an ONNX model, which is already exported"
        )
    split = case.get("test") or case.train
    x = split.x[:512]
    if fmt is Format.onnx:
        axis = length_axis_for(case.modality)  # tokens / sequences: a dynamic length where the model allows it
        result = export_onnx(
            case.model, x, out, dynamic_batch=not static_batch, exporter=exporter.value, length_axis=axis
        )
    else:
        result = export_pt2(case.model, x, out, dynamic_batch=not static_batch)
    _say(result, split.name)


def _say(result: ExportResult, split: str) -> None:
    """What was written and how it was verified (and, for sequences, whether the length is dynamic)."""
    typer.echo(
        f"wrote {result.path} ({result.size_bytes / 1e6:.3f} MB) with {result.exporter}"
        f"{f', opset {result.opset}' if result.opset else ''}; verified on {result.n_verified} {split} inputs:"
        f" max |logit diff| {result.max_abs_logit_diff:.2e}, argmax agreement {result.argmax_agreement:.2%}"
    )
    if result.dynamic_length is not None:
        length = "dynamic" if result.dynamic_length else f"fixed ({result.length_note})"
        typer.echo(f"sequence length: {length}")
    if not result.agrees():
        typer.echo(
            "warning: the export differs from eager beyond fp32 tolerance (atol 1e-3); check custom ops and train-mode layers",
            err=True,
        )
