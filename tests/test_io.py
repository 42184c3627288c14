"""Tests for dlclinic.io: real files written to tmp_path, round-trips and every bad input."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from dlclinic.core.case import Case
from dlclinic.core.errors import DlclinicError, InputError, MissingDependencyError, ModelError
from dlclinic.io import LoadedSplit, OnnxModel, file_sha256, load_case, load_model, load_split

pd = pytest.importorskip("pandas")
torch = pytest.importorskip("torch")


def check_message(excinfo: pytest.ExceptionInfo[BaseException], *fragments: str) -> str:
    """The error is one line, says what was expected, and mentions each fragment."""
    message = str(excinfo.value)
    assert "\n" not in message, message
    assert "expected" in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


# --------------------------------------------------------------------------- .npz


def test_npz_roundtrip_with_groups_and_ids(tmp_path: Path) -> None:
    path = tmp_path / "train.npz"
    x = np.random.default_rng(0).normal(size=(10, 3))
    np.savez(path, x=x, y=np.arange(10) % 2, group=np.array(["a", "b"] * 5), id=np.arange(10), extra=np.zeros(2))
    split = load_split(path, name="train", labels_required=True)
    assert isinstance(split, LoadedSplit)
    assert split.x.dtype == np.float32 and split.x.shape == (10, 3)
    np.testing.assert_allclose(split.x, x.astype(np.float32))
    assert split.y is not None and split.y.dtype == np.int64 and split.y.tolist() == [0, 1] * 5
    assert split.groups is not None and split.groups.tolist() == ["a", "b"] * 5
    assert split.ids is not None and split.ids.tolist() == list(range(10))
    assert split.modality == "vector" and split.class_names is None and split.source == str(path)


def test_npz_unlabelled_and_image_shaped(tmp_path: Path) -> None:
    path = tmp_path / "deploy.npz"
    np.savez(path, x=np.zeros((4, 1, 5, 5), dtype=np.uint8))
    split = load_split(path, name="deploy")
    assert split.y is None and split.modality == "image" and split.x.dtype == np.float32


def test_npz_string_labels_become_sorted_class_names(tmp_path: Path) -> None:
    path = tmp_path / "s.npz"
    np.savez(path, x=np.zeros((3, 2)), y=np.array(["dog", "cat", "dog"]))
    split = load_split(path, name="train")
    assert split.class_names == ("cat", "dog") and split.y is not None and split.y.tolist() == [1, 0, 1]


def test_npz_missing_x_lists_keys(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, features=np.zeros((3, 2)), y=np.zeros(3))
    with pytest.raises(InputError) as excinfo:
        load_split(path, name="train")
    check_message(excinfo, "'x'", "features", "'y'")


def test_npz_object_array_is_never_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([{"a": 1}, None, 3], dtype=object))
    with pytest.raises(InputError) as excinfo:
        load_split(path, name="train")
    check_message(excinfo, "object", "'x'")


@pytest.mark.parametrize(
    ("y", "fragments"),
    [
        (np.array([0.0, np.nan, 1.0, np.nan]), ("2 row(s)", "NaN")),
        (np.array([0.0, 1.5, 1.0, 0.0]), ("non-integer", "1.5")),
        (np.array([0, -1, 1, 0]), ("0..K-1", "-1")),
        (np.array([0, 1, 0]), ("one value per row", "(4)", "(3,)")),
    ],
    ids=["nan", "fractional", "negative", "length"],
)
def test_npz_bad_labels(tmp_path: Path, y: np.ndarray, fragments: tuple[str, ...]) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.zeros((4, 2)), y=y)
    with pytest.raises(InputError) as excinfo:
        load_split(path, name="train")
    check_message(excinfo, *fragments)


def test_npz_labels_required(tmp_path: Path) -> None:
    path = tmp_path / "nolabels.npz"
    np.savez(path, x=np.zeros((4, 2)))
    with pytest.raises(InputError) as excinfo:
        load_split(path, name="train", labels_required=True)
    check_message(excinfo, "labels", "'y'")


def test_npz_corrupt_and_non_numeric(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(os.urandom(64))
    with pytest.raises(InputError) as excinfo:
        load_split(garbage, name="train")
    check_message(excinfo, ".npz")
    strings = tmp_path / "strings.npz"
    np.savez(strings, x=np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(InputError) as excinfo:
        load_split(strings, name="train")
    check_message(excinfo, "numeric")


def test_npz_corrupt_message_never_suggests_unpickling(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    pickled = tmp_path / "data.npz"
    pickled.write_bytes(pickle.dumps(_Malicious(marker)))
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04" + os.urandom(60))  # a zip header, then junk
    for path in (pickled, garbage):
        with pytest.raises(InputError) as excinfo:
            load_split(path, name="train")
        message = check_message(excinfo, ".npz", path.name)
        assert "pickle" not in message.lower(), message
    assert not marker.exists()
    obj = tmp_path / "obj.npz"
    np.savez(obj, x=np.zeros((2, 2)), y=np.array([0, None], dtype=object))
    with pytest.raises(InputError) as excinfo:
        load_split(obj, name="train")
    message = check_message(excinfo, "'y'", "never unpickled")
    assert "allow_pickle" not in message, message


def test_missing_file_and_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(InputError) as excinfo:
        load_split(tmp_path / "nope.npz", name="train")
    assert "not found" in str(excinfo.value) and "nope.npz" in str(excinfo.value)
    other = tmp_path / "data.xlsx"
    other.write_bytes(b"x")
    with pytest.raises(InputError) as excinfo:
        load_split(other, name="train")
    check_message(excinfo, ".npz", ".csv", ".parquet", "'.xlsx'")


# --------------------------------------------------------------------------- CSV / Parquet


def _write_table(path: Path, frame: pd.DataFrame) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


TRAIN = pd.DataFrame(
    {
        "age": [30, 40, np.nan, 25, 35, 50],
        "color": ["red", "blue", "red", "green", "blue", "red"],
        "sex": ["f", "m", "f", "m", "f", "m"],
        "label": ["yes", "no", "yes", "maybe", "no", "yes"],
    }
)


def test_csv_string_label_and_one_hot_feature(tmp_path: Path) -> None:
    split = load_split(
        _write_table(tmp_path / "train.csv", TRAIN),
        name="train",
        label_col="label",
        group_col="sex",
        labels_required=True,
    )
    assert split.modality == "table"
    assert split.class_names == ("maybe", "no", "yes")
    assert split.y is not None and split.y.tolist() == [2, 1, 2, 0, 1, 2]
    assert split.feature_names == ("age", "color=blue", "color=green", "color=red")
    assert split.encoding == {"color": ["blue", "green", "red"]}
    assert split.groups is not None and split.groups.tolist() == ["f", "m", "f", "m", "f", "m"]
    assert np.isnan(split.x[2, 0])  # NaN in a feature is kept for the data-quality check
    np.testing.assert_array_equal(split.x[0, 1:], [0, 0, 1])

    test = pd.DataFrame({"age": [20, 60], "color": ["green", "purple"], "sex": ["f", "f"], "label": ["no", "yes"]})
    with pytest.warns(UserWarning, match="not seen in train"):
        encoded = load_split(
            _write_table(tmp_path / "test.csv", test),
            name="test",
            label_col="label",
            group_col="sex",
            categorical_mapping=split.encoding,
        )
    assert encoded.feature_names == split.feature_names
    np.testing.assert_array_equal(encoded.x[:, 1:], [[0, 1, 0], [0, 0, 0]])  # unseen 'purple' → all zeros


def test_csv_integer_labels_kept(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "target": [2, 0, 1]})
    split = load_split(_write_table(tmp_path / "t.csv", frame), name="train", label_col="target")
    assert split.class_names is None and split.y is not None and split.y.tolist() == [2, 0, 1]
    assert split.feature_names == ("a",) and split.encoding == {}


def test_csv_missing_label_column_lists_columns(tmp_path: Path) -> None:
    path = _write_table(tmp_path / "train.csv", TRAIN)
    with pytest.raises(InputError) as excinfo:
        load_split(path, name="train", label_col="target", labels_required=True)
    check_message(excinfo, "'target'", "age", "color", "label")
    unlabelled = load_split(path, name="deploy", label_col="target")  # deploy may lack labels
    assert unlabelled.y is None


def test_csv_no_label_col_given_for_labelled_split(tmp_path: Path) -> None:
    with pytest.raises(InputError) as excinfo:
        load_split(_write_table(tmp_path / "train.csv", TRAIN), name="train", labels_required=True)
    check_message(excinfo, "label_col")


def test_csv_nan_label_names_row_count(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": [1, 2, 3, 4], "label": [0, np.nan, 1, np.nan]})
    with pytest.raises(InputError) as excinfo:
        load_split(_write_table(tmp_path / "t.csv", frame), name="train", label_col="label")
    check_message(excinfo, "2 row(s)", "'label'")


def test_csv_string_column_where_train_was_numeric(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": ["x", "y"], "label": [0, 1]})
    with pytest.raises(InputError) as excinfo:
        load_split(_write_table(tmp_path / "t.csv", frame), name="test", label_col="label", categorical_mapping={})
    check_message(excinfo, "numeric", "'a'")


def test_csv_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(InputError) as excinfo:
        load_split(path, name="train")
    check_message(excinfo, "empty")


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_mostly_numeric_text_column_is_parsed(tmp_path: Path, suffix: str) -> None:
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    values = [str(v) for v in range(19)] + ["?"]  # 19 of 20 parse: exactly 95 %
    frame = pd.DataFrame({"bp": values, "label": [0, 1] * 10})
    with pytest.warns(UserWarning, match=r"'bp': 1 of 20 value\(s\) are not numbers \(e.g. '\?'\)"):
        split = load_split(_write_table(tmp_path / f"train{suffix}", frame), name="train", label_col="label")
    assert split.feature_names == ("bp",) and split.encoding == {}
    np.testing.assert_array_equal(split.x[:19, 0], np.arange(19, dtype=np.float32))
    assert np.isnan(split.x[19, 0])  # left for the data-quality check to report

    # test / deploy follow train: a small split with more '?' is still numeric …
    test = pd.DataFrame({"bp": ["?", "7.5", "8"], "label": [0, 1, 0]})  # 67 % parse
    with pytest.warns(UserWarning, match="1 of 3 value"):
        pass_through = load_split(
            _write_table(tmp_path / f"test{suffix}", test),
            name="test",
            label_col="label",
            categorical_mapping=split.encoding,
        )
    assert np.isnan(pass_through.x[0, 0]) and pass_through.x[1:, 0].tolist() == [7.5, 8.0]

    # … unless most of its values are not numbers
    with pytest.raises(InputError) as excinfo:
        load_split(
            _write_table(tmp_path / f"bad{suffix}", test.assign(bp=["?", "-", "8"])),
            name="test",
            label_col="label",
            categorical_mapping=split.encoding,
        )
    check_message(excinfo, "'test'", "'bp'", "numeric values as in train", "'?'")

    # below 95 % in train the column stays categorical
    frame.loc[18, "bp"] = "unknown"
    split = load_split(_write_table(tmp_path / f"cat{suffix}", frame), name="train", label_col="label")
    assert "bp" in split.encoding and len(split.feature_names or ()) == 20


def test_table_all_missing_text_column_is_numeric_nan(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"a": [1.0, 2.0, 3.0], "empty": pd.Series([None, None, None], dtype=object), "label": [0, 1, 0]}
    )
    split = load_split(_write_table(tmp_path / "t.csv", frame), name="train", label_col="label")
    assert split.feature_names == ("a", "empty") and np.isnan(split.x[:, 1]).all()


def test_table_high_cardinality_text_column_is_refused(tmp_path: Path) -> None:
    dates = pd.date_range("2020-01-01", periods=200, freq="D").strftime("%Y-%m-%d")
    frame = pd.DataFrame({"age": np.arange(200.0), "visit": dates, "label": [0, 1] * 100})
    path = _write_table(tmp_path / "train.csv", frame)
    with pytest.raises(InputError) as excinfo:
        load_split(path, name="train", label_col="label")
    message = check_message(excinfo, "'train'", "'visit'", "at most 50", "200 distinct", "--id-col")
    assert "2020-01-01" not in message  # values are never echoed (a text column may hold personal data)
    split = load_split(path, name="train", label_col="label", id_col="visit")  # as an identifier it is fine
    assert split.feature_names == ("age",) and split.ids is not None and split.ids[0] == "2020-01-01"

    frame["visit"] = [f"site{i % 50}" for i in range(200)]  # exactly 50 levels: still one-hot
    split = load_split(_write_table(tmp_path / "ok.csv", frame), name="train", label_col="label")
    assert len(split.encoding["visit"]) == 50 and split.x.shape == (200, 51)


def test_parquet_roundtrip(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    csv = load_split(_write_table(tmp_path / "t.csv", TRAIN), name="train", label_col="label")
    parquet = load_split(_write_table(tmp_path / "t.parquet", TRAIN), name="train", label_col="label")
    np.testing.assert_array_equal(parquet.x, csv.x)
    assert parquet.y is not None and csv.y is not None and parquet.y.tolist() == csv.y.tolist()
    assert parquet.feature_names == csv.feature_names and parquet.class_names == csv.class_names


def test_corrupt_parquet(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    path.write_bytes(os.urandom(100))
    with pytest.raises(InputError) as excinfo:
        load_split(path, name="train")
    check_message(excinfo, "PARQUET")


# --------------------------------------------------------------------------- image folders


def _write_images(root: Path, classes: dict[str, int], size: tuple[int, int] = (6, 5), mode: str = "RGB") -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / name / f"{i}.png")


def test_image_folder_skips_corrupt_and_resizes(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "train"
    _write_images(root, {"cat": 3, "dog": 2})
    Image.new("RGB", (9, 9), (255, 0, 0)).save(root / "dog" / "big.png")
    (root / "cat" / "broken.png").write_bytes(b"definitely not a png")
    (root / "cat" / "notes.txt").write_text("ignored")
    split = load_split(root, name="train", labels_required=True)
    assert split.modality == "image" and split.class_names == ("cat", "dog")
    assert split.x.shape == (6, 3, 5, 6) and split.x.dtype == np.float32
    assert split.x.min() >= 0.0 and split.x.max() <= 1.0
    assert split.y is not None and split.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert split.skipped == (str(root / "cat" / "broken.png"),)
    assert split.n_resized == 1
    assert split.ids is not None and "dog/big.png" in split.ids.tolist()
    np.testing.assert_allclose(split.x[split.ids.tolist().index("dog/big.png"), :, 0, 0], [1.0, 0.0, 0.0])


def test_image_folder_grayscale_and_unlabelled(tmp_path: Path) -> None:
    from PIL import Image

    _write_images(tmp_path / "gray", {"a": 2, "b": 2}, mode="L")
    assert load_split(tmp_path / "gray", name="train").x.shape == (4, 1, 5, 6)
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        Image.new("L", (4, 4), i).save(flat / f"{i}.jpg")
    split = load_split(flat, name="deploy")
    assert split.y is None and split.x.shape == (3, 1, 4, 4)
    with pytest.raises(InputError) as excinfo:
        load_split(flat, name="train", labels_required=True)
    check_message(excinfo, "subfolder")


def test_image_folder_nothing_readable(tmp_path: Path) -> None:
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "a.png").write_bytes(os.urandom(32))
    with pytest.raises(InputError) as excinfo:
        load_split(tmp_path, name="train")
    check_message(excinfo, "readable images", "a.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as excinfo:
        load_split(tmp_path / "empty", name="train")
    check_message(excinfo, "images")


def test_image_folder_rejects_group_col(tmp_path: Path) -> None:
    _write_images(tmp_path, {"a": 1, "b": 1})
    with pytest.raises(InputError) as excinfo:
        load_split(tmp_path, name="train", group_col="sex")
    check_message(excinfo, "group_col='sex'", ".npz")


# --------------------------------------------------------------------------- load_case


def test_load_case_tables(tmp_path: Path) -> None:
    train = _write_table(tmp_path / "train.csv", TRAIN)
    test = _write_table(
        tmp_path / "test.csv", TRAIN[["label", "sex", "color", "age"]].iloc[:3]
    )  # other order, subset of classes
    deploy = _write_table(tmp_path / "deploy.csv", TRAIN.drop(columns="label"))
    case = load_case(train, test, deploy, label_col="label", group_col="sex")
    assert isinstance(case, Case)
    assert case.n_classes == 3 and case.class_names == ("maybe", "no", "yes")
    assert case.modality == "table" and case.name == "train"
    assert case.feature_names == ("age", "color=blue", "color=green", "color=red")
    test_split = case.get("test")
    deploy_split = case.get("deploy")
    assert test_split is not None and deploy_split is not None
    np.testing.assert_array_equal(test_split.x, case.train.x[:3])
    assert test_split.y is not None and test_split.y.tolist() == [2, 1, 2]  # 'yes','no','yes' in train's indices
    assert deploy_split.y is None and deploy_split.groups is not None
    assert case.metadata["io"]["encoding"] == {"color": ["blue", "green", "red"]}


def test_load_case_tables_column_mismatch(tmp_path: Path) -> None:
    train = _write_table(tmp_path / "train.csv", TRAIN)
    test = _write_table(tmp_path / "test.csv", TRAIN.rename(columns={"age": "years"}))
    with pytest.raises(InputError) as excinfo:
        load_case(train, test, label_col="label")
    check_message(excinfo, "'test'", "years", "age")


def test_load_case_unknown_test_class(tmp_path: Path) -> None:
    train = _write_table(tmp_path / "train.csv", TRAIN)
    test = _write_table(tmp_path / "test.csv", TRAIN.assign(label=["yes", "no", "perhaps", "no", "yes", "yes"]))
    with pytest.raises(InputError) as excinfo:
        load_case(train, test, label_col="label")
    check_message(excinfo, "perhaps")


def test_load_case_image_folders_map_classes_by_name(tmp_path: Path) -> None:
    _write_images(tmp_path / "train", {"bird": 2, "cat": 2, "dog": 2})
    _write_images(tmp_path / "test", {"dog": 2})
    case = load_case(tmp_path / "train", tmp_path / "test")
    assert case.modality == "image" and case.class_names == ("bird", "cat", "dog")
    test_split = case.get("test")
    assert test_split is not None and test_split.y is not None and test_split.y.tolist() == [2, 2]
    assert test_split.ids is not None and test_split.ids.tolist() == ["dog/0.png", "dog/1.png"]
    assert case.metadata["io"]["splits"]["train"]["skipped"] == []


@pytest.mark.parametrize(("train_mode", "other_mode", "channels"), [("RGB", "L", 3), ("L", "RGB", 1)])
def test_load_case_image_folders_follow_train_mode_and_size(
    tmp_path: Path, train_mode: str, other_mode: str, channels: int
) -> None:
    from PIL import Image

    _write_images(tmp_path / "train", {"a": 2, "b": 2}, size=(16, 16), mode=train_mode)
    _write_images(tmp_path / "test", {"a": 2, "b": 1}, size=(32, 32), mode=other_mode)
    Image.new(other_mode, (16, 16)).save(tmp_path / "test" / "b" / "small.png")  # already train's size
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    for i in range(2):
        Image.new(other_mode, (8, 12), 200 if other_mode == "L" else (200, 200, 200)).save(deploy / f"{i}.png")
    case = load_case(tmp_path / "train", tmp_path / "test", deploy)
    test_split, deploy_split = case.get("test"), case.get("deploy")
    assert test_split is not None and deploy_split is not None
    assert case.train.x.shape == (4, channels, 16, 16)
    assert test_split.x.shape == (4, channels, 16, 16) and deploy_split.x.shape == (2, channels, 16, 16)
    assert test_split.y is not None and test_split.y.tolist() == [0, 0, 1, 1]
    np.testing.assert_allclose(deploy_split.x, 200 / 255, atol=1e-6)  # gray 200 stays 200 in every channel
    splits = case.metadata["io"]["splits"]
    assert (splits["train"]["n_resized"], splits["test"]["n_resized"], splits["deploy"]["n_resized"]) == (0, 3, 2)
    assert (splits["train"]["n_converted"], splits["test"]["n_converted"], splits["deploy"]["n_converted"]) == (0, 4, 2)


def test_load_case_shape_mismatch(tmp_path: Path) -> None:
    np.savez(tmp_path / "train.npz", x=np.zeros((4, 3)), y=np.array([0, 1, 0, 1]))
    np.savez(tmp_path / "test.npz", x=np.zeros((4, 5)), y=np.array([0, 1, 0, 1]))
    with pytest.raises(InputError) as excinfo:
        load_case(tmp_path / "train.npz", tmp_path / "test.npz")
    check_message(excinfo, "'test'", "(3,)", "(5,)")


def test_load_case_test_needs_labels(tmp_path: Path) -> None:
    np.savez(tmp_path / "train.npz", x=np.zeros((4, 3)), y=np.array([0, 1, 0, 1]))
    np.savez(tmp_path / "test.npz", x=np.zeros((4, 3)))
    with pytest.raises(InputError) as excinfo:
        load_case(tmp_path / "train.npz", tmp_path / "test.npz")
    check_message(excinfo, "'test'", "labels")
    case = load_case(
        tmp_path / "train.npz", deploy=tmp_path / "test.npz", model=torch.nn.Identity(), model_source="identity"
    )
    assert case.n_classes == 2 and case.model_source == "identity" and case.get("deploy") is not None


# --------------------------------------------------------------------------- models: factories and weights

FACTORY_SOURCE = """
import torch


def build():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def build_wide():
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def not_a_module():
    return 42


def broken():
    raise RuntimeError("needs a GPU\\nsecond line")
"""


@pytest.fixture()
def factory_file(tmp_path: Path) -> Path:
    path = tmp_path / "net.py"
    path.write_text(FACTORY_SOURCE)
    return path


def _tiny_mlp() -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()


def test_factory_good(factory_file: Path) -> None:
    model, source = load_model(f"{factory_file}:build")
    assert isinstance(model, torch.nn.Module) and not model.training
    assert "build" in source and "net.py" in source
    assert model(torch.zeros(2, 4)).shape == (2, 3)


@pytest.mark.parametrize(
    ("spec", "fragments"),
    [
        ("{f}:not_a_module", ("returned int", "torch.nn.Module")),
        ("{f}:broken", ("raised RuntimeError", "needs a GPU")),
        ("{f}:missing", ("no function 'missing'", "build")),
        ("{d}/absent.py:build", ("not found", "absent.py")),
        ("{f}", ()),
    ],
    ids=["non-module", "raises", "no-function", "no-file", "no-factory-name"],
)
def test_factory_errors(factory_file: Path, spec: str, fragments: tuple[str, ...]) -> None:
    with pytest.raises(ModelError) as excinfo:
        load_model(spec.format(f=factory_file, d=factory_file.parent))
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert "expected" in message or "not found" in message


def test_factory_file_with_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.py"
    path.write_text("def build(:\n    pass\n")
    with pytest.raises(ModelError) as excinfo:
        load_model(f"{path}:build")
    check_message(excinfo, "SyntaxError", "bad.py")


def test_weights_safetensors(factory_file: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    reference = _tiny_mlp()
    weights = tmp_path / "w.safetensors"
    save_file(reference.state_dict(), str(weights))
    model, source = load_model(f"{factory_file}:build", weights=weights)
    x = torch.randn(5, 4)
    torch.testing.assert_close(model(x), reference(x))
    assert "w.safetensors" in source and file_sha256(weights)[:12] in source


@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
def test_weights_torch_state_dict(factory_file: Path, tmp_path: Path, wrap: str | None) -> None:
    reference = _tiny_mlp()
    weights = tmp_path / "w.pt"
    state = reference.state_dict()
    torch.save(state if wrap is None else {wrap: state, "epoch": 3}, weights)
    model, _ = load_model(f"{factory_file}:build", weights=weights)
    x = torch.randn(5, 4)
    torch.testing.assert_close(model(x), reference(x))


def test_weights_wrong_shapes(factory_file: Path, tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    torch.save(_tiny_mlp().state_dict(), weights)
    with pytest.raises(ModelError) as excinfo:
        load_model(f"{factory_file}:build_wide", weights=weights)
    check_message(excinfo, "shape mismatches", "0.weight", "(16, 4)", "(8, 4)")


def test_weights_missing_and_unexpected_keys(factory_file: Path, tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    state = _tiny_mlp().state_dict()
    state["extra.bias"] = state.pop("2.bias")
    torch.save(state, weights)
    with pytest.raises(ModelError) as excinfo:
        load_model(f"{factory_file}:build", weights=weights)
    check_message(excinfo, "missing keys ['2.bias']", "unexpected keys ['extra.bias']")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors", ".bin"])
def test_weights_corrupt(factory_file: Path, tmp_path: Path, suffix: str) -> None:
    weights = tmp_path / f"w{suffix}"
    weights.write_bytes(os.urandom(256))
    with pytest.raises(ModelError) as excinfo:
        load_model(f"{factory_file}:build", weights=weights)
    check_message(excinfo, weights.name)


def test_weights_unknown_suffix_and_missing(factory_file: Path, tmp_path: Path) -> None:
    weights = tmp_path / "w.npy"
    weights.write_bytes(b"x")
    with pytest.raises(ModelError) as excinfo:
        load_model(f"{factory_file}:build", weights=weights)
    check_message(excinfo, ".safetensors")
    with pytest.raises(ModelError) as excinfo:
        load_model(f"{factory_file}:build", weights=tmp_path / "absent.pt")
    assert "not found" in str(excinfo.value)


class _Malicious:
    """Unpickling this would create a marker file (stands in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_weights_malicious_pickle_is_not_executed(factory_file: Path, tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    weights = tmp_path / "evil.pt"
    payload = {"0.weight": _Malicious(marker)}
    if writer == "pickle":
        weights.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, weights)
    with pytest.raises(ModelError) as excinfo:
        load_model(f"{factory_file}:build", weights=weights)
    check_message(excinfo, "weights_only", "evil.pt")
    assert not marker.exists()


def test_weights_not_a_state_dict(factory_file: Path, tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    torch.save([torch.zeros(2)], weights)
    with pytest.raises(ModelError) as excinfo:
        load_model(f"{factory_file}:build", weights=weights)
    check_message(excinfo, "state_dict", "list")


# --------------------------------------------------------------------------- models: files


@pytest.mark.parametrize("name", ["model.pt", "model.pth", "model.pkl", "model.ckpt"])
def test_pickled_model_refused(tmp_path: Path, name: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / name
    path.write_bytes(pickle.dumps(_Malicious(marker)))
    with pytest.raises(ModelError) as excinfo:
        load_model(str(path))
    check_message(excinfo, "unpickling runs", ":factory", ".safetensors", ".pt2")
    with pytest.raises(ModelError):
        load_model(str(path), allow_pickle=True)
    assert not marker.exists()


def test_unknown_model_spec(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as excinfo:
        load_model(str(tmp_path / "model.h5"))
    check_message(excinfo, ":factory", ".pt2", ".onnx")
    with pytest.raises(ModelError) as excinfo:
        load_model(str(tmp_path / "w.safetensors"))
    check_message(excinfo, "--weights")


def test_weights_with_non_factory_model(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as excinfo:
        load_model(str(tmp_path / "m.onnx"), weights=tmp_path / "w.pt")
    check_message(excinfo, "file.py:factory", "w.pt", "m.onnx")


def test_module_factory_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "dlclinic_test_factory_mod.py").write_text(FACTORY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "dlclinic_test_factory_mod", raising=False)
    model, source = load_model("dlclinic_test_factory_mod:build")
    assert isinstance(model, torch.nn.Module) and "dlclinic_test_factory_mod" in source
    with pytest.raises(ModelError) as excinfo:
        load_model("no_such_module_dlclinic:build")
    check_message(excinfo, "no_such_module_dlclinic")


def test_pt2_roundtrip(tmp_path: Path) -> None:
    reference = _tiny_mlp()
    x = torch.randn(3, 4)
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(reference, (x,)), str(path))
    model, source = load_model(str(path))
    assert isinstance(model, torch.nn.Module) and "torch.export program" in source
    torch.testing.assert_close(model(x), reference(x))


def test_pt2_corrupt_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "model.pt2"
    path.write_bytes(os.urandom(128))
    with pytest.raises(ModelError) as excinfo:
        load_model(str(path))
    check_message(excinfo, "torch.export")
    with pytest.raises(ModelError) as excinfo:
        load_model(str(tmp_path / "absent.pt2"))
    assert "not found" in str(excinfo.value)


def _export_onnx(model: torch.nn.Module, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(2, 4),),
            str(path),
            dynamo=False,
            input_names=["features"],
            output_names=["logits"],
            dynamic_axes={"features": {0: "batch"}},
        )


def test_onnx_roundtrip(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    reference = _tiny_mlp()
    path = tmp_path / "model.onnx"
    _export_onnx(reference, path)
    model, source = load_model(str(path))
    assert isinstance(model, OnnxModel) and "ONNX" in source
    assert model.input_name == "features" and model.input_shape == [None, 4]
    assert model.sha256 == file_sha256(path)
    x = np.random.default_rng(0).normal(size=(600, 4))  # float64 input, cast; > 2 batches
    logits = model.predict_logits(x)
    assert logits.dtype == np.float32 and logits.shape == (600, 3)
    with torch.no_grad():
        expected = reference(torch.as_tensor(x, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    with pytest.raises(ModelError) as excinfo:
        model.predict_logits(np.zeros((2, 5)))
    check_message(excinfo, "[None, 4]", "(2, 5)")


def test_onnx_corrupt(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    path = tmp_path / "model.onnx"
    path.write_bytes(os.urandom(256))
    with pytest.raises(ModelError) as excinfo:
        load_model(str(path))
    check_message(excinfo, "ONNX")


def test_onnx_without_onnxruntime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x00")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependencyError) as excinfo:
        load_model(str(path))
    assert "onnxruntime" in str(excinfo.value) and "dlclinic[onnx]" in str(excinfo.value)


def test_file_sha256(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "blob"
    data = os.urandom(3 * (1 << 20) + 7)
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_every_error_is_a_dlclinic_error() -> None:
    assert issubclass(InputError, DlclinicError) and issubclass(ModelError, DlclinicError)


def _loaded_after(statement: str) -> str:
    code = f"import sys; {statement}; print(sorted(m for m in ('torch', 'pandas', 'PIL', 'onnxruntime', 'pyarrow') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    return out.stdout.strip()


def test_import_is_light() -> None:
    # the package itself loads nothing heavy; the loaders load their core dependencies (pandas may load pyarrow) but no ONNX runtime
    assert _loaded_after("import dlclinic") == "[]"
    assert "onnxruntime" not in _loaded_after("import dlclinic.io")


def test_allow_pickle_loads_a_plain_module_after_the_scan(tmp_path: Path) -> None:
    path = tmp_path / "whole.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 3)), path)
    with pytest.raises(ModelError):
        load_model(str(path))
    model, source = load_model(str(path), allow_pickle=True)
    assert isinstance(model, torch.nn.Module) and not model.training
    assert "--allow-pickle" in source and "static scan" in source


# --------------------------------------------------------------------------- issue 18: labels and keys


def test_a_typo_among_integer_labels_is_reported_with_its_row_not_a_new_class(tmp_path: Path) -> None:
    labels = [str(i % 3) for i in range(12)]
    labels[5] = "seven"
    csv = tmp_path / "train.csv"
    pd.DataFrame({"a": np.arange(12.0), "label": labels}).to_csv(csv, index=False)
    with pytest.raises(InputError) as excinfo:
        load_split(csv, name="train", label_col="label", labels_required=True)
    check_message(excinfo, "split 'train' label column 'label'", "integer class labels like 11 of the 12 rows")
    assert "'seven' at row 5" in str(excinfo.value)
    npz = tmp_path / "train.npz"
    np.savez(npz, x=np.zeros((12, 2)), y=np.array(labels))
    with pytest.raises(InputError) as excinfo:
        load_split(npz, name="train", labels_required=True)
    check_message(excinfo, "'seven' at row 5")


def test_text_labels_stay_class_names() -> None:
    from dlclinic.io.data import _named_labels

    y, names = _named_labels(np.array(["cat", "dog", "7", "cat"]), "labels")  # mostly text: "7" is a class name
    assert names == ("7", "cat", "dog") and y.tolist() == [1, 2, 0, 1]
    y, names = _named_labels(np.array(["1", "0", "1"]), "labels")  # all numbers as text: unchanged behaviour
    assert names == ("0", "1") and y.tolist() == [1, 0, 1]


def test_a_test_class_unseen_in_train_names_its_row(tmp_path: Path) -> None:
    train = _write_table(tmp_path / "train.csv", TRAIN)
    test = _write_table(tmp_path / "test.csv", TRAIN.assign(label=["yes", "no", "no", "yse", "yes", "yes"]))
    with pytest.raises(InputError) as excinfo:
        load_case(train, test, label_col="label")
    check_message(excinfo, "split 'test'", "'yse' at row 3")


@pytest.mark.parametrize("option", ["label_col", "group_col", "id_col"])
def test_npz_named_key_that_is_missing_is_an_error_not_a_fallback(tmp_path: Path, option: str) -> None:
    path = tmp_path / "train.npz"
    np.savez(path, x=np.zeros((6, 2)), y=np.arange(6) % 2)
    with pytest.raises(InputError) as excinfo:
        load_split(path, name="train", labels_required=True, **{option: "target"})
    check_message(excinfo, "'target'", f"--{option.replace('_', '-')}", "found keys ['x', 'y']")
    load_split(path, name="deploy", **{option: "target"})  # an optional split is read without it


def test_scan_file_reports_empty_and_headerless_pickle_free_files_as_errors(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    from dlclinic.io.pickle_scan import scan_file

    (tmp_path / "empty.safetensors").write_bytes(b"")
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 64)
    save_file({"w": np.zeros(3, dtype=np.float32)}, str(tmp_path / "good.safetensors"))
    verdicts = {p.name: scan_file(p).verdict for p in sorted(tmp_path.iterdir())}
    assert verdicts == {
        "empty.onnx": "error",
        "empty.safetensors": "error",
        "good.safetensors": "safe",
        "junk.safetensors": "error",
    }
