"""With a model of the user's, the evidence pass and each check task run in a process forked for
them (issue 21: the checkup's memory no longer grows check after check). Same numbers, same report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import dlclinic
from conftest import blobs
from dlclinic import Case, EvidenceConfig, FitConfig
from dlclinic.api import _in_child
from dlclinic.core.baselines import MLP
from dlclinic.core.errors import InputError
from dlclinic.core.progress import relayed
from dlclinic.core.recipe import fit
from dlclinic.core.threads import torch_threads
from dlclinic.core.workers import can_fork, run_tasks

needs_fork = pytest.mark.skipif(not can_fork(), reason="no fork on this platform")

ONLY = ["data.quality", "data.privacy", "model.overfitting", "optimization.convergence"]


def _case() -> Case:
    x, y = blobs(300, d=6, sep=2.5, seed=0)
    xt, yt = blobs(120, d=6, sep=2.5, seed=1)
    y[:12] = (y[:12] + 1) % 3  # planted label flips
    torch.manual_seed(0)
    model = fit(MLP(6, 3), x, y, FitConfig(epochs=3, batch_size=64)).model
    return Case.from_arrays((x, y), (xt, yt), model=model)


def _checkup(monkeypatch: pytest.MonkeyPatch, isolate: str) -> dlclinic.Report:
    monkeypatch.setenv("DLCLINIC_ISOLATE", isolate)
    with torch_threads(1):  # a pytest worker may have run OpenMP on several threads: one thread forks safely
        return dlclinic.checkup(
            _case(),
            only=ONLY,
            evidence_config=EvidenceConfig(oof="embeddings", cache=False),
            fit_config=FitConfig(epochs=3),
        )


@needs_fork
def test_isolated_checks_give_the_numbers_of_checks_run_here(monkeypatch: pytest.MonkeyPatch) -> None:
    isolated, here = _checkup(monkeypatch, "1"), _checkup(monkeypatch, "0")
    assert isolated.environment["checkup_isolation"] == "a process per check"
    assert here.environment["checkup_isolation"] == "in the checkup's process"
    for cid in ONLY:
        a, b = isolated[cid], here[cid]
        numbers = {k: v for k, v in a.metrics.items() if "second" not in k}
        assert (a.status, numbers) == (b.status, {k: b.metrics[k] for k in numbers}), cid
    assert isolated["data.quality"].metrics["label_issues"] >= 8  # most of the 12 planted flips, found in a child
    assert isolated.case["evidence"]["computed"] == here.case["evidence"]["computed"]


class _Recorded:
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def step(self, description: str, total: int | None = None):  # type: ignore[no-untyped-def]
        from contextlib import contextmanager

        @contextmanager
        def cm():  # type: ignore[no-untyped-def]
            self.events.append(("step", description))
            yield lambda n=1: self.events.append(("advance", n))
            self.events.append(("end", description))

        return cm()

    def note(self, message: str) -> None:
        self.events.append(("note", message))


_RELAY: list[object] = []


def _report_progress(x: int) -> int:
    progress = _RELAY[0]
    with progress.step(f"task {x}", total=2) as advance:  # type: ignore[attr-defined]
        advance(2)
    progress.note(f"done {x}")  # type: ignore[attr-defined]
    return os.getpid()


@needs_fork
def test_a_forked_task_s_progress_shows_in_the_parent() -> None:
    shown = _Recorded()
    with relayed(shown) as relay:
        pids = run_tasks([1], _report_progress, workers=1, fresh=True, setup=lambda: _RELAY.append(relay))
    assert pids[0] != os.getpid()
    assert shown.events == [("step", "task 1"), ("advance", 2), ("end", "task 1"), ("note", "done 1")]


def _bad_input() -> None:
    raise InputError("split 'train': expected finite values, found NaN at row 3")


@needs_fork
def test_an_error_in_a_forked_step_is_raised_here_with_its_traceback() -> None:
    with pytest.raises(InputError, match="found NaN at row 3") as err:
        _in_child(1, _bad_input)
    assert any("_bad_input" in note for note in err.value.__notes__)  # where the child raised it
    assert _in_child(1, lambda: os.getpid()) != os.getpid()
    assert _in_child(None, lambda: os.getpid()) == os.getpid()


MODEL_PY = """
from torch import nn


def make():
    return nn.Sequential(nn.Linear(8, 4096), nn.ReLU(), nn.Linear(4096, 3))  # 32,768+ weights: copied on a thread pool
"""


@needs_fork
def test_the_cli_loads_on_one_thread_so_its_checks_run_isolated_on_two(tmp_path: Path) -> None:
    """Loading the weights on two threads (``load_state_dict`` copies big tensors with ATen's
    parallel_for) started torch's OpenMP pool in the CLI's process, and no forked child could then
    use two threads: the checkup silently ran in one process."""
    from safetensors.torch import save_file

    (tmp_path / "model.py").write_text(MODEL_PY)
    namespace: dict[str, Any] = {}
    exec(compile(MODEL_PY, "model.py", "exec"), namespace)
    torch.manual_seed(0)
    save_file(namespace["make"]().state_dict(), str(tmp_path / "w.safetensors"))
    for name, seed in (("train", 0), ("test", 1)):
        x, y = blobs(300 if name == "train" else 120, d=8, sep=2.5, seed=seed)
        np.savez(tmp_path / f"{name}.npz", x=x, y=y)
    argv = ["checkup", "--train", "train.npz", "--test", "test.npz", "--model", "model.py:make"]
    argv += ["--weights", "w.safetensors", "--only", "data.privacy", "--no-cache", "--quiet", "--out", "out"]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "DLCLINIC_ISOLATE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "dlclinic.cli", *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    environment = json.loads((tmp_path / "out" / "report.json").read_text())["environment"]
    assert environment["checkup_isolation"] == "a process per check"
    assert environment["checkup_torch_threads"] == 2
