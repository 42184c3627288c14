"""Training and the evidence pass on several processes under ``torchrun`` (gloo, CPU): the same results as one.

Each test runs ``python -m torch.distributed.run --standalone --nproc-per-node 2`` as a subprocess
(tests/helpers_distributed.py, or the ``dlclinic`` command with ``--nproc 2``) next to a
single-process run of the same work, on data small enough for two shared cores.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dlclinic.api import prepare_model, retrainer
from dlclinic.cli import main
from dlclinic.cli.launch import exit_code, torchrun_command
from dlclinic.core import distributed
from dlclinic.core.case import Case
from dlclinic.core.recipe import FitConfig

HELPER = Path(__file__).with_name("helpers_distributed.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", DLCLINIC_CACHE=str(tmp_path / "cache"), TMPDIR=str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir(exist_ok=True)
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def _run(cmd: list[str], tmp_path: Path) -> None:
    done = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]


def _helper(mode: str, out: Path, tmp_path: Path, *, processes: int) -> dict[str, np.ndarray]:
    _run([*(TORCHRUN if processes > 1 else [sys.executable]), str(HELPER), mode, str(out)], tmp_path)
    for rank in range(processes):  # every rank took part, and saw the world size
        assert json.loads(Path(f"{out}.rank{rank}.json").read_text())["world_size"] == processes
    with np.load(out) as data:
        return {k: data[k] for k in data.files}


def test_fit_on_two_processes_matches_one(tmp_path: Path) -> None:
    one = _helper("fit", tmp_path / "one.npz", tmp_path, processes=1)
    two = _helper("fit", tmp_path / "two.npz", tmp_path, processes=2)
    # without dropout or BatchNorm, DDP's averaged gradient is the single-process batch gradient:
    # after 6 epochs (96 AdamW steps) the weights differ only by float summation order
    np.testing.assert_allclose(two["plain.weights"], one["plain.weights"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(two["plain.val_loss"], one["plain.val_loss"], rtol=1e-4)
    np.testing.assert_allclose(two["plain.train_loss"], one["plain.train_loss"], rtol=1e-4)
    assert two["plain.acc"] == one["plain.acc"]
    # with dropout each rank draws its own masks: another training run of the same recipe, so the
    # test accuracy (200 rows, ~0.75) may move by sampling noise: two such runs differ by ~0.02 (1 SD)
    assert abs(float(two["mlp.acc"]) - float(one["mlp.acc"])) <= 0.06
    assert float(two["mlp.acc"]) > 0.6  # far above chance (1/3): the distributed run learned


def test_sharded_evidence_is_identical(tmp_path: Path) -> None:
    one = _helper("evidence", tmp_path / "one.npz", tmp_path, processes=1)
    two = _helper("evidence", tmp_path / "two.npz", tmp_path, processes=2)
    assert sorted(one) == sorted(two)
    for key in one:  # the same batches on each rank as in one process, folds trained alone: equal to the bit
        assert one[key].shape == two[key].shape, key
        np.testing.assert_array_equal(two[key], one[key], err_msg=key)


def test_checkup_examines_rank_0s_model(tmp_path: Path) -> None:
    one = _helper("checkup", tmp_path / "one.npz", tmp_path, processes=1)
    two = _helper("checkup", tmp_path / "two.npz", tmp_path, processes=2)
    assert int(one["world_size"]) == 1 and int(two["world_size"]) == 2
    # rank 1 initialised other weights: the checkup broadcasts rank 0's, so the result is the single process's
    assert json.loads(str(two["result"])) == json.loads(str(one["result"]))


def _accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def test_treat_with_nproc_retrains_on_two_processes(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "treated"
    _run([sys.executable, str(HELPER), "data", str(data)], tmp_path)
    args = ["treat", "data.quality", "--train", str(data / "train.npz"), "--test", str(data / "test.npz")]
    _run(
        [sys.executable, "-m", "dlclinic.cli", *args, "--epochs", "4", "--out", str(out), "--nproc", "2", "-q"],
        tmp_path,
    )

    report = json.loads((out / "report.json").read_text())
    assert report["environment"]["world_size"] == 2
    assert report["environment"]["distributed_backend"] == "gloo"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("report")) == ["report.html", "report.json"]
    assert not list(out.glob(".*.tmp")) and not list((tmp_path / "tmp").glob("dlclinic-*"))  # rank 1 left nothing

    # the same trainings in one process: the baseline, then the recipe on the rows the remedy kept
    tr, te = dict(np.load(data / "train.npz")), dict(np.load(data / "test.npz"))
    case = Case.from_arrays((tr["x"], tr["y"]), (te["x"], te["y"]))
    cfg = FitConfig(epochs=4, seed=0)
    before = _accuracy(prepare_model(case, fit_config=cfg, use_cache=False).model, te["x"], te["y"])
    with open(out / "cleaned_train_rows.csv", newline="") as fh:
        rows = [(int(r["row"]), int(r["label"])) for r in csv.DictReader(fh)]
    retrain, _ = retrainer(case, cfg)
    assert retrain is not None
    kept = np.array([r for r, _ in rows])
    after = _accuracy(retrain(tr["x"][kept], np.array([lab for _, lab in rows]), 0), te["x"], te["y"])
    treatment = report["treatments"][0]
    # the baseline MLP has dropout: each rank draws its own masks, so two processes train another run of
    # the same recipe; on 200 test rows two such runs differ by ~0.02 (1 SD): 0.06 is 3 SD
    assert abs(treatment["before"]["test_accuracy"] - before) <= 0.06
    assert abs(treatment["after"]["test_accuracy"] - after) <= 0.06


def test_torchrun_command_drops_nproc() -> None:
    cmd = torchrun_command(3, ["treat", "data.quality", "--nproc", "3", "--demo", "--nproc=3", "-q"])
    assert cmd[1:] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "3",
        "-m",
        "dlclinic.cli",
        "treat",
        "data.quality",
        "--demo",
        "-q",
    ]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["treat", "data.quality", "--demo", "--nproc", "0"], "--nproc"),
        (
            ["treat", "model.hyperparameters", "--demo", "--nproc", "2"],
            "--nproc does not apply to model.hyperparameters",
        ),
        (["checkup", "--demo", "--nproc", "x"], "--nproc"),
        (["checkup", "--train", "missing.npz", "--nproc", "2"], "missing.npz"),  # the data load before the launch
    ],
)
def test_bad_nproc_is_one_line(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "out").exists()


def test_single_process_is_not_distributed() -> None:
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    assert distributed.shard_bounds(7) == (0, 7)
    part = np.arange(6).reshape(3, 2)
    assert (
        distributed.gather_rows(part) is part
        and distributed.broadcast("x") == "x"
        and distributed.agree(False) is False
    )
    assert distributed.info() == {"world_size": 1}


def test_fail_on_code_reaches_the_launcher_without_a_crashed_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "exit"
    monkeypatch.setenv("DLCLINIC_NPROC_EXIT_FILE", str(target))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert exit_code(1) == 0 and not target.exists()  # rank 1 leaves the code to rank 0
    monkeypatch.setenv("RANK", "0")
    assert exit_code(2) == 2 and not target.exists()  # an error must fail the worker: torchrun stops the others
    assert exit_code(1) == 0 and target.read_text() == "1"
