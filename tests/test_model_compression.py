"""model.compression, compute.edge, compute.realtime: planted defects are found, clean settings stay quiet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import dlclinic
from conftest import blobs
from dlclinic import Case, FitConfig
from dlclinic.core.baselines import SmallCNN
from dlclinic.export.weights import state_dict_bytes
from dlclinic.functional.compression import (
    channel_prune,
    magnitude_prune,
    paired_accuracy_drop,
    parameter_count,
    pareto_front,
    prune_plans,
)
from test_model_export import ResCNN


@pytest.fixture(autouse=True)
def _one_thread():  # type: ignore[no-untyped-def]
    """Small models train faster on one thread, and much faster on a CPU shared with other jobs."""
    from dlclinic.core.threads import torch_threads

    with torch_threads(1):
        yield


FAST = FitConfig(epochs=6, batch_size=64)


@pytest.fixture(scope="module")
def blob_case(tmp_path_factory: pytest.TempPathFactory) -> tuple[Case, Path]:
    x, y = blobs(600, k=3, d=12, sep=3.0, seed=0)
    xt, yt = blobs(300, k=3, d=12, sep=3.0, seed=1)
    return Case.from_arrays((x, y), (xt, yt)), tmp_path_factory.mktemp("cache")


def _run(case: Case, cache: Path, cid: str, **options: object):  # type: ignore[no-untyped-def]
    return dlclinic.checkup(case, only=[cid], options={cid: options}, fit_config=FAST, cache_dir=cache)[cid]


def test_channel_prune_really_shrinks_tensors() -> None:
    torch.manual_seed(0)
    cnn = SmallCNN(1, 10, 28, 28).eval()
    x = np.random.default_rng(0).random((4, 28, 28), dtype=np.float32)
    small, plans = channel_prune(cnn, 0.5, x)
    assert [p.producer for p in plans] == ["features.0", "features.4", "embedding.1"]
    assert parameter_count(small) < 0.3 * parameter_count(cnn)
    assert len(state_dict_bytes(small)) < 0.3 * len(state_dict_bytes(cnn))
    assert small.features[0].weight.shape[0] == 8 and small.embedding[1].weight.shape == (32, 16 * 49)
    assert small(torch.from_numpy(x)).shape == (4, 10)
    # residual block: channels tied by the add are left alone, the inner conv is shrunk
    res = ResCNN().eval()
    plans = prune_plans(res, np.random.default_rng(0).random((2, 12, 12), dtype=np.float32))
    assert [p.producer for p in plans] == ["block.c1"]


def test_magnitude_prune_zeros_weights_but_not_the_dense_file() -> None:
    torch.manual_seed(0)
    cnn = SmallCNN(1, 10, 28, 28)
    pruned = magnitude_prune(cnn, 0.9)
    assert parameter_count(pruned, nonzero=True) < 0.15 * parameter_count(cnn)
    assert len(state_dict_bytes(pruned)) == len(state_dict_bytes(cnn))


def test_pareto_front_and_paired_drop() -> None:
    assert pareto_front([1.0, 2.0, 3.0, 2.5], [0.8, 0.9, 0.95, 0.85]) == [0, 1, 2]
    drop, low, high = paired_accuracy_drop(np.ones(100, bool), np.r_[np.zeros(10, bool), np.ones(90, bool)])
    assert drop == pytest.approx(0.1) and low < 0.1 < high


def test_compression_finds_free_int8_and_flags_over_pruning(blob_case) -> None:  # type: ignore[no-untyped-def]
    case, cache = blob_case
    res = _run(case, cache, "model.compression", sparsities="0.5,0.98", keep_ratios="0.05", distill_seconds=1.0)
    codes = {f.code: f for f in res.findings}
    assert res.status == "warn", res.summary
    assert "free_compression" in codes
    assert (
        res.metrics["onnx_int8_dynamic_drop"] <= 0.01
        and res.metrics["onnx_int8_dynamic_size_mb"] < 0.5 * res.metrics["original_size_mb"]
    )
    lossy = {f.extra["variant"] for f in res.findings if f.code == "lossy_variant"}
    assert "magnitude 98%" in lossy  # the over-pruned model is flagged
    assert "magnitude 50%" not in lossy  # the mild one is not
    assert res.metrics["onnx_fp32_drop"] == 0.0
    table = res.details["tables"][0]
    names = [row[0] for row in table["rows"]]
    assert {"onnx fp32", "onnx int8 dynamic", "onnx int8 static", "bf16 eager", "channels 5%"} <= set(names)
    assert res.remedy is not None and res.remedy.command.startswith("dlclinic treat model.compression")


def test_compression_scores_a_large_test_split_on_a_sample(blob_case) -> None:  # type: ignore[no-untyped-def]
    """``max_test_rows``: the sweep's cost does not grow with the split; the report says it sampled."""
    case, cache = blob_case
    res = _run(case, cache, "model.compression", max_test_rows=200, sparsities="0.5", keep_ratios="", distill_epochs=0)
    assert any("200 of the 300 test rows" in note for note in res.details["notes"]), res.details["notes"]
    whole = _run(case, cache, "model.compression", max_test_rows=0, sparsities="0.5", keep_ratios="", distill_epochs=0)
    assert not any("seeded sample" in note for note in whole.details["notes"])


def test_edge_budget_verdicts(blob_case) -> None:  # type: ignore[no-untyped-def]
    case, cache = blob_case
    too_small = _run(case, cache, "compute.edge", max_size_mb=0.001)
    assert too_small.status == "fail" and any(f.code == "over_size_budget" for f in too_small.findings)
    roomy = _run(case, cache, "compute.edge", max_size_mb=100.0, max_memory_mb=1000.0)
    assert roomy.status == "ok", roomy.summary
    assert roomy.metrics["pt2_exportable"] and roomy.metrics["onnx_exportable"]
    assert roomy.metrics["size_int8_mb"] < roomy.metrics["size_fp32_mb"]
    no_memory = _run(case, cache, "compute.edge", max_memory_mb=0.001)
    assert no_memory.status == "fail" and any(f.code == "over_memory_budget" for f in no_memory.findings)


def test_realtime_budget_verdicts(blob_case) -> None:  # type: ignore[no-untyped-def]
    case, cache = blob_case
    missed = _run(case, cache, "compute.realtime", latency_budget_ms=1e-6, seconds=0.5)
    assert missed.status == "fail" and missed.findings[0].code == "over_latency_budget"
    met = _run(case, cache, "compute.realtime", latency_budget_ms=1e5, seconds=0.5)
    assert met.status == "ok", met.summary
    assert met.metrics["eager_fp32_p99_ms"] >= met.metrics["eager_fp32_p50_ms"] > 0
    assert "ort_int8_static_p50_ms" in met.metrics
    rows = {row[0]: row for row in met.details["tables"][0]["rows"]}
    assert str(rows["torch.compile"][-1]).startswith("skipped")
    assert "Hyndman-Fan" in met.details["method"]
