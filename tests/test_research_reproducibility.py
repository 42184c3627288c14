"""Deterministic mode, state-dict comparison, unseeded-generator tracing, run manifests and `dlclinic replay`."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import blobs
from dlclinic.core.determinism import (
    compare_state_dicts,
    determinism_state,
    deterministic_mode,
    loader_kwargs,
    trace_unseeded_generators,
)
from dlclinic.core.errors import InputError
from dlclinic.core.manifest import MANIFEST_SCHEMA, build_manifest, compare_manifests, read_manifest, write_manifest


def test_deterministic_mode_sets_and_restores_everything() -> None:
    before = determinism_state()
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    with deterministic_mode(7):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        import os

        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        a = torch.rand(3)
    with deterministic_mode(7):
        assert torch.equal(a, torch.rand(3))  # seeded identically
    assert determinism_state() == before
    assert torch.equal(torch.rand(1), expected_next)  # the caller's RNG stream is untouched


def test_deterministic_mode_restores_after_an_error() -> None:
    before = determinism_state()
    with pytest.raises(RuntimeError), deterministic_mode(0):
        raise RuntimeError("boom")
    assert determinism_state() == before


def test_seeded_dataloader_is_reproducible() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    ds = TensorDataset(torch.arange(20))

    def order(seed: int) -> list[int]:
        return [int(b[0][0]) for b in DataLoader(ds, batch_size=1, shuffle=True, **loader_kwargs(seed))]

    assert order(3) == order(3) and order(3) != order(4)


def test_compare_state_dicts_reports_first_difference() -> None:
    a = {"w": torch.ones(3), "b": torch.zeros(2)}
    assert compare_state_dicts(a, {k: v.clone() for k, v in a.items()}).identical
    diff = compare_state_dicts(a, {"w": torch.ones(3), "b": torch.tensor([0.0, 1e-7])})
    assert (
        not diff.identical and diff.first == "b" and diff.n_differing == 1 and diff.max_abs_diff == pytest.approx(1e-7)
    )
    assert compare_state_dicts(a, {"w": torch.ones(3)}).missing == ("b",)


def test_trace_records_unseeded_generators_only_and_restores() -> None:
    original = (np.random.default_rng, np.random.RandomState, random.Random, torch.Generator)
    with trace_unseeded_generators() as calls:
        np.random.default_rng(3)
        random.Random(5)
        np.random.default_rng()
        random.Random()
    assert [c.what for c in calls] == ["numpy.random.default_rng()", "random.Random()"]
    assert all("test_research_reproducibility.py" in c.site for c in calls)
    assert (np.random.default_rng, np.random.RandomState, random.Random, torch.Generator) == original


def test_manifest_roundtrip_and_comparison(tmp_path: Path) -> None:
    from dlclinic.core.case import Case

    x, y = blobs(40)
    case = Case.from_arrays((x, y))
    m = build_manifest(case=case, command=["dlclinic", "checkup", "--demo"], seeds={"fit": 0}, config={"epochs": 3})
    assert m["schema"] == MANIFEST_SCHEMA and m["seeds"] == {"fit": 0}
    assert set(m["hashes"]) >= {"data.train", "config"} and m["packages"]["numpy"] == np.__version__
    path = write_manifest(tmp_path / "run" / "manifest.json", m)
    back = read_manifest(path.parent)
    assert back["hashes"] == m["hashes"]
    other = json.loads(json.dumps(back))
    other["hashes"]["data.train"] = "0" * 64
    other["results"] = {"data.quality": {"status": "warn", "metrics": {"x": 1.0}}}
    diff = compare_manifests(back, other)
    assert diff["hashes"] and diff["results"]
    assert not any(compare_manifests(back, back).values())
    assert not list(tmp_path.glob("run/.*.tmp"))  # atomic: no temporary left behind


def test_read_manifest_rejects_foreign_files(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"schema": "other"}')
    with pytest.raises(InputError, match="expected schema"):
        read_manifest(tmp_path / "x.json")
    with pytest.raises(InputError, match="no such file"):
        read_manifest(tmp_path / "missing.json")


def test_replay_argv_replaces_out_and_disables_cache() -> None:
    from dlclinic.cli.replay import replay_argv

    args = replay_argv(
        ["dlclinic", "checkup", "--demo", "--out", "old", "--only", "data"], Path("new"), use_cache=False
    )
    assert args == ["checkup", "--demo", "--only", "data", "--out", "new", "--quiet", "--no-cache"]


@pytest.mark.slow
def test_replay_reproduces_a_recorded_checkup(tmp_path: Path) -> None:
    import dlclinic
    from dlclinic.cli import main
    from dlclinic.core.evidence import EvidenceConfig
    from dlclinic.core.recipe import FitConfig
    from dlclinic.report import write_report

    x, y = blobs(200, k=3, d=8)
    xt, yt = blobs(90, k=3, d=8, seed=1)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savez(tmp_path / "test.npz", x=xt, y=yt)
    out = tmp_path / "run"
    argv = [
        "dlclinic",
        "checkup",
        "--train",
        str(tmp_path / "train.npz"),
        "--test",
        str(tmp_path / "test.npz"),
        "--only",
        "research.theory,research.benchmark_saturation",
        "--epochs",
        "3",
        "--out",
        str(out),
    ]
    from dlclinic.io import load_case

    case = load_case(tmp_path / "train.npz", tmp_path / "test.npz")
    report = dlclinic.checkup(
        case,
        only=["research.theory", "research.benchmark_saturation"],
        fit_config=FitConfig(epochs=3),
        evidence_config=EvidenceConfig(cache=False),
        cache_dir=tmp_path / "cache",
    )
    write_report(report, out)
    manifest = write_manifest(out / "manifest.json", build_manifest(report=report, command=argv))
    assert main(["replay", str(manifest)]) == 0
    assert (out / "replay" / "replay_comparison.json").is_file()
    recorded = read_manifest(manifest)
    recorded["results"]["research.theory"]["metrics"]["mean_alpha"] = 99.0  # a run that did not reproduce
    write_manifest(manifest, recorded)
    assert main(["replay", str(manifest), "--out", str(tmp_path / "again")]) == 1
