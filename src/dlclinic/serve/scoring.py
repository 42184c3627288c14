"""Batch scoring of files (``dlclinic predict``): npz/npy, CSV or Parquet in, CSV or Parquet out.

Inputs are read in chunks of ``batch_size`` rows (CSV via pandas ``chunksize``, Parquet via
``pyarrow`` record batches, ``.npy`` memory-mapped), so memory stays bounded by one chunk
whatever the file size (``.npz`` archives are decompressed per array: use ``.npy`` for files
larger than memory). The output is written to a temporary file and moved into place, so a
failed run leaves no partial file.

Output columns: ``row`` (position in the input), ``id`` (with ``id_col``), ``predicted``
(class name), ``confidence`` and ``p_<class>`` per class.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dlclinic.core.atomic import atomic_path
from dlclinic.core.case import input_array
from dlclinic.core.errors import ConfigError, InputError, MissingDependencyError

__all__ = ["iter_batches", "score_file"]


def _shape_rows(x: np.ndarray, input_shape: tuple[int, ...], where: str) -> np.ndarray:
    """Rows in the expected shape; integers stay int64 (token ids: the backend casts for float models)."""
    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise InputError(f"{where}: expected numeric inputs, found dtype {x.dtype}")
    if not input_shape or tuple(x.shape[1:]) == tuple(input_shape):  # shape not known yet: as stored
        return input_array(x)
    flat = int(np.prod(input_shape))
    if x.reshape(len(x), -1).shape[1] == flat:
        return input_array(x.reshape((len(x), *input_shape)))
    raise InputError(
        f"{where}: expected samples of shape {list(input_shape)} ({flat} values), found {list(x.shape[1:])}"
    )


def iter_batches(
    path: str | Path,
    input_shape: tuple[int, ...],
    *,
    batch_size: int = 1024,
    key: str = "x",
    id_col: str | None = None,
    drop_cols: Sequence[str] = (),
) -> Iterator[tuple[np.ndarray | None, np.ndarray]]:
    """Yield ``(ids or None, x)`` chunks of at most ``batch_size`` rows shaped ``N×input_shape`` (``()``: as stored)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"input file not found: {p}")
    suffix = p.suffix.lower()
    if batch_size < 1:
        raise ConfigError(f"`batch_size >= 1` must hold, but got batch_size={batch_size}")
    if suffix in (".npz", ".npy"):
        if suffix == ".npy":
            arr = np.load(p, mmap_mode="r", allow_pickle=False)
            ids = None
        else:
            with np.load(p, allow_pickle=False) as data:
                if key not in data.files:
                    raise InputError(f"{p}: expected an array {key!r}, found {data.files}")
                arr = data[key]
                ids = data[id_col] if id_col and id_col in data.files else None
        for start in range(0, len(arr), batch_size):
            yield (
                (None if ids is None else np.asarray(ids[start : start + batch_size])),
                _shape_rows(arr[start : start + batch_size], input_shape, str(p)),
            )
        return
    if suffix == ".csv":
        chunks: Any = pd.read_csv(p, chunksize=batch_size)
    elif suffix in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise MissingDependencyError("pyarrow", "parquet") from None
        chunks = (b.to_pandas() for b in pq.ParquetFile(p).iter_batches(batch_size=batch_size))
    else:
        raise InputError(f"{p}: expected .npz, .npy, .csv or .parquet, found {suffix or 'no suffix'!r}")
    for df in chunks:
        df.columns = [str(c) for c in df.columns]
        ids = None
        if id_col is not None:
            if id_col not in df.columns:
                raise InputError(f"{p}: expected a column {id_col!r} (--id-col), found {list(df.columns)[:20]}")
            ids = df[id_col].astype(str).to_numpy()
        features = df.drop(columns=[c for c in (*drop_cols, *([id_col] if id_col else [])) if c in df.columns])
        non_numeric = [c for c in features.columns if features[c].dtype.kind not in "fiub"]
        if non_numeric:
            raise InputError(
                f"{p}: expected numeric feature columns, found non-numeric {non_numeric[:5]} (drop them with --drop-col, or pass --id-col)"
            )
        yield ids, _shape_rows(features.to_numpy(dtype=np.float64), input_shape, str(p))


def score_file(
    backend: Any,
    path: str | Path,
    out: str | Path,
    *,
    class_names: Sequence[str],
    batch_size: int = 1024,
    key: str = "x",
    id_col: str | None = None,
    drop_cols: Sequence[str] = (),
) -> int:
    """Score every row of ``path`` with ``backend`` and write the predictions to ``out`` (CSV or Parquet); returns the row count."""
    target = Path(out)
    parquet = target.suffix.lower() in (".parquet", ".pq")
    names = [str(c) for c in class_names]
    total = 0
    with atomic_path(target) as tmp:
        writer: Any = None
        with open(tmp, "wb") as fh:
            for ids, x in iter_batches(
                path, tuple(backend.input_shape), batch_size=batch_size, key=key, id_col=id_col, drop_cols=drop_cols
            ):
                if not np.all(np.isfinite(x)):
                    bad = total + int(np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(1))[0])
                    raise InputError(f"{path}: expected finite inputs, found NaN or infinity in row {bad}")
                probs, _ = backend.predict(x)
                frame: dict[str, Any] = {"row": np.arange(total, total + len(x))}
                if ids is not None:
                    frame["id"] = ids
                frame["predicted"] = [names[i] for i in probs.argmax(1)]
                frame["confidence"] = probs.max(1)
                for j, name in enumerate(names):
                    frame[f"p_{name}"] = probs[:, j]
                df = pd.DataFrame(frame)
                if parquet:
                    import pyarrow as pa
                    import pyarrow.parquet as pq

                    table = pa.Table.from_pandas(df, preserve_index=False)
                    if writer is None:
                        writer = pq.ParquetWriter(fh, table.schema)
                    writer.write_table(table)
                else:
                    df.to_csv(fh, header=total == 0, index=False, float_format="%.6g")
                total += len(x)
            if writer is not None:
                writer.close()
        if total == 0:
            raise InputError(f"{path}: expected at least one row, found none")
    return total
