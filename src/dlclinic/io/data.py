"""Load data splits from files: ``.npz`` arrays, CSV / Parquet tables and image folders.

:func:`load_split` reads one file or folder into a :class:`LoadedSplit` (numpy arrays plus
what was learned while reading: class names, the one-hot encoding of string columns,
skipped images). :func:`load_case` reads train / test / deploy and builds a
:class:`~dlclinic.core.case.Case`, encoding test and deploy with the train mapping.

Formats:
    * ``.npz`` — arrays ``x`` (N×…), optional ``y`` (N integer labels, or strings),
      ``group``, ``id`` and ``class_names``; other keys are ignored. Never unpickled.
    * ``.csv`` / ``.parquet`` — one row per sample; ``label_col`` names the labels,
      numeric columns become float features. A string column whose present values are
      mostly numbers (at least 95 %) is parsed as numbers, the rest becoming NaN; any
      other string column is one-hot encoded. Integer-coded columns with few values
      (3..20 distinct, at most 5 % of the rows), ``category`` dtypes and the columns named
      by ``categorical`` are one-hot encoded too, ``numeric`` keeps a column numeric; text
      with more than :data:`MAX_CATEGORIES` values is target-encoded, or refused when
      nearly every row has its own value (an identifier or free text). The rules and their
      reasons: :mod:`dlclinic.io.columns`.
    * a directory — ``root/<class>/*.png|jpg|jpeg|bmp`` (or images directly in ``root``
      for an unlabelled split), loaded as float32 in [0, 1], N×C×H×W. In
      :func:`load_case` test / deploy folders are converted to train's colour mode and
      size.

Example:
    >>> from dlclinic.io.data import load_case
    >>> case = load_case("train.csv", "test.csv", label_col="label")  # doctest: +SKIP
    >>> case.n_classes  # doctest: +SKIP
    3
"""

from __future__ import annotations

import struct
import warnings
import zipfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from PIL import Image

from dlclinic.core.case import Case, input_array
from dlclinic.core.errors import InputError, MissingDependencyError, brief
from dlclinic.core.inputs import InputPart, pack_inputs, wrap_model
from dlclinic.io.columns import (
    MAX_CATEGORIES,
    TARGET_MAX_SHARE,
    ColumnRules,
    apply_target_encoding,
    category_strings,
    coded_rule,
    fit_target_encoding,
    sorted_categories,
)
from dlclinic.io.text import encode_texts, load_tokenizer

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_CATEGORIES",
    "NUMERIC_FRACTION",
    "NUMERIC_FRACTION_LATER",
    "SUPPORTED_FORMATS",
    "LoadedSplit",
    "load_case",
    "load_like",
    "load_split",
]

Modality = Literal["image", "vector", "table", "tokens"]
ImageMode = Literal["L", "RGB"]

IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png")
SUPPORTED_FORMATS = ".npz, .csv, .parquet or a folder of images (root/<class>/*.png|jpg|jpeg|bmp)"
#: A string column of the train split is parsed as numbers when at least this share of its
#: present values parse (``pd.to_numeric``); the others become NaN. Test / deploy follow
#: train's decision and only need :data:`NUMERIC_FRACTION_LATER` of their values to parse.
NUMERIC_FRACTION = 0.95
NUMERIC_FRACTION_LATER = 0.5


@dataclass(frozen=True, eq=False)
class LoadedSplit:
    """One split as read from disk, before it becomes a :class:`~dlclinic.core.case.Split`.

    Attributes:
        x: Inputs, float32, N×features (vector / table) or N×C×H×W (image).
        y: Integer class labels (int64, N) or ``None`` for an unlabelled split.
        groups: Per-sample sensitive attribute, or ``None``.
        ids: Per-sample identifiers (row ids, or image paths relative to the folder), or ``None``.
        feature_names: Column names after one-hot encoding (tables only).
        class_names: Names of classes ``0..K-1`` when known (string labels, image folders).
        modality: ``"image"``, ``"vector"`` or ``"table"``.
        encoding: The one-hot mapping ``{column: [category, ...]}`` used for string columns;
            pass it as ``categorical_mapping`` when loading later splits.
        target_encoding: Train's target encodings of high-cardinality columns; pass it as
            ``target_mapping`` when loading later splits.
        columns: Per categorical column of train, ``{"encoding", "rule", "values"}``: how it
            was encoded and why (:mod:`dlclinic.io.columns`).
        skipped: Paths of images that could not be read (a data-quality check reports them).
        n_resized: How many images were resized (to the most common size, or to the
            ``image_size`` asked for, e.g. train's).
        n_converted: How many images had another colour mode than the one used
            (grayscale ↔ RGB), and were converted.
        source: The path this split was read from.
        texts: The raw texts of a ``text_col`` split (``x`` is then filled by the tokenizer).
        input_parts: The named inputs packed into ``x`` (``inputs``), else ``None``.
    """

    x: np.ndarray
    y: np.ndarray | None
    groups: np.ndarray | None = None
    ids: np.ndarray | None = None
    feature_names: tuple[str, ...] | None = None
    class_names: tuple[str, ...] | None = None
    modality: Modality = "vector"
    encoding: dict[str, list[str]] = field(default_factory=dict)
    target_encoding: dict[str, dict[str, Any]] = field(default_factory=dict)
    columns: dict[str, dict[str, str]] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()
    n_resized: int = 0
    n_converted: int = 0
    source: str = ""
    texts: np.ndarray | None = None
    input_parts: tuple[InputPart, ...] | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])


# --------------------------------------------------------------------------- public API


# long: the public loader, two thirds of it its signature and docstring
def load_split(
    path: str | Path,
    *,
    name: str,
    label_col: str | None = None,
    group_col: str | None = None,
    id_col: str | None = None,
    labels_required: bool = False,
    categorical_mapping: Mapping[str, Sequence[str]] | None = None,
    image_mode: ImageMode | None = None,
    image_size: tuple[int, int] | None = None,
    categorical: Sequence[str] = (),
    numeric: Sequence[str] = (),
    target_mapping: Mapping[str, Mapping[str, Any]] | None = None,
    text_col: str | None = None,
    inputs: Sequence[str] = (),
) -> LoadedSplit:
    """Read one split from an ``.npz``, ``.csv``, ``.parquet`` file or an image folder.

    Args:
        path: The file or folder.
        name: The split's name (``"train"``, ``"test"``, ``"deploy"``), used in messages.
        label_col: Table column (or ``.npz`` key, default ``"y"``) holding the labels.
        group_col: Table column (or ``.npz`` key, default ``"group"``) holding the groups.
        id_col: Table column (or ``.npz`` key, default ``"id"``) holding sample ids.
        labels_required: Raise if the split has no labels. When ``False`` a missing
            label / group / id column just leaves that field ``None``.
        categorical_mapping: The ``encoding`` of the train split; string columns are
            one-hot encoded with it (unseen categories become all-zero rows) and any other
            column must be numeric. ``None`` learns a new mapping.
        image_mode: For image folders, the colour mode to convert every image to
            (``"L"`` or ``"RGB"``); ``None`` picks ``"L"`` when all images are grayscale.
        image_size: For image folders, the ``(width, height)`` to resize every image to;
            ``None`` uses the most common size.
        categorical: Table columns to one-hot encode whatever their values (train only;
            later splits follow ``categorical_mapping``).
        numeric: Table columns to keep numeric, overriding the integer-coded default (train only).
        target_mapping: The ``target_encoding`` of the train split, used with ``categorical_mapping``.
        text_col: Table column holding raw text: the split keeps the texts (``texts``) and no
            features; :func:`load_case` encodes them with the tokenizer.
        inputs: ``.npz`` keys of a model that takes several tensors, in the order it takes
            them (e.g. ``("input_ids", "attention_mask")``): packed into ``x``
            (:mod:`dlclinic.core.inputs`), passed to ``forward`` by these names.

    Returns:
        The split's arrays and what was learned while reading them.

    Raises:
        InputError: The path is missing, the format unknown, or the content malformed.
        MissingDependencyError: Parquet support (pyarrow) is not installed.

    Example:
        >>> s = load_split("train.npz", name="train", labels_required=True)  # doctest: +SKIP
        >>> s.x.dtype, s.y.dtype  # doctest: +SKIP
        (dtype('float32'), dtype('int64'))
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"split {name!r}: data file not found: {p}")
    if text_col is not None and (p.is_dir() or p.suffix.lower() not in (".csv", ".parquet", ".pq")):
        raise InputError(f"split {name!r}: expected a .csv or .parquet table for text_col={text_col!r}, found {p.name}")
    if p.is_dir():
        if group_col is not None:
            raise InputError(
                f"split {name!r}: expected a table or .npz for group_col={group_col!r}, found an image folder {p}; put the images and groups in an .npz (x, y, group) instead"
            )
        loaded = _load_image_folder(p, name, image_mode, image_size)
    elif p.suffix.lower() == ".npz":
        loaded = _load_npz(p, name, label_col, group_col, id_col, labels_required, tuple(inputs))
    elif p.suffix.lower() in (".csv", ".parquet", ".pq"):
        df = _read_table(p, name)
        if text_col is not None:
            loaded = _split_from_text(df, name, text_col, label_col, group_col, id_col, labels_required)
        else:
            rules = ColumnRules(tuple(categorical), tuple(numeric), categorical_mapping, target_mapping or {})
            loaded = _split_from_table(df, name, label_col, group_col, id_col, labels_required, rules)
    else:
        raise InputError(
            f"split {name!r}: expected {SUPPORTED_FORMATS}, found {p.name!r} (suffix {p.suffix or 'none'!r})"
        )
    if labels_required and loaded.y is None:
        raise InputError(f"split {name!r}: expected labels, found none in {p}{_label_hint(p, label_col)}")
    return replace(loaded, source=str(p))


# long: the public loader, two thirds of it its signature and docstring
def load_case(
    train: str | Path,
    test: str | Path | None = None,
    deploy: str | Path | None = None,
    *,
    label_col: str | None = None,
    group_col: str | None = None,
    id_col: str | None = None,
    model: Any = None,
    model_source: str | None = None,
    name: str | None = None,
    categorical: Sequence[str] = (),
    numeric: Sequence[str] = (),
    modality: str | None = None,
    text_col: str | None = None,
    tokenizer: str | None = None,
    max_length: int | None = None,
    inputs: Sequence[str] = (),
) -> Case:
    """Read train (labelled), test (labelled) and deploy (labels optional) into a :class:`Case`.

    Test and deploy are encoded with the train one-hot mapping; their table columns are
    reordered to train's order; their class names are mapped onto train's by name. When
    train is an image folder, test / deploy folders are converted to train's colour mode
    and resized to train's size. What was learned while loading (sources, skipped images,
    resized / converted counts, the encoding) is stored in ``case.metadata["io"]``.

    Args:
        train: The training split (labels required).
        test: The held-out split (labels required), or ``None``.
        deploy: Production inputs (labels optional), or ``None``.
        label_col: Label column of CSV / Parquet files (``.npz`` key, default ``"y"``).
        group_col: Column with a sensitive attribute, if any.
        id_col: Column with sample ids, if any.
        model: The model (an ``nn.Module`` or ``OnnxModel``), or ``None`` to train a baseline.
        model_source: How the model was obtained, for the report.
        name: The case's name; defaults to the train file's stem.
        categorical: Table columns to one-hot encode (``--categorical``), whatever their values.
        numeric: Table columns to keep numeric (``--numeric``), overriding the integer-coded default.
        modality: ``--modality``; by default a CSV/Parquet file is a ``table``, an image folder an
            ``image``, and an ``.npz`` is whatever :func:`~dlclinic.core.case.infer_modality` reads
            from its shapes, dtype and the model (int64 ids for a model with an embedding layer
            are ``tokens`` and stay integer).
        text_col: CSV / Parquet column of raw text (``--text-col``): the case is ``tokens``,
            encoded by ``tokenizer`` (:func:`dlclinic.io.text.load_tokenizer`), padded with 0
            to ``max_length`` (default: train's longest row, at most
            :data:`~dlclinic.io.text.DEFAULT_MAX_LENGTH`), and each split keeps its texts.
        tokenizer: ``tokenizer.json`` (Hugging Face ``tokenizers``) or ``file.py:function``.
        max_length: Length rows are padded or cut to (text only).
        inputs: ``.npz`` keys of a model whose ``forward`` takes several tensors (``--inputs``),
            in its order: packed into one row, the model wrapped to unpack them
            (:mod:`dlclinic.core.inputs`); ``case.metadata["inputs"]`` records them.

    Returns:
        The validated case; ``case.metadata["io"]["columns"]`` says which columns were
        categorical, how they were encoded and by which rule.

    Raises:
        InputError: A file is missing or malformed, or the splits disagree (shapes,
            columns, class names).

    Example:
        >>> case = load_case("data/train", "data/test")  # doctest: +SKIP
        >>> case.modality  # doctest: +SKIP
        'image'
    """
    if (text_col is None) != (tokenizer is None):
        raise InputError("text: expected --text-col and --tokenizer together, found only one of them")
    tr = load_split(
        train,
        name="train",
        label_col=label_col,
        group_col=group_col,
        id_col=id_col,
        labels_required=True,
        categorical=categorical,
        numeric=numeric,
        text_col=text_col,
        inputs=inputs,
    )
    loaded: dict[str, LoadedSplit] = {"train": tr}
    image_mode, image_size = _image_format(tr) if Path(train).is_dir() else (None, None)
    for split_name, path, required in (("test", test, True), ("deploy", deploy, False)):
        if path is None:
            continue
        other = load_split(
            path,
            name=split_name,
            label_col=label_col,
            group_col=group_col,
            id_col=id_col,
            labels_required=required,
            categorical_mapping=tr.encoding,
            target_mapping=tr.target_encoding,
            image_mode=image_mode,
            image_size=image_size,
            text_col=text_col,
            inputs=inputs,
        )
        other = _align_features(tr, other, split_name)
        loaded[split_name] = _align_labels(tr, other, split_name)
    text_meta: dict[str, Any] = {}
    if tokenizer is not None:
        loaded, text_meta = _tokenized(loaded, str(text_col), tokenizer, max_length)
        modality = "tokens"
    arrays = {k: (s.x, s.y, s.groups) for k, s in loaded.items()}
    case = Case.from_arrays(
        arrays["train"],
        arrays.get("test"),
        arrays.get("deploy"),
        model=wrap_model(model, tr.input_parts),
        class_names=tr.class_names,
        n_classes=len(tr.class_names) if tr.class_names is not None else None,
        name=name or _default_name(Path(train)),
        modality=modality or (tr.modality if tr.modality == "table" or Path(train).is_dir() else None),
        feature_names=tr.feature_names,
        model_source=model_source,
        metadata=_case_metadata(loaded, text_meta),
        texts={k: s.texts for k, s in loaded.items()} if tokenizer is not None else None,
    )
    return _with_ids(case, loaded)


def load_like(
    path: str | Path,
    case: Case,
    *,
    name: str,
    label_col: str | None = None,
    id_col: str | None = None,
    labels_required: bool = False,
) -> LoadedSplit:
    """Read an extra split (an OOD set, an unlabelled pool) encoded like the case's train split.

    Tables reuse train's one-hot mapping and column order; image folders are converted to
    train's colour mode and size. The result must have train's per-sample shape.

    Raises:
        InputError: The file is missing or malformed, or its samples' shape differs from train's.
    """
    io = case.metadata.get("io")
    encoding = io.get("encoding") if isinstance(io, Mapping) else None
    target = io.get("target_encoding") if isinstance(io, Mapping) else None
    image_mode: ImageMode | None = None
    image_size: tuple[int, int] | None = None
    if case.modality == "image" and len(case.input_shape) == 3:
        image_mode = "L" if case.input_shape[0] == 1 else "RGB"
        image_size = (int(case.input_shape[2]), int(case.input_shape[1]))
    loaded = load_split(
        path,
        name=name,
        label_col=label_col,
        id_col=id_col,
        labels_required=labels_required,
        categorical_mapping=encoding,
        target_mapping=target,
        image_mode=image_mode,
        image_size=image_size,
    )
    if case.feature_names is not None and loaded.feature_names is not None:
        ref = replace(loaded, feature_names=tuple(case.feature_names))
        loaded = _align_features(ref, loaded, name)
    if tuple(loaded.x.shape[1:]) != tuple(case.input_shape):
        raise InputError(
            f"split {name!r} ({path}): expected samples of shape {tuple(case.input_shape)} like train, found {tuple(loaded.x.shape[1:])}"
        )
    return loaded


# --------------------------------------------------------------------------- helpers: labels


def _int_labels(values: np.ndarray, what: str) -> np.ndarray:
    """Validate numeric labels: finite, integer-valued, non-negative; returned as int64."""
    if values.dtype.kind == "b":
        return values.astype(np.int64)
    if values.dtype.kind not in "iuf":
        raise InputError(f"{what}: expected integer class labels or class-name strings, found dtype {values.dtype}")
    if values.dtype.kind == "f":
        bad = ~np.isfinite(values)
        if bad.any():
            raise InputError(
                f"{what}: expected a label on every row, found {int(bad.sum())} row(s) with a missing (NaN/Inf) label, first at row {int(np.flatnonzero(bad)[0])}"
            )
        frac = np.mod(values, 1) != 0
        if frac.any():
            raise InputError(
                f"{what}: expected integer class labels, found {int(frac.sum())} non-integer value(s) such as {float(values[frac][0])!r} at row {int(np.flatnonzero(frac)[0])}"
            )
    labels = values.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise InputError(
            f"{what}: expected labels in 0..K-1, found {int(labels.min())} at row {int(np.argmin(labels))}"
        )
    return labels


def _named_labels(values: np.ndarray, what: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Map string labels to indices of their sorted unique names (after :func:`_reject_label_typos`)."""
    _reject_label_typos(values, what)
    strings = values.astype(str)
    names = np.unique(strings)
    return np.searchsorted(names, strings).astype(np.int64), tuple(str(n) for n in names)


def _reject_label_typos(values: np.ndarray, what: str) -> None:
    """Labels that are mostly integers with a few that are not (``seven`` among ``0..9``): a typo, never a new class.

    Text labels throughout (``cat``, ``dog``) are class names; so are labels that are all numbers.
    When at least half the labels are integers, the others are reported with their row.
    """
    strings = pd.Series(values.astype(str)).str.strip()
    numbers = pd.to_numeric(strings, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    integer = np.isfinite(numbers) & (np.mod(np.nan_to_num(numbers), 1) == 0)
    if integer.all() or integer.mean() < 0.5:
        return
    bad = np.flatnonzero(~integer)
    more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
    raise InputError(
        f"{what}: expected integer class labels like {int(integer.sum())} of the {len(values)} rows, found {strings.iloc[bad[0]]!r} at row {int(bad[0])}{more}; fix the label, or use class names (text) on every row"
    )


def _label_hint(path: Path, label_col: str | None) -> str:
    if path.is_dir():
        return " (expected one subfolder per class: root/<class>/*.png)"
    if path.suffix.lower() == ".npz":
        return f" (expected an array {label_col or 'y'!r})"
    if label_col is None:
        return " (pass label_col / --label-col naming the label column)"
    return ""


# --------------------------------------------------------------------------- helpers: .npz


def _load_npz(
    path: Path,
    name: str,
    label_col: str | None,
    group_col: str | None,
    id_col: str | None,
    required: bool = False,
    inputs: tuple[str, ...] = (),
) -> LoadedSplit:
    """Read an ``.npz`` archive without unpickling anything (``inputs``: named arrays packed into ``x``)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = sorted(archive.files)
            if required:
                _npz_named_keys(keys, path, name, label_col=label_col, group_col=group_col, id_col=id_col)
            wanted = _npz_wanted(keys, label_col, group_col, id_col) + [k for k in inputs if k in keys]
            mapped = _npz_mapped(path, "x") if "x" in wanted else None  # a large uncompressed x: read lazily
            arrays = {
                k: mapped if k == "x" and mapped is not None else _npz_array(archive, k, path, name) for k in wanted
            }
    except InputError:
        raise
    except Exception:
        raise InputError(
            f"split {name!r}: expected a NumPy .npz archive, found an unreadable or corrupt file {path}"
        ) from None
    parts = None
    if inputs:
        missing = [k for k in inputs if k not in arrays]
        if missing:
            raise InputError(f"split {name!r}: expected arrays {list(inputs)} in {path.name}, found keys {keys}")
        x, parts = pack_inputs({k: arrays[k] for k in inputs}, what=f"split {name!r}")
    elif "x" not in arrays:
        raise InputError(
            f"split {name!r}: expected an array 'x' in {path.name}, found keys {keys}; save with np.savez(path, x=..., y=...)"
        )
    else:
        x = _npz_features(arrays["x"], name)
    n = x.shape[0]
    y, class_names = _npz_labels(arrays.get(_pick(keys, label_col, "y")), arrays.get("class_names"), name)
    groups = arrays.get(_pick(keys, group_col, "group", "groups"))
    ids = arrays.get(_pick(keys, id_col, "id", "ids"))
    for what, arr in (("y", y), ("group", groups), ("id", ids)):
        if arr is not None and (arr.ndim == 0 or arr.shape[0] != n or arr.size != n):
            raise InputError(
                f"split {name!r}: expected {what!r} with one value per row of 'x' ({n}), found shape {arr.shape}"
            )
    return LoadedSplit(
        x=x,
        y=y,
        groups=None if groups is None else groups.reshape(-1),
        ids=None if ids is None else ids.reshape(-1),
        class_names=class_names,
        modality="image" if x.ndim >= 3 else "vector",
        input_parts=parts,
    )


def _npz_named_keys(keys: list[str], path: Path, name: str, **named: str | None) -> None:
    """An array named by ``--label-col`` / ``--group-col`` / ``--id-col`` must exist (never a silent fallback to ``y``)."""
    for option, key in named.items():
        if key is not None and key not in keys:
            flag = "--" + option.replace("_", "-")
            raise InputError(
                f"split {name!r}: expected an array {key!r} ({flag}) in {path.name}, found keys {keys}; {flag} names an .npz key or a CSV/Parquet column"
            )


def _npz_wanted(keys: list[str], label_col: str | None, group_col: str | None, id_col: str | None) -> list[str]:
    wanted = {
        "x",
        "class_names",
        _pick(keys, label_col, "y"),
        _pick(keys, group_col, "group", "groups"),
        _pick(keys, id_col, "id", "ids"),
    }
    return [k for k in keys if k in wanted]


def _pick(keys: Sequence[str], preferred: str | None, *defaults: str) -> str:
    """The first of ``preferred`` and ``defaults`` present in ``keys`` (or the last default)."""
    for key in (preferred, *defaults):
        if key is not None and key in keys:
            return key
    return defaults[-1]


def _npz_mapped(path: Path, key: str) -> np.ndarray | None:
    """Member ``key`` of an uncompressed ``.npz`` (``np.savez``) as a copy-on-write memory map, or ``None``.

    ``np.load(mmap_mode="r")`` maps ``.npy`` files but reads ``.npz`` members into memory
    (numpy maps nothing inside a zip), so a large split would be read whole on load. A member
    stored without compression is a plain ``.npy`` at a fixed offset of the file: its zip
    local header gives the offset, numpy's own header reader the dtype and shape, and
    ``np.memmap`` the array, read from disk only as rows are used (copy-on-write: a write
    changes this process's pages, never the file). Compressed members, object
    dtypes and anything unexpected return ``None`` (read the usual way).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo(f"{key}.npy")
        if info.compress_type != zipfile.ZIP_STORED or info.file_size < 1 << 20:
            return None
        with path.open("rb") as fh:
            fh.seek(info.header_offset)
            local = fh.read(30)
            if local[:4] != b"PK\x03\x04":
                return None
            fh.seek(info.header_offset + 30 + sum(struct.unpack("<HH", local[26:30])))
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(fh)
            offset = fh.tell()
        if dtype.hasobject or fortran or not shape:
            return None
        return np.memmap(path, dtype=dtype, mode="c", offset=offset, shape=shape)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, struct.error):
        return None


def _npz_array(archive: Any, key: str, path: Path, name: str) -> np.ndarray:
    try:
        return np.asarray(archive[key])
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise InputError(
                f"split {name!r}: expected numeric or string arrays in {path.name}, found an object (pickled) array {key!r}, which is never unpickled; save it with a numeric/str dtype"
            ) from None
        raise InputError(
            f"split {name!r}: expected a readable array {key!r} in {path.name}, found a corrupt one ({brief(exc)})"
        ) from None


def _npz_features(x: np.ndarray, name: str) -> np.ndarray:
    if x.dtype.kind not in "fiub":
        raise InputError(f"split {name!r} x: expected numeric inputs, found dtype {x.dtype}")
    if x.ndim < 2:
        raise InputError(
            f"split {name!r} x: expected N×features or N×C×H×W samples, found shape {x.shape}; reshape 1-D data to N×1"
        )
    if x.shape[0] == 0:
        raise InputError(f"split {name!r}: expected at least one sample, found 0")
    # N × T integers may be token ids (kept for a model with an embedding layer); images and
    # anything else become float32
    return input_array(x, keep_integers=x.ndim == 2)


def _npz_labels(
    y: np.ndarray | None, names: np.ndarray | None, name: str
) -> tuple[np.ndarray | None, tuple[str, ...] | None]:
    if y is None:
        return None, None
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
    if y.ndim != 1:
        raise InputError(f"split {name!r} labels: expected a 1-D vector of class labels, found shape {y.shape}")
    if y.dtype.kind in "US":
        return _named_labels(y, f"split {name!r} labels")
    labels = _int_labels(y, f"split {name!r} labels")
    if names is None:
        return labels, None
    class_names = tuple(str(c) for c in names.reshape(-1))
    if labels.size and int(labels.max()) >= len(class_names):
        raise InputError(
            f"split {name!r}: expected labels below len(class_names)={len(class_names)}, found {int(labels.max())}"
        )
    return labels, class_names


# --------------------------------------------------------------------------- helpers: tables


def _read_table(path: Path, name: str) -> pd.DataFrame:
    """Read a CSV or Parquet file into a DataFrame, with one-line errors."""

    try:
        df = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    except ImportError:
        raise MissingDependencyError("pyarrow", "parquet") from None
    except UnicodeDecodeError:
        raise InputError(
            f"split {name!r}: expected UTF-8 text in {path}, found undecodable bytes; re-save the CSV as UTF-8"
        ) from None
    except pd.errors.EmptyDataError:
        raise InputError(f"split {name!r}: expected a header and rows in {path}, found an empty file") from None
    except Exception as exc:
        raise InputError(
            f"split {name!r}: expected a readable {path.suffix.lstrip('.').upper()} table, found an unreadable file {path} ({brief(exc)})"
        ) from None
    if len(df) == 0:
        raise InputError(f"split {name!r}: expected at least one row in {path}, found 0")
    df.columns = [str(c) for c in df.columns]
    return df


def _split_from_table(
    df: pd.DataFrame,
    name: str,
    label_col: str | None,
    group_col: str | None,
    id_col: str | None,
    labels_required: bool,
    rules: ColumnRules,
) -> LoadedSplit:
    """Turn a DataFrame into features, labels, groups and ids."""
    columns = list(df.columns)
    y, class_names, label, group, ident = _label_group_id(df, name, label_col, group_col, id_col, labels_required)
    special = [c for c in (label, group, ident) if c is not None]
    feature_cols = [c for c in columns if c not in special]
    if not feature_cols:
        raise InputError(f"split {name!r}: expected at least one feature column besides {special}, found none")
    x, feature_names, encoding, target, kinds = _encode_features(df[feature_cols], name, rules, y)
    return LoadedSplit(
        x=x,
        y=y,
        groups=None if group is None else _object_to_str(df[group].to_numpy()),
        ids=None if ident is None else _object_to_str(df[ident].to_numpy()),
        feature_names=feature_names,
        class_names=class_names,
        modality="table",
        encoding=encoding,
        target_encoding=target,
        columns=kinds,
    )


def _label_group_id(
    df: pd.DataFrame, name: str, label_col: str | None, group_col: str | None, id_col: str | None, required: bool
) -> tuple[np.ndarray | None, tuple[str, ...] | None, str | None, str | None, str | None]:
    """``(y, class_names, label, group, id)``: a table's labels and the names of its label, group and id columns."""
    y, class_names = None, None
    label = _column(df, label_col, "label_col", name, required)
    if label is not None:
        y, class_names = _table_labels(df[label], name, label)
    return (
        y,
        class_names,
        label,
        _column(df, group_col, "group_col", name, required),
        _column(df, id_col, "id_col", name, required),
    )


def _split_from_text(
    df: pd.DataFrame,
    name: str,
    text_col: str,
    label_col: str | None,
    group_col: str | None,
    id_col: str | None,
    labels_required: bool,
) -> LoadedSplit:
    """A table's text column (kept as ``texts``; ``x`` is a placeholder until tokenized), labels, groups and ids."""
    if text_col not in df.columns:
        raise InputError(f"split {name!r}: expected a text column {text_col!r}, found columns {list(df.columns)[:8]}")
    y, class_names, _, group, ident = _label_group_id(df, name, label_col, group_col, id_col, labels_required)
    texts = df[text_col].fillna("").astype(str).to_numpy(dtype=object)
    return LoadedSplit(
        x=np.zeros((len(df), 1), dtype=np.int64),
        y=y,
        groups=None if group is None else _object_to_str(df[group].to_numpy()),
        ids=None if ident is None else _object_to_str(df[ident].to_numpy()),
        class_names=class_names,
        modality="tokens",
        texts=texts,
    )


def _tokenized(
    loaded: Mapping[str, LoadedSplit], text_col: str, tokenizer: str, max_length: int | None
) -> tuple[dict[str, LoadedSplit], dict[str, Any]]:
    """Every split's texts encoded by the tokenizer, to train's length; and what was done, for ``metadata["io"]``."""
    encode, described, vocabulary = load_tokenizer(tokenizer)
    out: dict[str, LoadedSplit] = {}
    cut: dict[str, int] = {}
    length = max_length
    for name, s in loaded.items():
        ids, cut[name] = encode_texts(
            list(s.texts if s.texts is not None else []), encode, name=name, max_length=length
        )
        length = ids.shape[1]  # test / deploy are padded or cut to train's length
        out[name] = replace(s, x=ids)
    meta: dict[str, Any] = {"text": {"column": text_col, "tokenizer": described, "max_length": length, "rows_cut": cut}}
    if vocabulary is not None:
        meta["vocabulary"] = vocabulary
    return out, meta


def _column(df: pd.DataFrame, col: str | None, option: str, name: str, required: bool) -> str | None:
    """Check a named column exists; a missing one is an error only for required splits."""
    if col is None or col in df.columns:
        return col
    if not required:
        return None
    shown = list(df.columns)[:20]
    more = f" (+{len(df.columns) - 20} more)" if len(df.columns) > 20 else ""
    raise InputError(f"split {name!r}: expected a column {col!r} ({option}), found columns {shown}{more}")


def _table_labels(series: pd.Series, name: str, col: str) -> tuple[np.ndarray, tuple[str, ...] | None]:

    what = f"split {name!r} label column {col!r}"
    missing = series.isna().to_numpy()
    if missing.any():
        raise InputError(
            f"{what}: expected a label on every row, found {int(missing.sum())} row(s) with a missing (NaN) label, first at row {int(np.flatnonzero(missing)[0])}"
        )
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
        return _int_labels(series.to_numpy(dtype="float64"), what), None
    return _named_labels(series.astype(str).to_numpy(), what)


def _encode_features(
    df: pd.DataFrame, name: str, rules: ColumnRules, y: np.ndarray | None
) -> tuple[np.ndarray, tuple[str, ...], dict[str, list[str]], dict[str, dict[str, Any]], dict[str, dict[str, str]]]:
    """Numeric columns as float; categorical ones one-hot or target-encoded (learned on train, or from ``rules``).

    Returns the features, their names, the one-hot mapping, the target encodings and, per
    categorical column, how it was encoded and by which rule (:mod:`dlclinic.io.columns`).
    """
    mapping = rules.mapping
    if mapping is not None:
        absent = [c for c in [*mapping, *rules.target] if c not in df.columns]
        if absent:
            raise InputError(
                f"split {name!r}: expected the categorical column(s) {absent} seen in train, found columns {list(df.columns)[:20]}"
            )
    else:
        rules.check(list(df.columns), name)
    blocks: list[np.ndarray] = []
    names: list[str] = []
    encoding: dict[str, list[str]] = {}
    target: dict[str, dict[str, Any]] = {}
    kinds: dict[str, dict[str, str]] = {}
    for col in df.columns:
        series = df[col]
        if mapping is not None:
            block, col_names = _encode_like_train(series, name, col, rules)
        else:
            block, col_names, how = _encode_train_column(series, name, col, rules, y)
            if how is not None:
                kinds[col] = how
                if how["encoding"] == "one-hot":
                    encoding[col] = [n.split("=", 1)[1] for n in col_names]
                else:
                    target[col] = how.pop("mapping")  # type: ignore[arg-type]
        if mapping is not None and col in mapping:
            encoding[col] = list(mapping[col])
        blocks.append(block)
        names.extend(col_names)
    x = np.ascontiguousarray(np.concatenate(blocks, axis=1), dtype=np.float32)
    return x, tuple(names), encoding, target, kinds


def _encode_like_train(series: pd.Series, name: str, col: str, rules: ColumnRules) -> tuple[np.ndarray, list[str]]:
    """A column of test / deploy, encoded as train decided."""
    mapping = rules.mapping or {}
    if col in mapping:
        categories = [str(c) for c in mapping[col]]
        return _one_hot(series, categories, name, col), [f"{col}={c}" for c in categories]
    if col in rules.target:
        enc = rules.target[col]
        block, unseen = apply_target_encoding(category_strings(series), enc)
        if unseen:
            warnings.warn(
                f"split {name!r} column {col!r}: {unseen} row(s) have categories not seen in train; encoded with train's class prior",
                stacklevel=5,
            )
        classes = list(enc.get("classes") or [])
        return block, [f"{col}~target"] if block.shape[1] == 1 else [f"{col}~target[{c}]" for c in classes]
    if _is_numeric(series):
        return _column_block(series), [col]
    _reject_datetime(series, name, col)
    numbers = _parse_numeric(series, name, col, NUMERIC_FRACTION_LATER)
    if numbers is None:
        raise InputError(
            f"split {name!r} column {col!r}: expected numeric values as in train, found {series.dtype} values such as {_first_value(series)!r}"
        )
    return _column_block(numbers), [col]


def _encode_train_column(
    series: pd.Series, name: str, col: str, rules: ColumnRules, y: np.ndarray | None
) -> tuple[np.ndarray, list[str], dict[str, Any] | None]:
    """A train column: numeric, or categorical with the rule that made it so."""
    numbers: pd.Series | None
    if col in rules.numeric:
        numbers = series if _is_numeric(series) else _parse_numeric(series, name, col, NUMERIC_FRACTION)
        if numbers is None:
            raise InputError(
                f"split {name!r} column {col!r} (--numeric): expected numbers, found {series.dtype} values such as {_first_value(series)!r}"
            )
        return _column_block(numbers), [col], None
    if col in rules.categorical:
        return _categorical(series, name, col, "--categorical", y)
    if isinstance(series.dtype, pd.CategoricalDtype):
        return _categorical(series, name, col, "category dtype", y)
    if _is_numeric(series):
        numbers = series
    else:
        _reject_datetime(series, name, col)
        numbers = _parse_numeric(series, name, col, NUMERIC_FRACTION)
    if numbers is None:
        return _categorical(series, name, col, "text", y)
    coded = None if pd.api.types.is_bool_dtype(numbers) else coded_rule(numbers, len(series))
    if coded is not None:
        return _categorical(numbers, name, col, coded, y)
    return _column_block(numbers), [col], None


def _categorical(
    series: pd.Series, name: str, col: str, rule: str, y: np.ndarray | None
) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """One-hot up to :data:`MAX_CATEGORIES` values; target-encoded above when values repeat; else refused."""
    strings = category_strings(series)
    categories = sorted_categories(strings)
    if len(categories) <= MAX_CATEGORIES:
        how = {"encoding": "one-hot", "rule": rule, "values": str(len(categories))}
        return _one_hot(strings, categories, name, col), [f"{col}={c}" for c in categories], how
    n_present = int(strings.notna().sum())
    if y is None or len(categories) > TARGET_MAX_SHARE * n_present:
        # values are never echoed: a free-text column may hold personal data (emails, names)
        raise InputError(
            f"split {name!r} column {col!r}: expected a numeric column, a categorical one with at most {MAX_CATEGORIES} distinct values to one-hot encode, "
            f"or one whose distinct values are at most {TARGET_MAX_SHARE:.0%} of its rows to target-encode, "
            f"found {len(categories)} distinct values in {len(series)} rows; if it identifies samples pass it as --id-col (id_col), otherwise drop it or convert it to numbers first"
        )
    block, names, mapping = fit_target_encoding(strings, y, col)
    target: dict[str, Any] = {
        "encoding": "target",
        "rule": f"{rule}; {len(categories)} values > {MAX_CATEGORIES}: sklearn TargetEncoder, cross-fitted on train",
        "values": str(len(categories)),
        "mapping": mapping,
    }
    return block, names, target


def _column_block(numbers: pd.Series) -> np.ndarray:
    return numbers.to_numpy(dtype="float64", na_value=np.nan).reshape(-1, 1)


def _is_numeric(series: pd.Series) -> bool:

    return bool(pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series))


def _reject_datetime(series: pd.Series, name: str, col: str) -> None:

    if pd.api.types.is_datetime64_any_dtype(series) or pd.api.types.is_timedelta64_dtype(series):
        raise InputError(
            f"split {name!r} column {col!r}: expected numeric or string features, found {series.dtype}; convert it to numbers or drop it"
        )


def _parse_numeric(series: pd.Series, name: str, col: str, min_fraction: float) -> pd.Series | None:
    """The column as numbers when at least ``min_fraction`` of its present values parse, else ``None``.

    Values that do not parse (``"?"``, ``"n/a"``) become NaN, with a warning; the
    data-quality check reports the NaN later. A column with no present value is all NaN.
    """

    present = series.notna().to_numpy()
    try:
        numbers = pd.to_numeric(series, errors="coerce")
    except (TypeError, ValueError):  # unhashable / nested values (lists in Parquet)
        return None
    parsed = numbers.notna().to_numpy() & present
    n_present = int(present.sum())
    if n_present and parsed.sum() < min_fraction * n_present:
        return None
    bad = present & ~parsed
    if bad.any():
        example = series[bad].iloc[0]
        warnings.warn(
            f"split {name!r} column {col!r}: {int(bad.sum())} of {n_present} value(s) are not numbers (e.g. {example!r}); read as NaN",
            stacklevel=5,
        )
    return numbers


def _one_hot(series: pd.Series, categories: list[str], name: str, col: str) -> np.ndarray:
    """One-hot encode; NaN rows stay NaN, unseen categories become all-zero rows (with a warning)."""

    missing = series.isna().to_numpy()
    codes = pd.Index(categories).get_indexer(category_strings(series).where(~missing, None))
    out = np.zeros((len(series), len(categories)), dtype=np.float32)
    rows = np.flatnonzero(codes >= 0)
    out[rows, codes[rows]] = 1.0
    out[missing] = np.nan
    unseen = (codes < 0) & ~missing
    if unseen.any():
        example = series[unseen].iloc[0]
        warnings.warn(
            f"split {name!r} column {col!r}: {int(unseen.sum())} row(s) have categories not seen in train (e.g. {example!r}); encoded as all zeros",
            stacklevel=4,
        )
    return out


def _first_value(series: pd.Series) -> Any:
    present = series[series.notna()]
    return present.iloc[0] if len(present) else None


def _object_to_str(values: np.ndarray) -> np.ndarray:
    return values.astype(str) if values.dtype.kind == "O" else values


# --------------------------------------------------------------------------- helpers: images


def _load_image_folder(
    root: Path, name: str, mode: ImageMode | None = None, size: tuple[int, int] | None = None
) -> LoadedSplit:
    """Read ``root/<class>/*`` (labelled) or ``root/*`` (unlabelled) images."""
    files, labels, class_names = _list_images(root, name)
    images, kept, skipped = _read_images(files)
    if not images:
        raise InputError(
            f"split {name!r}: expected readable images in {root}, found {len(files)} file(s) and none could be read (e.g. {skipped[0]})"
        )
    x, n_resized, n_converted = _stack_images(images, mode, size)
    y = None if labels is None else np.asarray([labels[i] for i in kept], dtype=np.int64)
    ids = np.asarray([files[i].relative_to(root).as_posix() for i in kept])
    return LoadedSplit(
        x=x,
        y=y,
        ids=ids,
        class_names=class_names,
        modality="image",
        skipped=tuple(skipped),
        n_resized=n_resized,
        n_converted=n_converted,
    )


def _image_format(split: LoadedSplit) -> tuple[ImageMode | None, tuple[int, int] | None]:
    """The colour mode and ``(width, height)`` of an image split read from a folder."""
    if split.modality != "image" or split.x.ndim != 4 or split.x.shape[1] not in (1, 3):
        return None, None
    return ("L" if split.x.shape[1] == 1 else "RGB"), (int(split.x.shape[3]), int(split.x.shape[2]))


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _list_images(root: Path, name: str) -> tuple[list[Path], list[int] | None, tuple[str, ...] | None]:
    """Image files with their class index (sorted subfolder names), or loose files unlabelled."""
    class_dirs = sorted(
        (
            d
            for d in root.iterdir()
            if d.is_dir() and not d.name.startswith(".") and any(_is_image(f) for f in d.iterdir())
        ),
        key=lambda d: d.name,
    )
    loose = sorted((f for f in root.iterdir() if _is_image(f)), key=lambda f: f.name)
    if not class_dirs:
        if not loose:
            raise InputError(
                f"split {name!r}: expected images in {root} (root/<class>/*.png|jpg|jpeg|bmp, or root/*.png for unlabelled data), found none"
            )
        return loose, None, None
    if loose:
        warnings.warn(
            f"split {name!r}: ignoring {len(loose)} image(s) directly in {root}; labelled images belong in root/<class>/",
            stacklevel=4,
        )
    files: list[Path] = []
    labels: list[int] = []
    for index, folder in enumerate(class_dirs):
        images = sorted((f for f in folder.iterdir() if _is_image(f)), key=lambda f: f.name)
        files.extend(images)
        labels.extend([index] * len(images))
    return files, labels, tuple(d.name for d in class_dirs)


def _read_images(files: list[Path]) -> tuple[list[Any], list[int], list[str]]:
    """Open every file with PIL; unreadable ones are skipped and their paths returned."""

    images: list[Any] = []
    kept: list[int] = []
    skipped: list[str] = []
    for i, path in enumerate(files):
        try:
            with Image.open(path) as img:
                img.load()
                images.append(img.copy())
            kept.append(i)
        except Exception:  # PIL raises many types for corrupt files; we report them, not crash
            skipped.append(str(path))
    return images, kept, skipped


def _stack_images(
    images: list[Any], mode: ImageMode | None = None, size: tuple[int, int] | None = None
) -> tuple[np.ndarray, int, int]:
    """Convert to one mode, resize to one size, stack as N×C×H×W in [0, 1].

    ``mode`` defaults to ``"L"`` when every image is grayscale (else ``"RGB"``), ``size``
    (width, height) to the most common size. Returns the array and how many images were
    resized and converted to another colour mode.
    """

    natural = ["L" if len(img.getbands()) == 1 and img.mode != "P" else "RGB" for img in images]
    if mode is None:
        mode = "L" if all(m == "L" for m in natural) else "RGB"
    if size is None:
        size = Counter(img.size for img in images).most_common(1)[0][0]
    n_resized = 0
    arrays = []
    for img in images:
        img = img.convert(mode)
        if img.size != size:
            img = img.resize(size, Image.Resampling.BILINEAR)
            n_resized += 1
        arr = np.asarray(img, dtype=np.float32) / 255.0
        arrays.append(arr[None] if mode == "L" else arr.transpose(2, 0, 1))
    n_converted = sum(m != mode for m in natural)
    return np.ascontiguousarray(np.stack(arrays)), n_resized, n_converted


# --------------------------------------------------------------------------- helpers: case


def _align_features(train: LoadedSplit, other: LoadedSplit, name: str) -> LoadedSplit:
    """Reorder table columns to train's order; report missing / extra columns."""
    if train.feature_names is None or other.feature_names is None or other.feature_names == train.feature_names:
        return other
    want, have = train.feature_names, other.feature_names
    missing = [c for c in want if c not in have]
    extra = [c for c in have if c not in want]
    if missing or extra:
        raise InputError(
            f"split {name!r}: expected the same feature columns as train, found missing {missing[:5]} and extra {extra[:5]}"
        )
    order = [have.index(c) for c in want]
    return replace(other, x=np.ascontiguousarray(other.x[:, order]), feature_names=want)


def _align_labels(train: LoadedSplit, other: LoadedSplit, name: str) -> LoadedSplit:
    """Map a split's class names onto train's (integer labels are taken as indices)."""
    if other.y is None or other.class_names is None or other.class_names == train.class_names:
        return other
    if train.class_names is None:
        raise InputError(
            f"split {name!r} labels: expected integer labels like train, found class names {list(other.class_names[:5])}"
        )
    index = {c: i for i, c in enumerate(train.class_names)}
    unknown = [c for c in other.class_names if c not in index]
    if unknown:
        codes = [other.class_names.index(c) for c in unknown]
        row = int(np.flatnonzero(np.isin(other.y, codes))[0])
        raise InputError(
            f"split {name!r} labels: expected class names seen in train {list(train.class_names[:10])}, found {other.class_names[int(other.y[row])]!r} at row {row}"
            + (f" (unknown: {unknown[:5]})" if len(unknown) > 1 else "")
            + "; a class train never saw is a typo or needs train samples"
        )
    lookup = np.asarray([index[c] for c in other.class_names], dtype=np.int64)
    return replace(other, y=lookup[other.y], class_names=train.class_names)


def _io_metadata(loaded: Mapping[str, LoadedSplit]) -> dict[str, Any]:
    return {
        "splits": {
            k: {
                "source": s.source,
                "skipped": list(s.skipped),
                "n_resized": s.n_resized,
                "n_converted": s.n_converted,
                "modality": s.modality,
            }
            for k, s in loaded.items()
        },
        "encoding": {k: list(v) for k, v in loaded["train"].encoding.items()},
        "target_encoding": dict(loaded["train"].target_encoding),
        "columns": {k: dict(v) for k, v in loaded["train"].columns.items()},
    }


def _case_metadata(loaded: Mapping[str, LoadedSplit], text_meta: Mapping[str, Any]) -> dict[str, Any]:
    """``case.metadata``: what loading learned (``io``), the tokenizer's vocabulary and the packed inputs, if any."""
    meta: dict[str, Any] = {"io": {**_io_metadata(loaded), **{k: v for k, v in text_meta.items() if k != "vocabulary"}}}
    if "vocabulary" in text_meta:
        meta["vocabulary"] = text_meta["vocabulary"]  # per-token attributions read as words
    return {**meta, **_inputs_metadata(loaded)}


def _inputs_metadata(loaded: Mapping[str, LoadedSplit]) -> dict[str, Any]:
    """``{"inputs": [...]}`` for packed named inputs (every split with train's parts), else ``{}``."""
    parts = loaded["train"].input_parts
    if parts is None:
        return {}
    for name, s in loaded.items():
        if s.input_parts is not None and [p.shape for p in s.input_parts] != [p.shape for p in parts]:
            raise InputError(
                f"split {name!r}: expected inputs of shapes {[p.shape for p in parts]} like train, found {[p.shape for p in s.input_parts]}"
            )
    return {"inputs": [p.as_dict() for p in parts]}


def _with_ids(case: Case, loaded: Mapping[str, LoadedSplit]) -> Case:
    """Attach per-sample ids (``Case.from_arrays`` has no ids argument)."""
    if all(s.ids is None for s in loaded.values()):
        return case
    splits = {k: replace(split, ids=loaded[k].ids) for k, split in case.splits.items()}
    return replace(case, splits=splits)


def _default_name(path: Path) -> str:
    return path.name if path.is_dir() else path.stem
