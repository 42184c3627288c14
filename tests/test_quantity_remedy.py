"""treat data.quantity: the labels-to-buy table and an augmentation policy measured on held-out rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import dlclinic
from dlclinic import Case, FitConfig
from dlclinic.functional.augment import augment_copy, policies_for

FAST = FitConfig(epochs=10, batch_size=32)


def test_augmentations_preserve_shape_labels_and_class_membership() -> None:
    rng = np.random.default_rng(0)
    img = rng.random((20, 1, 8, 8)).astype(np.float32)
    y = np.repeat([0, 1], 10)
    shifted = augment_copy(img, y, "shift", modality="image", seed=1)
    assert shifted.shape == img.shape and not np.allclose(shifted, img)
    assert np.isclose(shifted.sum(), img.sum(), rtol=0.6)  # a shift moves pixels, it does not invent them
    table = np.c_[np.zeros(10), np.ones(10)].astype(np.float32)
    table = np.r_[table, table + 10]
    blended = augment_copy(table, y, "blend", modality="table", seed=0)
    assert (blended[:10] < 5).all() and (blended[10:] > 5).all()  # never mixes two classes
    assert policies_for("image") == ("shift", "noise", "blend") and "shift" not in policies_for("table")
    mixed = np.c_[rng.normal(size=40), rng.integers(0, 2, 40)].astype(np.float32)  # continuous + binary
    for policy in ("noise", "blend"):
        aug = augment_copy(mixed, np.repeat([0, 1], 20), policy, modality="table", seed=2)
        assert not np.allclose(aug[:, 0], mixed[:, 0]) and np.array_equal(aug[:, 1], mixed[:, 1])
    nhwc = rng.random((6, 8, 8, 3)).astype(np.float32)
    assert augment_copy(nhwc, np.zeros(6), "shift", modality="image", seed=3).shape == nhwc.shape
    with pytest.raises(ValueError, match="unknown augmentation policy 'shift' for table data"):
        augment_copy(table, y, "shift", modality="table")


@pytest.mark.slow
def test_treat_quantity_chooses_on_train_rows_and_verifies_on_test(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images[:, None] / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    case = Case.from_arrays((x[:200], y[:200]), (x[1000:1600], y[1000:1600]), modality="image")
    treatment, before, after = dlclinic.treat(
        case, "data.quantity", out_dir=tmp_path / "out", fit_config=FAST, cache_dir=tmp_path / "cache"
    )
    assert before["data.quantity"].status == "warn"  # 200 digits: far from saturation
    scores = {k: v for k, v in treatment.after.items() if k.startswith("val_accuracy_")}
    assert set(scores) == {"val_accuracy_shift", "val_accuracy_noise", "val_accuracy_blend"}
    buy = json.loads((tmp_path / "out" / "labels_to_buy.json").read_text())
    assert (
        buy["train_size"] == 200
        and buy["targets"]
        and all(t["labels_to_add"] is None or t["labels_to_add"] >= 0 for t in buy["targets"])
    )
    if "test_accuracy" in treatment.after:  # a policy beat no augmentation on held-out train rows
        assert (
            treatment.after["gain_ci_low"]
            <= treatment.after["test_accuracy"] - treatment.before["test_accuracy"]
            <= treatment.after["gain_ci_high"]
        )
        assert Path(treatment.artifacts["model"]).exists()
    else:
        assert after is before and "unchanged" in treatment.action
