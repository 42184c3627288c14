"""``dlclinic demo export``: an embedded demo case (image, text or sequence) as npz files, with its ground truth."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from dlclinic.cli.options import DemoKind, check_writable
from dlclinic.demo import demo_case

__all__ = ["demo_app"]

demo_app = typer.Typer(
    help="The embedded demo cases (MNIST digits, fortunes quotes, MNIST-1D series) with planted defects.",
    no_args_is_help=True,
)


def _stage(directory: Path, name: str, save: Any, staged: list[tuple[str, Path]]) -> None:
    """Write one file to a temporary name in ``directory`` (renamed into place once all are written)."""
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    with os.fdopen(fd, "wb") as fh:
        save(fh)
    staged.append((name, Path(tmp)))


def _split_arrays(case: Any, split: Any) -> dict[str, np.ndarray]:
    arrays = {"x": split.x, "class_names": np.array(case.class_names)}
    if split.y is not None:
        arrays["y"] = split.y
    if split.groups is not None:
        arrays["group"] = split.groups.astype(str)
    if split.texts is not None:
        arrays["text"] = split.texts.astype(str)
    if "vocabulary" in case.metadata:
        arrays["vocabulary"] = np.array(case.metadata["vocabulary"])
    return arrays


@demo_app.command("export")
def demo_export(
    directory: Annotated[
        Path, typer.Argument(help="Folder to write train.npz, test.npz, deploy.npz and truth.npz into.")
    ],
    clean: Annotated[bool, typer.Option("--clean", help="Export the control copy without planted defects.")] = False,
    kind: Annotated[
        DemoKind, typer.Option("--kind", help="Which demo: image, text (token ids + text) or sequence.")
    ] = DemoKind.image,
) -> None:
    """Write a demo case as npz files, with its ground truth (planted defects)."""
    check_writable(directory, "DIRECTORY")
    case, truth = demo_case(kind.value, clean=clean)
    directory.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[str, Path]] = []
    try:
        for name, split in case.splits.items():
            arrays = _split_arrays(case, split)
            _stage(directory, f"{name}.npz", lambda fh, a=arrays: np.savez_compressed(fh, **a), staged)  # type: ignore[arg-type]
        truth_arrays = {
            "flipped": truth.flipped,
            "original_labels": truth.original_labels,
            "duplicate_pairs": truth.duplicate_pairs,
            "leak_pairs": truth.leak_pairs,
            "rare_class": np.array(-1 if truth.rare_class is None else truth.rare_class),  # -1: none planted
        }
        _stage(directory, "truth.npz", lambda fh: np.savez(fh, **truth_arrays), staged)  # type: ignore[arg-type]
        for name, tmp_path in staged:
            os.replace(tmp_path, directory / name)
    except BaseException:
        for _, tmp_path in staged:
            tmp_path.unlink(missing_ok=True)
        raise
    typer.echo(f"wrote {', '.join(n for n, _ in staged)} to {directory}")
