"""What a person sees: plain progress lines in a log, summaries that keep their key number, runnable commands."""

from __future__ import annotations

import dataclasses
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

import dlclinic
from conftest import blobs
from dlclinic import challenges
from dlclinic.core.results import CheckResult, Report, remedy_command, sequence_of_results
from dlclinic.report.terminal import render_terminal

LONG = {
    "data.quantity": "The learning curve is still steep: doubling the 3,118 training samples is predicted to lower "
    "the error by 1.7% (fit 9.8% → 8.1%; measured now 8.0%, fit R² 0.82). Backtest: fitted on ≤70 % of the data, "
    "the curve predicts 10.4% error at full size.",
    "data.quality": "Found 257 likely label errors (8.2%), 25 test rows leaked from train, 40 duplicate train rows, "
    "class imbalance 7.1:1.",
    "research.benchmark_saturation": "Test accuracy 92.0% (95 % CI 90.4%–93.7%), macro-F1 0.911 (0.893–0.928). "
    "3 weak slice(s) among 28 tested.",
}


def _report() -> Report:
    results = [CheckResult(id=cid, status="warn", summary=text) for cid, text in LONG.items()]
    return Report("0.1.0", "2026-01-01T00:00:00Z", {"name": "t"}, sequence_of_results(results))


@pytest.mark.parametrize("width", [80, 100, 120, 200])
def test_terminal_summary_keeps_every_number_of_the_first_sentence(width: int) -> None:
    console = Console(width=width, file=io.StringIO(), record=True)
    render_terminal(_report(), console)
    text = console.export_text()
    flat = " ".join(text.split())
    for cid, summary in LONG.items():
        first = re.split(r"(?<=[.!?])\s+(?=[A-Z(])", summary)[0]
        for number in re.findall(r"\d[\d,.:]*%?", first):
            assert number in flat, f"{cid} at {width} columns lost {number!r}:\n{text}"
    assert all(len(line) <= width for line in text.splitlines()), text


def test_remedy_command_carries_the_case_arguments() -> None:
    args = "--train 'my data/train.npz' --model net.py:build --epochs 5"
    assert remedy_command("dlclinic treat data.quality", args) == f"dlclinic treat data.quality {args}"
    assert (
        remedy_command("dlclinic treat model.compression --option max_accuracy_drop=0.01", "--demo")
        == "dlclinic treat model.compression --demo --option max_accuracy_drop=0.01"
    )
    assert remedy_command("dlclinic serve --out serve/", "--demo") == "dlclinic serve --demo --out serve/"
    assert remedy_command("dlclinic monitor --store s.db", "--demo") == "dlclinic monitor --store s.db"
    assert remedy_command(None, "--demo") is None
    assert "<data options>" in str(remedy_command("dlclinic treat data.quality", None))  # a case built in Python


def _files(tmp_path: Path) -> list[str]:
    for name, (x, y) in {"train": blobs(300, d=6, seed=1), "test": blobs(150, d=6, seed=2)}.items():
        np.savez(tmp_path / f"{name}.npz", x=x, y=y)
    return ["--train", str(tmp_path / "train.npz"), "--test", str(tmp_path / "test.npz")]


def _checkup(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "dlclinic.cli", "checkup", *_files(tmp_path)]
    argv += [
        "--only",
        "ethics.fairness,research.benchmark_saturation,research.theory",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    return subprocess.run([*argv, *extra], capture_output=True, text=True, timeout=600, check=False)


def test_log_file_gets_one_line_per_finished_check(tmp_path: Path) -> None:
    # stdout is a pipe here, as with `dlclinic checkup … > log.txt`
    run = _checkup(tmp_path, "--out", str(tmp_path / "out"), "--epochs", "4")
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stdout.splitlines() if line.startswith("[")]
    assert [line.split()[:2] for line in lines] == [
        ["[1/3]", "ethics.fairness"],
        ["[2/3]", "research.benchmark_saturation"],
        ["[3/3]", "research.theory"],
    ], run.stdout
    assert all(re.fullmatch(r"\[\d/3\] [a-z_.]+ (ok|warn|fail|error|not_examined) \d+\.\d s", line) for line in lines)
    # the lines come before the summary table: they were written while the run went on
    assert run.stdout.index("[3/3]") < run.stdout.index("dlclinic checkup")
    # the printed remedy commands carry the case's own arguments
    for line in run.stdout.splitlines():
        if "dlclinic treat" in line:
            assert "--train" in line and "--epochs 4" in line, line


def test_quiet_prints_no_progress(tmp_path: Path) -> None:
    run = _checkup(tmp_path, "--out", str(tmp_path / "out"), "--epochs", "3", "--quiet")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "" and "[1/3]" not in run.stderr


def test_a_missing_optional_library_is_not_examined_with_the_install_line(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def needs_optuna(case, evidence, options):  # type: ignore[no-untyped-def]
        raise ModuleNotFoundError("No module named 'optuna'", name="optuna")

    spec = challenges.CHECKS["research.theory"]
    monkeypatch.setitem(challenges.CHECKS, "research.theory", dataclasses.replace(spec, run=needs_optuna))
    case = dlclinic.Case.from_arrays(blobs(200, seed=1), blobs(100, seed=2))
    report = dlclinic.checkup(
        case, only=["research.theory"], cache_dir=tmp_path, fit_config=dlclinic.FitConfig(epochs=2)
    )
    row = report["research.theory"]
    assert row.status == "not_examined" and "pip install 'dlclinic[tune]'" in row.summary
