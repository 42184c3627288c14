"""``dlclinic predict``: score CSV/Parquet/npz/npy files in bounded chunks to CSV or Parquet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from dlclinic.api import prepare_model
from dlclinic.cli.options import CacheOpt, DemoOpt, IdOpt, ModelOpt, WeightsOpt, check_writable
from dlclinic.core.errors import ConfigError
from dlclinic.core.inference import predict_logits
from dlclinic.demo import demo_case
from dlclinic.io import load_model
from dlclinic.serve.backends import make_backend
from dlclinic.serve.scoring import iter_batches, score_file

__all__ = ["predict"]


def _parse_shape(input_shape: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in input_shape.split(","))
    except ValueError:
        raise ConfigError(f"--input-shape {input_shape!r}: expected comma-separated integers such as 1,28,28") from None


def _check_out(out: Path, n_inputs: int) -> None:
    """Fail before loading anything when ``--out`` cannot take the predictions (creating nothing)."""
    if n_inputs > 1:
        if out.suffix and not out.is_dir():
            raise ConfigError(f"--out {out}: expected a folder for {n_inputs} input files, found a file name")
        check_writable(out)
        return
    if out.is_dir():
        raise ConfigError(
            f"--out {out}: expected a .csv or .parquet file name for one input file, found an existing folder; name a file, e.g. --out {out / 'predictions.csv'}"
        )
    check_writable(out.parent, "--out's folder")


def _user_model(
    model: str | None, weights: Path | None, input_shape: str | None, first_file: Path, read: dict[str, Any]
) -> tuple[Any, tuple[int, ...] | None]:
    """The ``--model`` and its per-sample shape: ``--input-shape``, the ONNX graph's, or the first file's."""
    if model is None:
        raise ConfigError(
            "no model: expected --model file.py:factory (with --weights), model.pt2 or model.onnx, or --demo"
        )
    net, _ = load_model(model, weights=weights)
    shape: tuple[int, ...] | None = None
    if input_shape:
        shape = _parse_shape(input_shape)
    elif hasattr(net, "input_shape") and net.input_shape and all(s is not None for s in net.input_shape[1:]):
        shape = tuple(int(s) for s in net.input_shape[1:])
    if shape is None:
        _, first = next(iter_batches(first_file, (), batch_size=2, **read))
        shape = tuple(first.shape[1:])
    return net, shape


def predict(
    inputs: Annotated[list[Path], typer.Argument(help="Files to score: .npz (key --key), .npy, .csv or .parquet.")],
    out: Annotated[
        Path, typer.Option("--out", help="Output .csv/.parquet (one input) or a folder (several inputs).")
    ] = Path("predictions.csv"),
    demo: DemoOpt = None,
    model: ModelOpt = None,
    weights: WeightsOpt = None,
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
    id_col: IdOpt = None,
    drop_col: Annotated[
        list[str] | None, typer.Option("--drop-col", help="CSV/Parquet columns that are not features (repeatable).")
    ] = None,
    cache_dir: CacheOpt = None,
) -> None:
    """Score files in bounded chunks with the model; write class, confidence and probabilities per row."""
    if not inputs:
        raise ConfigError("no input files: expected one or more .npz/.npy/.csv/.parquet files")
    _check_out(out, len(inputs))
    names: tuple[str, ...] | None = tuple(c.strip() for c in class_names.split(",")) if class_names else None
    read: dict[str, Any] = {"key": key, "id_col": id_col, "drop_cols": drop_col or ()}
    shape: tuple[int, ...] | None
    if demo:
        if model is not None:
            raise ConfigError("--demo brings its own model: expected no --model with it")
        case = prepare_model(demo_case(demo.value)[0], cache_dir=cache_dir)
        net, shape, names = case.model, case.input_shape, names or case.class_names
    else:
        net, shape = _user_model(model, weights, input_shape, inputs[0], read)
    if shape is None:  # pragma: no cover - set above in every branch
        raise ConfigError("--input-shape: could not infer the per-sample shape; pass it, e.g. --input-shape 1,28,28")
    if names is None:
        names = tuple(str(i) for i in range(predict_logits(net, np.zeros((1, *shape), dtype=np.float32)).shape[1]))
    be, desc = make_backend(net, shape, len(names))
    for path in inputs:
        target = out if len(inputs) == 1 else out / f"{path.stem}.predictions.csv"
        n = score_file(be, path, target, class_names=names, batch_size=batch_size, **read)
        typer.echo(f"{path}: {n} rows scored with {desc} -> {target}", err=True)
