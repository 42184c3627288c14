"""Categorical table columns: the integer-coded default, --categorical / --numeric, target encoding,
and near duplicates on mixed tables measured with a Gower distance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from dlclinic.core.errors import InputError
from dlclinic.functional.duplicates import find_cross_duplicates, find_near_duplicates, one_hot_blocks
from dlclinic.io import load_case, load_split
from dlclinic.io.columns import CODED_MAX_VALUES

pd = pytest.importorskip("pandas")


def _coded_table(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age": rng.normal(40, 10, n).round(1),
            "occupation": rng.integers(1, 7, n),  # 6 codes: categorical by default
            "children": rng.integers(0, 2, n),  # two values: an indicator, stays numeric
            "income": rng.integers(1000, 9000, n),  # integers, but many distinct: numeric
            "label": rng.integers(0, 2, n),
        }
    )


def test_integer_coded_column_is_one_hot_by_default(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    _coded_table().to_csv(path, index=False)
    split = load_split(path, name="train", label_col="label", labels_required=True)
    assert split.encoding == {"occupation": ["1", "2", "3", "4", "5", "6"]}
    assert split.feature_names == ("age", *(f"occupation={k}" for k in range(1, 7)), "children", "income")
    np.testing.assert_array_equal(split.x[:, 1:7].sum(axis=1), 1.0)
    assert split.columns["occupation"]["encoding"] == "one-hot"
    assert "integer-coded: 6 distinct integer values" in split.columns["occupation"]["rule"]
    assert set(split.columns) == {"occupation"}


def test_the_rule_needs_few_values_relative_to_rows(tmp_path: Path) -> None:
    # 6 codes on 100 rows is more than 5 % of the rows: a small table keeps the column numeric
    path = tmp_path / "small.csv"
    _coded_table(n=100).to_csv(path, index=False)
    assert load_split(path, name="train", label_col="label").encoding == {}
    frame = _coded_table(n=2000)
    frame["many"] = np.arange(2000) % (CODED_MAX_VALUES + 1)  # 21 values: above the cap
    frame.to_csv(path, index=False)
    assert set(load_split(path, name="train", label_col="label").encoding) == {"occupation"}


def test_categorical_and_numeric_flags_override(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    _coded_table().to_csv(path, index=False)
    split = load_split(path, name="train", label_col="label", categorical=["children"], numeric=["occupation"])
    assert split.encoding == {"children": ["0", "1"]}
    assert split.columns["children"]["rule"] == "--categorical"
    assert "occupation" in (split.feature_names or ())
    with pytest.raises(InputError, match="--categorical names \\['nope'\\]"):
        load_split(path, name="train", label_col="label", categorical=["nope"])
    with pytest.raises(InputError, match="at most one of --categorical / --numeric"):
        load_split(path, name="train", label_col="label", categorical=["age"], numeric=["age"])


def test_unseen_test_category_is_all_zero_and_coded_floats_match(tmp_path: Path) -> None:
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    _coded_table().to_csv(train, index=False)
    frame = _coded_table(n=20, seed=1)
    frame["occupation"] = frame["occupation"].astype(float)  # a NaN elsewhere makes pandas read codes as 3.0
    frame.loc[0, "occupation"] = 9  # never seen in train
    frame.loc[1, "occupation"] = np.nan
    frame.to_csv(test, index=False)
    with pytest.warns(UserWarning, match="not seen in train"):
        case = load_case(train, test, label_col="label")
    x = case.splits["test"].x
    np.testing.assert_array_equal(x[0, 1:7], 0.0)
    assert np.isnan(x[1, 1:7]).all()
    code = int(frame.loc[2, "occupation"])
    assert x[2, code] == 1.0 and x[2, 1:7].sum() == 1.0
    assert case.metadata["io"]["columns"]["occupation"]["encoding"] == "one-hot"


def test_high_cardinality_text_is_target_encoded_not_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 600
    zips = rng.integers(0, 120, n)
    frame = pd.DataFrame({"x": rng.normal(size=n), "zip": [f"z{z:03d}" for z in zips], "label": (zips % 2)})
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    frame.to_csv(train, index=False)
    later = frame.head(10).copy()
    later.loc[0, "zip"] = "never-seen"
    later.to_csv(test, index=False)
    with pytest.warns(UserWarning, match="class prior"):
        case = load_case(train, test, label_col="label")
    assert case.feature_names == ("x", "zip~target")
    how = case.metadata["io"]["columns"]["zip"]
    assert how["encoding"] == "target" and "TargetEncoder" in how["rule"]
    tr = case.train.x[:, 1]
    # cross-fitted on train: the encoding separates the classes (zip parity is the label)
    assert tr[frame["label"].to_numpy() == 1].mean() > tr[frame["label"].to_numpy() == 0].mean() + 0.3
    te = case.splits["test"].x[:, 1]
    prior = case.metadata["io"]["target_encoding"]["zip"]["default"][0]
    assert te[0] == pytest.approx(prior, abs=1e-6)
    json.dumps(case.metadata["io"])  # the encoding is plain data


def test_mixed_table_near_copy_found_with_gower() -> None:
    rng = np.random.default_rng(0)
    n = 300
    codes = rng.integers(0, 4, size=(n, 8))
    onehot = np.concatenate([np.eye(4)[codes[:, j]] for j in range(8)], axis=1)
    numeric = rng.normal(size=(n, 2)) * 10
    x = np.concatenate([numeric, onehot], axis=1).astype(np.float32)
    names = ("a", "b", *(f"c{j}={k}" for j in range(8) for k in range(4)))
    blocks = one_hot_blocks(names, {f"c{j}": [str(k) for k in range(4)] for j in range(8)})
    assert len(blocks) == 8 and all(len(b) == 4 for b in blocks)
    x[17] = x[3]
    x[17, 0] += 0.01  # a near copy: one numeric column jittered, categoricals equal
    x[40] = x[5]
    x[40, 2:6] = np.eye(4)[(codes[5, 0] + 1) % 4]  # one categorical of 8 differs, numerics equal
    found = find_near_duplicates(x, categorical_blocks=blocks)
    pairs = {tuple(p) for p in found.pairs.tolist()}
    assert (3, 17) in pairs and (5, 40) not in pairs
    cross = find_cross_duplicates(x[:200], x[[3, 5]] + np.r_[0.01, 0.0, np.zeros(32)], categorical_blocks=blocks)
    assert sorted(cross.pairs[:, 1].tolist()) == [0, 1]
    # the k-d tree search of large tables (Gower's L1 searched as L2 on principal axes) finds the same pairs
    tree = find_near_duplicates(x, categorical_blocks=blocks, tree_rows=0)
    assert tree.pairs.tolist() == found.pairs.tolist() and np.allclose(tree.distances, found.distances)
    q = x[[3, 5]] + np.r_[0.01, 0.0, np.zeros(32)]
    assert (
        find_cross_duplicates(x[:200], q, categorical_blocks=blocks, tree_rows=0).pairs.tolist() == cross.pairs.tolist()
    )


def test_one_categorical_of_eight_is_not_near_where_that_is_common() -> None:
    rng = np.random.default_rng(1)
    base = rng.integers(0, 3, size=(60, 8))
    rows = [base]
    for j in range(8):  # many rows one category away from another row
        changed = base.copy()
        changed[:, j] = (changed[:, j] + 1) % 3
        rows.append(changed)
    codes = np.concatenate(rows)
    x = np.concatenate([np.eye(3)[codes[:, j]] for j in range(8)], axis=1).astype(np.float32)
    names = tuple(f"c{j}={k}" for j in range(8) for k in range(3))
    blocks = one_hot_blocks(names, {f"c{j}": [str(k) for k in range(3)] for j in range(8)})
    found = find_near_duplicates(x, categorical_blocks=blocks)
    assert np.all(found.distances == 0)  # all columns categorical: near = exact
    assert (0, 60) not in {tuple(p) for p in found.pairs.tolist()}  # row 60 is row 0 with c0 changed
    x[5] = x[70]
    assert (5, 70) in {tuple(p) for p in find_near_duplicates(x, categorical_blocks=blocks).pairs.tolist()}


def _fair_csvs(root: Path) -> tuple[Path, Path]:
    statsmodels = pytest.importorskip("statsmodels")
    df = pd.read_csv(os.path.join(os.path.dirname(statsmodels.__file__), "datasets", "fair", "fair.csv"))
    df["affairs"] = (df["affairs"] > 0).astype(int)
    perm = np.random.default_rng(0).permutation(len(df))
    train, test = root / "fair_train.csv", root / "fair_test.csv"
    df.iloc[perm[:4000]].to_csv(train, index=False)
    df.iloc[perm[4000:5200]].to_csv(test, index=False)
    return train, test


def test_fair_csv_round_trips_through_the_cli_with_coded_columns_categorical(tmp_path: Path) -> None:
    train, test = _fair_csvs(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        case = load_case(train, test, label_col="affairs")
    kinds = case.metadata["io"]["columns"]
    assert {"rate_marriage", "religious", "occupation", "occupation_husb"} <= set(kinds)
    assert "yrs_married" not in kinds and "age" not in kinds  # binned midpoints, not integers: numeric
    out = tmp_path / "report"
    argv = ["checkup", "--train", str(train), "--test", str(test), "--label-col", "affairs"]
    argv += ["--only", "data.quality", "--epochs", "2", "--out", str(out), "--quiet", "--cache-dir", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-m", "dlclinic.cli", *argv], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    columns = report["case"]["categorical_columns"]
    assert columns["occupation"]["encoding"] == "one-hot" and "integer-coded" in columns["occupation"]["rule"]
    assert "Categorical columns" in (out / "report.html").read_text()
    terminal = subprocess.run(  # without --quiet: the terminal summary names them too
        [sys.executable, "-m", "dlclinic.cli", *[a for a in argv if a != "--quiet"]],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert "categorical columns (5): rate_marriage" in terminal.stdout, terminal.stdout[-2000:]
