"""How each table column becomes features: numeric, one-hot categorical, or target-encoded.

The rules, applied to the train split (test / deploy always follow train's decisions):

* ``--categorical COL`` (``categorical=``) one-hot encodes a column; ``--numeric COL``
  (``numeric=``) keeps it one numeric feature. They override the defaults below.
* A column of pandas ``category`` dtype (Parquet dictionaries) is categorical.
* **Integer-coded columns** (the default rule): a numeric column whose present values are all
  integers, with between 3 and :data:`CODED_MAX_VALUES` (20) distinct values that are at most
  :data:`CODED_MAX_SHARE` (5 %) of the rows, is categorical. Twenty values keep a one-hot
  block small; the 5 % share means that every value occurs on average at least 20 times,
  which is how a code list (occupation 1..6, region 1..9) looks, while a measurement on a
  few rows (a count of 12 people) stays numeric. Two-valued columns stay numeric: a 0/1 (or
  1/2) column is already its own indicator and one-hot would only add a redundant copy.
  Ordered counts that fit the rule (number of children 0..5) become categorical too; pass
  ``--numeric`` to keep their order.
* Text columns are one-hot encoded, as before, up to :data:`MAX_CATEGORIES` (50) values.
* **High-cardinality text** (more than 50 values, at most :data:`TARGET_MAX_SHARE` (50 %) of
  the rows distinct) is target-encoded with :class:`sklearn.preprocessing.TargetEncoder`:
  each category becomes its shrunken per-class label mean (one column for a binary task,
  one per class otherwise). On train it is fitted with the encoder's internal 5-fold
  cross-fitting, so no row is encoded with its own label; test / deploy use the encoding
  learned on all of train, and a category train never saw gets train's class prior.
  Chosen over ordinal codes (an arbitrary order a model would read as magnitude) and
  hashing (collisions, and as wide as one-hot); a column with more distinct values than
  half its rows is an identifier or free text, and is still refused (``--id-col``).

Unseen categories of a one-hot column in test / deploy become all-zero rows (with a
warning); missing values stay NaN for the data-quality check.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.preprocessing import TargetEncoder

from dlclinic.core.errors import InputError

__all__ = [
    "CODED_MAX_SHARE",
    "CODED_MAX_VALUES",
    "MAX_CATEGORIES",
    "TARGET_MAX_SHARE",
    "ColumnRules",
    "apply_target_encoding",
    "category_strings",
    "coded_rule",
    "fit_target_encoding",
    "sorted_categories",
]

#: The most distinct values a text feature column may have to be one-hot encoded.
MAX_CATEGORIES = 50
#: Default rule: an integer-valued column with at most this many distinct values ...
CODED_MAX_VALUES = 20
#: ... that are at most this share of the train rows is categorical (one-hot).
CODED_MAX_SHARE = 0.05
#: A text column with more than :data:`MAX_CATEGORIES` values is target-encoded when its distinct
#: values are at most this share of the rows; above it is an identifier or free text, refused.
TARGET_MAX_SHARE = 0.5


@dataclass(frozen=True)
class ColumnRules:
    """The column choices of one split: the user's overrides and train's learned encodings.

    Attributes:
        categorical: Columns to one-hot encode whatever their values (``--categorical``).
        numeric: Columns to keep as one numeric feature (``--numeric``).
        mapping: Train's one-hot mapping ``{column: [category, ...]}``; ``None`` learns one (train).
        target: Train's target encodings (:func:`fit_target_encoding`), used with ``mapping``.
    """

    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    mapping: Mapping[str, Sequence[str]] | None = None
    target: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def check(self, columns: Sequence[str], name: str) -> None:
        """Named columns must be feature columns of the split, and not both categorical and numeric."""
        both = sorted(set(self.categorical) & set(self.numeric))
        if both:
            raise InputError(
                f"split {name!r}: expected each column in at most one of --categorical / --numeric, found {both} in both"
            )
        for flag, cols in (("--categorical", self.categorical), ("--numeric", self.numeric)):
            absent = [c for c in cols if c not in columns]
            if absent:
                shown = list(columns)[:20]
                raise InputError(
                    f"split {name!r}: {flag} names {absent}, expected feature columns (not the label, group or id column), found {shown}"
                )


def _number_string(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def category_strings(series: pd.Series) -> pd.Series:
    """The column's values as category names (``None`` where missing); integer codes as ``"3"`` whether read as 3 or 3.0."""
    present = series.notna().to_numpy()
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        values = series.to_numpy(dtype="float64", na_value=np.nan)
        out = np.array([_number_string(v) if ok else None for v, ok in zip(values, present, strict=True)], dtype=object)
    else:
        out = series.astype(str).to_numpy(dtype=object)
        out[~present] = None
    return pd.Series(out, index=series.index, dtype=object)


def sorted_categories(names: pd.Series) -> list[str]:
    """Distinct present category names, numerically ordered when they are all numbers, else sorted as text."""
    distinct = {str(v) for v in names[names.notna()]}
    try:
        return sorted(distinct, key=float)
    except ValueError:
        return sorted(distinct)


def coded_rule(numbers: pd.Series, n_rows: int) -> str | None:
    """The default rule's reason when an integer-valued column is categorical, else ``None``."""
    values = numbers.to_numpy(dtype="float64", na_value=np.nan)
    values = values[np.isfinite(values)]
    if not values.size or not np.all(np.mod(values, 1) == 0):
        return None
    k = int(np.unique(values).size)
    if 3 <= k <= CODED_MAX_VALUES and k <= CODED_MAX_SHARE * n_rows:
        return (
            f"integer-coded: {k} distinct integer values "
            f"(≤ {CODED_MAX_VALUES} and ≤ {CODED_MAX_SHARE:.0%} of {n_rows} rows)"
        )
    return None


def _target_type(y: np.ndarray) -> str:
    k = int(np.unique(y).size)
    return "binary" if k == 2 else "multiclass" if k > 2 else "continuous"


def fit_target_encoding(
    names: pd.Series, y: np.ndarray, col: str, seed: int = 0
) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """Target-encode a column of train: cross-fitted values, feature names and the mapping for later splits.

    ``names`` are :func:`category_strings`; missing rows stay NaN. Returns an N×m block (m = 1
    for a binary task, the number of classes otherwise), its feature names
    (``col~target`` or ``col~target[k]``) and ``{"categories", "values", "default", "classes"}``.
    """
    present = names.notna().to_numpy()
    kind = _target_type(y[present])
    encoder = TargetEncoder(target_type=kind, cv=5, shuffle=True, random_state=seed)
    column = names[present].to_numpy(dtype=object).reshape(-1, 1)
    target = y[present].astype(np.float64) if kind == "continuous" else y[present]
    with warnings.catch_warnings():  # sklearn ≥ 1.9 prefers a splitter as cv; shuffle/random_state work on 1.3+
        warnings.simplefilter("ignore", FutureWarning)
        fitted = encoder.fit_transform(column, target)
    block = np.full((len(names), fitted.shape[1]), np.nan, dtype=np.float64)
    block[present] = fitted
    categories = [str(c) for c in encoder.categories_[0]]
    values = np.column_stack([np.asarray(e, dtype=np.float64) for e in encoder.encodings_])
    default = np.atleast_1d(np.asarray(encoder.target_mean_, dtype=np.float64))
    classes = [int(c) for c in getattr(encoder, "classes_", [])] if kind == "multiclass" else []
    feature_names = [f"{col}~target"] if block.shape[1] == 1 else [f"{col}~target[{c}]" for c in classes]
    mapping = {"categories": categories, "values": values.tolist(), "default": default.tolist(), "classes": classes}
    return block, feature_names, mapping


def apply_target_encoding(names: pd.Series, mapping: Mapping[str, Any]) -> tuple[np.ndarray, int]:
    """Encode a later split with train's target encoding; unseen categories get train's prior.

    Returns the block and how many present rows had a category train never saw.
    """
    categories = pd.Index(list(mapping["categories"]))
    values = np.asarray(mapping["values"], dtype=np.float64)
    default = np.asarray(mapping["default"], dtype=np.float64)
    codes = categories.get_indexer(names.astype(object).where(names.notna(), None))
    present = names.notna().to_numpy()
    block = np.tile(default, (len(names), 1))
    known = codes >= 0
    block[known] = values[codes[known]]
    block[~present] = np.nan
    return block, int(np.sum(present & ~known))
