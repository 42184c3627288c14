from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from dlclinic import Case, FitConfig, InputError, fit
from dlclinic.core import case as case_module
from dlclinic.core.baselines import MLP, SmallCNN, baseline_for
from dlclinic.core.errors import ConfigError


def test_numpy_tensor_and_dataset_inputs_agree() -> None:
    x = np.random.default_rng(0).normal(size=(40, 5)).astype(np.float32)
    y = np.arange(40) % 2
    a = Case.from_arrays((x, y))
    b = Case.from_arrays((torch.from_numpy(x), torch.from_numpy(y)))
    c = Case.from_arrays(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)))
    for other in (b, c):
        assert np.array_equal(a.train.x, other.train.x) and np.array_equal(a.train.y, other.train.y)
    assert a.n_classes == 2 and a.modality == "vector"


def test_dataset_with_groups_and_unlabelled_deploy() -> None:
    x = torch.randn(30, 1, 8, 8)
    y = torch.arange(30) % 3
    g = torch.arange(30) % 2
    case = Case.from_arrays(TensorDataset(x, y, g), deploy=(x[:10],))
    assert case.modality == "image"
    assert case.train.groups is not None and len(case.train.groups) == 30
    assert not case.splits["deploy"].labelled


@pytest.mark.parametrize(
    "train, match",
    [
        ((np.zeros((5, 3)), np.array([0, 1, 0, 1])), "x has 5 rows but y has 4"),
        ((np.zeros((4, 3)), np.array([0, 1, np.nan, 1])), "NaN"),
        ((np.zeros((4, 3)), np.array([0, 1, -1, 1])), "expected labels in 0..K-1"),
        ((np.zeros((4, 3)), np.array([0.0, 1.5, 0, 1])), "non-integer values such as 1.5"),
        ((np.zeros(4), np.array([0, 1, 0, 1])), "expected N×features"),
        ((np.zeros((4, 3)), np.array([0, 0, 0, 0])), "at least 2 classes"),
        ((np.array([["a", "b"]] * 4), np.array([0, 1, 0, 1])), "expected numeric inputs"),
    ],
)
def test_bad_arrays_are_one_line_input_errors(train: tuple, match: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(InputError, match=match) as info:
        Case.from_arrays(train)
    assert "\n" not in str(info.value)


def test_split_shapes_and_label_range_checked() -> None:
    x, y = np.zeros((6, 3), np.float32), np.array([0, 1, 2, 0, 1, 2])
    with pytest.raises(InputError, match=r"expected samples of shape \(3,\)"):
        Case.from_arrays((x, y), (np.zeros((4, 4)), y[:4]))
    with pytest.raises(InputError, match="expected values in 0..2"):
        Case.from_arrays((x, y), (x, np.array([0, 1, 2, 3, 0, 1])))
    assert Case.from_arrays((x, y), (x, np.array([0, 1, 2, 3, 0, 1])), n_classes=4).n_classes == 4


def test_with_train_and_with_split_rows_copy_not_mutate() -> None:
    x, y = np.arange(20, dtype=np.float32).reshape(10, 2), np.arange(10) % 2
    case = Case.from_arrays((x, y), (x, y))
    cleaned = case.with_train(np.array([0, 2, 4]), relabel={2: 0})
    assert cleaned.train.y.tolist() == [0, 0, 0]
    assert case.train.y.tolist() == (np.arange(10) % 2).tolist()
    assert len(case.with_split_rows("test", np.array([1, 3])).splits["test"]) == 2


def test_fit_is_seeded_and_does_not_touch_the_given_module() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    net = MLP(4, 2)
    before = [p.clone() for p in net.parameters()]
    r1 = fit(net, x, y, FitConfig(epochs=5, seed=3))
    r2 = fit(net, x, y, FitConfig(epochs=5, seed=3))
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(r1.model.state_dict().values(), r2.model.state_dict().values()))
    assert r1.history["val_acc"][-1] > 0.85
    with pytest.raises(ConfigError, match="epochs >= 1"):
        FitConfig(epochs=0)


def test_baselines_match_the_data() -> None:
    assert isinstance(baseline_for((1, 28, 28), 10, "image"), SmallCNN)
    assert isinstance(baseline_for((28, 28), 10, "image"), SmallCNN)
    assert isinstance(baseline_for((12,), 3, "table"), MLP)
    out = baseline_for((3, 16, 16), 4, "image")(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 4)


def test_a_memory_mapped_split_is_scanned_for_unusable_values_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    scans: list[int] = []
    real = case_module.unusable_rows
    monkeypatch.setattr(case_module, "unusable_rows", lambda x: scans.append(len(x)) or real(x))
    np.save(tmp_path / "x.npy", np.zeros((17_000, 1_000), dtype=np.float32))  # 68 MB: a split
    mapped = np.load(tmp_path / "x.npy", mmap_mode="c")
    small = np.zeros((10, 4), dtype=np.float32)
    for _ in range(3):
        case_module.usable_inputs(mapped)
        case_module.usable_inputs(small)
    assert scans == [17_000, 10, 10, 10]  # the mapped split once, small arrays every time
    case_module.usable_inputs(mapped[1:])  # another array (a view with its own layout): scanned on its own
    assert scans[-1] == 16_999
    in_memory = np.zeros((17_000, 1_000), dtype=np.float32)
    assert case_module.usable_inputs(in_memory).flags.writeable is False
    in_memory[5, 3] = np.nan  # changed between two calls (a user between two checkups): seen
    assert case_module.usable_inputs(in_memory)[5, 3] == 0
    assert scans[-2:] == [17_000, 17_000]
