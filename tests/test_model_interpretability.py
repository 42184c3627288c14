"""model.interpretability: a planted shortcut is flagged, a model trained without it is not."""

from __future__ import annotations

import numpy as np
import pytest

import dlclinic
from conftest import blobs
from dlclinic import Case, FitConfig
from dlclinic.functional.attribution import class_importance, parse_region


@pytest.fixture(autouse=True)
def _one_thread():  # type: ignore[no-untyped-def]
    """Small models train faster on one thread, and much faster on a CPU shared with other jobs."""
    from dlclinic.core.threads import torch_threads

    with torch_threads(1):
        yield


FAST = FitConfig(epochs=6, batch_size=32)
CID = "model.interpretability"


def _bars(n: int, seed: int, *, patch: bool) -> tuple[np.ndarray, np.ndarray]:
    """14×14 images: class 0 a faint vertical bar, class 1 a faint horizontal bar, in noise.

    With ``patch`` a bright 3×3 corner patch marks class 1 (a shortcut that predicts the
    label perfectly).
    """
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(0.3, 0.15, size=(n, 14, 14))
    for i in range(n):
        if y[i] == 0:
            x[i, 3:11, 6:8] += 0.25
        else:
            x[i, 6:8, 3:11] += 0.25
    if patch:
        x[y == 1, 0:3, 0:3] = 1.5
    return np.clip(x, 0, None).astype(np.float32), y.astype(np.int64)


def _check(case: Case, cache, **options):  # type: ignore[no-untyped-def]
    return dlclinic.checkup(case, only=[CID], options={CID: options}, fit_config=FAST, cache_dir=cache)[CID]


def test_planted_corner_patch_is_flagged_and_clean_model_is_not(tmp_path) -> None:  # type: ignore[no-untyped-def]
    shortcut = Case.from_arrays(_bars(600, 0, patch=True), _bars(300, 1, patch=True))
    res = _check(shortcut, tmp_path, suspect_region="0:3,0:3")
    assert res.status in ("warn", "fail"), res.summary
    assert any(f.code == "shortcut" for f in res.findings)
    assert res.metrics["shortcut_enrichment"] > 3 or res.metrics["shortcut_flip_low"] > 0.1
    images = res.details["images"][0]
    assert len(images["heatmaps"]) == len(images["indices"]) and np.asarray(images["heatmaps"][0]).shape == (14, 14)

    clean = Case.from_arrays(_bars(600, 0, patch=False), _bars(300, 1, patch=False))
    res = _check(clean, tmp_path, suspect_region="0:3,0:3")
    assert not any(f.code == "shortcut" for f in res.findings), res.summary
    assert res.metrics["shortcut_flip_rate"] < 0.1
    # faithfulness: the best method beats a random order on deletion
    assert max(res.metrics[f"{m}_deletion_gain"] for m in ("integrated_gradients", "saliency", "occlusion")) > 0
    assert res.metrics["sanity_spearman"] < 0.8


def test_leaked_table_feature_is_flagged(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x, y = blobs(600, k=3, d=8, sep=0.3, seed=0)
    xt, yt = blobs(300, k=3, d=8, sep=0.3, seed=1)
    leak = x.copy()
    leak_t = xt.copy()
    leak[:, 2] = y * 3.0
    leak_t[:, 2] = yt * 3.0
    names = [f"f{i}" for i in range(8)]
    res = _check(Case.from_arrays((leak, y), (leak_t, yt), feature_names=names), tmp_path, suspect_feature="f2")
    assert any(f.code == "shortcut" for f in res.findings), res.summary
    assert any(t["title"].startswith("Per-class global importance") for t in res.details["tables"])
    clean = _check(Case.from_arrays((x, y), (xt, yt), feature_names=names), tmp_path, suspect_feature="f2")
    assert not any(f.code == "shortcut" for f in clean.findings), clean.summary


def test_region_parsing_and_class_importance() -> None:
    mask = parse_region("0:2,-2:", (4, 4))
    assert mask.sum() == 4 and mask[0, 3] and not mask[3, 0]
    with pytest.raises(ValueError):
        parse_region("0:9,0:2", (4, 4))
    imp = class_importance(np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]]), np.array([0, 1, 0]), 3)
    assert imp[0].tolist() == [2.0, 0.0] and imp[1].tolist() == [0.0, 2.0] and np.isnan(imp[2]).all()


@pytest.mark.slow
def test_deshortcut_remedy_removes_the_planted_patch(tmp_path) -> None:  # type: ignore[no-untyped-def]
    case = Case.from_arrays(_bars(600, 0, patch=True), _bars(300, 1, patch=True))
    treatment, before, after = dlclinic.treat(
        case, CID, params={"suspect_region": "0:3,0:3"}, fit_config=FAST, cache_dir=tmp_path
    )
    assert before[CID].status in ("warn", "fail")
    assert not any(f.code == "shortcut" for f in after[CID].findings), after[CID].summary
    assert treatment.after["shortcut_flip_rate"] < treatment.before["shortcut_flip_rate"]
    assert treatment.after["test_accuracy_region_blanked"] > treatment.before["test_accuracy_region_blanked"]


def test_thumbnails_draw_attribution_overlays() -> None:
    import base64
    import io

    from PIL import Image

    from dlclinic.report.thumbnails import png_data_uri, thumbnails

    img = np.zeros((8, 8), np.float32)
    heat = np.zeros((8, 8))
    heat[:4, :4] = 1.0
    png = Image.open(io.BytesIO(base64.b64decode(png_data_uri(img, heatmap=heat).split(",", 1)[1]))).convert("RGB")
    arr = np.asarray(png)
    assert arr[0, 0, 0] > 150 and arr[0, 0, 1] < 50  # red where the map is hot
    assert arr[-1, -1].tolist() == [0, 0, 0]  # unchanged elsewhere
    with pytest.raises(ValueError):
        png_data_uri(img, heatmap=np.zeros((3, 3)))
    case = Case.from_arrays(_bars(20, 0, patch=False))
    shown = thumbnails({"split": "train", "indices": [0, 1], "heatmaps": [np.ones((14, 14)).tolist()]}, case)
    assert len(shown) == 2 and shown[0]["uri"] != png_data_uri(case.train.x[0])
    assert shown[1]["uri"] == png_data_uri(case.train.x[1])  # no map given: plain thumbnail
