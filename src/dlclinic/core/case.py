"""What a checkup examines: a classification model and its data splits.

A :class:`Case` holds validated, in-memory numpy arrays per split (``train`` is
required; ``test`` and ``deploy`` are optional; ``deploy`` may be unlabelled), the
optional per-sample ``groups`` (a sensitive attribute) and ``ids``, class names and the
model (an ``nn.Module``, an ONNX session wrapper, or ``None`` for "train a baseline").

Inputs may be numpy arrays, torch tensors or ``torch.utils.data.Dataset`` objects
yielding ``(x, y)`` or ``(x, y, group)``.
"""

from __future__ import annotations

import mmap
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from dlclinic.core.errors import InputError
from dlclinic.core.inputs import InputPart, pack_inputs, split_inputs, wrap_factory, wrap_model

__all__ = [
    "MAX_ABS_INPUT",
    "MODALITIES",
    "SPLIT_NAMES",
    "Case",
    "Split",
    "as_array",
    "infer_modality",
    "input_array",
    "memory_map_of",
    "unusable_rows",
    "usable_inputs",
]

SPLIT_NAMES = ("train", "test", "deploy")

#: What a row is. ``tokens``: integer token ids (N × T, 0 may be padding) read by an embedding
#: layer — kept int64 end to end; ``sequence``: float time series (N × T or N × C × T, or
#: N × T × F for a batch-first RNN); ``image``: N × C × H × W (or N × H × W); ``table``:
#: named columns (from a CSV/Parquet file); ``vector``: any other N × features array.
MODALITIES = ("image", "vector", "table", "tokens", "sequence")

#: Input values beyond ±this are unusable, like NaN and ±Inf: their squares and sums overflow
#: float32 (max ≈ 3.4e38), so distances, standardisation and most models turn them into Inf/NaN.
#: data.quality counts and reports the rows holding them; every other computation reads them as 0.
MAX_ABS_INPUT = 1e18


def input_array(x: Any, *, keep_integers: bool = True) -> np.ndarray:
    """``x`` as a contiguous model-input array: integers int64 (token ids) when ``keep_integers``, anything else float32.

    The one rule every reader of inputs applies (splits, ``.npz`` files, served and scored rows,
    ONNX feeds), so token ids are never turned into floats on the way to an embedding layer.

    Example:
        >>> input_array(np.array([[1, 2]], np.int32)).dtype, input_array(np.array([[1, 2]]), keep_integers=False).dtype
        (dtype('int64'), dtype('float32'))
    """
    a = np.asarray(x)
    return np.ascontiguousarray(a, dtype=np.int64 if keep_integers and a.dtype.kind in "iu" else np.float32)


def unusable_rows(x: np.ndarray) -> np.ndarray:
    """Boolean mask (N,) of the rows of ``x`` holding a NaN, ±Inf or a value beyond ±:data:`MAX_ABS_INPUT`."""
    a = np.asarray(x)
    if a.dtype.kind not in "fc":
        return np.zeros(len(a), dtype=bool)
    out = np.zeros(len(a), dtype=bool)
    with np.errstate(invalid="ignore"):
        for i in range(0, len(a), 4096):  # 4096 rows at a time: no temporary the size of x
            rows = a[i : i + 4096]
            out[i : i + len(rows)] = ~(np.abs(rows.reshape(len(rows), -1)) <= MAX_ABS_INPUT).all(axis=1)
    return out


_SCANNED_BYTES = 1 << 26  # arrays from 64 MB on: a split, not a batch
_usable: dict[int, tuple[weakref.ref[Any], tuple[Any, ...]]] = {}


def _layout(x: Any) -> tuple[Any, ...]:
    a = x.__array_interface__
    return (a["data"][0], a["shape"], a["strides"], a["typestr"])


def _known_usable(x: Any) -> bool:
    """Whether this very array (same object, memory and layout) was scanned and found usable before.

    Checks hand whole splits to :func:`usable_inputs` again and again; scanning a memory-mapped
    split reads every page back into memory (210 MB at 60k images) that
    :func:`~dlclinic.core.workers.release_mapped_pages` had just given back. Only memory-mapped
    arrays are remembered (a file a checkup reads and does not write): an array in memory is
    scanned every time (80 MB in ~10 ms), so one a user changes between two checkups is seen as it is.
    """
    if not _mapped_split(x):
        return False
    known = _usable.get(id(x))
    return known is not None and known[0]() is x and known[1] == _layout(x)


def memory_map_of(array: Any) -> mmap.mmap | None:
    """The ``mmap`` under an array (``np.memmap`` and its views keep it in ``_mmap``), or ``None``.

    Example:
        >>> memory_map_of(np.zeros(3)) is None
        True
    """
    for _ in range(32):  # a chain of views is short; guard against a cycle of odd objects
        if array is None or isinstance(array, mmap.mmap):
            return array
        mapping = getattr(array, "_mmap", None)
        if isinstance(mapping, mmap.mmap):
            return mapping
        array = getattr(array, "base", None)
    return None


def _mapped_split(x: Any) -> bool:
    """A memory-mapped array (:func:`memory_map_of`) of at least :data:`_SCANNED_BYTES`."""
    return isinstance(x, np.ndarray) and x.nbytes >= _SCANNED_BYTES and memory_map_of(x) is not None


def _remember_usable(x: Any) -> None:
    if _mapped_split(x):
        key = id(x)

        def forget(_ref: weakref.ref[Any]) -> None:
            _usable.pop(key, None)

        _usable[key] = (weakref.ref(x, forget), _layout(x))


def usable_inputs(x: np.ndarray) -> np.ndarray:
    """``x`` with its unusable values (NaN, ±Inf, beyond ±:data:`MAX_ABS_INPUT`) set to 0.

    When every value is usable (the usual case) this is a read-only view of ``x``, not a copy:
    callers pass whole splits (a memory map of 60,000 images is 188 MB) to training and
    inference, and a copy per call was the largest transient in a checkup's memory. Otherwise
    it is a cleaned copy. Either way the caller must not write into it.

    Example:
        >>> usable_inputs(np.array([1.0, np.nan, np.inf, 1e38])).tolist()
        [1.0, 0.0, 0.0, 0.0]
        >>> usable_inputs(np.ones(3)).flags.writeable
        False
    """
    if _known_usable(x) or not unusable_rows(x).any():
        _remember_usable(x)
        view = np.asarray(x).view()
        view.flags.writeable = False
        return view
    out = np.array(x, copy=True)
    if out.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            out[~(np.abs(out) <= MAX_ABS_INPUT)] = 0
    return out


def _to_numpy(value: Any, what: str) -> np.ndarray:
    if value is None:
        raise InputError(f"{what}: expected an array, found None")
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor, without importing torch
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise InputError(
            f"{what}: expected an array-like of equal-sized rows, found {type(value).__name__} ({exc})"
        ) from None


def _from_dataset(dataset: Any, what: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Materialise a map-style ``torch.utils.data.Dataset`` of ``x`` / ``(x, y)`` / ``(x, y, group)``."""
    try:
        n = len(dataset)
    except TypeError:
        raise InputError(f"{what}: expected a map-style Dataset with __len__, found {type(dataset).__name__}") from None
    xs, ys, gs = [], [], []
    for i in range(n):
        item = dataset[i]
        if isinstance(item, (tuple, list)):
            xs.append(_to_numpy(item[0], f"{what}[{i}] x"))
            if len(item) > 1:
                ys.append(_to_numpy(item[1], f"{what}[{i}] y"))
            if len(item) > 2:
                gs.append(_to_numpy(item[2], f"{what}[{i}] group"))
        else:
            xs.append(_to_numpy(item, f"{what}[{i}] x"))
    if not xs:
        raise InputError(f"{what}: expected at least one sample, found an empty Dataset")
    shapes = {x.shape for x in xs}
    if len(shapes) > 1:
        raise InputError(
            f"{what}: expected samples of one shape, found {len(shapes)} shapes, e.g. {sorted(shapes)[:2]}"
        )
    x = np.stack(xs)
    y = np.stack(ys).reshape(-1) if ys else None
    g = np.stack(gs).reshape(-1) if gs else None
    return x, y, g


def as_array(value: Any, what: str) -> np.ndarray:
    """Turn numpy / torch / lists into a numpy array, with a clear error otherwise."""
    return _to_numpy(value, what)


def _validate_labels(y: np.ndarray, what: str) -> np.ndarray:
    if y.ndim != 1:
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        else:
            raise InputError(f"{what}: expected a 1-D vector of integer class labels, found shape {y.shape}")
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y)
        if bad.any():
            raise InputError(
                f"{what}: expected integer class labels, found {int(bad.sum())} NaN/Inf value(s) (first at row {int(np.flatnonzero(bad)[0])})"
            )
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise InputError(
                f"{what}: expected integer class labels, found non-integer values such as {float(y[np.mod(y, 1) != 0][0])!r}"
            )
    elif y.dtype.kind not in "iub":
        raise InputError(
            f"{what}: expected integer class labels, found dtype {y.dtype} (map strings to 0..K-1 first, or pass class_names)"
        )
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise InputError(f"{what}: expected labels in 0..K-1, found {int(y.min())} at row {int(np.argmin(y))}")
    return y


@dataclass(frozen=True, eq=False)
class Split:
    """One named split: inputs ``x`` (N×…), labels ``y`` (N, or None), optional groups, ids and texts.

    ``texts`` is the raw text of each row when the inputs are token ids read from a text
    column (``--text-col``): the report shows it next to flagged rows. It never reaches the model.
    """

    name: str
    x: np.ndarray
    y: np.ndarray | None = None
    groups: np.ndarray | None = None
    ids: np.ndarray | None = None
    texts: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def labelled(self) -> bool:
        return self.y is not None

    @classmethod
    def build(
        cls,
        name: str,
        x: Any,
        y: Any = None,
        groups: Any = None,
        ids: Any = None,
        *,
        like: Split | None = None,
        texts: Any = None,
    ) -> Split:
        """Validate and convert one split (to ``like``'s input dtype when given). Raises :class:`InputError` with a one-line reason."""
        if (
            x is not None
            and hasattr(x, "__getitem__")
            and hasattr(x, "__len__")
            and not hasattr(x, "shape")
            and not isinstance(x, (list, tuple))
        ):
            dx, dy, dg = _from_dataset(x, f"split {name!r}")
            x, y = dx, y if y is not None else dy
            groups = groups if groups is not None else dg
        xa = _to_numpy(x, f"split {name!r} x")
        if xa.ndim < 2:
            raise InputError(f"split {name!r} x: expected N×features or N×C×H×W samples, found shape {xa.shape}")
        if xa.shape[0] == 0:
            raise InputError(f"split {name!r}: expected at least one sample, found 0")
        if xa.dtype.kind not in "fiub":
            raise InputError(f"split {name!r} x: expected numeric inputs, found dtype {xa.dtype}")
        # N × T integers are kept (token ids must reach an embedding layer as integers); Case
        # casts them to float32 unless the modality is "tokens"; images become float32 here
        xa = input_array(xa, keep_integers=xa.ndim == 2)
        if like is not None and xa.dtype != like.x.dtype:
            xa = xa.astype(like.x.dtype)
        n = xa.shape[0]
        ya = None
        if y is not None:
            ya = _validate_labels(_to_numpy(y, f"split {name!r} y"), f"split {name!r} labels")
            if ya.shape[0] != n:
                raise InputError(f"split {name!r}: x has {n} rows but y has {ya.shape[0]}; expected equal lengths")
        ga = None
        if groups is not None:
            ga = _to_numpy(groups, f"split {name!r} groups").reshape(-1)
            if ga.shape[0] != n:
                raise InputError(f"split {name!r}: x has {n} rows but groups has {ga.shape[0]}; expected equal lengths")
            ga = ga.astype(str) if ga.dtype.kind in "OUS" else ga
        ia = None
        if ids is not None:
            ia = _to_numpy(ids, f"split {name!r} ids").reshape(-1)
            if ia.shape[0] != n:
                raise InputError(f"split {name!r}: x has {n} rows but ids has {ia.shape[0]}; expected equal lengths")
        return cls(name=name, x=xa, y=ya, groups=ga, ids=ia, texts=_texts(texts, name, n))


def _texts(texts: Any, name: str, n: int) -> np.ndarray | None:
    """A split's raw texts as an object array of ``n`` strings (``None`` stays ``None``)."""
    if texts is None:
        return None
    out = np.array([str(t) for t in texts], dtype=object)
    if out.shape != (n,):
        raise InputError(f"split {name!r}: x has {n} rows but texts has {out.shape[0]}; expected one text per row")
    return out


def _module_kinds(model: Any) -> set[str]:
    """Class names of the model's modules (a factory is called once to see its architecture)."""
    if callable(model) and (isinstance(model, type) or not hasattr(model, "modules")):
        try:
            model = model()
        except Exception:  # a factory that needs arguments tells us nothing
            return set()
    modules = getattr(model, "modules", None)
    return {type(m).__name__ for m in modules()} if callable(modules) else set()


def _integral(x: np.ndarray) -> bool:
    """Non-negative whole numbers (integers, or floats that hold ids, e.g. read before the model was known)."""
    if x.dtype.kind in "iu":
        return not x.size or int(x.min()) >= 0
    if x.dtype.kind != "f" or not x.size:
        return False
    return bool(np.isfinite(x).all() and x.min() >= 0 and np.array_equal(x, np.round(x)))


def infer_modality(x: np.ndarray | None, model: Any = None) -> str:
    """The modality of inputs ``x`` for ``model`` (an ``nn.Module``, a factory or ``None``).

    N × T non-negative whole numbers read by an embedding layer are ``tokens``; N × A × B floats are a
    ``sequence`` for a model of 1-D convolutions or recurrent layers without 2-D convolutions,
    else an ``image`` (as are N × C × H × W); N × T floats are a ``sequence`` for a recurrent or
    1-D convolutional model; anything else is a ``vector``.

    Example:
        >>> infer_modality(np.zeros((4, 8, 8), np.float32)), infer_modality(np.zeros((4, 8), np.float32))
        ('image', 'vector')
    """
    if x is None:
        return "vector"
    kinds = _module_kinds(model)
    if x.ndim == 2 and kinds & {"Embedding", "EmbeddingBag"} and _integral(x):
        return "tokens"
    temporal = bool(kinds & {"Conv1d", "RNN", "LSTM", "GRU", "TransformerEncoder"}) and not kinds & {"Conv2d"}
    if x.ndim in (2, 3) and temporal and x.dtype.kind == "f":
        return "sequence"
    return "image" if x.ndim in (3, 4) else "vector"


def _with_input_dtype(splits: dict[str, Split], modality: str) -> dict[str, Split]:
    """Splits whose inputs have the modality's dtype: int64 token ids, float32 otherwise."""
    if modality not in MODALITIES:
        raise InputError(f"modality: expected one of {', '.join(MODALITIES)}, found {modality!r}")
    out = {}
    for name, s in splits.items():
        if modality == "tokens" and s.x.dtype.kind == "f":
            if not np.all(np.isfinite(s.x)) or np.any(s.x != np.round(s.x)) or np.any(s.x < 0):
                raise InputError(f"split {name!r} x: expected non-negative integer token ids, found non-integer values")
            s = replace(s, x=s.x.astype(np.int64))
        elif modality == "tokens" and s.x.size and int(s.x.min()) < 0:
            raise InputError(f"split {name!r} x: expected non-negative token ids, found {int(s.x.min())}")
        elif modality != "tokens" and s.x.dtype.kind != "f":
            s = replace(s, x=np.ascontiguousarray(s.x, dtype=np.float32))
        out[name] = s
    return out


def _packed(values: Mapping[str, Any]) -> tuple[dict[str, Any], tuple[InputPart, ...] | None]:
    """Splits whose ``x`` is a mapping of named arrays, packed (:mod:`dlclinic.core.inputs`) with train's parts."""
    out: dict[str, Any] = dict(values)
    parts: tuple[InputPart, ...] | None = None
    for name, value in values.items():
        x = value[0] if isinstance(value, tuple) and value else value
        named = split_inputs(x)
        if named is None:
            if parts is not None and value is not None:
                raise InputError(f"split {name!r}: expected named inputs like train, found one array")
            continue
        packed, parts = pack_inputs(named, parts, what=f"split {name!r} x")
        out[name] = (packed, *value[1:]) if isinstance(value, tuple) else packed
    return out, parts


def _splits_from(
    values: Mapping[str, Any],
    groups: Mapping[str, Any] | None,
    ids: Mapping[str, Any] | None,
    texts: Mapping[str, Any] | None,
) -> dict[str, Split]:
    """:meth:`Case.from_arrays`' splits: ``(x,)``, ``(x, y)``, ``(x, y, groups)``, bare ``x`` or a Dataset per name."""
    splits: dict[str, Split] = {}
    for split_name, value in values.items():
        if value is None:
            continue
        if isinstance(value, tuple):
            if not 1 <= len(value) <= 3:
                raise InputError(
                    f"split {split_name!r}: expected (x,), (x, y) or (x, y, groups), found a tuple of {len(value)}"
                )
            x = value[0]
            y = value[1] if len(value) > 1 else None
            g = value[2] if len(value) > 2 else None
        else:
            x, y, g = value, None, None
        if groups is not None and split_name in groups:
            g = groups[split_name]
        splits[split_name] = Split.build(
            split_name,
            x,
            y,
            g,
            None if ids is None else ids.get(split_name),
            texts=None if texts is None else texts.get(split_name),
        )
    return splits


@dataclass(frozen=True, eq=False)
class Case:
    """A model and its data, validated. Build it with :meth:`Case.from_arrays` or the loaders in ``dlclinic.io``."""

    splits: Mapping[str, Split]
    n_classes: int
    class_names: tuple[str, ...]
    model: Any = None
    model_source: str = "baseline trained by dlclinic"
    model_factory: Any = None  # () -> fresh nn.Module: the architecture remedies retrain
    name: str = "case"
    modality: str = "vector"  # one of MODALITIES
    feature_names: tuple[str, ...] | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if "train" not in self.splits:
            raise InputError(f"case {self.name!r}: expected a 'train' split, found only {sorted(self.splits)}")
        if not self.splits["train"].labelled:
            raise InputError("split 'train': expected labels (y), found none")
        shapes = {name: s.x.shape[1:] for name, s in self.splits.items()}
        ref = shapes["train"]
        for name, shape in shapes.items():
            if shape != ref:
                raise InputError(f"split {name!r}: expected samples of shape {ref} like 'train', found {shape}")
        for s in self.splits.values():
            if s.y is not None and s.y.size and int(s.y.max()) >= self.n_classes:
                row = int(np.argmax(s.y))
                raise InputError(
                    f"split {s.name!r} labels: expected values in 0..{self.n_classes - 1} ({self.n_classes} classes, as in train), found {int(s.y.max())} at row {row} (pass class_names or n_classes if train lacks a class)"
                )

    @classmethod
    def from_arrays(
        cls,
        train: tuple[Any, ...] | Any,
        test: tuple[Any, ...] | Any | None = None,
        deploy: tuple[Any, ...] | Any | None = None,
        *,
        model: Any = None,
        groups: Mapping[str, Any] | None = None,
        ids: Mapping[str, Any] | None = None,
        texts: Mapping[str, Any] | None = None,
        class_names: Sequence[str] | None = None,
        n_classes: int | None = None,
        name: str = "case",
        modality: str | None = None,
        feature_names: Sequence[str] | None = None,
        model_source: str | None = None,
        model_factory: Any = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Case:
        """Build a case from ``(x, y)`` tuples, bare ``x`` (unlabelled) or Datasets per split.

        ``texts`` maps a split name to one raw text per row (token-id inputs made from text):
        the report shows the text of flagged rows.

        Example:
            >>> import numpy as np
            >>> x = np.random.rand(20, 4).astype("float32"); y = np.arange(20) % 2
            >>> Case.from_arrays((x, y), (x, y)).n_classes
            2
        """
        values, parts = _packed({"train": train, "test": test, "deploy": deploy})
        if parts is not None:  # a model whose forward takes several tensors: packed rows, a wrapped model
            model, model_factory = wrap_model(model, parts), wrap_factory(model_factory, parts)
            metadata = {**(metadata or {}), "inputs": [p.as_dict() for p in parts]}
        splits = _splits_from(values, groups, ids, texts)
        if n_classes is None:
            if class_names is not None:
                n_classes = len(class_names)
            elif "train" in splits and splits["train"].y is not None and splits["train"].y.size:
                # K comes from train alone: a test/deploy label train never saw is an error, not a new class
                n_classes = int(splits["train"].y.max()) + 1
            else:
                raise InputError(
                    "split 'train': expected labels to infer the number of classes, found none (pass class_names or n_classes)"
                )
        if n_classes < 2:
            raise InputError(f"labels: expected at least 2 classes, found {n_classes}")
        names = (
            tuple(str(c) for c in class_names) if class_names is not None else tuple(str(i) for i in range(n_classes))
        )
        if len(names) != n_classes:
            raise InputError(f"class_names: expected {n_classes} names, found {len(names)}")
        x0 = splits["train"].x if "train" in splits else None
        if modality is None:
            modality = infer_modality(x0, model if model is not None else model_factory)
        splits = _with_input_dtype(splits, modality)
        if model_source is None:
            model_source = "baseline trained by dlclinic" if model is None else f"nn.Module {type(model).__name__}"
        return cls(
            splits=splits,
            n_classes=n_classes,
            class_names=names,
            model=model,
            model_source=model_source,
            model_factory=model_factory,
            name=name,
            modality=modality,
            feature_names=tuple(feature_names) if feature_names is not None else None,
            metadata=dict(metadata or {}),
        )

    @property
    def train(self) -> Split:
        return self.splits["train"]

    def get(self, name: str) -> Split | None:
        return self.splits.get(name)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    @property
    def vocab_size(self) -> int:
        """Token models: the largest token id in any split + 1 (0 for other modalities)."""
        if self.modality != "tokens":
            return 0
        return 1 + max(int(s.x.max()) if s.x.size else 0 for s in self.splits.values())

    def with_modality(self, modality: str) -> Case:
        """A copy read as ``modality`` (token ids become int64, anything else float32)."""
        if modality == self.modality:
            return self
        return replace(self, modality=modality, splits=_with_input_dtype(dict(self.splits), modality))

    def with_model(self, model: Any, source: str) -> Case:
        """A copy of this case with another model (remedies never mutate the user's case)."""

        return replace(self, model=model, model_source=source)

    def with_train(self, keep: np.ndarray, relabel: Mapping[int, int] | None = None) -> Case:
        """A copy whose train split keeps rows ``keep`` (and optionally relabels some of them)."""

        t = self.train
        y = t.y.copy() if t.y is not None else None
        if relabel and y is not None:
            for i, label in relabel.items():
                y[i] = label
        keep = np.asarray(keep, dtype=np.int64)
        new = Split(
            name="train",
            x=t.x[keep],
            y=None if y is None else y[keep],
            groups=None if t.groups is None else t.groups[keep],
            ids=None if t.ids is None else t.ids[keep],
            texts=None if t.texts is None else t.texts[keep],
        )
        splits = dict(self.splits)
        splits["train"] = new
        return replace(self, splits=splits)

    def with_split_rows(self, name: str, rows: np.ndarray) -> Case:
        """A copy whose split ``name`` keeps only ``rows``."""

        s = self.splits[name]
        rows = np.asarray(rows, dtype=np.int64)
        pick = lambda a: None if a is None else a[rows]  # noqa: E731
        splits = dict(self.splits)
        splits[name] = Split(
            name=name, x=s.x[rows], y=pick(s.y), groups=pick(s.groups), ids=pick(s.ids), texts=pick(s.texts)
        )
        return replace(self, splits=splits)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "task": "classification",
            "n_classes": self.n_classes,
            "class_names": list(self.class_names),
            "modality": self.modality,
            "input_shape": list(self.input_shape),
            **({"vocab_size": self.vocab_size} if self.modality == "tokens" else {}),
            "splits": {k: len(v) for k, v in self.splits.items()},
            "labelled": {k: v.labelled for k, v in self.splits.items()},
            "has_groups": any(s.groups is not None for s in self.splits.values()),
        }
